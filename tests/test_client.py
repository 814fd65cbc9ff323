"""
Tests for L{execgo.client}.

The client runs end to end, in memory, against L{FakeRuntime}: a small
C{twisted.web} resource defined here that answers like the runtime's API
(submit, status, kill, events, the runtime endpoints, error envelopes),
reached through C{treq.testing.StubTreq}.  Waiting and timeouts run on a
L{Clock}; no test sleeps, and each ends with no delayed call left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from execgo.client import (
    ClientError,
    ExecgoClient,
    MalformedResponse,
    ServerError,
    SubmitResult,
    TaskError,
    TaskEvent,
    TransportError,
    WaitTimeout,
)
from execgo.models import ExecutionSpec, SubmitRequest


def status_of(task_id: str, status: str, **extra: Any) -> Dict[str, Any]:
    """
    A minimal C{TaskStatusResponse} for C{task_id} in state C{status}.
    """
    value: Dict[str, Any] = {
        "task_id": task_id,
        "handle_id": task_id,
        "status": status,
        "created_at": "2026-04-23T10:00:00Z",
        "updated_at": "2026-04-23T10:00:00Z",
        "stdout": "",
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "artifacts": {"task_dir": f"/d/tasks/{task_id}"},
    }
    value.update(extra)
    return value


def envelope(code: str, message: str) -> Dict[str, Any]:
    """
    The runtime's error envelope.
    """
    return {"error": {"code": code, "message": message}}


class FakeRuntime(Resource):
    """
    Answers like the runtime's API, from scripted task states.

    @ivar scripts: per task id, the statuses successive C{GET}s return (the
        last one repeats).
    @ivar owners: per task id, the owner a kill must present.
    @ivar requests: C{(method, path, body, owner header)} of every request.
    @ivar hanging: requests left unanswered (for timeouts).
    """

    isLeaf = True

    def __init__(self, prefix: bytes = b"") -> None:
        super().__init__()
        self.prefix = prefix
        self.scripts: Dict[str, List[Dict[str, Any]]] = {}
        self.owners: Dict[str, str] = {}
        self.requests: List[Tuple[bytes, bytes, bytes, Optional[bytes]]] = []
        self.hanging: List[Request] = []
        self.oversized = 0

    def render(self, request: Request) -> Any:
        body = request.content.read()
        path = request.path
        self.requests.append((request.method, path, body, request.getHeader(b"x-execgo-owner")))
        if not path.startswith(self.prefix):
            return self.answer(request, 404, None)
        path = path[len(self.prefix) :]
        parts = path.decode("utf-8").split("/")
        method = request.method
        if path == b"/api/v1/tasks" and method == b"POST":
            return self.submit(request, json.loads(body))
        if parts[:4] == ["", "api", "v1", "tasks"] and len(parts) in (5, 6):
            return self.task(request, parts[4], parts[5] if len(parts) == 6 else None)
        if method == b"GET" and path == b"/metrics":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4")
            return b"execgo_runtime_tasks_running 0\n"
        fixed = {
            b"/healthz": {"status": "ok", "version": "1.1.0"},
            b"/readyz": {"status": "ready", "version": "1.1.0"},
            b"/api/v1/runtime/info": {"runtime_id": "node-a", "version": "1.1.0"},
            b"/api/v1/runtime/capabilities": {"runtime_id": "node-a", "degraded": False},
            b"/api/v1/runtime/config": {"runtime_id": "node-a", "max_running_tasks": 4},
            b"/api/v1/runtime/resources": {"runtime_id": "node-a", "tenants": []},
        }
        if method == b"GET" and path in fixed:
            return self.answer(request, 200, fixed[path])
        return self.answer(request, 404, None)

    def answer(self, request: Request, code: int, value: Any) -> bytes:
        request.setResponseCode(code)
        if value is None:
            return b""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    def submit(self, request: Request, document: Dict[str, Any]) -> bytes:
        task_id = document.get("task_id") or "generated-1"
        if task_id in self.scripts:
            return self.answer(request, 409, envelope("conflict", f"conflict: task {task_id} exists"))
        self.scripts[task_id] = [status_of(task_id, "accepted")]
        owner = (document.get("control_context") or {}).get("owner")
        if owner:
            self.owners[task_id] = owner
        return self.answer(request, 200, {"task_id": task_id, "handle_id": task_id, "status": "accepted"})

    def task(self, request: Request, task_id: str, action: Optional[str]) -> Any:
        if task_id == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        if task_id == "garbage":
            return b"<html>"
        if task_id == "huge":
            self.oversized += 1
            return self.answer(request, 200, status_of("huge", "running", stdout="x" * 5000))
        if task_id == "plain-error":
            request.setResponseCode(500)
            return b"metrics_error database is locked\n"
        if task_id not in self.scripts:
            return self.answer(request, 404, envelope("not_found", f"task not found: {task_id}"))
        script = self.scripts[task_id]
        if action is None and request.method == b"GET":
            return self.answer(request, 200, script.pop(0) if len(script) > 1 else script[0])
        if action == "events" and request.method == b"GET":
            return self.answer(
                request,
                200,
                [
                    {"seq": 1, "task_id": task_id, "event_type": "submitted",
                     "timestamp": "2026-04-23T10:00:00Z", "message": "task submitted"},
                    {"seq": 7, "task_id": task_id, "event_type": "planned",
                     "timestamp": "2026-04-23T10:00:00Z", "message": "execution plan resolved",
                     "data": {"degraded": False}},
                ],
            )
        if action == "kill" and request.method == b"POST":
            supplied = (request.getHeader(b"x-execgo-owner") or b"").decode().strip()
            required = self.owners.get(task_id)
            if required is not None and supplied != required:
                return self.answer(
                    request, 403,
                    envelope("permission_denied", f"permission denied: kill requires owner '{required}'"),
                )
            cancelled = status_of(
                task_id, "cancelled", error={"code": "cancelled", "message": "task cancelled"}
            )
            self.scripts[task_id] = [cancelled]
            return self.answer(request, 200, cancelled)
        return self.answer(request, 405, envelope("invalid_input", "invalid input: method not allowed"))


class ClientTestCase(SynchronousTestCase):
    """
    A client wired to a fresh L{FakeRuntime} and L{Clock}.
    """

    base_url = "http://runtime.test:8080/"
    prefix = b""

    def setUp(self) -> None:
        self.runtime = FakeRuntime(self.prefix)
        self.stub = StubTreq(self.runtime)
        self.clock = Clock()
        self.client = ExecgoClient(self.base_url, self.stub, self.clock, request_timeout=30.0)
        self.addCleanup(self.assertNoTimers)

    def assertNoTimers(self) -> None:
        """
        No delayed call outlives a test.
        """
        self.assertEqual(self.clock.getDelayedCalls(), [])

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

    def paths(self) -> List[Tuple[bytes, bytes]]:
        return [(method, path) for method, path, _, _ in self.runtime.requests]


class TaskTests(ClientTestCase):
    """
    The per-task calls.
    """

    def test_submit_mapping(self) -> None:
        """
        A mapping is POSTed as compact JSON unchanged; the answer becomes a
        L{SubmitResult}.
        """
        request = {"task_id": "t1", "execution": {"kind": "command", "program": "/bin/true"}}
        result = self.result(self.client.submit(request))
        self.assertEqual(result, SubmitResult("t1", "t1", "accepted"))
        [(method, path, body, _)] = self.runtime.requests
        self.assertEqual((method, path), (b"POST", b"/api/v1/tasks"))
        self.assertEqual(json.loads(body), request)

    def test_submit_model(self) -> None:
        """
        A L{SubmitRequest} is sent in its normalised wire form.
        """
        request = SubmitRequest(
            execution=ExecutionSpec(kind="command", program="/bin/echo", args=("\u00e9",)),
            task_id="t2",
        )
        self.result(self.client.submit(request))
        body = self.runtime.requests[0][2]
        self.assertEqual(json.loads(body), request.to_json())
        self.assertIn("\u00e9".encode("utf-8"), body)

    def test_submit_conflict(self) -> None:
        """
        An error envelope becomes a L{ServerError} with its status, code and
        message.
        """
        self.result(self.client.submit({"task_id": "t1", "execution": {}}))
        error = self.failure(self.client.submit({"task_id": "t1", "execution": {}}), ServerError)
        self.assertEqual(
            (error.status, error.code, error.message), (409, "conflict", "conflict: task t1 exists")
        )
        self.assertIsInstance(error, ClientError)
        self.assertEqual(str(error), "HTTP 409 conflict: conflict: task t1 exists")

    def test_status(self) -> None:
        """
        C{status} returns a L{TaskStatus} with the main fields and the raw
        object.
        """
        done = status_of(
            "t1", "failed", exit_code=3, duration_ms=12,
            error={"code": "exit_nonzero", "message": "exited 3"},
        )
        self.runtime.scripts["t1"] = [done]
        status = self.result(self.client.status("t1"))
        self.assertEqual(
            (status.task_id, status.status, status.exit_code, status.duration_ms, status.error),
            ("t1", "failed", 3, 12, TaskError("exit_nonzero", "exited 3")),
        )
        self.assertTrue(status.terminal)
        self.assertEqual(status.raw, done)
        self.assertEqual(self.paths(), [(b"GET", b"/api/v1/tasks/t1")])

    def test_status_unknown(self) -> None:
        """
        An unknown task is a L{ServerError} with code C{not_found}.
        """
        error = self.failure(self.client.status("nope"), ServerError)
        self.assertEqual((error.status, error.code), (404, "not_found"))

    def test_task_id_quoted(self) -> None:
        """
        A task id is one path segment: C{/} and spaces are percent-encoded.
        """
        self.failure(self.client.status("a/b c"), ServerError)
        self.assertEqual(self.paths(), [(b"GET", b"/api/v1/tasks/a%2Fb%20c")])

    def test_events(self) -> None:
        """
        C{events} returns L{TaskEvent}s in order.
        """
        self.runtime.scripts["t1"] = [status_of("t1", "running")]
        events = self.result(self.client.events("t1"))
        self.assertEqual(
            events,
            [
                TaskEvent(1, "t1", "submitted", "2026-04-23T10:00:00Z", "task submitted"),
                TaskEvent(7, "t1", "planned", "2026-04-23T10:00:00Z",
                          "execution plan resolved", {"degraded": False}),
            ],
        )

    def test_kill(self) -> None:
        """
        C{kill} POSTs to C{.../kill} with the trimmed owner header and returns
        the snapshot.
        """
        self.result(self.client.submit(
            {"task_id": "t1", "execution": {}, "control_context": {"owner": "alice"}}
        ))
        status = self.result(self.client.kill("t1", owner="  alice "))
        self.assertEqual((status.status, status.error), ("cancelled", TaskError("cancelled", "task cancelled")))
        self.assertEqual(self.runtime.requests[-1][:2], (b"POST", b"/api/v1/tasks/t1/kill"))
        self.assertEqual(self.runtime.requests[-1][3], b"alice")

    def test_kill_owner_mismatch(self) -> None:
        """
        A blank owner sends no header, and the runtime's 403 is a
        L{ServerError} with code C{permission_denied}.
        """
        self.result(self.client.submit(
            {"task_id": "t1", "execution": {}, "control_context": {"owner": "alice"}}
        ))
        error = self.failure(self.client.kill("t1", owner="  "), ServerError)
        self.assertEqual((error.status, error.code), (403, "permission_denied"))
        self.assertIsNone(self.runtime.requests[-1][3])

    def test_non_envelope_error(self) -> None:
        """
        An error answer without an envelope keeps its text as the message; an
        empty one uses the reason phrase.
        """
        error = self.failure(self.client.status("plain-error"), ServerError)
        self.assertEqual((error.status, error.code, error.message), (500, None, "metrics_error database is locked"))
        client = ExecgoClient("http://runtime.test/elsewhere", self.stub, self.clock)
        error = self.failure(client.healthz(), ServerError)
        self.assertEqual((error.status, error.message, error.body), (404, "Not Found", b""))

    def test_malformed(self) -> None:
        """
        A 2xx answer that is not JSON, or lacks required fields, is a
        L{MalformedResponse}.
        """
        self.failure(self.client.status("garbage"), MalformedResponse)
        self.runtime.scripts["t1"] = [{"task_id": "t1"}]
        error = self.failure(self.client.status("t1"), MalformedResponse)
        self.assertIn("handle_id", str(error))


class WaitTests(ClientTestCase):
    """
    C{wait} and C{run} poll on the injected clock.
    """

    def test_wait_polls(self) -> None:
        """
        C{wait} polls every C{poll_interval_ms} until a terminal status.
        """
        self.runtime.scripts["t1"] = [
            status_of("t1", "accepted"), status_of("t1", "running"), status_of("t1", "success"),
        ]
        d = self.client.wait("t1", poll_interval_ms=200)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(0.2)
        status = self.result(d)
        self.assertEqual(status.status, "success")
        self.assertEqual(len(self.runtime.requests), 3)

    def test_wait_timeout(self) -> None:
        """
        C{wait} fails with L{WaitTimeout} after a non-terminal answer once the
        timeout has passed, carrying the last status.
        """
        self.runtime.scripts["t1"] = [status_of("t1", "running")]
        d = self.client.wait("t1", timeout_ms=1000, poll_interval_ms=400)
        for _ in range(3):
            self.stub.flush()
            self.assertNoResult(d)
            self.clock.advance(0.4)
        error = self.failure(d, WaitTimeout)
        self.assertEqual((error.task_id, error.last_status.status), ("t1", "running"))
        self.assertEqual(len(self.runtime.requests), 4)

    def test_wait_zero_timeout(self) -> None:
        """
        A zero timeout gives up after the first non-terminal answer.
        """
        self.runtime.scripts["t1"] = [status_of("t1", "running")]
        self.failure(self.client.wait("t1", timeout_ms=0), WaitTimeout)
        self.assertEqual(len(self.runtime.requests), 1)

    def test_run(self) -> None:
        """
        C{run} submits, then waits for the returned task id.
        """
        d = self.client.run({"execution": {"kind": "command", "program": "/bin/true"}})
        self.stub.flush()
        self.assertNoResult(d)
        self.runtime.scripts["generated-1"] = [status_of("generated-1", "success")]
        self.clock.advance(0.5)
        status = self.result(d)
        self.assertEqual((status.task_id, status.status), ("generated-1", "success"))
        self.assertEqual(
            self.paths(),
            [(b"POST", b"/api/v1/tasks"), (b"GET", b"/api/v1/tasks/generated-1"),
             (b"GET", b"/api/v1/tasks/generated-1")],
        )

    def test_cancel_wait(self) -> None:
        """
        Cancelling a wait stops polling and leaves no timer behind.
        """
        self.runtime.scripts["t1"] = [status_of("t1", "running")]
        d = self.client.wait("t1")
        self.stub.flush()
        d.cancel()
        self.failureResultOf(d)
        self.clock.advance(10)
        self.assertEqual(len(self.runtime.requests), 1)


class RuntimeTests(ClientTestCase):
    """
    The runtime-wide endpoints, behind a path prefix.
    """

    base_url = "http://runtime.test/prefix//"
    prefix = b"/prefix"

    def test_json_endpoints(self) -> None:
        """
        Each runtime endpoint returns its decoded object; the prefix is kept
        and trailing slashes dropped.
        """
        self.assertEqual(self.result(self.client.healthz())["status"], "ok")
        self.assertEqual(self.result(self.client.readyz())["status"], "ready")
        self.assertEqual(self.result(self.client.runtime_info())["runtime_id"], "node-a")
        self.assertEqual(self.result(self.client.capabilities())["degraded"], False)
        self.assertEqual(self.result(self.client.config())["max_running_tasks"], 4)
        self.assertEqual(self.result(self.client.resources())["tenants"], [])
        self.assertEqual(
            [path for _, path in self.paths()],
            [b"/prefix/healthz", b"/prefix/readyz", b"/prefix/api/v1/runtime/info",
             b"/prefix/api/v1/runtime/capabilities", b"/prefix/api/v1/runtime/config",
             b"/prefix/api/v1/runtime/resources"],
        )

    def test_metrics(self) -> None:
        """
        C{metrics} returns the exposition text.
        """
        self.assertEqual(self.result(self.client.metrics()), "execgo_runtime_tasks_running 0\n")


class TransportTests(ClientTestCase):
    """
    Failures below HTTP: limits, timeouts, connection errors.
    """

    def test_body_limit(self) -> None:
        """
        A response body above C{max_body_bytes} is a L{TransportError}.
        """
        client = ExecgoClient(self.base_url, self.stub, self.clock, max_body_bytes=1000)
        error = self.failure(client.status("huge"), TransportError)
        self.assertIn("exceeds the limit of 1000 bytes", str(error))
        self.assertEqual(self.runtime.oversized, 1)

    def test_request_timeout(self) -> None:
        """
        A request unanswered within C{request_timeout} fails with a
        L{TransportError}.
        """
        d = self.client.status("hang")
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        error = self.failure(d, TransportError)
        self.assertIn("timed out after 30 s", str(error))

    def test_connection_failure(self) -> None:
        """
        A failed connection is a L{TransportError} naming the cause.
        """

        class Refusing:
            def request(self, *args: Any, **kwargs: Any) -> "Deferred[Any]":
                return fail(ConnectionRefusedError("nobody home"))

        client = ExecgoClient(self.base_url, Refusing(), self.clock)
        error = self.failureResultOf(client.status("t1"), TransportError).value
        self.assertIn("ConnectionRefusedError", str(error))
        self.assertIn("/api/v1/tasks/t1", str(error))


class ImportTests(SynchronousTestCase):
    """
    Importing the client must not install the global reactor.
    """

    def test_no_reactor_import(self) -> None:
        """
        C{import execgo.client} leaves C{twisted.internet.reactor} unimported.
        """
        output = subprocess.run(
            [sys.executable, "-c",
             "import sys, execgo.client; print('twisted.internet.reactor' in sys.modules)"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        self.assertEqual(output, "False\n")
