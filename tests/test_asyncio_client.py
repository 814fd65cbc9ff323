"""
Tests for L{execgo.client.asyncio_client}: the asyncio client, under a
real asyncio event loop, against a real server (L{RealServerTests}) and
against small asyncio servers that answer badly (L{FaultTests}).

Each test body is an asyncio program run by C{asyncio.run} in a worker
thread, so trial's reactor (which starts and stops the real server) keeps
running beside it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from execgo.client import (
    AsyncioExecgoClient,
    ExecgoClient,
    MalformedResponse,
    ServerError,
    SubmitResult,
    TaskStatus,
    TransportError,
    WaitTimeout,
)
from execgo.client.calls import Calls
from tests.serverfixture import SharedServer, clean_environ, token_server

GRACE = ["--termination-grace-ms", "500"]


def command(program: str, *args: str, **more: Any) -> Dict[str, Any]:
    """
    A submission running C{program} with C{args}, and C{more} fields.
    """
    return {"execution": {"kind": "command", "program": program, "args": list(args)}, **more}


def in_asyncio(program: Callable[[], Awaitable[Any]]) -> "defer.Deferred[Any]":
    """
    Run the asyncio program C{program()} to its end on a fresh event loop
    in a worker thread; its result.
    """
    return threads.deferToThread(lambda: asyncio.run(program()))


class RealServerTests(TestCase):
    """
    The asyncio client against a real server shared by the class.
    """

    timeout = 60
    shared: SharedServer

    async def url(self) -> str:
        """
        The shared server's URL.
        """
        return (await self.shared.get(self)).url

    def run_async(self, body: Callable[[AsyncioExecgoClient], Awaitable[Any]], **client: Any) -> Any:
        """
        Run C{body} with a client of the shared server, under asyncio.
        """

        async def test() -> Any:
            url = await self.url()

            async def program() -> Any:
                return await body(AsyncioExecgoClient(url, **client))

            return await in_asyncio(program)

        return defer.ensureDeferred(test())

    def test_submit_wait_status(self) -> None:
        """
        C{submit}, C{wait} and C{status} answer typed values; C{run} is both.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            submitted = await client.submit(command("/bin/sh", "-c", "echo out; exit 3"))
            final = await client.wait(submitted.task_id)
            self.assertIsInstance(final, TaskStatus)
            self.assertEqual((final.status, final.exit_code), ("failed", 3))
            self.assertEqual(final.error.code if final.error else None, "exit_nonzero")
            self.assertEqual((await client.status(submitted.task_id)).stdout, "out\n")
            ran = await client.run(command("/bin/echo", "hi"), idempotency_key=f"k-{uuid.uuid4()}")
            self.assertEqual((ran.status, ran.stdout), ("success", "hi\n"))

        return self.run_async(body)

    def test_submit_batch(self) -> None:
        """
        C{submit_batch} is an asyncio C{Task} giving, per task in order,
        the L{SubmitResult} or the very L{ServerError} C{submit} raises for
        it, in its place; a batch refused whole raises; the accepted tasks
        run.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            taken, fresh = f"aio-{uuid.uuid4()}", f"aio-{uuid.uuid4()}"
            await client.submit(command("/bin/true", task_id=taken))
            again, invalid = command("/bin/true", task_id=taken), {"execution": {"kind": "command"}}
            call = client.submit_batch([command("/bin/echo", "batched", task_id=fresh), again, invalid])
            self.assertIsInstance(call, asyncio.Task)
            outcomes = await call
            self.assertEqual(outcomes[0], SubmitResult(fresh, fresh, "accepted"))
            for outcome, request in zip(outcomes[1:], (again, invalid)):
                with self.assertRaises(ServerError) as raised:
                    await client.submit(request)
                assert isinstance(outcome, ServerError)
                self.assertEqual(
                    (outcome.status, outcome.code, outcome.message, outcome.body),
                    (raised.exception.status, raised.exception.code, raised.exception.message, raised.exception.body),
                )
            with self.assertRaises(ServerError) as refused:
                await client.submit_batch([command("/bin/true")] * 1001)
            self.assertEqual((refused.exception.status, refused.exception.code), (400, "invalid_input"))
            self.assertIn("at most 1000", refused.exception.message)
            final = await client.wait(fresh)
            self.assertEqual((final.status, final.stdout), ("success", "batched\n"))
            await client.wait(taken)

        return self.run_async(body)

    def test_calls_are_tasks(self) -> None:
        """
        A call starts when made, as an asyncio C{Task} of the running loop.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            call = client.healthz()
            self.assertIsInstance(call, asyncio.Task)
            self.assertEqual((await call).status, "ok")

        return self.run_async(body)

    def test_log_follows_live(self) -> None:
        """
        C{iter_log} hands over the output while the task still runs, and
        ends once it has ended and every byte is out.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            script = "echo one; sleep 1; echo two; echo err >&2"
            task_id = (await client.submit(command("/bin/sh", "-c", script))).task_id
            chunks: List[bytes] = []
            status_at_first: Optional[str] = None
            async for chunk in client.iter_log(task_id):
                if not chunks:
                    status_at_first = (await client.status(task_id)).status
                chunks.append(chunk)
            self.assertEqual(status_at_first, "running")
            self.assertEqual(b"".join(chunks), b"one\ntwo\n")
            self.assertEqual((await client.read_log(task_id, "stderr")), b"err\n")
            self.assertEqual(await client.read_log(task_id, "stdout", offset=4), b"two\n")
            reached = await client.stream_log(task_id, "stdout", offset=2, follow=False)
            self.assertEqual(reached, 8)

        return self.run_async(body)

    def test_events(self) -> None:
        """
        C{iter_events} yields the event log in order, to the terminal event;
        C{follow_events} waits for an C{async} consumer before reading on.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            task_id = (await client.submit(command("/bin/true"))).task_id
            events = [event async for event in client.iter_events(task_id)]
            self.assertEqual(events[0].event_type, "submitted")
            self.assertEqual(events[-1].event_type, "finished")
            seqs = [event.seq for event in events]
            self.assertEqual(seqs, sorted(seqs))
            seen: List[int] = []

            async def consume(event: Any) -> None:
                await asyncio.sleep(0.01)
                seen.append(event.seq)

            last = await client.follow_events(task_id, after_seq=seqs[1], on_event=consume)
            self.assertEqual(seen, seqs[2:])
            self.assertEqual(last.event_type if last else None, "finished")
            self.assertEqual(await client.events(task_id), events)

        return self.run_async(body)

    def test_kill_owner_rules(self) -> None:
        """
        A kill with the wrong owner is refused with the server's code; with
        the task's owner it cancels the task.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            request = command("/bin/sleep", "30", control_context={"owner": "alice"})
            task_id = (await client.submit(request)).task_id
            with self.assertRaises(ServerError) as refused:
                await client.kill(task_id, owner="mallory")
            self.assertEqual((refused.exception.status, refused.exception.code), (403, "permission_denied"))
            await client.kill(task_id, owner="alice")
            self.assertEqual((await client.wait(task_id, timeout_ms=20_000)).status, "cancelled")

        return self.run_async(body)

    def test_wait_timeout(self) -> None:
        """
        C{wait} gives up with L{WaitTimeout}, carrying the last status.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            task_id = (await client.submit(command("/bin/sleep", "30"))).task_id
            with self.assertRaises(WaitTimeout) as timed_out:
                await client.wait(task_id, timeout_ms=300)
            self.assertIn(timed_out.exception.last_status.status, ("accepted", "running"))
            await client.kill(task_id)
            await client.wait(task_id)

        return self.run_async(body, long_poll_ms=200)

    def test_list_and_pages(self) -> None:
        """
        C{list_tasks} filters and pages; C{iter_tasks} walks every page.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            run = str(uuid.uuid4())
            labels = {"run": run}
            ids = []
            for _ in range(3):
                submitted = await client.submit(command("/bin/true", control_context={"labels": labels}))
                ids.append(submitted.task_id)
            page = await client.list_tasks(labels=labels, limit=2)
            self.assertEqual(len(page.tasks), 2)
            self.assertIsNotNone(page.next_cursor)
            listed = [task.task_id async for task in client.iter_tasks(labels=labels, limit=2)]
            self.assertEqual(sorted(listed), sorted(ids))
            for task_id in ids:
                await client.wait(task_id)
            self.assertEqual((await client.list_tasks(labels={"run": "other"})).tasks, ())

        return self.run_async(body)

    def test_runtime_views(self) -> None:
        """
        The runtime-wide calls answer their typed views.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            self.assertEqual((await client.readyz()).status, "ready")
            self.assertTrue((await client.runtime_info()).version)
            self.assertIsNotNone((await client.capabilities()).raw)
            self.assertGreater((await client.config()).max_running_tasks, 0)
            self.assertIn("capacity", (await client.resources()).raw)
            self.assertIn("execgo_", await client.metrics())
            self.assertIn("paths", await client.openapi())
            self.assertEqual(len(await client.cluster()), 1)

        return self.run_async(body)

    def test_errors(self) -> None:
        """
        A non-2xx answer is a L{ServerError} with the envelope's code.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            with self.assertRaises(ServerError) as missing:
                await client.status("no-such-task")
            self.assertEqual((missing.exception.status, missing.exception.code), (404, "not_found"))
            with self.assertRaises(ServerError) as invalid:
                await client.submit({"execution": {"kind": "command"}})
            self.assertEqual(invalid.exception.code, "invalid_input")
            with self.assertRaises(ServerError) as no_log:
                await client.stream_log("no-such-task")
            self.assertEqual(no_log.exception.code, "not_found")

        return self.run_async(body)

    def test_leave_early(self) -> None:
        """
        Leaving a stream early (C{aclose}) or cancelling a call stops it:
        the iteration is over and the task goes on.
        """

        async def body(client: AsyncioExecgoClient) -> None:
            task_id = (await client.submit(command("/bin/sh", "-c", "echo one; exec sleep 30"))).task_id
            lines = client.iter_log(task_id)
            self.assertEqual(await lines.__anext__(), b"one\n")
            pending = asyncio.ensure_future(lines.__anext__())
            await asyncio.sleep(0.05)
            await lines.aclose()
            with self.assertRaises(StopAsyncIteration):
                await pending
            waiting = client.wait(task_id)
            await asyncio.sleep(0.05)
            waiting.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await waiting
            self.assertEqual((await client.status(task_id)).status, "running")
            await client.kill(task_id)
            await client.wait(task_id)

        return self.run_async(body)


RealServerTests.shared = SharedServer(RealServerTests, GRACE)


class TokenTests(TestCase):
    """
    The asyncio client with bearer tokens.
    """

    timeout = 60

    async def test_token(self) -> None:
        """
        The token is sent as the API expects: with it the tenant's tasks are
        served, without it the answer is a 401.
        """
        server = await token_server(self, "t-alpha tenant=alpha owner=ann\n", GRACE)

        async def program() -> Tuple[List[str], int, Tuple[int, Optional[str]]]:
            client = AsyncioExecgoClient(server.url, token="t-alpha")
            final = await client.run(command("/bin/true", control_context={"tenant": "beta"}))
            alpha = [task.task_id for task in (await client.list_tasks(tenant="alpha")).tasks]
            beta = (await client.list_tasks(tenant="beta")).tasks
            with self.assertRaises(ServerError) as refused:
                await AsyncioExecgoClient(server.url).list_tasks()
            self.assertEqual(alpha, [final.task_id])
            return alpha, len(beta), (refused.exception.status, refused.exception.code)

        _, beta, code = await in_asyncio(program)
        self.assertEqual((beta, code), (0, (401, "permission_denied")))


# -- answers a real server never gives


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> Tuple[asyncio.AbstractServer, str]:
    """
    A server on a free loopback port answering each connection with
    C{handler}; it and its URL.
    """
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_request(reader: asyncio.StreamReader) -> List[str]:
    """
    A request's head, a line each (the body, if any, is left unread).
    """
    lines = []
    while True:
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return lines
        lines.append(line)


def answer(status: str, body: bytes, headers: Tuple[str, ...] = ()) -> bytes:
    """
    A whole HTTP/1.1 answer with its length.
    """
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class FaultTests(SynchronousTestCase):
    """
    The asyncio transport against answers that are wrong, slow or cut off.
    """

    def fault(self, handler: Handler, body: Callable[[AsyncioExecgoClient, List[List[str]]], Awaitable[Any]],
              **client: Any) -> Any:
        """
        Run C{body} with a client of a server answering with C{handler}; the
        request heads the server saw are passed along.
        """
        seen: List[List[str]] = []

        async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_request(reader))
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        async def program() -> Any:
            server, url = await serve(recording)
            async with server:
                return await body(AsyncioExecgoClient(url, **client), seen)

        return asyncio.run(program())

    def test_refused(self) -> None:
        """
        Nothing listening is a L{TransportError} naming the request.
        """

        async def program() -> None:
            server, url = await serve(lambda r, w: asyncio.sleep(0))
            server.close()
            await server.wait_closed()
            with self.assertRaisesRegex(TransportError, "GET .*/healthz failed: .*Connect"):
                await AsyncioExecgoClient(url).healthz()

        asyncio.run(program())

    def test_timeout(self) -> None:
        """
        A server that never answers fails the request after its timeout.
        """

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()

        async def body(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            with self.assertRaisesRegex(TransportError, "timed out after 0.2 s"):
                await client.healthz()

        self.fault(silent, body, request_timeout=0.2)

    def test_body_bounded(self) -> None:
        """
        A body over C{max_body_bytes} is refused, announced or not.
        """

        async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(answer("200 OK", b"x" * 100))

        async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n")

        async def body(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            with self.assertRaisesRegex(TransportError, "exceeds the limit of 10 bytes"):
                await client.metrics()

        self.fault(big, body, max_body_bytes=10)
        self.fault(chunked, body, max_body_bytes=10)

    def test_head_bounded(self) -> None:
        """
        A response head over 64 KiB is refused.
        """

        async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 1000 + b"\r\n")
            for _ in range(100):
                writer.write(b"X-Pad: " + b"p" * 1000 + b"\r\n")
            await writer.drain()

        async def body(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            with self.assertRaisesRegex(TransportError, "head exceeds"):
                await client.healthz()

        self.fault(endless, body)

    def test_malformed(self) -> None:
        """
        A 2xx answer that is not JSON is a L{MalformedResponse}; a non-HTTP
        answer a L{TransportError}.
        """

        async def text(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(answer("200 OK", b"not json"))

        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")

        async def malformed(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            with self.assertRaises(MalformedResponse):
                await client.healthz()

        async def not_http(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            with self.assertRaisesRegex(TransportError, "not an HTTP/1.x response"):
                await client.healthz()

        self.fault(text, malformed)
        self.fault(garbage, not_http)

    def test_cut_short(self) -> None:
        """
        A whole answer cut short is a L{TransportError}.
        """

        async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"status\":")

        async def body(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            with self.assertRaisesRegex(TransportError, "reading the response failed"):
                await client.healthz()

        self.fault(short, body)

    def test_error_envelope(self) -> None:
        """
        A non-2xx answer's envelope gives the L{ServerError} its code and
        message, for a stream as for a whole answer.
        """
        envelope = json.dumps({"error": {"code": "unavailable", "message": "the runtime is stopping"}}).encode()

        async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(answer("503 Service Unavailable", envelope))

        async def body(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            for call in (client.healthz(), client.stream_log("t")):
                with self.assertRaises(ServerError) as refused:
                    await call
                error = refused.exception
                self.assertEqual(
                    (error.status, error.code, error.message), (503, "unavailable", "the runtime is stopping")
                )

        self.fault(refuse, body, stream_retries=0)

    def test_stream_resumed(self) -> None:
        """
        A log stream that breaks off is opened again from the bytes
        received, so nothing is missed or seen twice.
        """
        parts = [b"abc", b"def"]

        async def log(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            part = parts.pop(0)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            if parts:
                await writer.drain()
                return
            writer.write(b"0\r\n\r\n")

        async def body(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            chunks = [chunk async for chunk in client.iter_log("t1")]
            self.assertEqual(b"".join(chunks), b"abcdef")
            targets = [head[0] for head in seen]
            self.assertEqual(
                targets,
                [
                    "GET /api/v1/tasks/t1/stdout?offset=0&follow=true HTTP/1.1",
                    "GET /api/v1/tasks/t1/stdout?offset=3&follow=true HTTP/1.1",
                ],
            )

        self.fault(log, body)

    def test_headers(self) -> None:
        """
        The request carries the token, the owner and a Host; a line break
        in a value cannot add a header.
        """

        async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(answer("200 OK", json.dumps({"task_id": "t", "handle_id": "t", "status": "running"}).encode()))

        async def body(client: AsyncioExecgoClient, seen: List[List[str]]) -> None:
            await client.kill("t/1", owner="ann\r\nX-Evil: 1")
            head = seen[0]
            self.assertEqual(head[0], "POST /api/v1/tasks/t%2F1/kill HTTP/1.1")
            self.assertIn("Authorization: Bearer tok", head)
            self.assertIn("x-execgo-owner: ann  X-Evil: 1", head)
            self.assertFalse([line for line in head if line.startswith("X-Evil")])
            self.assertIn("Content-Length: 0", head)
            self.assertTrue([line for line in head if line.startswith("Host: 127.0.0.1:")])

        self.fault(ok, body, token="tok")


class SharedTests(SynchronousTestCase):
    """
    One implementation behind both clients.
    """

    def test_same_calls(self) -> None:
        """
        Neither client defines a call of its own: both are L{Calls}.
        """
        for name in dir(Calls):
            if not name.startswith("_"):
                self.assertIs(getattr(AsyncioExecgoClient, name), getattr(Calls, name), name)
                self.assertIs(getattr(ExecgoClient, name), getattr(Calls, name), name)
        self.assertEqual(set(vars(AsyncioExecgoClient)) - {"__module__", "__doc__", "__init__"}, set())
        self.assertEqual(set(vars(ExecgoClient)) - {"__module__", "__doc__", "__init__"}, set())

    def test_no_twisted(self) -> None:
        """
        An asyncio program using the client loads no Twisted.
        """
        code = (
            "import sys; from execgo.client import AsyncioExecgoClient; "
            "AsyncioExecgoClient('http://127.0.0.1:1'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'treq', 'klein')))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=clean_environ()
        ).stdout
        self.assertEqual(out.strip(), "[]")
