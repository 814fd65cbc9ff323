"""
Tests for L{execgo.server.web.api}: the real Klein resource over the real
runtime and store, in memory and synchronous through StubTreq
(L{tests.apifixture.MemoryRuntime}: the store's SQL runs at once, time is
a clock the tests advance, and the supervisor link is a fake that is never
connected, so submitted tasks stay queued).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import attrs
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.trial.util import suppress as SUPPRESS

from execgo import control
from execgo.core.config import RuntimeConfig
from tests import backends
from tests.apifixture import MemoryRuntime, tmp_data_dir

COMMAND = {"execution": {"kind": "command", "program": "/bin/true"}}


def body(value: Any) -> bytes:
    """
    C{value} as a JSON request body.
    """
    return json.dumps(value).encode("utf-8")


class APITestsBase(SynchronousTestCase):
    """
    One in-memory runtime per test.
    """

    # treq names some headers with str and Twisted with bytes; under -b
    # Twisted's shared header-name cache then compares the two.
    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]
    config_overrides: Dict[str, Any] = {}
    caps: Dict[str, Any] = {}
    backend = backends.SQLITE_BACKEND

    def setUp(self) -> None:
        self.data_dir = tmp_data_dir(self)
        config = RuntimeConfig(
            data_dir=self.data_dir, database_url=self.backend.database_url(self), **self.config_overrides
        )
        self.rt = MemoryRuntime(self.data_dir, config, **self.caps)
        self.rt.start()
        self.addCleanup(self.rt.stop)

    @staticmethod
    def decoded(answer: "tuple[int, Dict[bytes, List[bytes]], bytes]") -> "tuple[int, Any, Dict[bytes, List[bytes]]]":
        """
        An answer with its body decoded when it is JSON: status, body,
        headers.
        """
        code, response_headers, content = answer
        try:
            decoded = json.loads(content) if content else None
        except ValueError:
            decoded = content
        return code, decoded, response_headers

    def call(
        self, method: str, path: str, data: Optional[bytes] = None, headers: Optional[Dict[bytes, List[bytes]]] = None
    ) -> "tuple[int, Any, Dict[bytes, List[bytes]]]":
        """
        One request, answered at once: status, decoded body, headers.
        """
        return self.decoded(self.rt.request(method, path, data, headers))

    def submit(self, request: Dict[str, Any]) -> "tuple[int, Any]":
        """
        Submit C{request}: status and decoded answer.
        """
        code, decoded, _ = self.call("POST", "/api/v1/tasks", body(request))
        return code, decoded

    def assertEnvelope(self, code: int, decoded: Any, status: int, error_code: str) -> None:
        """
        C{decoded} is the error envelope with C{error_code}, answered with
        C{status}.
        """
        self.assertEqual((code, decoded["error"]["code"]), (status, error_code), decoded)
        self.assertEqual(sorted(decoded), ["error"])
        self.assertIsInstance(decoded["error"]["message"], str)


@backends.each
class SubmitTests(APITestsBase):
    """
    C{POST /api/v1/tasks}.
    """

    def test_submit_persists_and_queues(self) -> None:
        """
        A valid submission answers 200 with the id and C{accepted}, stores
        the normalised request and the first events, and the task shows as
        queued (the fake supervisor never takes it).
        """
        code, decoded = self.submit({"task_id": "a1", **COMMAND, "metadata": {"b": "2", "a": "1"}, "unknown": 1})
        self.assertEqual(code, 200)
        self.assertEqual(decoded, {"task_id": "a1", "handle_id": "a1", "status": "accepted"})
        with open(os.path.join(self.data_dir, "tasks", "a1", "request.json")) as f:
            text = f.read()
        self.assertFalse(text.endswith("\n"))
        self.assertEqual(
            json.loads(text),
            {
                "task_id": "a1",
                "execution": {"kind": "command", "program": "/bin/true", "args": [], "env": {}},
                "limits": {"wall_time_ms": 300000, "stdout_max_bytes": 4194304, "stderr_max_bytes": 4194304},
                "sandbox": {"profile": "process", "chroot": False},
                "metadata": {"a": "1", "b": "2"},
            },
        )
        code, status, headers = self.call("GET", "/api/v1/tasks/a1")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.assertEqual(status["status"], "accepted")
        self.assertEqual(status["metadata"], {"a": "1", "b": "2"})
        self.assertEqual(status["stdout"], "")
        self.assertNotIn("duration_ms", status)
        self.assertTrue(os.path.isabs(status["artifacts"]["task_dir"]))
        code, events, _ = self.call("GET", "/api/v1/tasks/a1/events")
        self.assertEqual([e["event_type"] for e in events], ["submitted", "accepted", "planned"])
        self.assertEqual(events[2]["data"]["resource_enforcement"]["wall_time_ms"], 300000)
        # The status's plan is the planned one, plus who it runs as (not
        # known while the task is queued).
        self.assertEqual(
            json.dumps({**events[2]["data"], "run_as": None}, sort_keys=True),
            json.dumps(status["execution_plan"], sort_keys=True),
        )

    def test_generated_id(self) -> None:
        """
        Without a task_id the runtime generates a lowercase UUIDv4.
        """
        code, decoded = self.submit(COMMAND)
        self.assertEqual(code, 200)
        task_id = decoded["task_id"]
        self.assertEqual(len(task_id), 36)
        self.assertEqual(task_id[14], "4")
        self.assertEqual(task_id, task_id.lower())

    def test_decoding_errors_are_400(self) -> None:
        """
        Every decoding rejection is 400 C{invalid_input} with the envelope,
        whatever the content type: never a 415, a 422 or a plain-text body.
        """
        bad = [
            b"not json",
            b"[]",
            b"{}",
            b'{"execution": null}',
            b'{"execution": {"kind": "shell"}}',
            b'{"execution": {"kind": "command", "program": 3}}',
            b'{"execution": {"kind": "command", "program": "x"}, "limits": {"wall_time_ms": -1}}',
            b'{"execution": {"kind": "command", "program": "x"}, "limits": {"wall_time_ms": 1.5}}',
            b'{"execution": {"kind": "command", "program": "x"}, "limits": null}',
            b'{"execution": {"kind": "command", "program": "x"}, "limits": {"memory_bytes": 18446744073709551616}}',
        ]
        for data in bad:
            code, decoded, _ = self.call("POST", "/api/v1/tasks", data, {b"content-type": [b"text/plain"]})
            self.assertEnvelope(code, decoded, 400, "invalid_input")
        self.assertEqual(os.listdir(os.path.join(self.data_dir, "tasks")), [])

    def test_validation_errors(self) -> None:
        """
        Semantic rules and the task_id hazards are 400 C{invalid_input}.
        """
        requests = [
            {"execution": {"kind": "command", "program": "  "}},
            {**COMMAND, "limits": {"wall_time_ms": 0}},
            {**COMMAND, "limits": {"memory_bytes": 0}},
            {**COMMAND, "limits": {"cpu_time_sec": 0}},
            {**COMMAND, "limits": {"pids_max": 0}},
            {**COMMAND, "sandbox": {"workspace_subdir": "../x"}},
            {**COMMAND, "sandbox": {"chroot": True, "rootfs": "/r"}},
            {**COMMAND, "task_id": "."},
            {**COMMAND, "task_id": ".."},
            {**COMMAND, "task_id": " a"},
            {**COMMAND, "task_id": "a/b"},
            {**COMMAND, "task_id": "x" * 129},
            {**COMMAND, "control_context": {"owner": " "}},
        ]
        for request in requests:
            code, decoded = self.submit(request)
            self.assertEnvelope(code, decoded, 400, "invalid_input")
        self.assertEqual(os.listdir(os.path.join(self.data_dir, "tasks")), [])

    def test_body_too_large(self) -> None:
        """
        A body over 2 MiB gets 413 with code C{invalid_input}.
        """
        data = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        code, decoded, _ = self.call("POST", "/api/v1/tasks", data)
        self.assertEnvelope(code, decoded, 413, "invalid_input")

    def test_duplicate_id(self) -> None:
        """
        A second submission with the same id is 409 and does not touch the
        first task's request.json.
        """
        self.submit({"task_id": "dup", **COMMAND})
        path = os.path.join(self.data_dir, "tasks", "dup", "request.json")
        with open(path) as f:
            before = f.read()
        code, decoded = self.submit({"task_id": "dup", "execution": {"kind": "command", "program": "/bin/false"}})
        self.assertEnvelope(code, decoded, 409, "conflict")
        with open(path) as f:
            self.assertEqual(f.read(), before)

    def test_output_limit_too_large(self) -> None:
        """
        An output limit above 2^63-1 is 400 C{invalid_input}, and nothing
        is stored.
        """
        code, decoded = self.submit({"task_id": "big", **COMMAND, "limits": {"stdout_max_bytes": 2**63}})
        self.assertEnvelope(code, decoded, 400, "invalid_input")
        code, decoded, _ = self.call("GET", "/api/v1/tasks/big")
        self.assertEqual(code, 404)

    def test_capacity_and_strict(self) -> None:
        """
        A task larger than the capacity is 400 C{insufficient_resources};
        a linux_sandbox task under strict policy on a host without the
        sandbox is 400 C{unsupported_capability}, and degrades in adaptive
        mode with the contract's reason and a C{degraded} event.
        """
        code, decoded = self.submit({**COMMAND, "limits": {"memory_bytes": 2 << 30}})
        self.assertEnvelope(code, decoded, 400, "insufficient_resources")
        sandboxed = {**COMMAND, "sandbox": {"profile": "linux_sandbox"}}
        code, decoded = self.submit({**sandboxed, "policy": {"capability_mode": "strict"}})
        self.assertEnvelope(code, decoded, 400, "unsupported_capability")
        code, decoded = self.submit({"task_id": "deg", **sandboxed})
        self.assertEqual(code, 200)
        code, status, _ = self.call("GET", "/api/v1/tasks/deg")
        plan = status["execution_plan"]
        self.assertTrue(plan["degraded"])
        self.assertEqual(
            plan["fallback_reasons"], ["linux_sandbox is unavailable; falling back to process sandbox"]
        )
        self.assertEqual(plan["effective_sandbox"], {"profile": "process", "chroot": False})
        code, events, _ = self.call("GET", "/api/v1/tasks/deg/events")
        self.assertEqual(
            [e["event_type"] for e in events], ["submitted", "accepted", "planned", "degraded"]
        )


@backends.each
class QueueAndQuotaTests(APITestsBase):
    """
    The queue bound and tenant quotas.
    """

    config_overrides = {"max_queued_tasks": 1, "tenant_quotas": ("alice=slots:0",)}

    def test_quota_and_queue(self) -> None:
        """
        A tenant with C{slots:0} is refused with 400; a full queue is 429
        C{resource_limit_exceeded} with the bare message C{queue is full}.
        """
        code, decoded = self.submit({**COMMAND, "control_context": {"tenant": "alice"}})
        self.assertEnvelope(code, decoded, 400, "insufficient_resources")
        code, decoded = self.submit(COMMAND)
        self.assertEqual(code, 200)
        code, decoded = self.submit(COMMAND)
        self.assertEnvelope(code, decoded, 429, "resource_limit_exceeded")
        self.assertEqual(decoded["error"]["message"], "queue is full")
        code, resources, _ = self.call("GET", "/api/v1/runtime/resources")
        self.assertEqual(resources["accepted_waiting_tasks"], 1)
        self.assertEqual(
            resources["tenants"],
            [
                {
                    "tenant": "alice",
                    "quota": {"task_slots": 0},
                    "reserved": {"task_slots": 0},
                    "available": {"task_slots": 0},
                }
            ],
        )


@backends.each
class KillTests(APITestsBase):
    """
    C{POST /api/v1/tasks/{id}/kill}.
    """

    def test_kill_queued(self) -> None:
        """
        Killing a queued task cancels it at once (duration 0, the contract's
        message, C{result.json} written); a second kill of the now terminal
        task answers 200 and adds no event.
        """
        self.submit({"task_id": "q", **COMMAND})
        code, status, _ = self.call("POST", "/api/v1/tasks/q/kill")
        self.assertEqual(code, 200)
        self.assertEqual(status["status"], "cancelled")
        self.assertEqual(status["duration_ms"], 0)
        self.assertEqual(
            status["error"], {"code": "cancelled", "message": "task cancelled before execution"}
        )
        with open(status["artifacts"]["result_path"]) as f:
            self.assertEqual(json.load(f)["status"], "cancelled")
        code, events, _ = self.call("GET", "/api/v1/tasks/q/events")
        kinds = [e["event_type"] for e in events]
        self.assertEqual(kinds, ["submitted", "accepted", "planned", "kill_requested", "cancelled"])
        code, again, _ = self.call("POST", "/api/v1/tasks/q/kill")
        self.assertEqual((code, again["status"]), (200, "cancelled"))
        code, events, _ = self.call("GET", "/api/v1/tasks/q/events")
        self.assertEqual(len(events), len(kinds))

    def test_owner_gate(self) -> None:
        """
        A task with an owner is killed only by that owner (header trimmed,
        case-sensitive); the check applies to terminal tasks too.
        """
        self.submit({"task_id": "o", **COMMAND, "control_context": {"owner": "alice"}})
        for headers in (None, {b"x-execgo-owner": [b"Alice"]}, {b"x-execgo-owner": [b"  "]}):
            code, decoded, _ = self.call("POST", "/api/v1/tasks/o/kill", headers=headers)
            self.assertEnvelope(code, decoded, 403, "permission_denied")
            self.assertEqual(decoded["error"]["message"], "permission denied: kill requires owner 'alice'")
        code, status, _ = self.call("POST", "/api/v1/tasks/o/kill", headers={b"X-Execgo-Owner": [b" alice "]})
        self.assertEqual((code, status["status"]), (200, "cancelled"))
        code, decoded, _ = self.call("POST", "/api/v1/tasks/o/kill")
        self.assertEnvelope(code, decoded, 403, "permission_denied")


class LongPollTests(APITestsBase):
    """
    C{GET /api/v1/tasks/{id}?wait_ms=N} answered by the supervisor's report.
    """

    def poll_until_reported(self, report: control.Report) -> "tuple[int, Any]":
        """
        Long-poll task C{w} (queued), deliver C{report} once the poll
        waits, and return the poll's answer.
        """
        self.submit({"task_id": "w", **COMMAND})
        polled = self.rt.send("GET", "/api/v1/tasks/w?wait_ms=5000")
        self.assertNoResult(polled)
        self.assertEqual(len(self.rt.runtime.waiters), 1)
        self.rt.runtime.on_supervisor_message(report)
        code, status, _ = self.decoded(self.rt.done(polled))
        return code, status

    def test_deadline(self) -> None:
        """
        Without a report, the long-poll answers the task's state when
        C{wait_ms} has passed, and not a moment before.
        """
        self.submit({"task_id": "w", **COMMAND})
        polled = self.rt.send("GET", "/api/v1/tasks/w?wait_ms=5000")
        self.rt.clock.advance(4.999)
        self.rt.treq.flush()
        self.assertNoResult(polled)
        self.rt.clock.advance(0.001)
        code, status, _ = self.decoded(self.rt.done(polled))
        self.assertEqual((code, status["status"]), (200, "accepted"))
        self.assertEqual(len(self.rt.runtime.waiters), 0)

    def test_answered_from_the_report(self) -> None:
        """
        The terminal snapshot carried by a C{finished} report is the
        answer, as reported (not read again from the store).
        """
        reported = {"task_id": "w", "status": "success", "note": "from the report"}
        code, status = self.poll_until_reported(control.Finished("w", reported))
        self.assertEqual((code, status), (200, reported))

    def test_report_without_status(self) -> None:
        """
        A report without a snapshot (a large one is left out) sends the
        poll to the store for the task's state; a state that is not
        terminal there (this fake report changed nothing) is waited on for
        the rest of C{wait_ms}, then answered.
        """
        self.submit({"task_id": "w", **COMMAND})
        polled = self.rt.send("GET", "/api/v1/tasks/w?wait_ms=5000")
        self.assertNoResult(polled)
        self.rt.runtime.on_supervisor_message(control.Finished("w"))
        self.rt.treq.flush()
        self.assertNoResult(polled)
        self.assertEqual(len(self.rt.runtime.waiters), 1)
        self.rt.clock.advance(5)
        code, status, _ = self.decoded(self.rt.done(polled))
        self.assertEqual((code, status["task_id"], status["status"]), (200, "w", "accepted"))
        self.assertIn("artifacts", status)

    def test_reported_snapshot_kept(self) -> None:
        """
        Later status requests for a reported task, with or without
        C{wait_ms}, are answered from the kept report, not the store
        (which this fake report never changed).
        """
        reported = {"task_id": "w", "status": "success", "note": "from the report"}
        self.poll_until_reported(control.Finished("w", reported))
        for path in ("/api/v1/tasks/w", "/api/v1/tasks/w?wait_ms=5000"):
            code, status, _ = self.call("GET", path)
            self.assertEqual((code, status), (200, reported))


class KeptSnapshotTests(APITestsBase):
    """
    Terminal snapshots read from the store are kept, until GC deletes the
    task.
    """

    config_overrides = {"result_retention_secs": 0}

    def test_kept_until_collected(self) -> None:
        """
        A cancelled task's snapshot is kept after the first read; once GC
        has deleted the task it is forgotten, and the task is 404.
        """
        self.submit({"task_id": "g", **COMMAND})
        code, _, _ = self.call("POST", "/api/v1/tasks/g/kill")
        self.assertEqual(code, 200)
        code, first, _ = self.call("GET", "/api/v1/tasks/g")
        self.assertEqual((code, first["status"]), (200, "cancelled"))
        self.assertEqual(self.rt.runtime.finished.get("g"), first)
        collected = self.rt.done(defer.ensureDeferred(self.rt.runtime.collect_garbage()))
        self.assertEqual(collected, 1)
        self.assertIsNone(self.rt.runtime.finished.get("g"))
        code, decoded, _ = self.call("GET", "/api/v1/tasks/g")
        self.assertEnvelope(code, decoded, 404, "not_found")


class RoutingTests(APITestsBase):
    """
    Unknown paths, wrong methods, unknown tasks.
    """

    def test_unknown(self) -> None:
        """
        Unknown paths (a trailing slash included) and unknown task ids are
        404 with the envelope; a wrong method is 405 C{invalid_input}.
        """
        for method, path in [
            ("GET", "/nope"),
            ("GET", "/api/v1/tasks/"),
            ("GET", "/api/v1/tasks/missing"),
            ("GET", "/api/v1/tasks/missing/events"),
            ("POST", "/api/v1/tasks/missing/kill"),
        ]:
            code, decoded, _ = self.call(method, path)
            self.assertEnvelope(code, decoded, 404, "not_found")
        for method, path in [
            ("PUT", "/api/v1/tasks"),
            ("DELETE", "/api/v1/tasks/x"),
            ("GET", "/api/v1/tasks/x/kill"),
            ("POST", "/healthz"),
        ]:
            code, decoded, _ = self.call(method, path)
            self.assertEnvelope(code, decoded, 405, "invalid_input")

    def test_stopping(self) -> None:
        """
        While the runtime stops, submissions get 503 with the envelope.
        """
        self.rt.runtime.accepting = False
        code, decoded = self.submit(COMMAND)
        self.assertEqual(code, 503)
        self.assertEqual(decoded["error"]["code"], "internal")


@backends.each
class RuntimeViewTests(APITestsBase):
    """
    The runtime endpoints, health and metrics.
    """

    def test_views(self) -> None:
        """
        info, config, capabilities, healthz and readyz have the contract's
        shapes.
        """
        code, info, _ = self.call("GET", "/api/v1/runtime/info")
        self.assertEqual(list(info), ["runtime_id", "version", "started_at", "snapshot_version", "platform"])
        self.assertEqual((info["version"], info["snapshot_version"]), ("1.1.0", "v1"))
        code, config, _ = self.call("GET", "/api/v1/runtime/config")
        self.assertEqual(config["data_dir"], self.data_dir)
        self.assertEqual(config["max_running_tasks"], 4)
        self.assertIs(config["cgroup_enabled"], True)
        code, caps, _ = self.call("GET", "/api/v1/runtime/capabilities")
        self.assertEqual(caps["resources"]["capacity"], {"task_slots": 4, "memory_bytes": 1 << 30, "pids": 4096})
        code, health, _ = self.call("GET", "/healthz")
        self.assertEqual((code, health), (200, {"status": "ok", "version": "1.1.0"}))
        code, ready, _ = self.call("GET", "/readyz")
        self.assertEqual((code, ready), (200, {"status": "ready", "version": "1.1.0"}))

    def test_metrics(self) -> None:
        """
        /metrics is Prometheus text with the four families in order.
        """
        self.submit({"task_id": "m", **COMMAND})
        self.call("POST", "/api/v1/tasks/m/kill")
        code, headers, content = self.rt.request("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"Content-Type"], [b"text/plain; version=0.0.4"])
        text = content.decode()
        self.assertIn('execgo_runtime_tasks_total{status="cancelled"} 1\n', text)
        self.assertIn('execgo_runtime_task_errors_total{code="cancelled"} 1\n', text)
        self.assertIn('execgo_runtime_task_duration_ms_bucket{le="100"} 1\n', text)
        families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        self.assertEqual(
            families[:4],
            [
                "execgo_runtime_tasks_total",
                "execgo_runtime_tasks_running",
                "execgo_runtime_task_errors_total",
                "execgo_runtime_task_duration_ms",
            ],
        )
        # The runtime's own families come after the contract's four.
        self.assertIn('execgo_runtime_tasks_submitted_total{tenant=""} 1\n', text)
        self.assertIn(
            'execgo_runtime_tasks_finished_total{status="cancelled",code="cancelled",tenant=""} 1\n',
            text,
        )
        self.assertIn('execgo_runtime_ledger_capacity{resource="task_slots"} 4\n', text)
        self.assertIn('execgo_runtime_ledger_utilisation{resource="task_slots"} 0\n', text)
        for name in ("task_queue_wait_ms", "task_spawn_latency_ms", "task_run_time_ms"):
            self.assertIn(f"execgo_runtime_{name}_count ", text)


class ClientAgainstAPITests(APITestsBase):
    """
    L{execgo.client.ExecgoClient} against the real resource.
    """

    def test_client_round_trip(self) -> None:
        """
        The treq client submits, reads, kills and sees typed errors carrying
        the server's code.
        """
        from execgo.client import ExecgoClient, ServerError

        client = ExecgoClient("http://runtime.test", self.rt.treq, self.rt.clock)
        submitted = self.rt.done(client.submit({"task_id": "c1", **COMMAND}))
        self.assertEqual((submitted.task_id, submitted.status), ("c1", "accepted"))
        status = self.rt.done(client.status("c1"))
        self.assertEqual(status.status, "accepted")
        killed = self.rt.done(client.kill("c1"))
        self.assertEqual(killed.status, "cancelled")
        events = self.rt.done(client.events("c1"))
        self.assertEqual(events[-1].event_type, "cancelled")
        failure = self.assertRaises(ServerError, self.rt.done, client.status("nope"))
        self.assertEqual((failure.status, failure.code), (404, "not_found"))
        final = self.rt.done(client.wait("c1"))
        self.assertTrue(final.terminal)
        self.assertEqual(attrs.asdict(final)["error"]["code"], "cancelled")


@backends.each
class TextTests(APITestsBase):
    """
    Text every store can hold: what a store could not keep (U+0000, which
    PostgreSQL's text refuses) is refused as the client's error, on every
    store alike, and changes nothing.
    """

    def test_nul_in_stored_strings(self) -> None:
        """
        U+0000 in a label, a tenant or an owner is C{400 invalid_input}
        naming the field; nothing is stored.
        """
        contexts = [
            {"labels": {"k": "a\u0000b"}},
            {"labels": {"k\u0000": "v"}},
            {"tenant": "t\u0000"},
            {"owner": "o\u0000"},
        ]
        for context in contexts:
            code, decoded = self.submit({**COMMAND, "control_context": context})
            self.assertEnvelope(code, decoded, 400, "invalid_input")
            self.assertIn("U+0000", decoded["error"]["message"])
        code, listed, _ = self.call("GET", "/api/v1/tasks")
        self.assertEqual((code, listed["tasks"]), (200, []))

    def test_nul_in_filters(self) -> None:
        """
        U+0000 in a list filter is never a server error.
        """
        for query in ("tenant=a%00b", "owner=%00", "label=k%3D%00"):
            code, decoded, _ = self.call("GET", f"/api/v1/tasks?{query}")
            self.assertIn(code, (200, 400), decoded)
