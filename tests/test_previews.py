"""
The preview ceiling and the preview budget end to end: the real Klein
resource, runtime and store in memory (L{InProcessRuntime}; tasks stay
queued, and their logs are written by the tests).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, List, Optional

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.trial.util import suppress as SUPPRESS

from execgo.core.config import RuntimeConfig
from execgo.core.encoding import compact
from execgo.server.budget import HeldSnapshot, claim
from tests.apifixture import InProcessRuntime, tmp_data_dir

KIB = 1024
OUTPUT_LIMIT_MAX = 2**63 - 1


def _task(task_id: str, stdout_max: int, stderr_max: int = 1024) -> bytes:
    return json.dumps(
        {
            "task_id": task_id,
            "execution": {"kind": "command", "program": "/bin/true"},
            "limits": {"stdout_max_bytes": stdout_max, "stderr_max_bytes": stderr_max},
        }
    ).encode()


class PreviewTestsBase(TestCase):
    """
    A runtime whose preview ceiling is C{ceiling}, with a budget of
    C{budget} bytes (none when C{None}).
    """

    timeout = 30
    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]
    ceiling = 4096
    budget: Optional[int] = None

    def setUp(self) -> "defer.Deferred[None]":
        from execgo.server.budget import ByteBudget

        self.data_dir = tmp_data_dir(self)
        config = RuntimeConfig(data_dir=self.data_dir, max_output_preview_bytes=self.ceiling)
        self.budget_obj = None if self.budget is None else ByteBudget(self.budget)
        self.rt = InProcessRuntime(self.data_dir, config, budget=self.budget_obj)
        self.addCleanup(lambda: defer.ensureDeferred(self.rt.stop()))
        return defer.ensureDeferred(self.rt.start())

    async def call(
        self, method: str, path: str, data: Optional[bytes] = None
    ) -> "tuple[int, Any, Dict[bytes, List[bytes]], bytes]":
        code, headers, content = await self.rt.request(method, path, data)
        return code, json.loads(content), headers, content


class CeilingTests(PreviewTestsBase):
    """
    Submissions against a ceiling of 4096 bytes.
    """

    @defer.inlineCallbacks
    def test_at_ceiling(self) -> Any:
        """
        Both limits at the ceiling are accepted.
        """
        code, decoded, _, _ = yield defer.ensureDeferred(
            self.call("POST", "/api/v1/tasks", _task("at", 4096, 4096))
        )
        self.assertEqual((code, decoded["status"]), (200, "accepted"))

    @defer.inlineCallbacks
    def test_above_ceiling(self) -> Any:
        """
        One byte above is C{400 invalid_input} naming the field, the
        ceiling and the flag; nothing is stored.
        """
        for stdout_max, stderr_max, field in ((4097, 1, "stdout_max_bytes"), (1, 4097, "stderr_max_bytes")):
            code, decoded, _, _ = yield defer.ensureDeferred(
                self.call("POST", "/api/v1/tasks", _task("above", stdout_max, stderr_max))
            )
            self.assertEqual(
                (code, decoded["error"]),
                (
                    400,
                    {
                        "code": "invalid_input",
                        "message": f"invalid input: limits.{field}: must be at most 4096 (--max-output-preview-bytes)",
                    },
                ),
            )
        code, _, _, _ = yield defer.ensureDeferred(self.call("GET", "/api/v1/tasks/above"))
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_contract_bound_first(self) -> Any:
        """
        A limit above 2^63-1 keeps the contract's message.
        """
        code, decoded, _, _ = yield defer.ensureDeferred(
            self.call("POST", "/api/v1/tasks", _task("huge", 2**63))
        )
        self.assertEqual(code, 400)
        self.assertIn(f"must be at most {OUTPUT_LIMIT_MAX}", decoded["error"]["message"])

    @defer.inlineCallbacks
    def test_config_view(self) -> Any:
        """
        C{/runtime/config} holds the ceiling, the listener's limits and the
        store's engine, then the node's address, labels and lease.
        """
        code, config, _, _ = yield defer.ensureDeferred(self.call("GET", "/api/v1/runtime/config"))
        self.assertEqual(
            list(config.items())[-8:],
            [
                ("max_output_preview_bytes", 4096),
                ("request_header_timeout_ms", 10000),
                ("idle_connection_timeout_ms", 60000),
                ("max_connections", 0),
                ("database", "sqlite"),
                ("advertise_url", "http://127.0.0.1:8080"),
                ("node_labels", {}),
                ("node_lease_ms", 10000),
            ],
        )


class LargePreviewTests(PreviewTestsBase):
    """
    Previews of 256 KiB (the ceiling) under a budget of 512 KiB.
    """

    ceiling = 256 * KIB
    budget = 512 * KIB

    async def large_task(self, task_id: str = "big", stdout: bytes = b"a\x00\xff\n" * (80 * KIB)) -> str:
        """
        A queued task whose stdout log holds C{stdout} (320 KiB by
        default: NULs, invalid UTF-8, text).
        """
        code, decoded, _, _ = await self.call("POST", "/api/v1/tasks", _task(task_id, self.ceiling))
        self.assertEqual(code, 200, decoded)
        code, status, _, _ = await self.call("GET", f"/api/v1/tasks/{task_id}")
        with open(status["artifacts"]["stdout_path"], "wb") as log:
            log.write(stdout)
        return task_id

    def widen(self, task_id: str) -> None:
        """
        Store the task with the limits of an older store (2^63-1).
        """
        conn = sqlite3.connect(self.rt.config.database_path)
        try:
            limits = json.loads(
                conn.execute("SELECT limits_json FROM tasks WHERE task_id = ?", (task_id,)).fetchone()[0]
            )
            limits["stdout_max_bytes"] = OUTPUT_LIMIT_MAX
            conn.execute(
                "UPDATE tasks SET limits_json = ?, stdout_max_bytes = ? WHERE task_id = ?",
                (json.dumps(limits), OUTPUT_LIMIT_MAX, task_id),
            )
            conn.commit()
        finally:
            conn.close()

    def assertPreview(self, status: Dict[str, Any], content: bytes, headers: Dict[bytes, List[bytes]]) -> None:
        """
        The stdout preview is the log's first 256 KiB decoded, marked
        truncated, in a body that is exactly its compact JSON (the client
        read as many bytes as announced: a wrong length would cut it or
        hang).
        """
        expected = (b"a\x00\xff\n" * (80 * KIB))[: self.ceiling].decode("utf-8", "replace")
        self.assertEqual((status["stdout"], status["stdout_truncated"]), (expected, True))
        self.assertEqual(content, compact(status))

    @defer.inlineCallbacks
    def test_status_streamed(self) -> Any:
        """
        A status with a large preview is the same JSON, with its length,
        and gives its reservation back once sent.
        """
        task_id = yield defer.ensureDeferred(self.large_task())
        code, status, headers, content = yield defer.ensureDeferred(self.call("GET", f"/api/v1/tasks/{task_id}"))
        self.assertEqual(code, 200)
        self.assertPreview(status, content, headers)
        self.assertEqual(self.budget_obj.free, self.budget)

    @defer.inlineCallbacks
    def test_older_store_clamped(self) -> Any:
        """
        A task stored with a limit of 2^63-1 still previews at most the
        ceiling, in status and kill answers alike.
        """
        task_id = yield defer.ensureDeferred(self.large_task())
        self.widen(task_id)
        code, status, headers, content = yield defer.ensureDeferred(self.call("GET", f"/api/v1/tasks/{task_id}"))
        self.assertPreview(status, content, headers)
        code, killed, headers, content = yield defer.ensureDeferred(
            self.call("POST", f"/api/v1/tasks/{task_id}/kill")
        )
        self.assertEqual((code, killed["status"]), (200, "cancelled"))
        self.assertPreview(killed, content, headers)
        self.assertEqual(self.budget_obj.free, self.budget)

    @defer.inlineCallbacks
    def test_store_read_carries_reservation(self) -> Any:
        """
        The store reads large previews under a reservation of what they
        take, which the snapshot carries until claimed.
        """
        task_id = yield defer.ensureDeferred(self.large_task())
        snapshot, _ = yield self.rt.store.snapshot(task_id, 0)
        self.assertIsInstance(snapshot, HeldSnapshot)
        self.assertLessEqual(self.budget_obj.free, self.budget - self.ceiling)
        hold = claim(snapshot)
        assert hold is not None
        hold.release()
        self.assertEqual(self.budget_obj.free, self.budget)
        small = yield defer.ensureDeferred(self.large_task("small", b"tiny"))
        snapshot, _ = yield self.rt.store.snapshot(small, 0)
        self.assertNotIsInstance(snapshot, HeldSnapshot)

    @defer.inlineCallbacks
    def test_reads_wait_for_budget(self) -> Any:
        """
        With the budget taken, a large status read waits (without
        blocking anything else) until bytes are given back.
        """
        task_id = yield defer.ensureDeferred(self.large_task())
        hold = yield self.budget_obj.take(self.budget)
        pending = defer.ensureDeferred(self.call("GET", f"/api/v1/tasks/{task_id}"))
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        code, health, _, _ = yield defer.ensureDeferred(self.call("GET", "/healthz"))
        self.assertEqual(code, 200)
        hold.release()
        code, status, headers, content = yield pending
        self.assertPreview(status, content, headers)
        self.assertEqual(self.budget_obj.free, self.budget)

    @defer.inlineCallbacks
    def test_long_poll_gives_back_while_waiting(self) -> Any:
        """
        A long-poll of an unfinished task does not keep the previews it
        read first (nor their reservation) through its wait.
        """
        task_id = yield defer.ensureDeferred(self.large_task())
        pending = defer.ensureDeferred(self.call("GET", f"/api/v1/tasks/{task_id}?wait_ms=400"))
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        self.assertEqual(self.budget_obj.free, self.budget)
        code, status, headers, content = yield pending
        self.assertEqual(status["status"], "accepted")
        self.assertPreview(status, content, headers)
        self.assertEqual(self.budget_obj.free, self.budget)
