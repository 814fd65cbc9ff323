"""
Tests for L{execgo.core.render}: the status snapshot and event records.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import records
from execgo.core.encoding import pretty
from execgo.core.models import ResourceLimits
from execgo.core.policy import synthesise_plan
from execgo.core.render import render_event, render_status
from execgo.core.reservation import Reservation
from execgo.core.results import ErrorInfo, Usage
from tests.fakes import plan_for, record, shell

WHOLE_MS = 1776939330000
STAMP_MS = WHOLE_MS + 125  # 2026-04-23T10:15:30.125Z


def _full_record(**changes: Any) -> records.TaskRecord:
    """
    A terminal task with every optional field set.
    """
    values: dict = dict(
        created_at_ms=WHOLE_MS,
        updated_at_ms=STAMP_MS,
        started_at_ms=WHOLE_MS + 1,
        finished_at_ms=WHOLE_MS + 206,
        duration_ms=205,
        shim_pid=41001,
        pid=41003,
        exit_code=0,
        exit_signal=9,
        error=ErrorInfo("internal", "x"),
        usage=Usage(duration_ms=205, user_cpu_ms=1, system_cpu_ms=2, max_rss_bytes=3),
        reservation=Reservation(memory_bytes=5),
        reserved_at_ms=WHOLE_MS,
        metadata={"b": "2", "a": "1"},
        execution=shell("echo"),
        plan=plan_for(),
    )
    values.update(changes)
    return record("demo-1", "failed", data_dir="/var/lib/rt", **values)


class RenderStatusTests(SynchronousTestCase):
    """
    L{render_status} follows the status snapshot's key order and
    presence rules.
    """

    def test_full_order(self) -> None:
        """
        With every field set, the keys come in the contract's order.
        """
        out = render_status(_full_record(), ("out", True), ("err", False), STAMP_MS)
        self.assertEqual(
            list(out),
            [
                "task_id", "handle_id", "status", "created_at", "updated_at", "started_at",
                "finished_at", "duration_ms", "shim_pid", "pid", "pgid", "exit_code",
                "exit_signal", "stdout", "stderr", "stdout_truncated", "stderr_truncated",
                "error", "usage", "execution_plan", "reservation", "artifacts", "metadata", "node_id",
            ],
        )
        self.assertEqual(out["handle_id"], "demo-1")
        self.assertEqual(out["created_at"], "2026-04-23T10:15:30Z")
        self.assertEqual(out["updated_at"], "2026-04-23T10:15:30.125Z")
        self.assertEqual(out["finished_at"], "2026-04-23T10:15:30.206Z")
        self.assertEqual(out["duration_ms"], 205)
        self.assertEqual((out["pid"], out["pgid"]), (41003, 41003))
        self.assertEqual(
            (out["stdout"], out["stderr"], out["stdout_truncated"], out["stderr_truncated"]),
            ("out", "err", True, False),
        )
        self.assertEqual(out["error"], {"code": "internal", "message": "x"})
        self.assertEqual(
            out["usage"],
            {"duration_ms": 205, "user_cpu_ms": 1, "system_cpu_ms": 2, "max_rss_bytes": 3},
        )
        self.assertEqual(out["reservation"], {"task_slots": 1, "memory_bytes": 5})
        self.assertEqual(list(out["metadata"].items()), [("a", "1"), ("b", "2")])
        self.assertEqual(
            out["artifacts"],
            {
                "task_dir": "/var/lib/rt/tasks/demo-1",
                "request_path": "/var/lib/rt/tasks/demo-1/request.json",
                "result_path": "/var/lib/rt/tasks/demo-1/result.json",
                "stdout_path": "/var/lib/rt/tasks/demo-1/stdout.log",
                "stderr_path": "/var/lib/rt/tasks/demo-1/stderr.log",
                "script_path": "/var/lib/rt/tasks/demo-1/script.sh",
            },
        )
        self.assertEqual(list(out["artifacts"])[-1], "script_path")

    def test_accepted_minimal(self) -> None:
        """
        A queued task has no start, finish, duration, pids, error, usage,
        reservation, metadata or script path.
        """
        queued = record("q", "accepted", created_at_ms=WHOLE_MS, plan=plan_for())
        out = render_status(queued, ("", False), ("", False), STAMP_MS)
        self.assertEqual(
            list(out),
            [
                "task_id", "handle_id", "status", "created_at", "updated_at", "stdout",
                "stderr", "stdout_truncated", "stderr_truncated", "execution_plan", "artifacts", "node_id",
            ],
        )
        self.assertIsNone(out["node_id"])
        self.assertNotIn("script_path", out["artifacts"])
        self.assertEqual(out["execution_plan"], {**plan_for().to_json(), "run_as": None})

    def test_running_live_duration(self) -> None:
        """
        A running task with a start shows the live duration and a usage of
        only that duration.
        """
        running = record("r", "running", shim_pid=7, pid=8, started_at_ms=WHOLE_MS, plan=plan_for())
        out = render_status(running, ("", False), ("", False), WHOLE_MS + 1500)
        self.assertEqual(out["duration_ms"], 1500)
        self.assertEqual(out["usage"], {"duration_ms": 1500})
        self.assertNotIn("finished_at", out)
        self.assertEqual((out["shim_pid"], out["pid"], out["pgid"]), (7, 8, 8))

    def test_running_clamped(self) -> None:
        """
        A live duration is clamped at 0 when the clock is behind the start.
        """
        running = record("r", "running", started_at_ms=WHOLE_MS, plan=plan_for())
        out = render_status(running, ("", False), ("", False), WHOLE_MS - 10)
        self.assertEqual(out["duration_ms"], 0)

    def test_running_not_started(self) -> None:
        """
        A running task without a workload yet has no duration and no usage.
        """
        running = record("r", "running", shim_pid=7, plan=plan_for())
        out = render_status(running, ("", False), ("", False), STAMP_MS)
        self.assertNotIn("duration_ms", out)
        self.assertNotIn("usage", out)
        self.assertNotIn("pid", out)

    def test_terminal_usage_fallback(self) -> None:
        """
        A terminal task without recorded usage shows C{{"duration_ms": d}};
        the recorded duration is used even when the clock moved on.
        """
        done = _full_record(usage=None, duration_ms=0, started_at_ms=None)
        out = render_status(done, ("", False), ("", False), STAMP_MS + 99999)
        self.assertEqual(out["duration_ms"], 0)
        self.assertEqual(out["usage"], {"duration_ms": 0})

    def test_omitted_when_absent(self) -> None:
        """
        Error, exit fields and metadata are left out when unset; success has
        no error.
        """
        done = _full_record(error=None, exit_signal=None, metadata={}, reservation=None)
        out = render_status(done, ("", False), ("", False), STAMP_MS)
        for key in ("error", "exit_signal", "metadata", "reservation"):
            self.assertNotIn(key, out)
        self.assertEqual(out["exit_code"], 0)

    def test_without_output(self) -> None:
        """
        C{include_output=False} leaves the four output keys out.
        """
        out = render_status(
            _full_record(), ("", False), ("", False), STAMP_MS, include_output=False
        )
        for key in ("stdout", "stderr", "stdout_truncated", "stderr_truncated"):
            self.assertNotIn(key, out)

    def test_planless_synthesised(self) -> None:
        """
        A stored task without a plan shows the synthesised one.
        """
        old = record("o", "accepted", plan=None, limits=ResourceLimits(cpu_time_sec=3))
        out = render_status(old, ("", False), ("", False), STAMP_MS)
        self.assertEqual(out["execution_plan"], {**synthesise_plan(old).to_json(), "run_as": None})
        self.assertTrue(out["execution_plan"]["resource_enforcement"]["cpu_time_enforced"])

    def test_pretty_document(self) -> None:
        """
        A status document, the shape C{result.json} holds, renders with
        L{pretty} as the standard library renders it.
        """
        snapshot = render_status(_full_record(), ("out\u00e9\n\u0001", True), ("", False), STAMP_MS)
        self.assertEqual(pretty(snapshot), json.dumps(snapshot, indent=2, ensure_ascii=False))


class RenderEventTests(SynchronousTestCase):
    """
    L{render_event}.
    """

    def test_full(self) -> None:
        """
        seq, task_id, event_type, timestamp, message, data in that order.
        """
        event = records.Event(3, "t", "planned", STAMP_MS, "execution plan resolved", {"a": 1})
        self.assertEqual(
            list(render_event(event).items()),
            [
                ("seq", 3), ("task_id", "t"), ("event_type", "planned"),
                ("timestamp", "2026-04-23T10:15:30.125Z"),
                ("message", "execution plan resolved"), ("data", {"a": 1}),
            ],
        )

    def test_omitted(self) -> None:
        """
        A missing message or data is left out.
        """
        out = render_event(records.Event(1, "t", "x", WHOLE_MS))
        self.assertEqual(list(out), ["seq", "task_id", "event_type", "timestamp"])
