# -*- test-case-name: tests.test_streams -*-
"""
Streaming a task's logs and events over HTTP.

C{GET /api/v1/tasks/{id}/stdout} (and C{stderr}) serves the log from an
offset, and with C{follow=true} keeps serving what the workload writes
until the task is terminal and every byte is out.  C{GET
/api/v1/tasks/{id}/events?follow=true} serves the event log as NDJSON
until the terminal event has been sent.

Nothing here blocks the reactor: the log file is opened and read in
bounded chunks (L{CHUNK_BYTES}) by the store, off the reactor thread
(L{TaskStore.open_log}, L{TaskStore.read_log}), which also reads the
task's status.  Between reads a
follower naps: L{POLL_S} on a timer, during which the file size is looked
at with C{fstat} on the open descriptor (no read), and it wakes at once
when the runtime's L{Waiters} are notified that the task ended.  Every
L{STATUS_EVERY} naps it reads the status anyway, in case the end was
reported by nobody (a task ended while the server was down, or by an
C{internal-shim}).

A follow stream ends only when the task is terminal and the log holds no
byte past what was sent: the status is read first and the file after, so
the last bytes (written before the terminal record) are never cut off.

Each stream is a streaming producer of its request: when the client reads
slowly the transport pauses it and no further chunk is read until it
resumes, so a slow client of a large log costs one chunk of memory.  A
client that goes away stops its stream (its descriptor is closed after
the chunk in flight, its timers are cancelled); L{Streams.close_all} (the
runtime stopping) aborts every connection, so clients see an incomplete
response and resume with an offset.  Nothing is kept in memory between
requests: a task that runs across a server restart streams like any other.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Coroutine, Dict, Mapping, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execgo.core import encoding, errors, protocol
from execgo.core.constants import TERMINAL_STATUSES
from execgo.core.render import render_event
from execgo.server.relay import Relay, RelayFailed, from_node
from execgo.server.taskstore import TaskStore
from execgo.server.waiters import Waiters
from execgo.server.web.responses import StreamingRequest
from execgo.store.logfiles import CHUNK_BYTES, LOG_NAMES, OpenLog

log = Logger()

POLL_S = 0.05
STATUS_EVERY = 20
OCTET_TYPE = protocol.OCTET_TYPE.encode("ascii")
NDJSON_TYPE = protocol.NDJSON_TYPE.encode("ascii")
SIZE_HEADER = protocol.LOG_SIZE_HEADER.encode("ascii")
OFFSET_HEADER = protocol.LOG_OFFSET_HEADER.encode("ascii")


def _file_size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return -1


# One response.


@implementer(IPushProducer)
class _Stream:
    """
    The producer of one streaming response, and its state: paused by the
    transport, stopped (client gone or runtime stopping), its pending nap.
    """

    def __init__(self, request: StreamingRequest, waiters: Waiters, task_id: str) -> None:
        self.request = request
        self.waiters = waiters
        self.task_id = task_id
        self.paused = False
        self.stopped = False
        self.begun = False
        self._registered = False
        self._resumed: Optional[defer.Deferred[None]] = None
        self._nap: Optional[Tuple[defer.Deferred[bool], defer.Deferred[bool]]] = None
        request.notifyFinish().addErrback(lambda _: self.stop())

    def begin(self, headers: Dict[bytes, bytes]) -> None:
        """
        Send the status line and C{headers}; from now on the transport
        paces the stream.
        """
        request = self.request
        request.setResponseCode(200)
        for name, value in headers.items():
            request.setHeader(name, value)
        self.begun = True
        request.registerProducer(self, True)
        self._registered = True
        if getattr(getattr(request, "channel", None), "_waitingForTransport", False):
            self.paused = True
        request.write(b"")

    def write(self, data: bytes) -> None:
        """
        Send C{data} unless the stream has stopped.
        """
        if not self.stopped:
            self.request.write(data)

    def end(self) -> None:
        """
        Detach from the request before it is finished.
        """
        if self._registered:
            self._registered = False
            if getattr(self.request, "channel", None) is not None:
                self.request.unregisterProducer()

    def abort(self) -> None:
        """
        Stop, and drop the connection without ending the response, so the
        client sees it incomplete.
        """
        self.stop()
        self.end()
        transport = getattr(getattr(self.request, "channel", None), "transport", None)
        if transport is not None:
            abort = getattr(transport, "abortConnection", None) or transport.loseConnection
            abort()

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: read nothing more for now.
        """
        self.paused = True

    def resumeProducing(self) -> None:
        """
        The transport has room again.
        """
        self.paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        """
        The connection is going away.
        """
        self.stop()

    def stop(self) -> None:
        """
        Stop producing: wake whatever the stream waits for.
        """
        if self.stopped:
            return
        self.stopped = True
        self.resumeProducing()
        self.forget_nap(wake=True)

    async def writable(self) -> None:
        """
        Wait while the transport has us paused (returns at once if stopped).
        """
        while self.paused and not self.stopped:
            self._resumed = defer.Deferred()
            await self._resumed

    def nap(self, seconds: float) -> "defer.Deferred[bool]":
        """
        A Deferred that fires with C{True} when the task is reported ended,
        else with C{False} after C{seconds} (or at once when stopped).
        Registered now, so a report that arrives before it is awaited is
        not lost.
        """
        self.forget_nap()
        napping: defer.Deferred[bool] = defer.Deferred()
        watch = self.waiters.wait(self.task_id, seconds)

        def fired(notice: Any) -> None:
            if self._nap is not None and self._nap[1] is watch:
                self._nap = None
            if not napping.called:
                napping.callback(bool(notice))

        watch.addCallbacks(fired, lambda failure: failure.trap(defer.CancelledError))
        self._nap = (napping, watch)
        return napping

    def forget_nap(self, wake: bool = False) -> None:
        """
        Cancel the pending nap's timer; with C{wake}, fire it with C{False}.
        """
        nap, self._nap = self._nap, None
        if nap is None:
            return
        napping, watch = nap
        if not watch.called:
            watch.cancel()
        if wake and not napping.called:
            napping.callback(False)


class Streams:
    """
    The log and event streams of one runtime.

    @param store: the task store (reads go to its reader threads).
    @param waiters: notified when a task ends (L{Runtime.waiters}).
    """

    def __init__(self, store: TaskStore, waiters: Waiters, relay: Optional[Relay] = None) -> None:
        self.store = store
        self.waiters = waiters
        self.relay = relay
        self.active: Set[_Stream] = set()

    def __len__(self) -> int:
        return len(self.active)

    def log(
        self,
        request: StreamingRequest,
        task_id: str,
        name: str,
        offset: int,
        follow: bool,
        credentials: Optional[Mapping[str, str]] = None,
    ) -> "defer.Deferred[bytes]":
        """
        Serve the C{name} log (C{"stdout"} or C{"stderr"}) of a task from
        C{offset}: headers C{X-Execgo-Log-Size} (the size when the response
        began) and C{X-Execgo-Offset}; without C{follow} the bytes up to
        that size (C{Content-Length} set), with C{follow} chunked until the
        task is terminal and the log fully sent.

        The log of a task another node runs (or ran) is that node's: it is
        relayed from there (L{Relay.stream_log}) with C{credentials}, the
        caller's (C{None}: a relayed request, answered from here alone).

        @return: fires with C{b""} once the whole body is written (the
            caller's framework then finishes the request), or fails with
            L{errors.NotFound} (or L{errors.Unavailable}: the node that has
            the log cannot be reached) before anything is written.
        """
        if name not in LOG_NAMES:
            raise ValueError(name)
        return self._serve(request, task_id, lambda stream: self._log(stream, name, offset, follow, credentials))

    def events(self, request: StreamingRequest, task_id: str, after_seq: int) -> "defer.Deferred[bytes]":
        """
        Serve a task's events after C{after_seq} as NDJSON, following new
        ones until the terminal event is out.

        @return: as L{log}.
        """
        return self._serve(request, task_id, lambda stream: self._events(stream, after_seq))

    def close_all(self) -> None:
        """
        Abort every stream (the runtime is stopping): clients see their
        responses cut short and resume elsewhere or later.
        """
        for stream in list(self.active):
            stream.abort()

    def _serve(
        self,
        request: StreamingRequest,
        task_id: str,
        body: Callable[[_Stream], Coroutine[Any, Any, bool]],
    ) -> "defer.Deferred[bytes]":
        stream = _Stream(request, self.waiters, task_id)
        done: defer.Deferred[bytes] = defer.Deferred(lambda _: stream.stop())
        self.active.add(stream)

        def settle(result: Any) -> None:
            self.active.discard(stream)
            stream.forget_nap()
            if isinstance(result, Failure):
                if not stream.begun:
                    # Before the headers: the error envelope (unless the
                    # client has gone already).
                    if not done.called:
                        done.errback(result)
                    return
                if not result.check(defer.CancelledError):
                    log.failure("streaming task {task_id} failed", result, task_id=task_id)
                stream.abort()
            elif result and not stream.stopped and not done.called:
                stream.end()
                done.callback(b"")
            else:
                stream.abort()

        defer.ensureDeferred(body(stream)).addBoth(settle)
        return done

    async def _log(
        self, stream: _Stream, name: str, offset: int, follow: bool, credentials: Optional[Mapping[str, str]]
    ) -> bool:
        opened = await self.store.open_log(stream.task_id, name)
        if opened is None:
            raise errors.NotFound(stream.task_id)
        if opened.elsewhere is not None and credentials is not None and self.relay is not None:
            return await self._relayed_log(stream, opened.elsewhere, name, offset, follow, credentials)
        if follow and opened.queued and credentials is not None and self.relay is not None:
            return await self._log_once_claimed(stream, opened, name, offset, credentials)
        fd = opened.fd
        try:
            if stream.stopped:
                return False
            headers = {
                b"Content-Type": OCTET_TYPE,
                SIZE_HEADER: str(opened.size).encode("ascii"),
                OFFSET_HEADER: str(offset).encode("ascii"),
                b"Cache-Control": b"no-store",
            }
            if not follow:
                headers[b"Content-Length"] = str(max(0, opened.size - offset)).encode("ascii")
            stream.begin(headers)
            if fd is None or stream.request.method == b"HEAD":
                return True
            return await self._pump_log(stream, fd, offset, None if follow else max(offset, opened.size))
        finally:
            if fd is not None:
                os.close(fd)

    async def _log_once_claimed(
        self, stream: _Stream, opened: OpenLog, name: str, offset: int, credentials: Mapping[str, str]
    ) -> bool:
        """
        Follow the log of a task still queued: the answer begins at once
        (nothing is written yet); once a node claims the task its log
        follows from here, or relayed from that node when it is another.
        """
        if opened.fd is not None:
            os.close(opened.fd)
        stream.begin(
            {
                b"Content-Type": OCTET_TYPE,
                SIZE_HEADER: str(opened.size).encode("ascii"),
                OFFSET_HEADER: str(offset).encode("ascii"),
                b"Cache-Control": b"no-store",
            }
        )
        while True:
            await stream.nap(POLL_S)
            if stream.stopped:
                return False
            now = await self.store.open_log(stream.task_id, name)
            if now is None:
                return False
            if not now.queued or now.elsewhere is not None:
                break
            if now.fd is not None:
                os.close(now.fd)
        if now.elsewhere is not None:
            if now.fd is not None:
                os.close(now.fd)
            return await self._relayed_log(stream, now.elsewhere, name, offset, True, credentials, begun=True)
        if now.fd is None:
            return True
        try:
            return await self._pump_log(stream, now.fd, offset, None)
        finally:
            os.close(now.fd)

    async def _relayed_log(
        self,
        stream: _Stream,
        node_id: str,
        name: str,
        offset: int,
        follow: bool,
        credentials: Mapping[str, str],
        begun: bool = False,
    ) -> bool:
        """
        The log of a task node C{node_id} runs, as that node serves it.

        @raise errors.Unavailable: that node is not alive or cannot answer.
        """
        relay = self.relay
        assert relay is not None

        def fetch(address: str) -> Coroutine[Any, Any, bool]:
            return relay.stream_log(address, stream.task_id, name, offset, follow, credentials, stream, begun)

        try:
            return await from_node(self.store, node_id, fetch)
        except RelayFailed as e:
            raise errors.Unavailable(str(e)) from None

    async def _pump_log(self, stream: _Stream, fd: int, pos: int, end: Optional[int]) -> bool:
        """
        Send chunks from C{pos}; between chunks wait for the transport, at
        the end of the written log (following) nap until it grows or the
        task ends.

        @return: whether everything was sent (C{False}: stopped, or a
            plain read came up short of its C{Content-Length}).
        """
        follow = end is None
        nap: Optional[defer.Deferred[bool]] = None
        while True:
            await stream.writable()
            if stream.stopped:
                return False
            data, complete = await self.store.read_log(stream.task_id, fd, pos, end)
            if stream.stopped:
                return False
            if data:
                stream.write(data)
                pos += len(data)
                if len(data) == CHUNK_BYTES and nap is not None:
                    stream.forget_nap()
                    nap = None
            if complete:
                return end is None or pos >= end
            if data or not follow:
                continue
            if nap is None:
                # The status was read before any nap was registered: look
                # once more with one in place, so no end report is missed.
                nap = stream.nap(POLL_S)
                continue
            naps = 0
            while True:
                notified = await nap
                nap = None
                if stream.stopped:
                    return False
                naps += 1
                if notified or naps >= STATUS_EVERY or _file_size(fd) > pos:
                    break
                nap = stream.nap(POLL_S)
            nap = stream.nap(POLL_S)

    async def _events(self, stream: _Stream, after_seq: int) -> bool:
        task_id = stream.task_id
        status, events = await self.store.poll_events(task_id, after_seq)
        if status is None:
            raise errors.NotFound(task_id)
        if stream.stopped:
            return False
        stream.begin({b"Content-Type": NDJSON_TYPE, b"Cache-Control": b"no-store"})
        if stream.request.method == b"HEAD":
            return True
        seq = after_seq
        while True:
            if events:
                await stream.writable()
                if stream.stopped:
                    return False
                stream.write(b"".join(encoding.compact(render_event(event)) + b"\n" for event in events))
                seq = events[-1].seq
            if status is None or status in TERMINAL_STATUSES:
                return True
            await stream.nap(POLL_S)
            await stream.writable()
            if stream.stopped:
                return False
            status, events = await self.store.poll_events(task_id, seq)
            if stream.stopped:
                return False
