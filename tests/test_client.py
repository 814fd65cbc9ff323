"""
Tests for L{execgo.client}.

The client runs end to end, in memory, against L{FakeRuntime}: a small
C{twisted.web} resource defined here that answers like the runtime's API
(submit with idempotency keys, status with long-poll, list, kill, events
and event streams, log streams, the runtime endpoints, bearer tokens, error
envelopes), reached through C{treq.testing.StubTreq}.  Waiting, backoff and
timeouts run on a L{Clock}; no test sleeps, and each ends with no delayed
call left.  L{RealResourceTests} then runs the client against the real
Klein resource of an in-process runtime (L{tests.apifixture}).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

import attrs
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
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
    TenantUsage,
    TransportError,
    WaitTimeout,
)
from execgo.core.models import ExecutionSpec, SubmitRequest

TERMINAL = ("success", "failed", "cancelled")
PLATFORM = {"os": "linux", "arch": "x86_64", "containerized": False, "kubernetes": False}


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


def event_of(seq: int, task_id: str, event_type: str) -> Dict[str, Any]:
    """
    An C{EventRecord}.
    """
    return {
        "seq": seq,
        "task_id": task_id,
        "event_type": event_type,
        "timestamp": "2026-04-23T10:00:00Z",
        "message": f"task {event_type}",
    }


def envelope(code: str, message: str) -> Dict[str, Any]:
    """
    The runtime's error envelope.
    """
    return {"error": {"code": code, "message": message}}


def arg(request: Request, name: bytes, default: Optional[bytes] = None) -> Optional[bytes]:
    """
    The last value of query argument C{name}.
    """
    values = request.args.get(name)
    return values[-1] if values else default


@attrs.define
class Follower:
    """
    A follow stream in progress: its request and what it has sent.
    """

    request: Request
    sent: int


FIXED = {
    b"/healthz": {"status": "ok", "version": "1.1.0"},
    b"/readyz": {"status": "ready", "version": "1.1.0"},
    b"/api/v1/runtime/info": {
        "runtime_id": "node-a",
        "version": "1.1.0",
        "started_at": "2026-04-23T10:00:00Z",
        "snapshot_version": "v1",
        "platform": PLATFORM,
    },
    b"/api/v1/runtime/capabilities": {
        "runtime_id": "node-a",
        "snapshot_version": "v1",
        "collected_at": "2026-04-23T10:00:00Z",
        "platform": PLATFORM,
        "execution": {"command": True, "script": True, "process_group": True},
        "resources": {"ledger": True, "capacity": {"task_slots": 4, "memory_bytes": 1024}},
        "stable_semantics": ["submit", "status"],
        "enhanced_semantics": ["resource_ledger"],
        "warnings": ["no sandbox"],
        "degraded": True,
        "overrides": {"cgroup": "disabled"},
    },
    b"/api/v1/runtime/config": {
        "runtime_id": "node-a",
        "listen_addr": "127.0.0.1:8080",
        "data_dir": "data",
        "max_running_tasks": 4,
        "max_queued_tasks": 128,
        "termination_grace_ms": 5000,
        "result_retention_secs": 604800,
        "gc_interval_ms": 1000,
        "dispatch_poll_interval_ms": 250,
        "cgroup_root": "/sys/fs/cgroup/execgo-runtime",
        "default_capability_mode": "adaptive",
        "cgroup_enabled": True,
    },
    b"/api/v1/runtime/resources": {
        "runtime_id": "node-a",
        "capacity": {"task_slots": 4, "pids": 64},
        "reserved": {"task_slots": 1, "pids": 8},
        "available": {"task_slots": 3, "pids": 56},
        "active_reservations": [
            {"task_id": "t9", "status": "running", "reservation": {"task_slots": 1, "pids": 8},
             "reserved_at": "2026-04-23T10:00:01Z"}
        ],
        "accepted_waiting_tasks": 2,
        "tenants": [
            {"tenant": "alice", "quota": {"task_slots": 2}, "reserved": {"task_slots": 1},
             "available": {"task_slots": 1}},
            {"tenant": "bob", "reserved": {"task_slots": 0}},
        ],
    },
    b"/api/v1/openapi.json": {"openapi": "3.1.0", "paths": {}},
}


class FakeRuntime(Resource):
    """
    Answers like the runtime's API, from scripted task states.

    @ivar scripts: per task id, the statuses successive C{GET}s return (the
        last one repeats).
    @ivar owners: per task id, the owner a kill must present.
    @ivar requests: C{(method, path, body, owner header)} of every request.
    @ivar uris: the full request URI (path and query) of every request.
    @ivar headers: the request headers of every request.
    @ivar hanging: requests left unanswered (for timeouts).
    @ivar long_poll: hold C{?wait_ms=N} status requests of unfinished tasks
        for N ms on L{clock} (else answer at once, like an old server).
    @ivar logs: per task id and stream name, the log's bytes.
    @ivar events: per task id, its event records.
    @ivar pages: the list pages, keyed by the cursor that asks for them
        (C{None}: the first page).
    @ivar token: when set, every request needs C{Authorization: Bearer}
        with it.
    """

    isLeaf = True

    def __init__(self, clock: Clock, prefix: bytes = b"") -> None:
        super().__init__()
        self.clock = clock
        self.prefix = prefix
        self.scripts: Dict[str, List[Dict[str, Any]]] = {}
        self.owners: Dict[str, str] = {}
        self.requests: List[Tuple[bytes, bytes, bytes, Optional[bytes]]] = []
        self.uris: List[bytes] = []
        self.headers: List[Dict[bytes, List[bytes]]] = []
        self.hanging: List[Request] = []
        self.oversized = 0
        self.long_poll = False
        self.held: List[Tuple[Request, str, IDelayedCall]] = []
        self.logs: Dict[str, Dict[str, bytearray]] = {}
        self.log_followers: Dict[Tuple[str, str], List[Follower]] = {}
        self.events: Dict[str, List[Dict[str, Any]]] = {}
        self.event_followers: Dict[str, List[Follower]] = {}
        self.pages: Dict[Optional[bytes], Dict[str, Any]] = {}
        self.idempotency: Dict[str, Tuple[bytes, Dict[str, Any]]] = {}
        self.token: Optional[str] = None

    def render(self, request: Request) -> Any:
        body = request.content.read()
        path = request.path
        self.requests.append((request.method, path, body, request.getHeader(b"x-execgo-owner")))
        self.uris.append(request.uri)
        self.headers.append(dict(request.requestHeaders.getAllRawHeaders()))
        if self.token is not None and request.getHeader(b"authorization") != b"Bearer " + self.token.encode():
            return self.answer(request, 401, envelope("permission_denied", "unauthorized: unknown token"))
        if not path.startswith(self.prefix):
            return self.answer(request, 404, None)
        path = path[len(self.prefix) :]
        parts = path.decode("utf-8").split("/")
        method = request.method
        if path == b"/api/v1/tasks" and method == b"POST":
            return self.submit(request, body)
        if path == b"/api/v1/tasks" and method == b"GET":
            return self.answer(request, 200, self.pages[arg(request, b"cursor")])
        if parts[:4] == ["", "api", "v1", "tasks"] and len(parts) in (5, 6):
            return self.task(request, parts[4], parts[5] if len(parts) == 6 else None)
        if method == b"GET" and path == b"/metrics":
            request.setHeader(b"content-type", b"text/plain; version=0.0.4")
            return b"execgo_runtime_tasks_running 0\n"
        if method == b"GET" and path in FIXED:
            return self.answer(request, 200, FIXED[path])
        return self.answer(request, 404, None)

    def answer(self, request: Request, code: int, value: Any) -> bytes:
        request.setResponseCode(code)
        if value is None:
            return b""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    def submit(self, request: Request, body: bytes) -> bytes:
        document = json.loads(body)
        key = request.getHeader(b"idempotency-key")
        if key is not None:
            seen = self.idempotency.get(key.decode())
            if seen is not None:
                if seen[0] != body:
                    return self.answer(request, 409, envelope(
                        "conflict", "conflict: idempotency key reused with a different request"))
                return self.answer(request, 200, seen[1])
        task_id = document.get("task_id") or f"generated-{len(self.scripts) + 1}"
        if task_id in self.scripts:
            return self.answer(request, 409, envelope("conflict", f"conflict: task {task_id} exists"))
        self.scripts[task_id] = [status_of(task_id, "accepted")]
        owner = (document.get("control_context") or {}).get("owner")
        if owner:
            self.owners[task_id] = owner
        answer = {"task_id": task_id, "handle_id": task_id, "status": "accepted"}
        if key is not None:
            self.idempotency[key.decode()] = (body, answer)
        return self.answer(request, 200, answer)

    def current(self, task_id: str) -> Dict[str, Any]:
        script = self.scripts[task_id]
        return script.pop(0) if len(script) > 1 else script[0]

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
        if action is None and request.method == b"GET":
            status = self.current(task_id)
            wait_ms = int(arg(request, b"wait_ms", b"0") or b"0")
            if self.long_poll and wait_ms and status["status"] not in TERMINAL:
                call = self.clock.callLater(wait_ms / 1000.0, self.release, request, task_id)
                self.held.append((request, task_id, call))
                return NOT_DONE_YET
            return self.answer(request, 200, status)
        if action == "events" and request.method == b"GET":
            return self.event_log(request, task_id)
        if action in ("stdout", "stderr") and request.method == b"GET":
            return self.log(request, task_id, action)
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
            self.finish(task_id, cancelled)
            return self.answer(request, 200, cancelled)
        return self.answer(request, 405, envelope("invalid_input", "invalid input: method not allowed"))

    # long-poll

    def release(self, request: Request, task_id: str) -> None:
        self.held = [entry for entry in self.held if entry[0] is not request]
        request.write(self.answer(request, 200, self.scripts[task_id][0]))
        request.finish()

    def finish(self, task_id: str, status: Dict[str, Any]) -> None:
        """
        Make C{status} the task's state; answer its held long-polls and end
        its follow streams.
        """
        self.scripts[task_id] = [status]
        for request, held_id, call in list(self.held):
            if held_id == task_id:
                call.cancel()
                self.release(request, task_id)
        for name in ("stdout", "stderr"):
            for follower in self.log_followers.pop((task_id, name), []):
                follower.request.finish()

    # logs

    def log(self, request: Request, task_id: str, name: str) -> Any:
        data = self.logs.setdefault(task_id, {}).setdefault(name, bytearray())
        offset = int(arg(request, b"offset", b"0") or b"0")
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"x-execgo-log-size", str(len(data)).encode())
        request.setHeader(b"x-execgo-offset", str(offset).encode())
        terminal = self.scripts[task_id][0]["status"] in TERMINAL
        if arg(request, b"follow") != b"true" or terminal:
            return bytes(data[offset:])
        request.write(bytes(data[offset:]))
        self.log_followers.setdefault((task_id, name), []).append(
            Follower(request, max(len(data), offset))
        )
        return NOT_DONE_YET

    def append_log(self, task_id: str, name: str, data: bytes) -> None:
        """
        The workload writes C{data}: followers get it at once.
        """
        self.logs.setdefault(task_id, {}).setdefault(name, bytearray()).extend(data)
        for follower in self.log_followers.get((task_id, name), []):
            follower.request.write(data)
            follower.sent += len(data)

    def drop_followers(self) -> None:
        """
        Cut every follow stream's connection, as a proxy or a restart would.
        """
        for followers in list(self.log_followers.values()) + list(self.event_followers.values()):
            for follower in followers:
                follower.request.channel.transport.loseConnection()
        self.log_followers.clear()
        self.event_followers.clear()

    # events

    def event_log(self, request: Request, task_id: str) -> Any:
        after = int(arg(request, b"after_seq", b"0") or b"0")
        every = self.events.get(task_id, [])
        events = [event for event in every if event["seq"] > after]
        if arg(request, b"follow") != b"true":
            return self.answer(request, 200, events)
        request.setHeader(b"content-type", b"application/x-ndjson")
        request.write(b"")
        for event in events:
            request.write(json.dumps(event).encode() + b"\n")
        if any(event.get("event_type") in ("finished", "failed", "cancelled") for event in every):
            request.finish()
            return NOT_DONE_YET
        self.event_followers.setdefault(task_id, []).append(Follower(request, 0))
        return NOT_DONE_YET

    def add_event(self, task_id: str, event_type: str) -> None:
        """
        Record an event; followers get it, and end after a terminal one.
        """
        events = self.events.setdefault(task_id, [])
        event = event_of(len(events) + 1, task_id, event_type)
        events.append(event)
        terminal = event_type in ("finished", "failed", "cancelled")
        followers = self.event_followers.pop(task_id, []) if terminal else self.event_followers.get(task_id, [])
        for follower in followers:
            follower.request.write(json.dumps(event).encode() + b"\n")
            if terminal:
                follower.request.finish()


class ClientTestCase(SynchronousTestCase):
    """
    A client wired to a fresh L{FakeRuntime} and L{Clock}.
    """

    base_url = "http://runtime.test:8080/"
    prefix = b""

    def setUp(self) -> None:
        self.clock = Clock()
        self.runtime = FakeRuntime(self.clock, self.prefix)
        self.stub = StubTreq(self.runtime)
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
        self.runtime.events["t1"] = [
            {"seq": 1, "task_id": "t1", "event_type": "submitted",
             "timestamp": "2026-04-23T10:00:00Z", "message": "task submitted"},
            {"seq": 7, "task_id": "t1", "event_type": "planned",
             "timestamp": "2026-04-23T10:00:00Z", "message": "execution plan resolved",
             "data": {"degraded": False}},
        ]
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
        Each runtime endpoint returns its typed value; the prefix is kept
        and trailing slashes dropped.
        """
        self.assertEqual(self.result(self.client.healthz()), Health("ok", "1.1.0"))
        self.assertEqual(self.result(self.client.readyz()), Health("ready", "1.1.0"))
        info = self.result(self.client.runtime_info())
        self.assertEqual(
            info,
            RuntimeInfo("node-a", "1.1.0", "2026-04-23T10:00:00Z", "v1",
                        Platform("linux", "x86_64", False, False)),
        )
        self.assertEqual(info.raw["platform"]["os"], "linux")
        capabilities = self.result(self.client.capabilities())
        self.assertIsInstance(capabilities, CapabilitySnapshot)
        self.assertEqual(
            (capabilities.capacity, capabilities.degraded, capabilities.warnings,
             capabilities.stable_semantics, capabilities.overrides),
            (ResourceCapacity(4, 1024), True, ("no sandbox",), ("submit", "status"),
             {"cgroup": "disabled"}),
        )
        self.assertEqual(capabilities.raw["execution"]["script"], True)
        config = self.result(self.client.config())
        self.assertIsInstance(config, RuntimeSettings)
        self.assertEqual((config.max_running_tasks, config.cgroup_enabled), (4, True))
        resources = self.result(self.client.resources())
        self.assertIsInstance(resources, ResourcesView)
        self.assertEqual(
            (resources.capacity, resources.available, resources.accepted_waiting_tasks),
            (ResourceCapacity(4, pids=64), ResourceCapacity(3, pids=56), 2),
        )
        self.assertEqual(
            resources.active_reservations,
            (ActiveReservation("t9", "running", ResourceCapacity(1, pids=8), "2026-04-23T10:00:01Z"),),
        )
        self.assertEqual(
            resources.tenants,
            (TenantUsage("alice", ResourceCapacity(1), ResourceCapacity(2), ResourceCapacity(1)),
             TenantUsage("bob", ResourceCapacity(0))),
        )
        self.assertEqual(self.result(self.client.openapi())["openapi"], "3.1.0")
        self.assertEqual(
            [path for _, path in self.paths()],
            [b"/prefix/healthz", b"/prefix/readyz", b"/prefix/api/v1/runtime/info",
             b"/prefix/api/v1/runtime/capabilities", b"/prefix/api/v1/runtime/config",
             b"/prefix/api/v1/runtime/resources", b"/prefix/api/v1/openapi.json"],
        )

    def test_malformed_runtime_answers(self) -> None:
        """
        A runtime answer missing a contract field is a L{MalformedResponse}.
        """
        saved = dict(FIXED)
        self.addCleanup(FIXED.update, saved)
        FIXED[b"/api/v1/runtime/info"] = {"runtime_id": "node-a"}
        FIXED[b"/api/v1/runtime/resources"] = dict(saved[b"/api/v1/runtime/resources"], tenants=[{}])
        self.assertIn("version", str(self.failure(self.client.runtime_info(), MalformedResponse)))
        self.assertIn("tenant", str(self.failure(self.client.resources(), MalformedResponse)))

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


class LongPollTests(ClientTestCase):
    """
    C{wait} long-polls: C{?wait_ms=} capped by the timeout, no sleep when
    the server held the request.
    """

    def setUp(self) -> None:
        super().setUp()
        self.runtime.long_poll = True
        self.runtime.scripts["t1"] = [status_of("t1", "running")]

    def uris(self) -> List[bytes]:
        return [uri for uri in self.runtime.uris if uri.startswith(b"/api/v1/tasks/t1")]

    def test_held_requests(self) -> None:
        """
        A held request that comes back non-terminal is followed at once by
        the next; the terminal state answers the one in flight.
        """
        d = self.client.wait("t1", poll_interval_ms=10_000)
        self.stub.flush()
        self.assertEqual(self.uris(), [b"/api/v1/tasks/t1?wait_ms=30000"])
        self.clock.advance(30)
        self.stub.flush()
        self.assertEqual(len(self.uris()), 2)
        self.runtime.finish("t1", status_of("t1", "success"))
        self.assertEqual(self.result(d).status, "success")
        self.assertEqual(len(self.uris()), 2)

    def test_timeout_caps_wait(self) -> None:
        """
        C{wait_ms} is what is left of the timeout, so the wait ends on time.
        """
        d = self.client.wait("t1", timeout_ms=1500)
        self.stub.flush()
        self.assertEqual(self.uris(), [b"/api/v1/tasks/t1?wait_ms=1500"])
        self.clock.advance(1.5)
        error = self.failure(d, WaitTimeout)
        self.assertEqual(error.last_status.status, "running")
        self.assertEqual(len(self.uris()), 1)

    def test_request_timeout_extended(self) -> None:
        """
        A long-poll request may take its C{wait_ms} on top of the request
        timeout.
        """
        client = ExecgoClient(self.base_url, self.stub, self.clock, request_timeout=5.0)
        d = client.wait("t1", timeout_ms=20_000)
        self.stub.flush()
        self.clock.advance(19)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failure(d, WaitTimeout)

    def test_long_poll_off(self) -> None:
        """
        C{long_poll_ms=0} asks with C{wait_ms=0} and sleeps the poll interval
        between requests.
        """
        client = ExecgoClient(self.base_url, self.stub, self.clock, long_poll_ms=0)
        d = client.wait("t1", poll_interval_ms=100)
        self.stub.flush()
        self.clock.advance(0.1)
        self.stub.flush()
        self.assertEqual(self.uris(), [b"/api/v1/tasks/t1?wait_ms=0"] * 2)
        self.runtime.finish("t1", status_of("t1", "failed"))
        self.clock.advance(0.1)
        self.assertEqual(self.result(d).status, "failed")


class ListTests(ClientTestCase):
    """
    C{list_tasks} and C{iter_tasks}.
    """

    def setUp(self) -> None:
        super().setUp()
        listed = {key: value for key, value in status_of("b", "running").items()
                  if key not in ("stdout", "stderr", "stdout_truncated", "stderr_truncated")}
        self.runtime.pages = {
            None: {"tasks": [listed, status_of("a", "success")], "next_cursor": "c/1"},
            b"c/1": {"tasks": [status_of("z", "failed")], "next_cursor": None},
        }

    def test_page(self) -> None:
        """
        The filters become query parameters; the page is a L{TaskPage} of
        L{TaskStatus}es (without output) and its cursor.
        """
        page = self.result(self.client.list_tasks(
            status="running", tenant="team a", owner="bob",
            labels={"env": "prod", "k": "v:w"}, limit=2,
        ))
        self.assertIsInstance(page, TaskPage)
        self.assertEqual([task.task_id for task in page.tasks], ["b", "a"])
        self.assertEqual((page.tasks[0].stdout, page.next_cursor), ("", "c/1"))
        self.assertEqual(
            self.runtime.uris,
            [b"/api/v1/tasks?status=running&tenant=team%20a&owner=bob&label=env%3Aprod"
             b"&label=k%3Av%3Aw&limit=2"],
        )

    def test_iter_tasks(self) -> None:
        """
        C{iter_tasks} follows C{next_cursor} to the last page.
        """

        async def collect() -> List[str]:
            return [task.task_id async for task in self.client.iter_tasks(limit=2)]

        self.assertEqual(self.result(Deferred.fromCoroutine(collect())), ["b", "a", "z"])
        self.assertEqual(
            self.runtime.uris, [b"/api/v1/tasks?limit=2", b"/api/v1/tasks?limit=2&cursor=c%2F1"]
        )

    def test_malformed_page(self) -> None:
        """
        A page without C{tasks} is a L{MalformedResponse}.
        """
        self.runtime.pages[None] = {"next_cursor": None}
        self.failure(self.client.list_tasks(), MalformedResponse)


class SubmitOptionsTests(ClientTestCase):
    """
    Idempotency keys and bearer tokens.
    """

    REQUEST = {"execution": {"kind": "command", "program": "/bin/true"}}

    def test_idempotent_retry(self) -> None:
        """
        The key is sent as C{Idempotency-Key}; a retry gets the first answer
        and creates nothing; the key with another request is a 409.
        """
        first = self.result(self.client.submit(self.REQUEST, idempotency_key="k-1"))
        again = self.result(self.client.submit(self.REQUEST, idempotency_key="k-1"))
        self.assertEqual((first, again), (SubmitResult("generated-1", "generated-1", "accepted"),) * 2)
        self.assertEqual(list(self.runtime.scripts), ["generated-1"])
        self.assertEqual(self.runtime.headers[0][b"Idempotency-Key"], [b"k-1"])
        error = self.failure(
            self.client.submit({"execution": {"kind": "command", "program": "/bin/false"}},
                               idempotency_key="k-1"),
            ServerError,
        )
        self.assertEqual((error.status, error.code), (409, "conflict"))

    def test_run_with_key(self) -> None:
        """
        C{run} passes its key to the submission.
        """
        self.runtime.scripts["done"] = [status_of("done", "success")]
        self.runtime.idempotency["k-2"] = (
            json.dumps(self.REQUEST, separators=(",", ":")).encode(),
            {"task_id": "done", "handle_id": "done", "status": "accepted"},
        )
        status = self.result(self.client.run(self.REQUEST, idempotency_key="k-2"))
        self.assertEqual(status.task_id, "done")

    def test_token(self) -> None:
        """
        C{token} is sent as a bearer token on every request, streams too;
        without it the runtime's 401 is a L{ServerError}.
        """
        self.runtime.token = "s3cret"
        error = self.failure(self.client.healthz(), ServerError)
        self.assertEqual((error.status, error.code), (401, "permission_denied"))
        client = ExecgoClient(self.base_url, self.stub, self.clock, token="s3cret")
        self.assertEqual(self.result(client.healthz()).status, "ok")
        self.runtime.scripts["t1"] = [status_of("t1", "success")]
        self.assertEqual(self.result(client.stream_log("t1")), 0)
        self.assertEqual(
            [headers.get(b"Authorization") for headers in self.runtime.headers],
            [None, [b"Bearer s3cret"], [b"Bearer s3cret"]],
        )


class LogStreamTests(ClientTestCase):
    """
    C{read_log}, C{stream_log} and C{iter_log}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.runtime.scripts["t1"] = [status_of("t1", "running")]
        self.runtime.logs["t1"] = {"stdout": bytearray(b"hello "), "stderr": bytearray(b"e")}
        self.chunks: List[bytes] = []

    def test_read_log(self) -> None:
        """
        C{read_log} returns the log from an offset, whole.
        """
        self.assertEqual(self.result(self.client.read_log("t1", offset=2)), b"llo ")
        self.assertEqual(self.result(self.client.read_log("t1", "stderr")), b"e")
        self.assertEqual(
            self.runtime.uris,
            [b"/api/v1/tasks/t1/stdout?offset=2&follow=false",
             b"/api/v1/tasks/t1/stderr?offset=0&follow=false"],
        )
        self.failureResultOf(self.client.read_log("t1", "stdin"), ValueError)

    def test_follow(self) -> None:
        """
        C{stream_log} hands each piece to C{on_chunk} as it is written and
        fires with the offset reached once the task has ended.
        """
        d = self.client.stream_log("t1", offset=1, on_chunk=self.chunks.append)
        self.stub.flush()
        self.assertEqual(self.chunks, [b"ello "])
        self.runtime.append_log("t1", "stdout", b"world")
        self.stub.flush()
        self.assertEqual(self.chunks, [b"ello ", b"world"])
        self.assertNoResult(d)
        self.runtime.finish("t1", status_of("t1", "success"))
        self.assertEqual(self.result(d), 11)
        self.assertEqual(self.runtime.uris, [b"/api/v1/tasks/t1/stdout?offset=1&follow=true"])
        self.assertEqual(self.runtime.headers[0][b"Accept"], [b"*/*"])

    def test_backpressure(self) -> None:
        """
        While the Deferred C{on_chunk} returned is pending, no further piece
        is delivered.
        """
        pending: List[Deferred[None]] = []

        def on_chunk(data: bytes) -> Deferred[None]:
            self.chunks.append(data)
            pending.append(Deferred())
            return pending[-1]

        d = self.client.stream_log("t1", on_chunk=on_chunk)
        self.stub.flush()
        self.runtime.append_log("t1", "stdout", b"more")
        self.runtime.finish("t1", status_of("t1", "success"))
        self.stub.flush()
        self.assertEqual(self.chunks, [b"hello "])
        self.assertNoResult(d)
        pending[0].callback(None)
        self.stub.flush()
        self.assertEqual(self.chunks, [b"hello ", b"more"])
        self.assertNoResult(d)
        pending[1].callback(None)
        self.assertEqual(self.result(d), 10)

    def test_resume_after_drop(self) -> None:
        """
        A dropped connection is resumed at once from the bytes received:
        nothing is missed or delivered twice.
        """
        d = self.client.stream_log("t1", on_chunk=self.chunks.append)
        self.stub.flush()
        self.runtime.drop_followers()
        self.stub.flush()
        self.runtime.append_log("t1", "stdout", b"world")
        self.stub.flush()
        self.runtime.finish("t1", status_of("t1", "success"))
        self.assertEqual(self.result(d), 11)
        self.assertEqual(b"".join(self.chunks), b"hello world")
        self.assertEqual(
            self.runtime.uris,
            [b"/api/v1/tasks/t1/stdout?offset=0&follow=true",
             b"/api/v1/tasks/t1/stdout?offset=6&follow=true"],
        )

    def test_retries_bounded(self) -> None:
        """
        Breaks without progress are retried after a growing backoff, at
        most C{stream_retries} times in a row; then a L{TransportError}.
        """
        client = ExecgoClient(self.base_url, self.stub, self.clock, stream_retries=2)
        self.runtime.logs["t1"]["stdout"] = bytearray()
        d = client.stream_log("t1", on_chunk=self.chunks.append)
        for backoff in (0.25, 0.5):
            self.stub.flush()
            self.runtime.drop_followers()
            self.stub.flush()
            self.clock.advance(backoff)
        self.stub.flush()
        self.runtime.drop_followers()
        error = self.failure(d, TransportError)
        self.assertIn("the stream broke off", str(error))
        self.assertEqual(len(self.runtime.uris), 3)

    def test_errors(self) -> None:
        """
        An unknown task is a L{ServerError}; an unreachable server a
        L{TransportError} at once; a consumer's exception stops the stream
        and is the result.
        """
        error = self.failure(self.client.stream_log("nope"), ServerError)
        self.assertEqual((error.status, error.code), (404, "not_found"))

        class Refusing:
            def request(self, *args: Any, **kwargs: Any) -> "Deferred[Any]":
                return fail(ConnectionRefusedError("nobody home"))

        client = ExecgoClient(self.base_url, Refusing(), self.clock)
        self.failureResultOf(client.stream_log("t1"), TransportError)

        def explode(data: bytes) -> None:
            raise ZeroDivisionError()

        self.failure(self.client.stream_log("t1", on_chunk=explode), ZeroDivisionError)

    def test_cancel(self) -> None:
        """
        Cancelling a follow stream stops it and leaves no timer behind.
        """
        d = self.client.stream_log("t1", on_chunk=self.chunks.append)
        self.stub.flush()
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.chunks, [b"hello "])

    def test_iter_log(self) -> None:
        """
        C{iter_log} yields the pieces in order until the stream ends.
        """

        async def collect() -> List[bytes]:
            return [chunk async for chunk in self.client.iter_log("t1", "stderr")]

        d = Deferred.fromCoroutine(collect())
        self.stub.flush()
        self.runtime.append_log("t1", "stderr", b"rr")
        self.stub.flush()
        self.runtime.finish("t1", status_of("t1", "failed"))
        self.assertEqual(self.result(d), [b"e", b"rr"])

    def test_iter_log_closed_early(self) -> None:
        """
        Leaving the loop and closing the iterator stops the stream.
        """

        async def first() -> bytes:
            chunks = self.client.iter_log("t1")
            async for chunk in chunks:
                await chunks.aclose()  # type: ignore[attr-defined]
                return chunk
            raise AssertionError("no chunk")

        self.assertEqual(self.result(Deferred.fromCoroutine(first())), b"hello ")


class EventStreamTests(ClientTestCase):
    """
    C{events} with C{after_seq}, C{follow_events} and C{iter_events}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.runtime.scripts["t1"] = [status_of("t1", "running")]
        self.runtime.add_event("t1", "submitted")
        self.runtime.add_event("t1", "accepted")
        self.seen: List[TaskEvent] = []

    def test_after_seq(self) -> None:
        """
        C{events(after_seq=N)} asks for the events after N only.
        """
        events = self.result(self.client.events("t1", after_seq=1))
        self.assertEqual([event.event_type for event in events], ["accepted"])
        self.assertEqual(self.runtime.uris, [b"/api/v1/tasks/t1/events?after_seq=1"])

    def test_follow(self) -> None:
        """
        Each event reaches C{on_event} as it is recorded; the result is the
        terminal event; the request asks for NDJSON.
        """
        d = self.client.follow_events("t1", on_event=self.seen.append)
        self.stub.flush()
        self.assertEqual([event.seq for event in self.seen], [1, 2])
        self.runtime.add_event("t1", "started")
        self.stub.flush()
        self.assertEqual(self.seen[-1].event_type, "started")
        self.runtime.add_event("t1", "finished")
        last = self.result(d)
        self.assertEqual((last.seq, last.event_type, last.terminal), (4, "finished", True))
        self.assertEqual(self.runtime.uris, [b"/api/v1/tasks/t1/events?after_seq=0&follow=true"])
        self.assertEqual(self.runtime.headers[0][b"Accept"], [b"application/x-ndjson"])

    def test_resume_after_drop(self) -> None:
        """
        After a drop, the stream resumes after the last event seen.
        """
        d = self.client.follow_events("t1", after_seq=1, on_event=self.seen.append)
        self.stub.flush()
        self.runtime.drop_followers()
        self.stub.flush()
        self.runtime.add_event("t1", "cancelled")
        self.result(d)
        self.assertEqual([event.seq for event in self.seen], [2, 3])
        self.assertEqual(
            self.runtime.uris,
            [b"/api/v1/tasks/t1/events?after_seq=1&follow=true",
             b"/api/v1/tasks/t1/events?after_seq=2&follow=true"],
        )

    def test_nothing_after(self) -> None:
        """
        A stream of a finished task with nothing after C{after_seq} fires
        with C{None}.
        """
        self.runtime.add_event("t1", "failed")
        self.assertIsNone(self.result(self.client.follow_events("t1", after_seq=3)))

    def test_malformed_line(self) -> None:
        """
        A line that is not an event fails the stream with
        L{MalformedResponse}.
        """
        self.runtime.events["t1"].append({"seq": 3, "task_id": "t1"})
        self.failure(self.client.follow_events("t1"), MalformedResponse)

    def test_not_a_stream(self) -> None:
        """
        An answer that ends in the middle of a line (the plain JSON array of
        a server without event streams) is a L{MalformedResponse}.
        """

        def no_follow(request: Request, task_id: str) -> bytes:
            return self.runtime.answer(request, 200, self.runtime.events[task_id])

        self.runtime.event_log = no_follow  # type: ignore[method-assign]
        error = self.failure(self.client.follow_events("t1"), MalformedResponse)
        self.assertIn("middle of a line", str(error))

    def test_iter_events(self) -> None:
        """
        C{iter_events} yields L{TaskEvent}s until the terminal one.
        """

        async def collect() -> List[str]:
            return [event.event_type async for event in self.client.iter_events("t1")]

        d = Deferred.fromCoroutine(collect())
        self.stub.flush()
        self.runtime.add_event("t1", "cancelled")
        self.assertEqual(self.result(d), ["submitted", "accepted", "cancelled"])


class RealResourceTests(TestCase):
    """
    The client against the real Klein resource of an in-process runtime
    (whose supervisor link is a fake, so tasks stay queued).
    """

    timeout = 30

    async def start(self) -> Any:
        from twisted.internet import reactor

        from tests.apifixture import InProcessRuntime, tmp_data_dir

        rt = InProcessRuntime(tmp_data_dir(self))
        await rt.start()
        self.addCleanup(lambda: defer.ensureDeferred(rt.stop()))
        self.rt = rt
        self.client = ExecgoClient("http://runtime.test", rt.treq, reactor)
        return rt

    def settle(self, d: "Deferred[Any]") -> "Deferred[Any]":
        return defer.ensureDeferred(self.rt.settle(d))

    REQUEST = {"execution": {"kind": "command", "program": "/bin/true"},
               "control_context": {"tenant": "t", "labels": {"env": "test"}}}

    async def test_submit_list(self) -> None:
        """
        An idempotent retry returns the same task; the list finds it by
        label, page by page.
        """
        await self.start()
        first = await self.settle(self.client.submit(self.REQUEST, idempotency_key="key-1"))
        again = await self.settle(self.client.submit(self.REQUEST, idempotency_key="key-1"))
        self.assertEqual(first, again)
        error = await self.assertFailure(
            self.settle(self.client.submit({**self.REQUEST, "metadata": {"x": "y"}},
                                           idempotency_key="key-1")),
            ServerError,
        )
        self.assertEqual((error.status, error.code), (409, "conflict"))
        second = await self.settle(self.client.submit(self.REQUEST))
        page = await self.settle(self.client.list_tasks(labels={"env": "test"}, limit=1))
        self.assertEqual([task.task_id for task in page.tasks], [second.task_id])
        self.assertIsNotNone(page.next_cursor)
        page = await self.settle(self.client.list_tasks(status="accepted", cursor=page.next_cursor))
        self.assertEqual([task.task_id for task in page.tasks], [first.task_id])
        self.assertIsNone(page.next_cursor)

    async def test_wait_long_polls(self) -> None:
        """
        The server holds the wait: a queued task times out after about the
        timeout without polling (the poll interval is far longer), and a
        kill answers a wait in flight at once.
        """
        from twisted.internet import reactor

        await self.start()
        task = await self.settle(self.client.submit(self.REQUEST))
        before = reactor.seconds()
        error = await self.assertFailure(
            self.settle(self.client.wait(task.task_id, timeout_ms=300, poll_interval_ms=60_000)),
            WaitTimeout,
        )
        self.assertEqual(error.last_status.status, "accepted")
        self.assertGreaterEqual(reactor.seconds() - before, 0.25)
        waiting = self.client.wait(task.task_id, poll_interval_ms=60_000)
        await self.settle(self.client.status(task.task_id))
        await self.settle(self.client.kill(task.task_id))
        final = await self.settle(waiting)
        self.assertEqual((final.status, final.error), ("cancelled", TaskError("cancelled", final.error.message)))

    async def test_streams(self) -> None:
        """
        The log stream serves what is in the log and follows it until the
        task ends; the event stream ends with the terminal event.
        """
        await self.start()
        task = await self.settle(self.client.submit(self.REQUEST))
        status = await self.settle(self.client.status(task.task_id))
        path = status.raw["artifacts"]["stdout_path"]
        with open(path, "ab") as f:
            f.write(b"first\n")
        self.assertEqual(await self.settle(self.client.read_log(task.task_id, offset=1)), b"irst\n")
        chunks: List[bytes] = []
        events: List[TaskEvent] = []
        following = self.client.stream_log(task.task_id, offset=2, on_chunk=chunks.append)
        watching = self.client.follow_events(task.task_id, on_event=events.append)
        await self.settle(self.client.status(task.task_id))
        with open(path, "ab") as f:
            f.write(b"second\n")
        await self.settle(self.client.kill(task.task_id))
        self.assertEqual(await self.settle(following), 13)
        self.assertEqual(b"".join(chunks), b"rst\nsecond\n")
        last = await self.settle(watching)
        self.assertEqual(last.event_type, "cancelled")
        self.assertEqual([event.event_type for event in events][:2], ["submitted", "accepted"])
        error = await self.assertFailure(self.settle(self.client.stream_log("nope")), ServerError)
        self.assertEqual((error.status, error.code), (404, "not_found"))

    async def test_runtime_models(self) -> None:
        """
        The typed runtime answers parse the real server's bodies.
        """
        await self.start()
        info = await self.settle(self.client.runtime_info())
        self.assertEqual((info.runtime_id, info.snapshot_version), ("test-runtime", "v1"))
        capabilities = await self.settle(self.client.capabilities())
        self.assertEqual(capabilities.capacity.task_slots, 4)
        config = await self.settle(self.client.config())
        self.assertEqual(config.data_dir, self.rt.config.data_dir)
        resources = await self.settle(self.client.resources())
        self.assertEqual((resources.capacity.task_slots, resources.active_reservations), (4, ()))
        self.assertEqual((await self.settle(self.client.healthz())).status, "ok")


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
