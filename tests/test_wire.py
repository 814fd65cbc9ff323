"""
Tests for L{execgo.store.wire}: timestamps, the status snapshot, events, previews
and the task file layout.
"""

from __future__ import annotations

import json
import os
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core import records
from execgo.core.models import (
    ErrorInfo,
    Namespaces,
    Reservation,
    ResourceLimits,
    SandboxPolicy,
    Usage,
)
from execgo.store import taskdb, wire
from tests.fakes import command, plan_for, record, shell

try:
    from hypothesis import given, settings, strategies
except ImportError:  # pragma: no cover - hypothesis is a test extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

STAMP_MS = 1776939330125  # 2026-04-23T10:15:30.125Z
WHOLE_MS = 1776939330000


class TimestampTests(SynchronousTestCase):
    """
    L{wire.format_ms} and L{wire.format_ns}.
    """

    def test_ms_fraction(self) -> None:
        """
        A non-zero millisecond part is printed with exactly three digits.
        """
        self.assertEqual(wire.format_ms(STAMP_MS), "2026-04-23T10:15:30.125Z")
        self.assertEqual(wire.format_ms(WHOLE_MS + 5), "2026-04-23T10:15:30.005Z")
        self.assertEqual(wire.format_ms(WHOLE_MS + 100), "2026-04-23T10:15:30.100Z")

    def test_ms_whole(self) -> None:
        """
        A whole second has no fraction at all.
        """
        self.assertEqual(wire.format_ms(WHOLE_MS), "2026-04-23T10:15:30Z")
        self.assertEqual(wire.format_ms(0), "1970-01-01T00:00:00Z")

    def test_ns_shortest(self) -> None:
        """
        Nanosecond stamps use the shortest exact form of 0, 3, 6 or 9
        fraction digits.
        """
        base = WHOLE_MS * 1_000_000
        cases = {
            0: "2026-04-23T10:15:30Z",
            125_000_000: "2026-04-23T10:15:30.125Z",
            1_000_000: "2026-04-23T10:15:30.001Z",
            125_400_000: "2026-04-23T10:15:30.125400Z",
            1_000: "2026-04-23T10:15:30.000001Z",
            731_942_113: "2026-04-23T10:15:30.731942113Z",
            1: "2026-04-23T10:15:30.000000001Z",
            100_000_010: "2026-04-23T10:15:30.100000010Z",
        }
        for nanos, expected in cases.items():
            self.assertEqual(wire.format_ns(base + nanos), expected)


class ScriptExtensionTests(SynchronousTestCase):
    """
    L{wire.script_extension}: the script file's extension from its
    interpreter.
    """

    def test_table(self) -> None:
        """
        The first matching substring of C{interpreter[0]} picks the extension,
        C{sh} otherwise or without an interpreter.
        """
        cases = [
            (None, "sh"),
            ((), "sh"),
            (("python3",), "py"),
            (("/usr/bin/python3.11", "-u"), "py"),
            (("/bin/bash",), "sh"),
            (("zsh",), "zsh"),
            (("node",), "js"),
            (("perl",), "sh"),
            (("python-bash",), "py"),
            (("bash-node",), "sh"),
            (("env", "python3"), "sh"),
            (("PYTHON",), "sh"),
        ]
        for interpreter, extension in cases:
            self.assertEqual(wire.script_extension(interpreter), extension, interpreter)


class TaskPathsTests(SynchronousTestCase):
    """
    L{wire.task_paths}.
    """

    def test_command(self) -> None:
        """
        Every file lives in C{<data_dir>/tasks/<id>}; no script path for a
        command.
        """
        paths = wire.task_paths("/d", "t1", command(), None)
        self.assertEqual(
            paths,
            records.TaskPaths(
                task_dir="/d/tasks/t1",
                workspace_dir="/d/tasks/t1/workspace",
                request_path="/d/tasks/t1/request.json",
                result_path="/d/tasks/t1/result.json",
                stdout_path="/d/tasks/t1/stdout.log",
                stderr_path="/d/tasks/t1/stderr.log",
                script_path=None,
            ),
        )

    def test_script(self) -> None:
        """
        A script's file sits in the task directory, named by its interpreter.
        """
        self.assertEqual(
            wire.task_paths("/d", "t1", shell("x", ["node"]), None).script_path,
            "/d/tasks/t1/script.js",
        )
        self.assertEqual(
            wire.task_paths("/d", "t1", shell("x"), None).script_path, "/d/tasks/t1/script.sh"
        )

    def test_workspace_subdir(self) -> None:
        """
        The workspace subdirectory is appended (normalised); C{""} and C{.}
        mean the workspace itself.
        """
        self.assertEqual(
            wire.task_paths("/d", "t", command(), "a/./b").workspace_dir, "/d/tasks/t/workspace/a/b"
        )
        self.assertEqual(wire.task_paths("/d", "t", command(), "").workspace_dir, "/d/tasks/t/workspace")
        self.assertEqual(wire.task_paths("/d", "t", command(), ".").workspace_dir, "/d/tasks/t/workspace")


class ReadPreviewTests(SynchronousTestCase):
    """
    L{wire.read_preview}: the head of a log, decoded as UTF-8 with
    replacement, and whether the log is longer.
    """

    def write(self, data: bytes) -> str:
        """
        A temporary file holding C{data}.
        """
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(data)
        return path

    def test_missing(self) -> None:
        """
        A missing file is C{("", False)}.
        """
        self.assertEqual(wire.read_preview(self.mktemp(), 10), ("", False))

    def test_short_and_exact(self) -> None:
        """
        A file no longer than the limit is returned whole, not truncated.
        """
        self.assertEqual(wire.read_preview(self.write(b"hello"), 10), ("hello", False))
        self.assertEqual(wire.read_preview(self.write(b"hello"), 5), ("hello", False))
        self.assertEqual(wire.read_preview(self.write(b""), 5), ("", False))

    def test_truncated(self) -> None:
        """
        A longer file gives its head and the truncation flag.
        """
        self.assertEqual(wire.read_preview(self.write(b"hello world"), 5), ("hello", True))
        self.assertEqual(wire.read_preview(self.write(b"hello"), 4), ("hell", True))

    def test_many_slices(self) -> None:
        """
        A preview longer than one slice (read and decoded a slice at a
        time) is exactly the bytes decoded at once, multibyte and invalid
        sequences across slice boundaries included, whatever the cut.
        """
        data = ("x€😀é".encode("utf-8") + b"\xff\xc3") * 60_000
        path = self.write(data)
        for limit in (len(data), 500_001, 262_145, 262_143):
            self.assertEqual(
                wire.read_preview(path, limit),
                (data[:limit].decode("utf-8", errors="replace"), limit < len(data)),
            )

    def test_huge_limit(self) -> None:
        """
        A client-controlled huge limit does not allocate the limit: the read
        is bounded by the file size.
        """
        self.assertEqual(wire.read_preview(self.write(b"abc"), 2**63 - 1), ("abc", False))

    def test_invalid_utf8(self) -> None:
        """
        Invalid sequences become U+FFFD; valid multibyte text is kept.
        """
        self.assertEqual(
            wire.read_preview(self.write(b"a\xffb\xc3\xa9"), 100), ("a\ufffdb\u00e9", False)
        )

    def test_cut_multibyte(self) -> None:
        """
        A multibyte character cut by the limit becomes U+FFFD.
        """
        path = self.write("ab\u20ac".encode("utf-8"))  # € is e2 82 ac
        self.assertEqual(wire.read_preview(path, 4), ("ab\ufffd", True))
        self.assertEqual(wire.read_preview(path, 3), ("ab\ufffd", True))
        self.assertEqual(wire.read_preview(path, 5), ("ab\u20ac", False))


def _full_record(**changes: Any) -> taskdb.TaskRecord:
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
    L{wire.render_status} follows the status snapshot's key order and
    presence rules.
    """

    def test_full_order(self) -> None:
        """
        With every field set, the keys come in the contract's order.
        """
        out = wire.render_status(_full_record(), ("out", True), ("err", False), STAMP_MS)
        self.assertEqual(
            list(out),
            [
                "task_id", "handle_id", "status", "created_at", "updated_at", "started_at",
                "finished_at", "duration_ms", "shim_pid", "pid", "pgid", "exit_code",
                "exit_signal", "stdout", "stderr", "stdout_truncated", "stderr_truncated",
                "error", "usage", "execution_plan", "reservation", "artifacts", "metadata",
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
        out = wire.render_status(queued, ("", False), ("", False), STAMP_MS)
        self.assertEqual(
            list(out),
            [
                "task_id", "handle_id", "status", "created_at", "updated_at", "stdout",
                "stderr", "stdout_truncated", "stderr_truncated", "execution_plan", "artifacts",
            ],
        )
        self.assertNotIn("script_path", out["artifacts"])
        self.assertEqual(out["execution_plan"], {**plan_for().to_json(), "run_as": None})

    def test_running_live_duration(self) -> None:
        """
        A running task with a start shows the live duration and a usage of
        only that duration.
        """
        running = record("r", "running", shim_pid=7, pid=8, started_at_ms=WHOLE_MS, plan=plan_for())
        out = wire.render_status(running, ("", False), ("", False), WHOLE_MS + 1500)
        self.assertEqual(out["duration_ms"], 1500)
        self.assertEqual(out["usage"], {"duration_ms": 1500})
        self.assertNotIn("finished_at", out)
        self.assertEqual((out["shim_pid"], out["pid"], out["pgid"]), (7, 8, 8))

    def test_running_clamped(self) -> None:
        """
        A live duration is clamped at 0 when the clock is behind the start.
        """
        running = record("r", "running", started_at_ms=WHOLE_MS, plan=plan_for())
        out = wire.render_status(running, ("", False), ("", False), WHOLE_MS - 10)
        self.assertEqual(out["duration_ms"], 0)

    def test_running_not_started(self) -> None:
        """
        A running task without a workload yet has no duration and no usage.
        """
        running = record("r", "running", shim_pid=7, plan=plan_for())
        out = wire.render_status(running, ("", False), ("", False), STAMP_MS)
        self.assertNotIn("duration_ms", out)
        self.assertNotIn("usage", out)
        self.assertNotIn("pid", out)

    def test_terminal_usage_fallback(self) -> None:
        """
        A terminal task without recorded usage shows C{{"duration_ms": d}};
        the recorded duration is used even when the clock moved on.
        """
        done = _full_record(usage=None, duration_ms=0, started_at_ms=None)
        out = wire.render_status(done, ("", False), ("", False), STAMP_MS + 99999)
        self.assertEqual(out["duration_ms"], 0)
        self.assertEqual(out["usage"], {"duration_ms": 0})

    def test_omitted_when_absent(self) -> None:
        """
        Error, exit fields and metadata are left out when unset; success has
        no error.
        """
        done = _full_record(error=None, exit_signal=None, metadata={}, reservation=None)
        out = wire.render_status(done, ("", False), ("", False), STAMP_MS)
        for key in ("error", "exit_signal", "metadata", "reservation"):
            self.assertNotIn(key, out)
        self.assertEqual(out["exit_code"], 0)

    def test_without_output(self) -> None:
        """
        C{include_output=False} leaves the four output keys out.
        """
        out = wire.render_status(
            _full_record(), ("", False), ("", False), STAMP_MS, include_output=False
        )
        for key in ("stdout", "stderr", "stdout_truncated", "stderr_truncated"):
            self.assertNotIn(key, out)

    def test_planless_synthesised(self) -> None:
        """
        A stored task without a plan shows the synthesised one.
        """
        old = record("o", "accepted", plan=None, limits=ResourceLimits(cpu_time_sec=3))
        out = wire.render_status(old, ("", False), ("", False), STAMP_MS)
        self.assertEqual(out["execution_plan"], {**wire.synthesise_plan(old).to_json(), "run_as": None})
        self.assertTrue(out["execution_plan"]["resource_enforcement"]["cpu_time_enforced"])

    def test_snapshot_reads_logs(self) -> None:
        """
        L{wire.snapshot} reads both previews with the task's limits.
        """
        data_dir = os.path.abspath(self.mktemp())
        task = record(
            "t", "accepted", data_dir=data_dir, plan=plan_for(),
            limits=ResourceLimits(stdout_max_bytes=3, stderr_max_bytes=10),
        )
        os.makedirs(task.paths.task_dir)
        with open(task.paths.stdout_path, "wb") as out:
            out.write(b"abcdef")
        out = wire.snapshot(task, STAMP_MS)
        self.assertEqual(
            (out["stdout"], out["stdout_truncated"], out["stderr"], out["stderr_truncated"]),
            ("abc", True, "", False),
        )


class SynthesisePlanTests(SynchronousTestCase):
    """
    L{wire.synthesise_plan}: the plan of a stored task that has none.
    """

    def test_process(self) -> None:
        """
        A process-profile task: adaptive, no cgroup; CPU and memory enforced
        when set; pids never; not degraded.
        """
        limits = ResourceLimits(wall_time_ms=9, cpu_time_sec=1, memory_bytes=2, pids_max=3)
        sandbox = SandboxPolicy(workspace_subdir="w")
        plan = wire.synthesise_plan(record("t", limits=limits, sandbox=sandbox))
        self.assertEqual(plan.capability_mode, "adaptive")
        self.assertEqual(plan.requested_sandbox, sandbox)
        self.assertEqual(plan.effective_sandbox, sandbox)
        self.assertEqual(
            plan.resource_enforcement.to_json(),
            {
                "wall_time_ms": 9, "cpu_time_sec": 1, "cpu_time_enforced": True,
                "memory_bytes": 2, "memory_enforced": True, "pids_max": 3,
                "pids_enforced": False, "cgroup_enforced": False, "oom_detection": False,
            },
        )
        self.assertFalse(plan.degraded)
        self.assertEqual((plan.fallback_reasons, plan.capability_warnings), ((), ()))

    def test_linux_sandbox(self) -> None:
        """
        A C{linux_sandbox} task gets a cgroup: pids enforced and OOM
        detection when the limits are set.
        """
        sandbox = SandboxPolicy(profile="linux_sandbox", namespaces=Namespaces())
        plan = wire.synthesise_plan(
            record("t", limits=ResourceLimits(memory_bytes=2, pids_max=3), sandbox=sandbox)
        )
        enforcement = plan.resource_enforcement
        self.assertTrue(enforcement.cgroup_enforced)
        self.assertTrue(enforcement.pids_enforced)
        self.assertTrue(enforcement.oom_detection)
        self.assertFalse(enforcement.cpu_time_enforced)

    def test_unset_limits(self) -> None:
        """
        With no limits nothing is enforced.
        """
        sandbox = SandboxPolicy(profile="linux_sandbox")
        enforcement = wire.synthesise_plan(record("t", sandbox=sandbox)).resource_enforcement
        self.assertEqual(
            (enforcement.memory_enforced, enforcement.pids_enforced, enforcement.oom_detection),
            (False, False, False),
        )

    def test_plan_of(self) -> None:
        """
        A stored plan wins over synthesis.
        """
        plan = plan_for(degraded=True, fallback_reasons=("r",))
        self.assertIs(wire.plan_of(record("t", plan=plan)), plan)


class RenderEventTests(SynchronousTestCase):
    """
    L{wire.render_event}.
    """

    def test_full(self) -> None:
        """
        seq, task_id, event_type, timestamp, message, data in that order.
        """
        event = taskdb.Event(3, "t", "planned", STAMP_MS, "execution plan resolved", {"a": 1})
        self.assertEqual(
            list(wire.render_event(event).items()),
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
        out = wire.render_event(taskdb.Event(1, "t", "x", WHOLE_MS))
        self.assertEqual(list(out), ["seq", "task_id", "event_type", "timestamp"])


class PrepareResultTests(SynchronousTestCase):
    """
    L{wire.prepare_result}: C{result.json} written aside, then put in place
    or thrown away.
    """

    def terminal(self) -> "records.TaskRecord":
        data_dir = os.path.abspath(self.mktemp())
        done = record("demo-1", "success", data_dir=data_dir, plan=plan_for(),
                      finished_at_ms=STAMP_MS, duration_ms=3)
        os.makedirs(done.paths.task_dir)
        return done

    def test_put_in_place(self) -> None:
        """
        Settled with C{True}, the snapshot is C{result.json}: pretty JSON
        with two-space indentation, raw UTF-8, no trailing newline, and no
        temporary file left behind.
        """
        done = self.terminal()
        settle = wire.prepare_result(done, STAMP_MS)
        self.assertFalse(os.path.exists(done.paths.result_path))
        settle(True)
        with open(done.paths.result_path, "rb") as written:
            text = written.read().decode("utf-8")
        value = wire.snapshot(done, STAMP_MS)
        self.assertEqual(text, json.dumps(value, indent=2, ensure_ascii=False))
        self.assertFalse(text.endswith("\n"))
        self.assertEqual(json.loads(text)["status"], "success")
        self.assertEqual(os.listdir(done.paths.task_dir), ["result.json"])

    def test_replaces(self) -> None:
        """
        A second result replaces the whole file.
        """
        done = self.terminal()
        with open(done.paths.result_path, "w") as old:
            old.write("x" * 100000)
        wire.prepare_result(done, STAMP_MS)(True)
        with open(done.paths.result_path) as written:
            self.assertEqual(json.load(written)["task_id"], "demo-1")

    def test_thrown_away(self) -> None:
        """
        Settled with C{False} (the terminal write did not take), nothing is
        left: no C{result.json}, no temporary file.
        """
        done = self.terminal()
        wire.prepare_result(done, STAMP_MS)(False)
        self.assertEqual(os.listdir(done.paths.task_dir), [])

    def test_rendered(self) -> None:
        """
        The caller is handed the snapshot and the size of the file's text,
        which is at least the size of the snapshot's compact encoding.
        """
        done = self.terminal()
        seen: list = []
        wire.prepare_result(done, STAMP_MS, lambda status, size: seen.append((status, size)))(True)
        with open(done.paths.result_path, "rb") as written:
            data = written.read()
        [(status, size)] = seen
        self.assertEqual(status, json.loads(data))
        self.assertEqual(size, len(data))
        self.assertGreaterEqual(size, len(wire.compact(status)))

    def test_ceiling(self) -> None:
        """
        With a ceiling, a task stored with larger limits (an older store)
        gets previews of at most the ceiling in C{result.json}; a long
        preview full of escapes is written exactly as L{wire.pretty}
        renders it.
        """
        done = self.terminal()
        done = attrs.evolve(done, limits=attrs.evolve(done.limits, stdout_max_bytes=2**63 - 1))
        with open(done.paths.stdout_path, "wb") as log:
            log.write(b"\x00\xff\"x" * 100_000)
        seen: list = []
        wire.prepare_result(done, STAMP_MS, lambda status, size: seen.append((status, size)), 150_000)(True)
        with open(done.paths.result_path, "rb") as written:
            data = written.read()
        [(status, size)] = seen
        self.assertEqual(len(status["stdout"]), 150_000)
        self.assertIs(status["stdout_truncated"], True)
        self.assertEqual(data, wire.pretty(status).encode("utf-8"))
        self.assertEqual(size, len(data))
        self.assertEqual(wire.snapshot(done, STAMP_MS, 10)["stdout"], "\x00\ufffd\"x" * 2 + "\x00\ufffd")

class PrettyTests(SynchronousTestCase):
    """
    L{wire.pretty} writes exactly what C{json.dumps(indent=2,
    ensure_ascii=False)} writes.
    """

    if HAVE_HYPOTHESIS:

        @settings(max_examples=300, deadline=None)
        @given(
            strategies.recursive(
                strategies.none()
                | strategies.booleans()
                | strategies.integers()
                | strategies.floats()
                | strategies.text(),
                lambda children: strategies.lists(children)
                | strategies.dictionaries(strategies.text(), children),
                max_leaves=30,
            )
        )
        def test_same_as_the_standard_library(self, value: Any) -> None:
            """
            Any JSON value, floats, non-ASCII and control characters included.
            """
            self.assertEqual(wire.pretty(value), json.dumps(value, indent=2, ensure_ascii=False))

    def test_other_types(self) -> None:
        """
        Non-string keys and tuples go through the standard library, and
        come out the same.
        """
        for value in ({1: "x", "y": (1, 2)}, {"a": [{"b": {2: None}}]}, (1, [], {})):
            self.assertEqual(wire.pretty(value), json.dumps(value, indent=2, ensure_ascii=False))

    def test_task_document(self) -> None:
        """
        A status document, the shape C{result.json} holds.
        """
        snapshot = wire.render_status(_full_record(), ("out\u00e9\n\u0001", True), ("", False), STAMP_MS)
        self.assertEqual(wire.pretty(snapshot), json.dumps(snapshot, indent=2, ensure_ascii=False))
