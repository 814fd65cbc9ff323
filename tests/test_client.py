"""
Tests for L{execgo.client}.

The client runs end to end against the real Klein resource of an
in-process runtime (L{tests.apifixture}: the real L{Runtime} and store,
a supervisor link that never launches, so tasks stay queued until killed),
reached in memory through C{treq.testing.StubTreq} behind L{Recorder},
which notes each request the client sent.  Those tests run on the real
reactor, as the runtime's store does.

L{FaultyServer} stands in only for what the real server cannot do:
requests that hang, bodies that are not what the contract says, streams
that break off, older servers (without long-poll or event streams), and
long-polls held on the test's clock rather than the reactor's.  Those
tests run on a L{Clock}; no test sleeps, and each ends with no delayed
call left.  The no-I/O core has its own tests in
L{tests.test_client_protocol}.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from execgo.client import (
    ActiveReservation,
    CapabilitySnapshot,
    ClientError,
    ExecgoClient,
    Health,
    MalformedResponse,
    Platform,
    ResourceCapacity,
    ResourcesView,
    RuntimeInfo,
    RuntimeSettings,
    ServerError,
    SubmitResult,
    TaskError,
    TaskEvent,
    TaskPage,
    TaskStatus,
    TenantUsage,
    TransportError,
    WaitTimeout,
)
from execgo.core.config import RuntimeConfig
from execgo.core.models import ExecutionSpec, SubmitRequest
from execgo.server.web.auth import Tokens, parse_tokens
from tests.apifixture import InProcessRuntime, tmp_data_dir

BASE = "http://runtime.test"
COMMAND = {"kind": "command", "program": "/bin/true"}
REQUEST = {"execution": COMMAND}


def status_of(task_id: str, status: str, **extra: Any) -> Dict[str, Any]:
    """
    A minimal C{TaskStatusResponse} for C{task_id} in state C{status}.
    """
    value: Dict[str, Any] = {
        "task_id": task_id,
        "handle_id": task_id,
        "status": status,
        "stdout": "",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
    }
    value.update(extra)
    return value


def event_line(seq: int, event_type: str) -> bytes:
    """
    One NDJSON line of task C{t1}'s event stream.
    """
    event = {"seq": seq, "task_id": "t1", "event_type": event_type, "timestamp": "2026-04-23T10:00:00Z"}
    return json.dumps(event).encode() + b"\n"


# -- the real server


class Recorder(Resource):
    """
    The real API resource, optionally under a path prefix, noting the URI
    and headers of every request it serves.

    @ivar uris: the request URI (path and query) of every request.
    @ivar headers: the request headers of every request.
    """

    isLeaf = True

    def __init__(self, api: Resource, prefix: bytes = b"") -> None:
        super().__init__()
        self.api = api
        self.prefix = prefix
        self.uris: List[bytes] = []
        self.headers: List[Dict[bytes, Sequence[bytes]]] = []

    def render(self, request: Request) -> Any:
        """
        Note the request, then hand it to the API (mounted at the prefix).
        """
        self.uris.append(request.uri)
        self.headers.append(dict(request.requestHeaders.getAllRawHeaders()))
        if self.prefix:
            postpath = request.postpath or []
            if postpath[:1] != [self.prefix]:
                return NoResource().render(request)
            request.prepath = (request.prepath or []) + postpath[:1]
            request.postpath = postpath[1:]
        return self.api.render(request)


class RealServerTestCase(TestCase):
    """
    A client of a fresh in-process runtime, on the real reactor.

    @cvar prefix: the path prefix the API is mounted under.
    @cvar tokens: the token file of the runtime, if any.
    """

    timeout = 30
    prefix = b""
    tokens: Optional[str] = None

    async def start(self, config: Optional[Dict[str, Any]] = None, **client: Any) -> InProcessRuntime:
        """
        Start the runtime and make L{client} (with C{client} keywords) for it.
        """
        data_dir = tmp_data_dir(self)
        rt = InProcessRuntime(
            data_dir,
            RuntimeConfig(data_dir=data_dir, **(config or {})),
            tokens=None if self.tokens is None else Tokens(parse_tokens(self.tokens)),
        )
        await rt.start()
        self.addCleanup(lambda: defer.ensureDeferred(rt.stop()))
        self.rt = rt
        self.recorder = Recorder(rt.api.resource(), self.prefix)
        self.stub = StubTreq(self.recorder)
        self.client = self.make_client(**client)
        return rt

    def make_client(self, **keywords: Any) -> ExecgoClient:
        """
        Another client of the same runtime.
        """
        from twisted.internet import reactor

        base = BASE + ("/" + self.prefix.decode() + "//" if self.prefix else "")
        return ExecgoClient(base, self.stub, reactor, **keywords)

    async def until(self, check: Callable[[], Any], what: str = "condition") -> None:
        """
        Pump the in-memory connection until C{check()} is true.
        """
        from twisted.internet import reactor

        for _ in range(5000):
            self.stub.flush()
            if check():
                return
            await deferLater(reactor, 0.001, lambda: None)
        raise AssertionError(f"timed out waiting for {what}")

    async def call(self, d: "Deferred[Any]") -> Any:
        """
        The result of a client call, pumping the connection until it fires.
        """
        done: List[bool] = []

        def note(result: Any) -> Any:
            done.append(True)
            return result

        d.addBoth(note)
        await self.until(lambda: done, "an answer")
        return await d

    async def fails(self, d: "Deferred[Any]", kind: Type[BaseException]) -> Any:
        """
        The exception a client call failed with, which must be a C{kind}.
        """
        try:
            await self.call(d)
        except kind as e:
            return e
        raise self.failureException(f"{kind.__name__} not raised")

    async def submit(self, **request: Any) -> str:
        """
        Submit C{REQUEST} updated with C{request}; the new task's id.
        """
        return (await self.call(self.client.submit({**REQUEST, **request}))).task_id

    async def log_path(self, task_id: str, stream: str = "stdout") -> str:
        """
        The file of a task's log, as its status names it.
        """
        status = await self.call(self.client.status(task_id))
        return str(status.raw["artifacts"][f"{stream}_path"])

    def paths(self) -> List[bytes]:
        """
        The URIs the client asked for.
        """
        return list(self.recorder.uris)


def append(path: str, data: bytes) -> None:
    """
    Write C{data} at the end of a log, as a workload would.
    """
    with open(path, "ab") as f:
        f.write(data)


class TaskTests(RealServerTestCase):
    """
    The per-task calls.
    """

    async def test_submit_mapping(self) -> None:
        """
        A mapping is POSTed as JSON; the answer is a L{SubmitResult}; the
        runtime stored the request.
        """
        await self.start()
        result = await self.call(self.client.submit({"task_id": "t1", "execution": COMMAND}))
        self.assertEqual(result, SubmitResult("t1", "t1", "accepted"))
        self.assertEqual(self.paths(), [b"/api/v1/tasks"])
        self.assertEqual(self.recorder.headers[0][b"Content-Type"], [b"application/json"])
        status = await self.call(self.client.status("t1"))
        with open(status.raw["artifacts"]["request_path"], encoding="utf-8") as f:
            self.assertEqual(json.load(f)["execution"]["program"], "/bin/true")

    async def test_submit_model(self) -> None:
        """
        A L{SubmitRequest} is sent in its wire form, in raw UTF-8.
        """
        await self.start()
        request = SubmitRequest(
            execution=ExecutionSpec(kind="command", program="/bin/echo", args=("\u00e9",)), task_id="t2"
        )
        self.assertEqual((await self.call(self.client.submit(request))).task_id, "t2")
        status = await self.call(self.client.status("t2"))
        with open(status.raw["artifacts"]["request_path"], encoding="utf-8") as f:
            self.assertEqual(json.load(f)["execution"]["args"], ["\u00e9"])

    async def test_submit_conflict(self) -> None:
        """
        The runtime's error envelope becomes a L{ServerError} with its
        status, code and message.
        """
        await self.start()
        await self.submit(task_id="t1")
        error = await self.fails(self.client.submit({"task_id": "t1", **REQUEST}), ServerError)
        self.assertEqual((error.status, error.code), (409, "conflict"))
        self.assertIn("t1", error.message)
        self.assertIsInstance(error, ClientError)
        self.assertEqual(str(error), f"HTTP 409 conflict: {error.message}")

    async def test_invalid_request(self) -> None:
        """
        A request the runtime rejects is a L{ServerError} with code
        C{invalid_input}.
        """
        await self.start()
        error = await self.fails(self.client.submit({"execution": {"kind": "nope"}}), ServerError)
        self.assertEqual((error.status, error.code), (400, "invalid_input"))

    async def test_submit_batch(self) -> None:
        """
        C{submit_batch} posts one batch (mappings and models alike) and
        returns, per task in order, the L{SubmitResult} or the very
        L{ServerError} C{submit} raises for it, in its place; a batch
        refused whole raises.
        """
        await self.start()
        await self.submit(task_id="taken")
        model = SubmitRequest(
            execution=ExecutionSpec(kind="command", program="/bin/echo", args=("\u00e9",)), task_id="b2"
        )
        taken, invalid = {"task_id": "taken", **REQUEST}, {"execution": {"kind": "nope"}}
        requests = iter([{"task_id": "b1", **REQUEST}, model, taken, invalid])
        outcomes = await self.call(self.client.submit_batch(requests))
        self.assertEqual(self.paths()[-1], b"/api/v1/tasks/batch")
        self.assertEqual(self.recorder.headers[-1][b"Content-Type"], [b"application/json"])
        self.assertEqual(outcomes[:2], [SubmitResult("b1", "b1", "accepted"), SubmitResult("b2", "b2", "accepted")])
        for outcome, request in zip(outcomes[2:], (taken, invalid)):
            raised = await self.fails(self.client.submit(request), ServerError)
            assert isinstance(outcome, ServerError)
            self.assertEqual(
                (outcome.status, outcome.code, outcome.message, outcome.body, str(outcome)),
                (raised.status, raised.code, raised.message, raised.body, str(raised)),
            )
        codes = [getattr(outcome, "code", None) for outcome in outcomes]
        self.assertEqual(codes, [None, None, "conflict", "invalid_input"])
        status = await self.call(self.client.status("b2"))
        with open(status.raw["artifacts"]["request_path"], encoding="utf-8") as f:
            self.assertEqual(json.load(f)["execution"]["args"], ["\u00e9"])
        error = await self.fails(self.client.submit_batch([]), ServerError)
        self.assertEqual((error.status, error.code), (400, "invalid_input"))

    async def test_status(self) -> None:
        """
        C{status} returns a L{TaskStatus} with the main fields and the whole
        snapshot the runtime sent.
        """
        await self.start()
        task_id = await self.submit(task_id="t1")
        status = await self.call(self.client.status(task_id))
        self.assertEqual((status.task_id, status.handle_id, status.status, status.terminal),
                         ("t1", "t1", "accepted", False))
        self.assertEqual((status.stdout, status.exit_code, status.error), ("", None, None))
        self.assertEqual(status.raw["artifacts"]["task_dir"], os.path.join(self.rt.config.data_dir_abs, "tasks", "t1"))
        self.assertEqual(self.paths()[-1], b"/api/v1/tasks/t1")

    async def test_status_unknown(self) -> None:
        """
        An unknown task is a L{ServerError} with code C{not_found}.
        """
        await self.start()
        error = await self.fails(self.client.status("nope"), ServerError)
        self.assertEqual((error.status, error.code), (404, "not_found"))

    async def test_task_id_quoted(self) -> None:
        """
        A task id is one path segment: C{/} and spaces are percent-encoded.
        """
        await self.start()
        error = await self.fails(self.client.status("a/b c"), ServerError)
        self.assertEqual(error.status, 404)
        self.assertEqual(self.paths(), [b"/api/v1/tasks/a%2Fb%20c"])

    async def test_events(self) -> None:
        """
        C{events} returns the log as L{TaskEvent}s in C{seq} order, after
        C{after_seq} when given.
        """
        await self.start()
        task_id = await self.submit()
        events = await self.call(self.client.events(task_id))
        self.assertEqual([event.seq for event in events], list(range(1, len(events) + 1)))
        self.assertEqual(events[0].event_type, "submitted")
        self.assertTrue(all(isinstance(event, TaskEvent) and event.task_id == task_id for event in events))
        later = await self.call(self.client.events(task_id, after_seq=1))
        self.assertEqual(later, events[1:])
        self.assertEqual(self.paths()[-2:], [f"/api/v1/tasks/{task_id}/events".encode(),
                                             f"/api/v1/tasks/{task_id}/events?after_seq=1".encode()])

    async def test_kill(self) -> None:
        """
        C{kill} sends the trimmed owner and returns the snapshot: the task
        is cancelled.
        """
        await self.start()
        task_id = await self.submit(control_context={"owner": "alice"})
        status = await self.call(self.client.kill(task_id, owner="  alice "))
        self.assertEqual((status.status, status.terminal, status.error.code), ("cancelled", True, "cancelled"))
        self.assertIsInstance(status.error, TaskError)
        self.assertEqual(self.recorder.headers[-1][b"X-Execgo-Owner"], [b"alice"])

    async def test_kill_owner_mismatch(self) -> None:
        """
        A blank owner sends no header, and the runtime's refusal is a
        L{ServerError} with code C{permission_denied}.
        """
        await self.start()
        task_id = await self.submit(control_context={"owner": "alice"})
        error = await self.fails(self.client.kill(task_id, owner="  "), ServerError)
        self.assertEqual((error.status, error.code), (403, "permission_denied"))
        self.assertNotIn(b"X-Execgo-Owner", self.recorder.headers[-1])

    async def test_body_limit(self) -> None:
        """
        An answer larger than C{max_body_bytes} is a L{TransportError}.
        """
        await self.start(max_body_bytes=100)
        task_id = await self.call(self.make_client().submit(REQUEST))
        error = await self.fails(self.client.status(task_id.task_id), TransportError)
        self.assertIn("exceeds the limit of 100 bytes", str(error))


class WaitTests(RealServerTestCase):
    """
    C{wait} and C{run} against the runtime's long-poll.
    """

    async def test_wait_long_polls(self) -> None:
        """
        The server holds the wait: a queued task times out after about the
        timeout without polling (the poll interval is far longer), and a
        kill answers a wait in flight at once.
        """
        from twisted.internet import reactor

        await self.start()
        task_id = await self.submit()
        before = reactor.seconds()
        error = await self.fails(self.client.wait(task_id, timeout_ms=300, poll_interval_ms=60_000), WaitTimeout)
        self.assertEqual((error.task_id, error.last_status.status), (task_id, "accepted"))
        self.assertGreaterEqual(reactor.seconds() - before, 0.25)
        [held] = [uri for uri in self.paths() if b"wait_ms=" in uri]
        self.assertLessEqual(250, int(held.split(b"wait_ms=")[1]))
        waiting = self.client.wait(task_id, poll_interval_ms=60_000)
        await self.until(lambda: self.paths()[-1].endswith(b"wait_ms=30000"), "the long-poll")
        await self.call(self.client.kill(task_id))
        final = await self.call(waiting)
        self.assertEqual((final.status, final.error.code), ("cancelled", "cancelled"))

    async def test_wait_polls(self) -> None:
        """
        With C{long_poll_ms=0} the client asks with C{wait_ms=0} and waits
        the poll interval between requests.
        """
        await self.start(long_poll_ms=0)
        task_id = await self.submit()
        waiting = self.client.wait(task_id, poll_interval_ms=20)
        await self.until(lambda: len(self.paths()) >= 3, "two polls")
        await self.call(self.client.kill(task_id))
        self.assertEqual((await self.call(waiting)).status, "cancelled")
        polls = [uri for uri in self.paths() if b"wait_ms" in uri]
        self.assertEqual(set(polls), {f"/api/v1/tasks/{task_id}?wait_ms=0".encode()})

    async def test_wait_zero_timeout(self) -> None:
        """
        A zero timeout gives up after the first non-terminal answer.
        """
        await self.start()
        task_id = await self.submit()
        await self.fails(self.client.wait(task_id, timeout_ms=0), WaitTimeout)
        self.assertEqual(self.paths()[1:], [f"/api/v1/tasks/{task_id}?wait_ms=0".encode()])

    async def test_wait_terminal(self) -> None:
        """
        A task that is already terminal is answered by the first request.
        """
        await self.start()
        task_id = await self.submit()
        await self.call(self.client.kill(task_id))
        final = await self.call(self.client.wait(task_id, timeout_ms=10_000))
        self.assertEqual(final.status, "cancelled")
        self.assertEqual(len([uri for uri in self.paths() if b"wait_ms" in uri]), 1)

    async def test_run(self) -> None:
        """
        C{run} submits, then waits for the returned task, with its
        idempotency key passed to the submission.
        """
        await self.start()
        first = await self.call(self.client.submit(REQUEST, idempotency_key="k-2"))
        error = await self.fails(self.client.run(REQUEST, timeout_ms=0, idempotency_key="k-2"), WaitTimeout)
        self.assertEqual(error.task_id, first.task_id)
        self.assertEqual(self.recorder.headers[1][b"Idempotency-Key"], [b"k-2"])
        running = self.client.run(REQUEST)
        await self.until(lambda: b"wait_ms=30000" in self.paths()[-1], "the wait")
        task_id = self.paths()[-1].split(b"/")[-1].split(b"?")[0].decode()
        await self.call(self.client.kill(task_id))
        self.assertEqual((await self.call(running)).task_id, task_id)

    async def test_cancel_wait(self) -> None:
        """
        Cancelling a wait stops it; nothing is left on the reactor (trial
        would report a pending call).
        """
        await self.start()
        task_id = await self.submit()
        waiting = self.client.wait(task_id)
        await self.until(lambda: b"wait_ms" in self.paths()[-1], "the wait")
        waiting.cancel()
        self.failureResultOf(waiting)


class ListTests(RealServerTestCase):
    """
    C{list_tasks} and C{iter_tasks}.
    """

    async def test_page(self) -> None:
        """
        The filters become query parameters; the page is a L{TaskPage} of
        L{TaskStatus}es (without output) and its cursor.
        """
        await self.start()
        for task_id, tenant, labels in (("a", "team a", {"env": "prod", "k": "v:w"}),
                                        ("b", "team a", {"env": "prod", "k": "v:w"}),
                                        ("c", "team b", {"env": "prod", "k": "v:w"}),
                                        ("d", "team a", {"env": "test"})):
            await self.submit(task_id=task_id, control_context={"tenant": tenant, "owner": "bob", "labels": labels})
        page = await self.call(self.client.list_tasks(
            status="accepted", tenant="team a", owner="bob", labels={"env": "prod", "k": "v:w"}, limit=1,
        ))
        self.assertIsInstance(page, TaskPage)
        self.assertEqual([task.task_id for task in page.tasks], ["b"])
        self.assertEqual(page.tasks[0].stdout, "")
        self.assertNotIn("stdout", page.tasks[0].raw)
        self.assertEqual(
            self.paths()[-1],
            b"/api/v1/tasks?status=accepted&tenant=team%20a&owner=bob&label=env%3Aprod&label=k%3Av%3Aw&limit=1",
        )
        last = await self.call(self.client.list_tasks(tenant="team a", labels={"env": "prod"}, cursor=page.next_cursor))
        self.assertEqual(([task.task_id for task in last.tasks], last.next_cursor), (["a"], None))

    async def test_iter_tasks(self) -> None:
        """
        C{iter_tasks} follows C{next_cursor} to the last page, newest first.
        """
        await self.start()
        for task_id in ("x", "y", "z"):
            await self.submit(task_id=task_id)

        async def collect() -> List[str]:
            return [task.task_id async for task in self.client.iter_tasks(limit=2)]

        self.assertEqual(await self.call(Deferred.fromCoroutine(collect())), ["z", "y", "x"])
        self.assertEqual(self.paths()[-2], b"/api/v1/tasks?limit=2")
        self.assertTrue(self.paths()[-1].startswith(b"/api/v1/tasks?limit=2&cursor="))


class SubmitOptionsTests(RealServerTestCase):
    """
    Idempotency keys.
    """

    async def test_idempotent_retry(self) -> None:
        """
        The key is sent as C{Idempotency-Key}: a retry gets the first answer
        and creates nothing; the key with another request is a 409.
        """
        await self.start()
        first = await self.call(self.client.submit(REQUEST, idempotency_key="k-1"))
        again = await self.call(self.client.submit(REQUEST, idempotency_key="k-1"))
        self.assertEqual(first, again)
        self.assertEqual(self.recorder.headers[0][b"Idempotency-Key"], [b"k-1"])
        page = await self.call(self.client.list_tasks())
        self.assertEqual([task.task_id for task in page.tasks], [first.task_id])
        other = {"execution": {"kind": "command", "program": "/bin/false"}}
        error = await self.fails(self.client.submit(other, idempotency_key="k-1"), ServerError)
        self.assertEqual((error.status, error.code), (409, "conflict"))


class TokenTests(RealServerTestCase):
    """
    Bearer tokens, against a runtime that requires them.
    """

    tokens = "s3cret tenant=a\n"

    async def test_token(self) -> None:
        """
        C{token} is sent as a bearer token on every request, streams too;
        without it the runtime's 401 is a L{ServerError}.
        """
        await self.start()
        error = await self.fails(self.client.list_tasks(), ServerError)
        self.assertEqual((error.status, error.code), (401, "permission_denied"))
        client = self.make_client(token="s3cret")
        submitted = await self.call(client.submit(REQUEST))
        self.assertEqual(await self.call(client.stream_log(submitted.task_id, follow=False)), 0)
        self.assertEqual(
            [headers.get(b"Authorization") for headers in self.recorder.headers],
            [None, [b"Bearer s3cret"], [b"Bearer s3cret"]],
        )


class RuntimeTests(RealServerTestCase):
    """
    The runtime-wide endpoints, behind a path prefix.
    """

    prefix = b"prefix"

    async def test_json_endpoints(self) -> None:
        """
        Each runtime endpoint returns its typed value read from what the
        runtime sent; the prefix is kept and trailing slashes dropped.
        """
        await self.start(config={"tenant_quotas": ("alice=slots:2",)})
        self.assertEqual(await self.call(self.client.healthz()), Health("ok", "1.1.0"))
        self.assertEqual(await self.call(self.client.readyz()), Health("ready", "1.1.0"))
        info = await self.call(self.client.runtime_info())
        self.assertIsInstance(info, RuntimeInfo)
        self.assertEqual((info.runtime_id, info.version, info.snapshot_version), ("test-runtime", "1.1.0", "v1"))
        self.assertEqual(info.raw, json.loads(json.dumps(self.rt.runtime.info())))
        capabilities = await self.call(self.client.capabilities())
        self.assertIsInstance(capabilities, CapabilitySnapshot)
        self.assertEqual(capabilities.capacity, ResourceCapacity(4, 1 << 30, 4096))
        config = await self.call(self.client.config())
        self.assertIsInstance(config, RuntimeSettings)
        self.assertEqual(config.data_dir, self.rt.config.data_dir)
        resources = await self.call(self.client.resources())
        self.assertIsInstance(resources, ResourcesView)
        self.assertEqual((resources.capacity.task_slots, resources.active_reservations), (4, ()))
        self.assertEqual([(tenant.tenant, tenant.quota) for tenant in resources.tenants],
                         [("alice", ResourceCapacity(2))])
        self.assertEqual((await self.call(self.client.openapi()))["openapi"], "3.1.0")
        self.assertEqual(
            self.paths(),
            [b"/prefix/healthz", b"/prefix/readyz", b"/prefix/api/v1/runtime/info",
             b"/prefix/api/v1/runtime/capabilities", b"/prefix/api/v1/runtime/config",
             b"/prefix/api/v1/runtime/resources", b"/prefix/api/v1/openapi.json"],
        )

    async def test_metrics(self) -> None:
        """
        C{metrics} returns the exposition text.
        """
        await self.start()
        text = await self.call(self.client.metrics())
        self.assertIn("execgo_runtime_ledger_capacity", text)


class LogStreamTests(RealServerTestCase):
    """
    C{read_log}, C{stream_log} and C{iter_log} on a queued task whose log
    the test writes.
    """

    async def start_task(self) -> str:
        """
        Start the runtime with one task whose stdout holds C{hello } and
        stderr C{e}.
        """
        await self.start()
        self.task_id = await self.submit()
        self.stdout = await self.log_path(self.task_id)
        append(self.stdout, b"hello ")
        append(await self.log_path(self.task_id, "stderr"), b"e")
        self.chunks: List[bytes] = []
        return self.task_id

    async def test_read_log(self) -> None:
        """
        C{read_log} returns the log from an offset, whole; a log that is
        neither stdout nor stderr is a L{ValueError}.
        """
        task_id = await self.start_task()
        self.assertEqual(await self.call(self.client.read_log(task_id, offset=2)), b"llo ")
        self.assertEqual(await self.call(self.client.read_log(task_id, "stderr")), b"e")
        self.assertEqual(self.paths()[-2:], [f"/api/v1/tasks/{task_id}/stdout?offset=2&follow=false".encode(),
                                             f"/api/v1/tasks/{task_id}/stderr?offset=0&follow=false".encode()])
        self.failureResultOf(self.client.read_log(task_id, "stdin"), ValueError)

    async def test_follow(self) -> None:
        """
        C{stream_log} hands each piece to C{on_chunk} as it is written and
        fires with the offset reached once the task has ended.
        """
        task_id = await self.start_task()
        following = self.client.stream_log(task_id, offset=1, on_chunk=self.chunks.append)
        await self.until(lambda: self.chunks, "the first piece")
        append(self.stdout, b"world")
        await self.until(lambda: len(b"".join(self.chunks)) == 10, "the second piece")
        self.assertNoResult(following)
        await self.call(self.client.kill(task_id))
        self.assertEqual(await self.call(following), 11)
        self.assertEqual(b"".join(self.chunks), b"ello world")
        self.assertEqual(self.paths()[-2], f"/api/v1/tasks/{task_id}/stdout?offset=1&follow=true".encode())
        self.assertEqual(self.recorder.headers[-2][b"Accept"], [b"*/*"])

    async def test_backpressure(self) -> None:
        """
        While the Deferred C{on_chunk} returned is pending, no further piece
        is delivered.
        """
        task_id = await self.start_task()
        pending: List[Deferred[None]] = []

        def on_chunk(data: bytes) -> Deferred[None]:
            self.chunks.append(data)
            pending.append(Deferred())
            return pending[-1]

        following = self.client.stream_log(task_id, on_chunk=on_chunk)
        await self.until(lambda: self.chunks, "the first piece")
        append(self.stdout, b"more")
        await self.call(self.client.kill(task_id))
        await self.call(self.client.status(task_id))
        self.assertEqual(self.chunks, [b"hello "])
        self.assertNoResult(following)
        pending[0].callback(None)
        await self.until(lambda: len(self.chunks) == 2, "the second piece")
        self.assertEqual(self.chunks, [b"hello ", b"more"])
        self.assertNoResult(following)
        pending[1].callback(None)
        self.assertEqual(await self.call(following), 10)

    async def test_errors(self) -> None:
        """
        An unknown task is a L{ServerError}; a consumer's exception stops
        the stream and is its result.
        """
        task_id = await self.start_task()
        error = await self.fails(self.client.stream_log("nope"), ServerError)
        self.assertEqual((error.status, error.code), (404, "not_found"))

        def explode(data: bytes) -> None:
            raise ZeroDivisionError()

        await self.fails(self.client.stream_log(task_id, on_chunk=explode), ZeroDivisionError)

    async def test_cancel(self) -> None:
        """
        Cancelling a follow stream stops it.
        """
        task_id = await self.start_task()
        following = self.client.stream_log(task_id, on_chunk=self.chunks.append)
        await self.until(lambda: self.chunks, "the first piece")
        following.cancel()
        self.failureResultOf(following)
        append(self.stdout, b"unseen")
        await self.call(self.client.status(task_id))
        self.assertEqual(self.chunks, [b"hello "])

    async def test_iter_log(self) -> None:
        """
        C{iter_log} yields the pieces in order until the stream ends.
        """
        task_id = await self.start_task()

        async def collect() -> List[bytes]:
            return [chunk async for chunk in self.client.iter_log(task_id, "stderr")]

        collecting = Deferred.fromCoroutine(collect())
        await self.until(lambda: self.paths()[-1].startswith(f"/api/v1/tasks/{task_id}/stderr".encode()), "it")
        append(await self.log_path(task_id, "stderr"), b"rr")
        await self.call(self.client.kill(task_id))
        self.assertEqual(b"".join(await self.call(collecting)), b"err")

    async def test_iter_log_closed_early(self) -> None:
        """
        Leaving the loop and closing the iterator stops the stream.
        """
        task_id = await self.start_task()

        async def first() -> bytes:
            chunks = self.client.iter_log(task_id)
            async for chunk in chunks:
                await chunks.aclose()  # type: ignore[attr-defined]
                return chunk
            raise AssertionError("no chunk")

        self.assertEqual(await self.call(Deferred.fromCoroutine(first())), b"hello ")


class EventStreamTests(RealServerTestCase):
    """
    C{follow_events} and C{iter_events}.
    """

    async def test_follow(self) -> None:
        """
        Each event reaches C{on_event} as it is recorded; the result is the
        terminal event; the request asks for NDJSON after C{after_seq}.
        """
        await self.start()
        task_id = await self.submit()
        recorded = await self.call(self.client.events(task_id))
        seen: List[TaskEvent] = []
        following = self.client.follow_events(task_id, after_seq=1, on_event=seen.append)
        await self.until(lambda: len(seen) == len(recorded) - 1, "the recorded events")
        self.assertEqual(seen, recorded[1:])
        self.assertNoResult(following)
        await self.call(self.client.kill(task_id))
        last = await self.call(following)
        self.assertEqual((last, last.event_type, last.terminal), (seen[-1], "cancelled", True))
        self.assertEqual(self.paths()[2], f"/api/v1/tasks/{task_id}/events?after_seq=1&follow=true".encode())
        self.assertEqual(self.recorder.headers[2][b"Accept"], [b"application/x-ndjson"])

    async def test_nothing_after(self) -> None:
        """
        A stream of a finished task with nothing after C{after_seq} fires
        with C{None}.
        """
        await self.start()
        task_id = await self.submit()
        await self.call(self.client.kill(task_id))
        events = await self.call(self.client.events(task_id))
        self.assertIsNone(await self.call(self.client.follow_events(task_id, after_seq=events[-1].seq)))

    async def test_iter_events(self) -> None:
        """
        C{iter_events} yields L{TaskEvent}s until the terminal one.
        """
        await self.start()
        task_id = await self.submit()

        async def collect() -> List[str]:
            return [event.event_type async for event in self.client.iter_events(task_id)]

        collecting = Deferred.fromCoroutine(collect())
        await self.until(lambda: b"follow=true" in self.paths()[-1], "the stream")
        await self.call(self.client.kill(task_id))
        types = await self.call(collecting)
        self.assertEqual((types[0], types[-1]), ("submitted", "cancelled"))


# -- what the real server cannot do


Answer = Callable[["FaultyServer", Request], Any]


class FaultyServer(Resource):
    """
    A server for what the real one cannot do: each request is answered by
    the next of L{answers} (the last one repeats).

    @ivar uris: the request URI of every request.
    @ivar open: the requests whose answer is still open (streams, hung
        requests), in order.
    """

    isLeaf = True

    def __init__(self, *answers: Answer) -> None:
        super().__init__()
        self.answers = list(answers)
        self.uris: List[bytes] = []
        self.open: List[Request] = []

    def render(self, request: Request) -> Any:
        """
        Note the request and answer it.
        """
        self.uris.append(request.uri)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(self, request)

    def drop(self) -> None:
        """
        Cut the connection of every open answer, as a proxy or a restart
        would.
        """
        for request in self.open:
            request.channel.transport.loseConnection()  # type: ignore[union-attr]
        del self.open[:]


def body(data: bytes, code: int = 200) -> Answer:
    """
    Answer C{data} with status C{code}.
    """

    def answer(server: FaultyServer, request: Request) -> bytes:
        request.setResponseCode(code)
        return data

    return answer


def document(value: Any) -> Answer:
    """
    Answer C{value} as JSON.
    """
    return body(json.dumps(value).encode())


def stream(*pieces: bytes, end: bool = False) -> Answer:
    """
    Answer C{pieces} as a streamed body, left open unless C{end}.
    """

    def answer(server: FaultyServer, request: Request) -> Any:
        request.write(b"")
        for piece in pieces:
            request.write(piece)
        if end:
            request.finish()
        else:
            server.open.append(request)
        return NOT_DONE_YET

    return answer


def held(clock: Clock, value: Any) -> Answer:
    """
    Answer C{value} as JSON once the request's C{wait_ms} has passed on
    C{clock}, as a server with long-poll does for a task that stays
    unfinished.
    """

    def answer(server: FaultyServer, request: Request) -> Any:
        wait_ms = int(request.args[b"wait_ms"][0])
        clock.callLater(wait_ms / 1000.0, lambda: (request.write(json.dumps(value).encode()), request.finish()))
        return NOT_DONE_YET

    return answer


def hang(server: FaultyServer, request: Request) -> Any:
    """
    Never answer.
    """
    server.open.append(request)
    return NOT_DONE_YET


class Refusing:
    """
    A treq stand-in whose every connection is refused.
    """

    def request(self, *args: Any, **kwargs: Any) -> "Deferred[Any]":
        """
        Fail at once.
        """
        return fail(ConnectionRefusedError("nobody home"))


class FaultTestCase(SynchronousTestCase):
    """
    A client on a L{Clock}, wired to a L{FaultyServer} by L{serve}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def serve(self, *answers: Answer, **keywords: Any) -> ExecgoClient:
        """
        A client (with C{keywords}) of a server answering C{answers}.
        """
        self.server = FaultyServer(*answers)
        self.stub = StubTreq(self.server)
        return ExecgoClient(BASE, self.stub, self.clock, **keywords)

    def result(self, d: "Deferred[Any]") -> Any:
        """
        The result of C{d}, pumping the in-memory connection first.
        """
        self.stub.flush()
        return self.successResultOf(d)

    def failure(self, d: "Deferred[Any]", *kinds: type) -> Any:
        """
        The exception C{d} failed with, which must be one of C{kinds}.
        """
        self.stub.flush()
        return self.failureResultOf(d, *kinds).value


class TransportTests(FaultTestCase):
    """
    No answer: timeouts and refused connections.
    """

    def test_request_timeout(self) -> None:
        """
        A request unanswered within C{request_timeout} fails with a
        L{TransportError}.
        """
        client = self.serve(hang, request_timeout=30.0)
        d = client.status("t1")
        self.stub.flush()
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertIn("timed out after 30 s", str(self.failure(d, TransportError)))

    def test_request_timeout_extended(self) -> None:
        """
        A long-poll request may take its C{wait_ms} on top of the request
        timeout.
        """
        client = self.serve(hang, request_timeout=5.0)
        d = client.wait("t1", timeout_ms=20_000)
        self.stub.flush()
        self.assertEqual(self.server.uris, [b"/api/v1/tasks/t1?wait_ms=20000"])
        self.clock.advance(24.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("timed out after 25 s", str(self.failure(d, TransportError)))

    def test_connection_refused(self) -> None:
        """
        A refused connection is a L{TransportError} naming the cause and the
        URL; a stream's first request is not retried.
        """
        client = ExecgoClient(BASE, Refusing(), self.clock)
        error = self.failureResultOf(client.status("t1"), TransportError).value
        self.assertIn("ConnectionRefusedError", str(error))
        self.assertIn("/api/v1/tasks/t1", str(error))
        self.failureResultOf(client.stream_log("t1"), TransportError)


class MalformedTests(FaultTestCase):
    """
    Answers that are not what the contract says.
    """

    def test_not_json(self) -> None:
        """
        A 2xx body that is not JSON is a L{MalformedResponse}.
        """
        client = self.serve(body(b"<html>"))
        self.assertIn("not JSON", str(self.failure(client.status("t1"), MalformedResponse)))

    def test_missing_field(self) -> None:
        """
        A status without a required field, a page without C{tasks}, an
        event log that is not an array, a runtime answer without its
        fields: each a L{MalformedResponse}.
        """
        client = self.serve(document({"task_id": "t1"}), document({"next_cursor": None}),
                            document({}), document({"runtime_id": "node-a"}))
        self.assertIn("handle_id", str(self.failure(client.status("t1"), MalformedResponse)))
        self.failure(client.list_tasks(), MalformedResponse)
        self.assertIn("not a JSON array", str(self.failure(client.events("t1"), MalformedResponse)))
        self.assertIn("version", str(self.failure(client.runtime_info(), MalformedResponse)))

    def test_no_envelope(self) -> None:
        """
        An error answer without an envelope keeps its text as the message;
        an empty one uses the reason phrase.
        """
        client = self.serve(body(b"metrics_error database is locked\n", 500), body(b"", 404))
        error = self.failure(client.metrics(), ServerError)
        self.assertEqual((error.status, error.code, error.message), (500, None, "metrics_error database is locked"))
        error = self.failure(client.healthz(), ServerError)
        self.assertEqual((error.status, error.message, error.body), (404, "Not Found", b""))

    def test_bad_event_line(self) -> None:
        """
        A streamed line that is not an event fails the stream with a
        L{MalformedResponse}.
        """
        client = self.serve(stream(b'{"seq": 3, "task_id": "t1"}\n'))
        self.failure(client.follow_events("t1"), MalformedResponse)

    def test_no_event_streams(self) -> None:
        """
        The plain JSON array of a server without event streams ends in the
        middle of a line: a L{MalformedResponse}.
        """
        client = self.serve(body(b'[{"seq": 1}]'))
        error = self.failure(client.follow_events("t1"), MalformedResponse)
        self.assertIn("middle of a line", str(error))


class OldServerTests(FaultTestCase):
    """
    C{wait} and C{run} against a server without long-poll, which answers
    at once: the client polls on its clock.
    """

    def test_wait_polls(self) -> None:
        """
        C{wait} asks again every C{poll_interval_ms} until a terminal status.
        """
        client = self.serve(document(status_of("t1", "accepted")), document(status_of("t1", "running")),
                            document(status_of("t1", "success", exit_code=0)))
        d = client.wait("t1", poll_interval_ms=200)
        for _ in range(2):
            self.stub.flush()
            self.assertNoResult(d)
            self.clock.advance(0.2)
        self.assertEqual(self.result(d).status, "success")
        self.assertEqual(self.server.uris, [b"/api/v1/tasks/t1?wait_ms=30000"] * 3)

    def test_wait_timeout(self) -> None:
        """
        C{wait} fails with L{WaitTimeout} after a non-terminal answer once
        the timeout has passed, carrying the last status; each request asks
        for what is left of the timeout.
        """
        client = self.serve(document(status_of("t1", "running")))
        d = client.wait("t1", timeout_ms=1000, poll_interval_ms=400)
        for _ in range(3):
            self.stub.flush()
            self.assertNoResult(d)
            self.clock.advance(0.4)
        error = self.failure(d, WaitTimeout)
        self.assertEqual((error.task_id, error.last_status.status), ("t1", "running"))
        self.assertEqual([uri.split(b"=")[1] for uri in self.server.uris], [b"1000", b"600", b"200", b"0"])

    def test_run(self) -> None:
        """
        C{run} submits, then polls the returned task id.
        """
        client = self.serve(document({"task_id": "g1", "handle_id": "g1", "status": "accepted"}),
                            document(status_of("g1", "accepted")), document(status_of("g1", "failed")))
        d = client.run(REQUEST)
        self.stub.flush()
        self.clock.advance(0.5)
        self.assertEqual(self.result(d).status, "failed")
        self.assertEqual(self.server.uris, [b"/api/v1/tasks"] + [b"/api/v1/tasks/g1?wait_ms=30000"] * 2)

    def test_cancel_wait(self) -> None:
        """
        Cancelling a wait between polls stops it and leaves no timer behind.
        """
        client = self.serve(document(status_of("t1", "running")))
        d = client.wait("t1")
        self.stub.flush()
        d.cancel()
        self.failureResultOf(d)
        self.clock.advance(10)
        self.assertEqual(len(self.server.uris), 1)


class HeldTests(FaultTestCase):
    """
    C{wait} against a server holding each request on the test's clock (the
    real one holds them on the real reactor): the client's timing, exactly.
    """

    def test_held_requests_followed_at_once(self) -> None:
        """
        A held request that comes back non-terminal is followed at once by
        the next, without the poll interval.
        """
        client = self.serve(held(self.clock, status_of("t1", "running")), document(status_of("t1", "success")))
        d = client.wait("t1", poll_interval_ms=10_000)
        self.stub.flush()
        self.assertEqual(self.server.uris, [b"/api/v1/tasks/t1?wait_ms=30000"])
        self.clock.advance(30)
        self.assertEqual(self.result(d).status, "success")
        self.assertEqual(len(self.server.uris), 2)


class BrokenStreamTests(FaultTestCase):
    """
    Streams whose connection breaks off: resumed where they broke off,
    a bounded number of times in a row.
    """

    def test_log_resumed(self) -> None:
        """
        A dropped log stream is resumed at once from the bytes received:
        nothing is missed or delivered twice.
        """
        chunks: List[bytes] = []
        client = self.serve(stream(b"hello "), stream(b"world", end=True))
        d = client.stream_log("t1", on_chunk=chunks.append)
        self.stub.flush()
        self.server.drop()
        self.assertEqual(self.result(d), 11)
        self.assertEqual(b"".join(chunks), b"hello world")
        self.assertEqual(self.server.uris, [b"/api/v1/tasks/t1/stdout?offset=0&follow=true",
                                            b"/api/v1/tasks/t1/stdout?offset=6&follow=true"])

    def test_events_resumed(self) -> None:
        """
        A dropped event stream is resumed after the last event seen; a
        partial line is dropped and asked for again.
        """
        seen: List[TaskEvent] = []
        client = self.serve(stream(event_line(2, "accepted") + b'{"seq": 3, "ta'),
                            stream(event_line(3, "cancelled"), end=True))
        d = client.follow_events("t1", after_seq=1, on_event=seen.append)
        self.stub.flush()
        self.server.drop()
        self.assertEqual(self.result(d).seq, 3)
        self.assertEqual([(event.seq, event.event_type) for event in seen], [(2, "accepted"), (3, "cancelled")])
        self.assertEqual(self.server.uris, [b"/api/v1/tasks/t1/events?after_seq=1&follow=true",
                                            b"/api/v1/tasks/t1/events?after_seq=2&follow=true"])

    def test_retries_bounded(self) -> None:
        """
        Breaks without progress are retried after a growing backoff, at
        most C{stream_retries} times in a row; then a L{TransportError}.
        """
        client = self.serve(stream(), stream_retries=2)
        d = client.stream_log("t1")
        for backoff in (0.25, 0.5):
            self.stub.flush()
            self.server.drop()
            self.stub.flush()
            self.assertNoResult(d)
            self.clock.advance(backoff)
        self.stub.flush()
        self.server.drop()
        self.assertIn("the stream broke off", str(self.failure(d, TransportError)))
        self.assertEqual(len(self.server.uris), 3)


class ModelTests(SynchronousTestCase):
    """
    The typed values read every field the contract names.
    """

    def test_task_status(self) -> None:
        """
        A finished status carries its exit, duration and error.
        """
        done = status_of("t1", "failed", exit_code=3, exit_signal=None, duration_ms=12,
                         error={"code": "exit_nonzero", "message": "exited 3"})
        status = TaskStatus.from_json(done)
        self.assertEqual(
            (status.status, status.exit_code, status.exit_signal, status.duration_ms, status.error, status.terminal),
            ("failed", 3, None, 12, TaskError("exit_nonzero", "exited 3"), True),
        )
        self.assertEqual(status.raw, done)
        self.assertRaises(MalformedResponse, TaskStatus.from_json, dict(done, exit_code="3"))
        self.assertRaises(MalformedResponse, TaskStatus.from_json, dict(done, stdout_truncated=1))

    def test_event(self) -> None:
        """
        An event keeps its message and data; only the last events of a
        task are terminal.
        """
        event = TaskEvent.from_json({"seq": 7, "task_id": "t1", "event_type": "planned",
                                     "timestamp": "2026-04-23T10:00:00Z", "data": {"degraded": False}})
        self.assertEqual(event, TaskEvent(7, "t1", "planned", "2026-04-23T10:00:00Z", None, {"degraded": False}))
        self.assertFalse(event.terminal)
        self.assertRaises(MalformedResponse, TaskEvent.from_json, {"seq": True, "task_id": "t1"})

    def test_runtime_views(self) -> None:
        """
        The runtime views read their nested values.
        """
        platform = {"os": "linux", "arch": "x86_64", "containerized": False, "kubernetes": False}
        info = RuntimeInfo.from_json({"runtime_id": "node-a", "version": "1.1.0", "snapshot_version": "v1",
                                      "started_at": "2026-04-23T10:00:00Z", "platform": platform})
        self.assertEqual(info.platform, Platform("linux", "x86_64", False, False))
        resources = ResourcesView.from_json({
            "runtime_id": "node-a",
            "capacity": {"task_slots": 4, "pids": 64},
            "reserved": {"task_slots": 1, "pids": 8},
            "available": {"task_slots": 3, "pids": 56},
            "active_reservations": [{"task_id": "t9", "status": "running", "reserved_at": "2026-04-23T10:00:01Z",
                                     "reservation": {"task_slots": 1, "pids": 8}}],
            "accepted_waiting_tasks": 2,
            "tenants": [{"tenant": "alice", "quota": {"task_slots": 2}, "reserved": {"task_slots": 1},
                         "available": {"task_slots": 1}}, {"tenant": "bob", "reserved": {"task_slots": 0}}],
        })
        self.assertEqual(
            resources.active_reservations,
            (ActiveReservation("t9", "running", ResourceCapacity(1, pids=8), "2026-04-23T10:00:01Z"),),
        )
        self.assertEqual(
            resources.tenants,
            (TenantUsage("alice", ResourceCapacity(1), ResourceCapacity(2), ResourceCapacity(1)),
             TenantUsage("bob", ResourceCapacity(0))),
        )
        self.assertRaises(MalformedResponse, ResourcesView.from_json, dict(resources.raw, tenants=[{}]))
