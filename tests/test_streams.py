"""
Tests for L{execgo.server.web.streams}: log and event streams.

Most tests serve the in-process runtime (real resource, runtime and store;
a fake supervisor link, so tasks stay queued and the test writes their
logs itself) on a real TCP port, because streaming needs a real
connection (StubTreq holds a response until it ends).  The last class
runs the real server with real workloads: a task that prints slowly, and
one followed across a C{kill -9} and restart of the server.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer, protocol, reactor
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.trial.util import suppress as SUPPRESS
from twisted.web.client import ResponseDone

from execgo.core import outcome
from execgo.server.web import streams
from execgo.server.web.site import APISite
from execgo.store import connection, eventlog, logfiles, schema, terminal, transitions
from tests.apifixture import InProcessRuntime, tmp_data_dir
from tests.fakes import new_task
from tests.serverfixture import ApiClient, ServerProcess, poll, sleep

COMMAND = {"execution": {"kind": "command", "program": "/bin/true"}}
NOW = 1_700_000_000_000


class Collector(protocol.Protocol):
    """
    Receives a streamed response body, noting when each piece arrived.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.arrivals: List[float] = []
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.reason: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        """
        Keep a piece of the body and when it came.
        """
        self.data += data
        self.arrivals.append(time.time())

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """
        The body ended (C{ResponseDone}) or was cut short.
        """
        self.reason = reason
        self.ended.callback(None)

    @property
    def complete(self) -> bool:
        """
        Whether the response ended properly (not cut short).
        """
        return self.reason is not None and self.reason.check(ResponseDone) is not None

    def abort(self) -> None:
        """
        Hang up in the middle of the response.
        """
        assert self.transport is not None
        self.transport.stopProducing()


async def open_stream(api: ApiClient, path: str) -> Tuple[Any, Collector]:
    """
    Start a GET whose body is delivered as it arrives.
    """
    response = await api.http.get(api.base_url + path, unbuffered=True)
    collector = Collector()
    response.deliverBody(collector)
    return response, collector


def header(response: Any, name: str) -> Optional[str]:
    """
    One response header as text.
    """
    values = response.headers.getRawHeaders(name.encode("ascii"))
    return None if not values else values[-1].decode("latin-1")


def raw_get(port: int, path: str) -> Tuple[int, Dict[str, str], bytes]:
    """
    A blocking GET with L{http.client} (which shows the framing headers
    Twisted's client keeps to itself); run it in a thread.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def rss_bytes() -> int:
    """
    This process's resident set size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class ReadLogTests(SynchronousTestCase):
    """
    The store jobs the streams run (L{logfiles}, L{eventlog.poll_events}),
    on a real store.
    """

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.conn = connection.connect(os.path.join(self.data_dir, "runtime.db"))
        self.addCleanup(self.conn.close)
        schema.init_schema(self.conn)
        self.task = new_task(self.data_dir, "t", make_dirs=True)
        transitions.insert_task(self.conn, self.task, NOW)
        with open(self.task.paths.stdout_path, "wb") as out:
            out.write(b"x" * (logfiles.CHUNK_BYTES + 10))

    def test_open(self) -> None:
        """
        An open log has its size (and, for a task still queued, says so);
        an unknown task is C{None}; a missing file is an empty log.
        """
        opened = logfiles.open_log(self.conn, "t", "stdout")
        assert opened is not None and opened.fd is not None
        self.addCleanup(os.close, opened.fd)
        self.assertEqual((opened.size, opened.queued), (logfiles.CHUNK_BYTES + 10, True))
        self.assertIsNone(logfiles.open_log(self.conn, "nope", "stdout"))
        os.unlink(self.task.paths.stderr_path)
        self.assertEqual(logfiles.open_log(self.conn, "t", "stderr"), logfiles.OpenLog(None, 0, queued=True))
        self.assertRaises(ValueError, logfiles.open_log, self.conn, "t", "result")

    def test_bounded_and_following_reads(self) -> None:
        """
        Reads are at most one chunk; a plain read stops at its end; a
        following read at the end of a running task's log is incomplete,
        and complete once the task is terminal and nothing is left.
        """
        opened = logfiles.open_log(self.conn, "t", "stdout")
        assert opened is not None and opened.fd is not None
        fd = opened.fd
        self.addCleanup(os.close, fd)
        data, complete = logfiles.read_log(self.conn, "t", fd, 0, None)
        self.assertEqual((len(data), complete), (logfiles.CHUNK_BYTES, False))
        self.assertEqual(logfiles.read_log(self.conn, "t", fd, 0, 5), (b"xxxxx", True))
        self.assertEqual(logfiles.read_log(self.conn, "t", fd, 7, 5), (b"", True))
        end = logfiles.CHUNK_BYTES + 10
        self.assertEqual(logfiles.read_log(self.conn, "t", fd, end, None), (b"", False))
        with open(self.task.paths.stdout_path, "ab") as out:
            out.write(b"tail")
        terminal.finish(self.conn, "t", outcome.cancelled("gone"), NOW + 1)
        self.assertEqual(logfiles.read_log(self.conn, "t", fd, end, None), (b"tail", False))
        self.assertEqual(logfiles.read_log(self.conn, "t", fd, end + 4, None), (b"", True))

    def test_poll_events(self) -> None:
        """
        Events after a sequence number with the status read first; an
        unknown task is C{(None, [])}.
        """
        status, events = eventlog.poll_events(self.conn, "t", 0)
        self.assertEqual(status, "accepted")
        self.assertEqual([e.event_type for e in events], ["submitted", "accepted", "planned"])
        status, later = eventlog.poll_events(self.conn, "t", events[1].seq)
        self.assertEqual([e.event_type for e in later], ["planned"])
        self.assertEqual(eventlog.poll_events(self.conn, "nope", 0), (None, []))


class StreamTestsBase(TestCase):
    """
    The in-process runtime, served on a TCP port of 127.0.0.1.
    """

    timeout = 60
    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]

    def setUp(self) -> "defer.Deferred[None]":
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.rt = InProcessRuntime(tmp_data_dir(self))
        self.addCleanup(lambda: defer.ensureDeferred(self.rt.stop()))
        await self.rt.start()
        self.port = reactor.listenTCP(0, APISite(self.rt.api.resource()), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.api = ApiClient(reactor, f"http://127.0.0.1:{self.port.getHost().port}")
        self.addCleanup(self.api.close)

    async def submit(self, task_id: str) -> None:
        """
        Submit a task (it stays queued).
        """
        reply = await self.api.post("/api/v1/tasks", {"task_id": task_id, **COMMAND})
        self.assertEqual(reply.code, 200, reply.body)

    def append(self, task_id: str, data: bytes, name: str = "stdout") -> None:
        """
        Append to a task's log, as its workload would.
        """
        with open(os.path.join(self.rt.config.data_dir_abs, "tasks", task_id, f"{name}.log"), "ab") as log:
            log.write(data)

    def log_content(self, task_id: str, name: str = "stdout") -> bytes:
        """
        A task's whole log file.
        """
        with open(os.path.join(self.rt.config.data_dir_abs, "tasks", task_id, f"{name}.log"), "rb") as log:
            return log.read()

    async def kill(self, task_id: str) -> None:
        """
        Cancel a queued task through the API (the runtime is notified).
        """
        reply = await self.api.post(f"/api/v1/tasks/{task_id}/kill")
        self.assertEqual(reply.code, 200, reply.body)

    async def received(self, collector: Collector, size: int) -> None:
        """
        Wait until C{collector} holds at least C{size} bytes.
        """
        await poll(reactor, lambda: len(collector.data) >= size, timeout=10, what=f"{size} bytes")

    async def no_streams_left(self) -> None:
        """
        Wait until the runtime serves no stream and holds no waiter.
        """
        runtime = self.rt.runtime
        await poll(reactor, lambda: not len(runtime.streams) and not len(runtime.waiters), timeout=5)


class LogTests(StreamTestsBase):
    """
    C{GET /api/v1/tasks/{id}/stdout} and C{/stderr}.
    """

    async def test_plain_reads(self) -> None:
        """
        Without follow: the bytes from the offset to the size when the
        response began, with the size, the offset, a content length and
        the octet-stream type; an offset at or past the end is empty.
        """
        await self.submit("a")
        self.append("a", b"hello world")
        self.append("a", b"oops", "stderr")
        for path, body, offset in [
            ("/api/v1/tasks/a/stdout", b"hello world", "0"),
            ("/api/v1/tasks/a/stdout?follow=false", b"hello world", "0"),
            ("/api/v1/tasks/a/stdout?offset=6", b"world", "6"),
            ("/api/v1/tasks/a/stdout?offset=11", b"", "11"),
            ("/api/v1/tasks/a/stdout?offset=1000", b"", "1000"),
            ("/api/v1/tasks/a/stderr?offset=2", b"ps", "2"),
        ]:
            code, headers, content = await deferToThread(raw_get, self.port.getHost().port, path)
            self.assertEqual((code, content), (200, body), path)
            self.assertEqual(headers["content-type"], "application/octet-stream")
            self.assertEqual(headers["x-execgo-offset"], offset)
            self.assertEqual(headers["x-execgo-log-size"], "4" if "stderr" in path else "11")
            self.assertEqual(headers["content-length"], str(len(body)))
            self.assertNotIn("transfer-encoding", headers)

    async def test_large_plain_read(self) -> None:
        """
        A log of many chunks arrives whole and in order.
        """
        await self.submit("big")
        content = bytes(range(256)) * (streams.CHUNK_BYTES // 64)
        self.append("big", content)
        reply = await self.api.get("/api/v1/tasks/big/stdout?offset=3")
        self.assertEqual(reply.body, content[3:])

    async def test_errors(self) -> None:
        """
        An unknown task is a 404 envelope; bad offsets and follow values
        are 400 C{invalid_input}.
        """
        await self.submit("a")
        for path, code, error in [
            ("/api/v1/tasks/nope/stdout", 404, "not_found"),
            ("/api/v1/tasks/nope/stderr?follow=true", 404, "not_found"),
            ("/api/v1/tasks/a/stdout?offset=-1", 400, "invalid_input"),
            ("/api/v1/tasks/a/stdout?offset=x", 400, "invalid_input"),
            ("/api/v1/tasks/a/stdout?follow=yes", 400, "invalid_input"),
            ("/api/v1/tasks/a/stderr?follow=", 400, "invalid_input"),
        ]:
            reply = await self.api.get(path)
            self.assertEqual((reply.code, reply.json()["error"]["code"]), (code, error), path)
            self.assertEqual(reply.headers["content-type"], "application/json")
        reply = await self.api.request("POST", "/api/v1/tasks/a/stdout")
        self.assertEqual(reply.code, 405)

    async def test_follow_until_terminal(self) -> None:
        """
        Following streams what is there, then what is appended, as it is
        appended; bytes written just before the task ends are included,
        and the response ends (properly) once the task is terminal.
        """
        await self.submit("f")
        self.append("f", b"0123456789")
        response, collector = await open_stream(self.api, "/api/v1/tasks/f/stdout?follow=true")
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "x-execgo-log-size"), "10")
        self.assertEqual(header(response, "x-execgo-offset"), "0")
        self.assertEqual(header(response, "content-type"), "application/octet-stream")
        self.assertIsNone(header(response, "content-length"))
        await self.received(collector, 10)
        big = os.urandom(3 * streams.CHUNK_BYTES + 17)
        self.append("f", big)
        await self.received(collector, 10 + len(big))
        self.assertFalse(collector.ended.called)
        self.append("f", b"last words")
        started = time.monotonic()
        await self.kill("f")
        await collector.ended
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertTrue(collector.complete, collector.reason)
        self.assertEqual(bytes(collector.data), self.log_content("f"))
        self.assertTrue(bytes(collector.data).endswith(b"last words"))
        await self.no_streams_left()

    async def test_follow_ends_without_notification(self) -> None:
        """
        A task that ends with nobody telling the server (its terminal
        record written straight to the store) still ends the stream, by
        the periodic status check.
        """
        await self.submit("quiet")
        _, collector = await open_stream(self.api, "/api/v1/tasks/quiet/stdout?follow=true")
        self.append("quiet", b"abc")
        await self.received(collector, 3)
        self.append("quiet", b"def")
        await self.rt.store.finish("quiet", outcome.cancelled("ended elsewhere"), NOW)
        await collector.ended
        self.assertTrue(collector.complete)
        self.assertEqual(bytes(collector.data), b"abcdef")

    async def test_follow_terminal_task(self) -> None:
        """
        Following a terminal task serves its log from the offset and ends.
        """
        await self.submit("done")
        self.append("done", b"all of it")
        await self.kill("done")
        code, headers, body = await deferToThread(
            raw_get, self.port.getHost().port, "/api/v1/tasks/done/stdout?follow=true&offset=4"
        )
        self.assertEqual((code, body), (200, b"of it"))
        self.assertEqual(headers["x-execgo-offset"], "4")
        self.assertEqual(headers["transfer-encoding"], "chunked")
        self.assertNotIn("content-length", headers)

    async def test_resume_with_offset(self) -> None:
        """
        A client that hangs up and reconnects with the number of bytes it
        got misses nothing and gets nothing twice.
        """
        await self.submit("r")
        first = os.urandom(2 * streams.CHUNK_BYTES)
        self.append("r", first)
        _, collector = await open_stream(self.api, "/api/v1/tasks/r/stdout?follow=true")
        await self.received(collector, streams.CHUNK_BYTES)
        collector.abort()
        await collector.ended
        self.assertFalse(collector.complete)
        got = bytes(collector.data)
        self.append("r", b"more")
        response, again = await open_stream(self.api, f"/api/v1/tasks/r/stdout?follow=true&offset={len(got)}")
        self.assertEqual(header(response, "x-execgo-offset"), str(len(got)))
        await self.received(again, len(first) + 4 - len(got))
        await self.kill("r")
        await again.ended
        self.assertTrue(again.complete)
        self.assertEqual(got + bytes(again.data), first + b"more")

    async def test_disconnect_leaves_nothing(self) -> None:
        """
        A follower that goes away stops its stream: no stream, waiter or
        timer is left (trial fails the test on a leftover delayed call).
        """
        await self.submit("gone")
        _, collector = await open_stream(self.api, "/api/v1/tasks/gone/stdout?follow=true")
        _, events = await open_stream(self.api, "/api/v1/tasks/gone/events?follow=true")
        await poll(reactor, lambda: len(self.rt.runtime.streams) == 2)
        await self.received(events, 1)
        await sleep(reactor, 0.12)
        collector.abort()
        events.abort()
        await collector.ended
        await events.ended
        await self.no_streams_left()

    async def test_stop_cuts_streams(self) -> None:
        """
        When the runtime stops, followers see their response cut short
        (so they know to resume) and nothing is left behind.
        """
        await self.submit("s")
        self.append("s", b"partial")
        _, collector = await open_stream(self.api, "/api/v1/tasks/s/stdout?follow=true")
        await self.received(collector, 7)
        self.rt.runtime.stop_timers()
        await collector.ended
        self.assertFalse(collector.complete)
        self.assertEqual(bytes(collector.data), b"partial")
        await self.no_streams_left()

    async def test_slow_client_is_not_buffered(self) -> None:
        """
        A client that does not read a large log does not make the server
        read it: the process grows by far less than the log, and the
        client still gets every byte once it reads.
        """
        await self.submit("huge")
        size = 256 * 1024 * 1024
        path = os.path.join(self.rt.config.data_dir_abs, "tasks", "huge", "stdout.log")
        os.truncate(path, size)
        before = rss_bytes()
        client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(client.close)
        client.sendall(b"GET /api/v1/tasks/huge/stdout HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await sleep(reactor, 1.0)
        self.assertEqual(len(self.rt.runtime.streams), 1)
        grown = rss_bytes() - before
        self.assertLess(grown, 48 * 1024 * 1024)

        def drain() -> int:
            total = 0
            while True:
                data = client.recv(1 << 20)
                if not data:
                    return total
                total += len(data)

        received = await deferToThread(drain)
        self.assertGreater(received, size)
        self.assertLess(received, size + 1024)
        await self.no_streams_left()


class EventStreamTests(StreamTestsBase):
    """
    C{GET /api/v1/tasks/{id}/events} with C{after_seq} and C{follow}.
    """

    async def events(self, task_id: str, query: str = "") -> List[Dict[str, Any]]:
        """
        The JSON array of C{GET .../events<query>}.
        """
        reply = await self.api.get(f"/api/v1/tasks/{task_id}/events{query}")
        self.assertEqual(reply.code, 200, reply.body)
        return reply.json()

    async def test_after_seq(self) -> None:
        """
        Without follow: the JSON array of the events after C{after_seq};
        bad values are 400; an unknown task is 404.
        """
        await self.submit("e")
        everything = await self.events("e")
        self.assertEqual([e["event_type"] for e in everything], ["submitted", "accepted", "planned"])
        later = await self.events("e", f"?after_seq={everything[0]['seq']}")
        self.assertEqual(later, everything[1:])
        self.assertEqual(await self.events("e", f"?after_seq={everything[-1]['seq']}&follow=false"), [])
        for query, code in [("?after_seq=-1", 400), ("?after_seq=a", 400), ("?follow=1", 400)]:
            reply = await self.api.get(f"/api/v1/tasks/e/events{query}")
            self.assertEqual((reply.code, reply.json()["error"]["code"]), (code, "invalid_input"))
        reply = await self.api.get("/api/v1/tasks/nope/events?follow=true")
        self.assertEqual((reply.code, reply.json()["error"]["code"]), (404, "not_found"))

    async def test_follow(self) -> None:
        """
        Following: NDJSON, the existing events at once, new ones as they
        are appended, and the end right after the terminal event;
        resuming with C{after_seq} gives exactly the rest.
        """
        await self.submit("e")
        response, collector = await open_stream(self.api, "/api/v1/tasks/e/events?follow=true")
        self.assertEqual(header(response, "content-type"), "application/x-ndjson")
        await poll(reactor, lambda: collector.data.count(b"\n") >= 3)
        self.assertFalse(collector.ended.called)
        await self.kill("e")
        await collector.ended
        self.assertTrue(collector.complete)
        text = bytes(collector.data)
        self.assertTrue(text.endswith(b"\n"))
        lines = [json.loads(line) for line in text.splitlines()]
        self.assertEqual(lines, await self.events("e"))
        self.assertEqual(
            [e["event_type"] for e in lines],
            ["submitted", "accepted", "planned", "kill_requested", "cancelled"],
        )
        reply = await self.api.get(f"/api/v1/tasks/e/events?follow=true&after_seq={lines[1]['seq']}")
        self.assertEqual([json.loads(line) for line in reply.body.splitlines()], lines[2:])
        reply = await self.api.get(f"/api/v1/tasks/e/events?follow=true&after_seq={lines[-1]['seq']}")
        self.assertEqual((reply.code, reply.body), (200, b""))
        await self.no_streams_left()


class LiveStreamTests(TestCase):
    """
    The real server with real workloads.
    """

    timeout = 120
    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]

    async def start_server(self) -> ServerProcess:
        """
        A real server on a fresh data directory, stopped by the cleanup.
        """
        server = ServerProcess(reactor, self.mktemp(), ["--termination-grace-ms", "300"])
        self.addCleanup(server.shutdown)
        await server.start()
        self.server = server
        self.api = server.client(self)
        return server

    async def submit(self, task_id: str, script: str) -> None:
        """
        Submit a shell script task.
        """
        reply = await self.api.post(
            "/api/v1/tasks", {"task_id": task_id, "execution": {"kind": "script", "script": script}}
        )
        self.assertEqual(reply.code, 200, reply.body)

    async def test_follow_a_slow_printer(self) -> None:
        """
        The lines of a task that prints slowly arrive while it runs, the
        stream ends when it ends, and the bytes are exactly its log; its
        events stream alongside and end with C{finished}.
        """
        await self.start_server()
        await self.submit("slow", "for i in $(seq 1 20); do echo line$i; sleep 0.05; done")
        _, collector = await open_stream(self.api, "/api/v1/tasks/slow/stdout?follow=true")
        _, events = await open_stream(self.api, "/api/v1/tasks/slow/events?follow=true")
        await collector.ended
        await events.ended
        self.assertTrue(collector.complete and events.complete)
        status = (await self.api.get("/api/v1/tasks/slow")).json()
        self.assertEqual(status["status"], "success")
        expected = "".join(f"line{i}\n" for i in range(1, 21)).encode()
        self.assertEqual(bytes(collector.data), expected)
        self.assertEqual(status["stdout"].encode(), expected)
        finished = _epoch(status["finished_at"])
        self.assertLess(collector.arrivals[0], finished - 0.3)
        self.assertGreater(len(collector.arrivals), 3)
        kinds = [json.loads(line)["event_type"] for line in bytes(events.data).splitlines()]
        self.assertIn("started", kinds)
        self.assertEqual(kinds[-1], "finished")

    async def test_follow_across_a_server_crash(self) -> None:
        """
        A follower of a task that runs across a C{kill -9} and restart of
        the server resumes with its offset on the new server and ends with
        the task, with every byte exactly once.
        """
        server = await self.start_server()
        lines = 100
        await self.submit("crash", f"for i in $(seq 1 {lines}); do echo line$i; sleep 0.05; done")
        _, collector = await open_stream(self.api, "/api/v1/tasks/crash/stdout?follow=true")
        await poll(reactor, lambda: collector.data.count(b"\n") >= 5, timeout=20)
        await server.crash()
        await collector.ended
        self.assertFalse(collector.complete)
        got = bytes(collector.data)
        await server.start(keep_port=True)
        self.api = server.client(self)
        status = (await self.api.get("/api/v1/tasks/crash")).json()
        self.assertEqual(status["status"], "running")
        _, rest = await open_stream(self.api, f"/api/v1/tasks/crash/stdout?follow=true&offset={len(got)}")
        await rest.ended
        self.assertTrue(rest.complete, rest.reason)
        expected = "".join(f"line{i}\n" for i in range(1, lines + 1)).encode()
        self.assertEqual(got + bytes(rest.data), expected)
        self.assertEqual((await self.api.get("/api/v1/tasks/crash")).json()["status"], "success")


def _epoch(stamp: str) -> float:
    """
    Seconds since the epoch of an RFC 3339 C{Z} timestamp.
    """
    return datetime.datetime.fromisoformat(stamp).timestamp()
