# -*- test-case-name: tests.test_responses -*-
"""
Sending a status snapshot whose output previews are large.

A snapshot with small previews is answered as before: one compact JSON
body.  One with large previews (more than L{budget.SMALL_PREVIEW_BYTES})
would otherwise exist three times over while it is sent (the snapshot, its
JSON text, that text's bytes, the last one waiting in the transport's
buffer for as long as the client takes to read it), and its escaping can
make it six times longer than the log it came from.  Instead it is sent as
it is rendered (L{jsonstream.chunks}), a slice at a time, paced by the
transport: nothing but the snapshot itself and one slice is in memory,
under a reservation of the preview budget (L{budget.ByteBudget}) held
until the last byte is written or the client is gone.  A client that
stops reading for the stall timeout (C{--idle-connection-timeout-ms}) is
disconnected, so it cannot keep its reservation, and with it everyone
else's large previews, waiting.

The response keeps its C{Content-Length} (computed slice by slice first),
so clients see no difference.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from execgo.core import jsonstream
from execgo.core.protocol import JSON_TYPE
from execgo.server.budget import SMALL_PREVIEW_BYTES, ByteBudget, claim, preview_weight

#: Bytes of JSON rendered between two turns of the reactor while a large
#: answer's length is computed.
YIELD_BYTES = 1024 * 1024


class StreamingRequest(Protocol):
    """
    What a body sent a piece at a time needs of its request: to start the
    response and write it (as L{twisted.web.iweb.IRequest} declares), to
    register a producer with it (the C{IConsumer} half) and to learn that
    the client went away (C{notifyFinish}).  twisted.web's C{Request}, the
    one the API is handed, is all of these; C{IRequest} names only the
    first part.
    """

    method: bytes

    def setResponseCode(self, code: int) -> None: ...

    def setHeader(self, name: bytes, value: bytes) -> None: ...

    def write(self, data: bytes) -> None: ...

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def notifyFinish(self) -> "defer.Deferred[None]": ...


@implementer(IPushProducer)
class BodyProducer:
    """
    Writes C{chunks} to C{request} as fast as its transport takes them,
    then fires L{done}; fails L{done} when the client goes away, or stops
    reading for C{stall_s} seconds (then the connection is dropped).
    """

    def __init__(
        self, request: StreamingRequest, chunks: Iterator[bytes], reactor: IReactorTime, stall_s: Optional[float]
    ) -> None:
        self.request = request
        self.chunks = chunks
        self.reactor = reactor
        self.stall_s = stall_s
        self.paused = False
        self.stopped = False
        self.finished = False
        self.done: defer.Deferred[None] = defer.Deferred()
        self._stall: Optional[IDelayedCall] = None
        request.notifyFinish().addErrback(self._gone)

    def start(self) -> "defer.Deferred[None]":
        """
        Register with the request and write until paused; L{done}.
        """
        self.request.registerProducer(self, True)
        channel = getattr(self.request, "channel", None)
        if getattr(channel, "_waitingForTransport", False):
            self.pauseProducing()
        self._pump()
        return self.done

    def _pump(self) -> None:
        while not self.paused and not self.finished:
            chunk = next(self.chunks, None)
            if chunk is None:
                self._end(None)
                return
            if chunk:
                self.request.write(chunk)

    def _end(self, failure: Any) -> None:
        if self.finished:
            return
        self.finished = True
        self._disarm()
        self.chunks = iter(())
        if getattr(self.request, "channel", None) is not None:
            self.request.unregisterProducer()
        if failure is None:
            self.done.callback(None)
        else:
            self.done.errback(failure)

    def _gone(self, failure: Any) -> None:
        # The client went away (or was cut off): the route's coroutine ends
        # with CancelledError, which Klein drops quietly once the request
        # is marked lost, as it is by now.
        self._end(defer.CancelledError(str(failure.value)))

    def _disarm(self) -> None:
        stall, self._stall = self._stall, None
        if stall is not None and stall.active():
            stall.cancel()

    def _stalled(self) -> None:
        self._stall = None
        transport = getattr(getattr(self.request, "channel", None), "transport", None)
        if not self.finished and transport is not None:
            # Its loss reaches the request, and through it _gone.
            transport.abortConnection()

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: write nothing until resumed, for
        at most the stall timeout.
        """
        self.paused = True
        if self.stall_s and self._stall is None and not (self.finished or self.stopped):
            self._stall = self.reactor.callLater(self.stall_s, self._stalled)

    def resumeProducing(self) -> None:
        """
        The transport has room again.
        """
        if self.stopped:
            return
        self.paused = False
        self._disarm()
        self._pump()

    def stopProducing(self) -> None:
        """
        The connection is going away: write nothing more.  The request
        learns of it next (L{_gone} ends the response): ending here would
        reach the route before Klein knows the connection is lost.
        """
        self.stopped = True
        self.paused = True
        self._disarm()


async def _encoded_length(snapshot: Any, reactor: IReactorTime) -> int:
    """
    The length of the snapshot's compact JSON, computed slice by slice,
    letting the reactor run every L{YIELD_BYTES} (escaping 16 MiB of
    preview takes 60 to 110 ms).
    """
    total = since = 0
    for piece in jsonstream.chunks(snapshot):
        total += len(piece)
        since += len(piece)
        if since >= YIELD_BYTES:
            since = 0
            await task.deferLater(reactor, 0, lambda: None)
    return total


async def send_snapshot(
    request: StreamingRequest,
    snapshot: Any,
    small: Any,
    *,
    budget: Optional[ByteBudget],
    reactor: IReactorTime,
    stall_s: Optional[float],
) -> bytes:
    """
    Answer C{snapshot}: through C{small(request, snapshot)} (the API's one
    compact body) when its previews are small, else streamed under a
    reservation of C{budget}: the one the snapshot carries from its read
    (L{budget.claim}), or one taken now.

    @return: the body for Klein to write (empty when streamed).
    """
    hold = claim(snapshot)
    weight = preview_weight(snapshot)
    if weight <= SMALL_PREVIEW_BYTES:
        if hold is not None:
            hold.release()
        return small(request, snapshot)
    try:
        if hold is None and budget is not None:
            hold = await budget.take(weight)
        length = await _encoded_length(snapshot, reactor)
        request.setResponseCode(200)
        request.setHeader(b"content-type", JSON_TYPE.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % length)
        producer = BodyProducer(request, jsonstream.chunks(snapshot), reactor, stall_s)
        del snapshot
        await producer.start()
    finally:
        if hold is not None:
            hold.release()
    return b""
