"""
Tests for L{execgo.supervisor.engine.Supervisor} against a real temporary store and
real workload processes (the real-process tier: each test waits in short
C{select} steps, bounded to a few seconds), and for the C{internal-shim}
subcommand run as a real subprocess.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from typing import Any, Callable, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from execgo import control
from execgo.core import records
from execgo.core.models import ResourceLimits
from execgo.core.render import render_status
from execgo.core.reservation import Reservation
from execgo.core.results import ErrorInfo
from execgo.host import privileges
from execgo.host.procinfo import group_alive
from execgo.store import eventlog, reads, schema, taskfiles, terminal, transitions
from execgo.store.connection import connect
from execgo.supervisor import endings, engine, starts
from execgo.supervisor.daemon import Loop
from execgo.supervisor.engine import Supervisor
from execgo.supervisor.plumbing import MAX_WAIT_S, bounded
from execgo.supervisor.processes import HostProcesses
from execgo.supervisor.timers import Timers
from tests.fakes import FakeCgroups, StoreReads, command, new_task, plan_for, shell

PR_SET_CHILD_SUBREAPER = 36
STEP_S = 0.01
BOUND_S = 5.0
BASE_ENV = {"PATH": "/usr/bin:/bin"}


def set_subreaper(flag: bool) -> bool:
    """
    Make this process a child subreaper (or stop being one), so orphaned
    workload descendants are reparented to it and can be reaped (this
    host's PID 1 never reaps).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(flag), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def pause(seconds: float = STEP_S) -> None:
    """
    Wait a short while without sleeping the whole test (C{select} on
    nothing).
    """
    select.select([], [], [], seconds)


def wait_for(condition: Callable[[], bool], bound: float = BOUND_S) -> bool:
    """
    Poll C{condition} in short steps for at most C{bound} seconds.
    """
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause()
    return True


class StoreMixin(StoreReads):
    """
    A temporary data directory with an initialised store.
    """

    def make_store(self: Any) -> None:
        """
        Create the data directory and open the test's own connection.
        """
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.data_dir, "tasks"))
        self.db = os.path.join(self.data_dir, "runtime.db")
        self.conn = connect(self.db)
        self.addCleanup(self.conn.close)
        schema.init_schema(self.conn)

    def insert(self: Any, task_id: str, execution: Any, **kwargs: Any) -> records.NewTask:
        """
        Submit a task (files created, row and events inserted).
        """
        task = new_task(self.data_dir, task_id, execution, make_dirs=True, **kwargs)
        transitions.insert_task(self.conn, task, time.time_ns() // 1_000_000)
        return task


    def result_json(self: Any, task_id: str) -> Any:
        """
        The task's C{result.json}, parsed.
        """
        with open(self.load(task_id).paths.result_path, encoding="utf-8") as f:
            return json.load(f)

    def read_file(self: Any, path: str) -> str:
        """
        A text file's content.
        """
        with open(path, encoding="utf-8") as f:
            return f.read()


class EngineTestCase(StoreMixin, SynchronousTestCase):
    """
    A supervisor engine in this process (made a child subreaper for the
    test) over a temporary store, with helpers to drive it.
    """

    cgroups: Any = None

    def setUp(self) -> None:
        self.make_store()
        if not set_subreaper(True):
            raise self.skipTest("cannot become a child subreaper")
        self.addCleanup(set_subreaper, False)
        self.logged: List[str] = []
        self.supervisor = Supervisor(
            self.db, 0.2, base_env=BASE_ENV, log=self.logged.append, cgroups=self.cgroups
        )
        self.addCleanup(self.supervisor.close)
        self.messages: List[dict] = []
        # The reports in their wire form.
        self.supervisor.listeners.append(lambda report: self.messages.append(report.to_json()))
        self.addCleanup(self.kill_leftovers)

    def kill_leftovers(self) -> None:
        """
        Kill and reap whatever a failed test left running.
        """
        for pid in list(self.supervisor.by_pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.supervisor.busy:
            self.drive(bound=3.0)

    def drive(self, until: Optional[Callable[[], bool]] = None, bound: float = BOUND_S) -> float:
        """
        Run the supervisor's loop (reap, due timers, short waits) until
        C{until} holds (default: nothing supervised); return the time taken.
        """
        if until is None:
            until = lambda: not self.supervisor.busy  # noqa: E731
        start = time.monotonic()
        while True:
            self.supervisor.reap()
            self.supervisor.run_due_timers()
            if until():
                return time.monotonic() - start
            if time.monotonic() - start > bound:
                self.fail(f"supervisor did not get there within {bound} s")
            delay = self.supervisor.next_delay()
            pause(STEP_S if delay is None else min(delay, STEP_S))

    def launch_until_exited(self, task_ids: List[str]) -> None:
        """
        Insert and launch a C{/bin/true} task for each id, and wait until
        every workload has exited, none reaped yet (so that one reaping
        finds them all).
        """
        for task_id in task_ids:
            self.insert(task_id, command("/bin/true"))
            self.supervisor.launch(task_id)
        pids = [self.supervisor.by_task[task_id].pid for task_id in task_ids]
        self.assertTrue(
            wait_for(lambda: all(os.waitid(os.P_PID, p, os.WEXITED | os.WNOHANG | os.WNOWAIT) for p in pids))
        )

    def run_task(self, task_id: str, execution: Any, **kwargs: Any) -> records.TaskRecord:
        """
        Insert, launch (taking the queued task over) and drive to the end.
        """
        self.insert(task_id, execution, **kwargs)
        self.supervisor.launch(task_id)
        self.drive()
        return self.load(task_id)

    def assert_result_matches(self, task_id: str) -> None:
        """
        C{result.json} exists and says what the store says.
        """
        record = self.load(task_id)
        written = self.result_json(task_id)
        self.assertEqual(written["status"], record.status)
        expected = render_status(
            record,
            taskfiles.read_preview(record.paths.stdout_path, record.limits.stdout_max_bytes),
            taskfiles.read_preview(record.paths.stderr_path, record.limits.stderr_max_bytes),
            record.finished_at_ms or 0,
        )
        self.assertEqual(written, json.loads(json.dumps(expected)))


class SupervisorTests(EngineTestCase):
    """
    The engine in this process: launch, supervise, reap, classify, record.
    """

    def test_success(self) -> None:
        """
        A workload exiting 0 ends C{success} with its output, exit code,
        usage and the full event sequence; C{result.json} is written and the
        listeners told.
        """
        record = self.run_task("ok", shell("echo hello; echo oops >&2"))
        self.assertEqual(record.status, "success")
        self.assertIsNone(record.error)
        self.assertEqual((record.exit_code, record.exit_signal), (0, None))
        self.assertEqual(record.shim_pid, os.getpid())
        self.assertIsNotNone(record.pid)
        self.assertEqual(record.pgid, record.pid)
        self.assertIsNotNone(record.started_at_ms)
        self.assertGreaterEqual(record.finished_at_ms or 0, record.started_at_ms or 0)
        assert record.usage is not None
        self.assertEqual(record.usage.duration_ms, record.duration_ms)
        self.assertIsNotNone(record.usage.user_cpu_ms)
        self.assertGreater(record.usage.max_rss_bytes or 0, 0)
        self.assertFalse(record.reservation_active)
        self.assertEqual(record.reservation, Reservation())
        self.assertEqual(
            self.events("ok"),
            ["submitted", "accepted", "planned", "resource_reserved", "started",
             "resource_released", "finished"],
        )
        self.assertEqual(self.read_file(record.paths.stdout_path), "hello\n")
        self.assertEqual(self.read_file(record.paths.stderr_path), "oops\n")
        self.assert_result_matches("ok")
        self.assertEqual(self.result_json("ok")["stdout"], "hello\n")
        self.assertEqual(
            [m["ev"] for m in self.messages if m["task_id"] == "ok"], ["finished"]
        )
        self.assertIsNone(self.supervisor.next_delay())
        self.assertEqual(self.logged, [])

    def test_ends_reaped_together_commit_once(self) -> None:
        """
        Workloads found ended by one reaping are judged from one read of
        the store and written in one transaction (with the start record
        still pending), each with its own outcome, C{result.json} and
        report.
        """
        ids = ["b1", "b2", "b3"]
        for task_id in ids:
            self.insert(task_id, command("/bin/sh", "-c", f"exit {ids.index(task_id)}"))
            self.assertTrue(self.supervisor.launch(task_id))
        pids = [self.supervisor.by_task[task_id].pid for task_id in ids]

        def exited(pid: int) -> bool:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

        self.assertTrue(wait_for(lambda: all(exited(pid) for pid in pids)))
        self.assertTrue(self.supervisor.pending_starts)
        statements: List[str] = []
        refreshed: List[List[str]] = []
        refresh_all = reads.refresh_all

        def recording(conn: Any, records: Any) -> Any:
            refreshed.append([record.task_id for record in records])
            return refresh_all(conn, records)

        self.patch(reads, "refresh_all", recording)
        self.supervisor.conn.set_trace_callback(statements.append)
        self.supervisor.reap()
        self.supervisor.conn.set_trace_callback(None)
        self.assertEqual((statements.count("BEGIN IMMEDIATE"), statements.count("COMMIT")), (1, 1))
        self.assertEqual([sorted(ids) for ids in refreshed], [ids])
        self.assertFalse(self.supervisor.busy)
        self.assertEqual([self.load(task_id).exit_code for task_id in ids], [0, 1, 2])
        for task_id in ids:
            self.assertEqual(self.events(task_id)[-3:-1], ["started", "resource_released"])
            self.assert_result_matches(task_id)
        finished = [m for m in self.messages if m["ev"] == "finished"]
        self.assertEqual([m["task_id"] for m in finished], ids)
        self.assertEqual([m["status"]["exit_code"] for m in finished], [0, 1, 2])

    def test_failed_end_write_retried(self) -> None:
        """
        When the store refuses the write of ends reaped together, nothing
        of it stays (no terminal row, no report, no result file aside) and
        each task is written again a moment later.
        """
        self.patch(endings, "FINISH_RETRY_S", 0.01)
        real_write = terminal.write_terminal
        calls: List[str] = []

        def flaky_write(conn: Any, task_id: str, *args: Any) -> Any:
            calls.append(task_id)
            if len(calls) == 2:
                raise sqlite3.OperationalError("disk I/O error")
            return real_write(conn, task_id, *args)

        self.patch(terminal, "write_terminal", flaky_write)
        ids = ["r1", "r2"]
        self.launch_until_exited(ids)
        self.supervisor.reap()
        self.assertEqual(calls, ids)
        self.assertEqual([self.load(task_id).status for task_id in ids], ["running", "running"])
        self.assertEqual([m for m in self.messages if m["ev"] == "finished"], [])
        self.assertEqual(sorted(self.supervisor.pending_finishes), ids)
        for task_id in ids:
            self.assertEqual(
                [name for name in os.listdir(self.load(task_id).paths.task_dir) if "result" in name], []
            )
            self.assertTrue(any(f"cannot record the end of {task_id}" in line for line in self.logged))
        self.drive(bound=2.0)
        self.assertEqual([self.load(task_id).status for task_id in ids], ["success", "success"])
        for task_id in ids:
            self.assert_result_matches(task_id)
        self.assertEqual(sorted(m["task_id"] for m in self.messages if m["ev"] == "finished"), ids)

    def test_exit_nonzero(self) -> None:
        """
        A non-zero exit is C{failed}/C{exit_nonzero}.
        """
        record = self.run_task("bad", command("/bin/sh", "-c", "exit 3"))
        self.assertEqual(record.status, "failed")
        self.assertEqual(record.error, ErrorInfo("exit_nonzero", "task exited with code 3"))
        self.assertEqual(record.exit_code, 3)
        self.assert_result_matches("bad")

    def test_script_with_interpreter(self) -> None:
        """
        A script task runs its file (absolute path) with the interpreter, in
        the workspace.
        """
        record = self.run_task("py", shell("import os; print(os.getcwd())", [sys.executable]))
        self.assertEqual(record.status, "success")
        self.assertEqual(self.read_file(record.paths.stdout_path), record.paths.workspace_dir + "\n")
        self.assertTrue((record.paths.script_path or "").endswith("/script.py"))
        self.assertTrue(os.path.isabs(record.paths.script_path or ""))

    def test_kill(self) -> None:
        """
        A kill of a running workload (store flag and order) ends it
        C{cancelled} by SIGTERM, with C{kill_requested} before the
        terminal events.
        """
        self.insert("k", command("/bin/sh", "-c", "exec sleep 30"))
        self.supervisor.launch("k")
        self.assertTrue(self.supervisor.busy)
        self.drive(until=lambda: self.load("k").pid is not None, bound=1.0)
        self.assertTrue(transitions.request_kill(self.conn, "k", time.time_ns() // 1_000_000))
        self.supervisor.kill("k")
        took = self.drive()
        self.assertLess(took, 1.0)
        record = self.load("k")
        self.assertEqual(record.status, "cancelled")
        self.assertEqual(record.error, ErrorInfo("cancelled", "task cancelled"))
        self.assertEqual(record.exit_signal, signal.SIGTERM)
        self.assertEqual(
            self.events("k")[-4:], ["started", "kill_requested", "resource_released", "cancelled"]
        )
        self.assert_result_matches("k")

    def test_kill_flag_watch(self) -> None:
        """
        Without an order, the single-task watch notices the store's kill
        flag within a few polls.
        """
        self.insert("w", command("/bin/sh", "-c", "exec sleep 30"))
        self.supervisor.launch("w")
        self.supervisor.watch_kill_flag("w")
        transitions.request_kill(self.conn, "w", time.time_ns() // 1_000_000)
        took = self.drive()
        self.assertLess(took, 1.0)
        self.assertEqual(self.load("w").status, "cancelled")

    def test_timeout_escalates(self) -> None:
        """
        A TERM-ignoring workload past its wall time gets SIGTERM, then
        SIGKILL after the grace period; it ends C{failed}/C{timeout} with
        one C{timeout_triggered} event.
        """
        script = "trap '' TERM; echo ready; sleep 30; echo survived"
        record = self.run_task("slow", shell(script), limits=ResourceLimits(wall_time_ms=200))
        self.assertEqual(record.status, "failed")
        self.assertEqual(record.error, ErrorInfo("timeout", "task exceeded wall_time_ms"))
        self.assertEqual(record.exit_signal, signal.SIGKILL)
        self.assertTrue(record.timeout_triggered)
        assert record.usage is not None
        self.assertGreaterEqual(record.usage.duration_ms, 399)
        self.assertLess(record.usage.duration_ms, 2000)
        self.assertEqual(self.events("slow").count("timeout_triggered"), 1)
        self.assertEqual(
            self.events("slow")[-4:], ["started", "timeout_triggered", "resource_released", "failed"]
        )
        self.assertEqual(self.read_file(record.paths.stdout_path), "ready\n")
        self.assertFalse(group_alive(record.pid or 0))
        self.assert_result_matches("slow")

    def test_timeout_exit_zero(self) -> None:
        """
        A workload that exits 0 on SIGTERM after its timeout is still
        C{failed}/C{timeout}.
        """
        script = "trap 'exit 0' TERM; sleep 30 & wait"
        record = self.run_task("t0", shell(script), limits=ResourceLimits(wall_time_ms=100))
        self.assertEqual(record.status, "failed")
        self.assertEqual(record.error.code if record.error else None, "timeout")
        self.assertEqual(record.exit_code, 0)

    def test_background_child_killed(self) -> None:
        """
        A background child left by a leader that exited is killed, and the
        task ends only once its process group is empty.
        """
        bg = os.path.join(self.data_dir, "bg.pid")
        record = self.run_task("bg", shell(f"sleep 30 & echo $! > {bg}; exit 0"))
        self.assertEqual(record.status, "success")
        child = int(self.read_file(bg))
        self.assertFalse(group_alive(record.pid or 0))
        self.assertFalse(_exists(child))
        self.assertIsNone(self.supervisor.next_delay())

    def test_kill_queued_take_over(self) -> None:
        """
        Taking a queued task already flagged for kill cancels it before
        execution, without a reservation or a C{started} event.
        """
        self.insert("q", command("/bin/true"))
        transitions.request_kill(self.conn, "q", time.time_ns() // 1_000_000)
        self.supervisor.launch("q")
        record = self.load("q")
        self.assertEqual(record.status, "cancelled")
        self.assertEqual(record.error, ErrorInfo("cancelled", "task cancelled before execution"))
        self.assertTrue(os.path.exists(record.paths.result_path))
        self.assertNotIn("resource_reserved", self.events("q"))
        self.assertNotIn("started", self.events("q"))
        self.assertEqual(
            self.messages, [{"ev": "finished", "task_id": "q", "status": self.result_json("q")}]
        )

    def test_launch_failure(self) -> None:
        """
        A program that cannot be started ends C{failed}/C{launch_failed}
        with the OS error, duration 0, its reservation released and no
        C{started} event.
        """
        self.insert("nf", command("/nonexistent/program"))
        self.supervisor.launch("nf")
        self.assertFalse(self.supervisor.busy)
        record = self.load("nf")
        self.assertEqual(record.status, "failed")
        assert record.error is not None
        self.assertEqual(record.error.code, "launch_failed")
        self.assertTrue(record.error.message.startswith("spawn process: "), record.error.message)
        self.assertIn("No such file", record.error.message)
        self.assertEqual(record.duration_ms, 0)
        self.assertEqual(
            self.events("nf")[-3:], ["resource_reserved", "resource_released", "failed"]
        )
        self.assert_result_matches("nf")

    def test_launch_declines(self) -> None:
        """
        Unknown and terminal tasks are not launched: the supervisor declines
        them (the servers free what they hold for them) and changes nothing.
        """
        self.assertFalse(self.supervisor.launch("ghost"))
        self.insert("done", command("/bin/true"))
        terminal.finish(self.conn, "done", records.Outcome(status="success"), 1)
        before = self.load("done")
        self.assertFalse(self.supervisor.launch("done"))
        self.assertEqual(self.load("done"), before)
        self.assertFalse(self.supervisor.busy)
        self.assertEqual(self.messages, [])

    def test_short_task_two_transactions(self) -> None:
        """
        A task that ends before its start record is due costs two store
        transactions: the claim, and the terminal write that carries the
        start (pid, C{started} event) before the end.
        """
        self.patch(starts, "START_RECORD_DELAY_S", 10.0)
        statements: List[str] = []
        self.supervisor.conn.set_trace_callback(statements.append)
        self.addCleanup(self.supervisor.conn.set_trace_callback, None)
        self.insert("quick", command("/bin/true"))
        self.supervisor.launch("quick")
        self.drive(bound=1.0)
        self.assertEqual([s for s in statements if s == "COMMIT"], ["COMMIT", "COMMIT"])
        record = self.load("quick")
        self.assertEqual(record.status, "success")
        self.assertIsNotNone(record.pid)
        self.assertEqual(
            self.events("quick")[-4:], ["resource_reserved", "started", "resource_released", "finished"]
        )
        self.assert_result_matches("quick")

    def test_declined_on_retry(self) -> None:
        """
        A launch order whose claim the store could not take is retried;
        if the task ended meanwhile, the order's sender is still told it
        was declined.
        """
        self.patch(engine, "CLAIM_RETRY_S", 0.01)
        real_claim = transitions.claim_all
        calls: List[str] = []

        def flaky_claim(*args: Any) -> Any:
            calls.append("claim")
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
            return real_claim(*args)

        self.patch(transitions, "claim_all", flaky_claim)
        declined: List[bool] = []
        self.insert("late", command("/bin/true"))
        self.assertTrue(self.supervisor.launch("late", on_declined=lambda: declined.append(True)))
        self.assertEqual(declined, [])
        terminal.finish(self.conn, "late", records.Outcome(status="cancelled"), 1)
        self.drive(until=lambda: bool(declined), bound=1.0)
        self.assertEqual((calls, declined), (["claim", "claim"], [True]))
        self.assertTrue(any("cannot take late" in line for line in self.logged))

    def test_launch_takes_queued(self) -> None:
        """
        A launch order takes the queued task: C{running} under this
        supervisor with its reservation at once; its start (pid, pgid,
        C{started}) is written within a few milliseconds.
        """
        self.insert("queued", command("/bin/sh", "-c", "exec sleep 30"))
        self.supervisor.launch("queued")
        record = self.load("queued")
        self.assertEqual((record.status, record.shim_pid), ("running", os.getpid()))
        self.assertTrue(record.reservation_active)
        self.drive(until=lambda: "started" in self.events("queued"), bound=1.0)
        record = self.load("queued")
        self.assertEqual(record.pid, self.supervisor.by_task["queued"].pid)
        self.assertEqual(record.pgid, record.pid)
        self.assertIsNotNone(record.started_at_ms)
        self.assertEqual(self.events("queued")[-2:], ["resource_reserved", "started"])
        self.assertEqual(self.messages, [])
        self.supervisor.kill("queued")
        self.drive()
        self.assertEqual(self.load("queued").status, "cancelled")

    def test_outcome_written_once(self) -> None:
        """
        A task made terminal by someone else meanwhile keeps that record:
        the supervisor's late write changes nothing.
        """
        self.insert("race", command("/bin/sh", "-c", "exec sleep 30"))
        self.supervisor.launch("race")
        cancelled = records.Outcome(status="cancelled", error=ErrorInfo("cancelled", "other writer"))
        self.assertTrue(terminal.finish(self.conn, "race", cancelled, 5))
        before = self.load("race")
        self.supervisor.kill("race")
        self.drive()
        self.assertEqual(self.load("race"), before)
        self.assertEqual(self.events("race").count("cancelled"), 1)
        # The report carries no snapshot of a write that did not happen.
        self.assertEqual(self.messages, [{"ev": "finished", "task_id": "race"}])

    def test_peak_reset_after_large_preview(self) -> None:
        """
        Finishing a task whose output preview is large resets the
        supervisor's peak RSS (later workloads would report it as theirs);
        a small one does not.
        """
        resets: List[bool] = []

        class Counting(HostProcesses):
            def reset_peak_rss(self) -> bool:
                resets.append(True)
                return True

        self.supervisor.close()
        self.supervisor = Supervisor(self.db, 0.2, processes=Counting(), base_env=BASE_ENV, log=self.logged.append)
        self.addCleanup(self.supervisor.close)
        self.run_task("quiet", shell("echo hi"))
        self.assertEqual(resets, [])
        self.run_task("loud", shell("head -c 300000 /dev/zero | tr '\\0' a"))
        self.assertEqual(resets, [True])

    def test_report_carries_small_status(self) -> None:
        """
        The C{finished} report carries the terminal snapshot (what
        C{result.json} says) unless it is large: a big output preview is
        left for the server to read from the store.
        """
        self.run_task("small", shell("echo hi"))
        self.run_task("big", shell("head -c 40000 /dev/zero | tr '\\0' a"))
        by_task = {m["task_id"]: m for m in self.messages}
        self.assertEqual(by_task["small"]["status"], self.result_json("small"))
        self.assertEqual(self.result_json("big")["stdout"], "a" * 40000)
        self.assertEqual(by_task["big"], {"ev": "finished", "task_id": "big"})

    def test_preview_ceiling_from_settings(self) -> None:
        """
        The preview ceiling the server's settings carry bounds
        C{result.json} even for a task stored with a limit of 2^63-1 (an
        older store).
        """
        self.supervisor = Supervisor(
            self.db, 0.2, base_env=BASE_ENV, log=self.logged.append, detect_cgroups=lambda root: self.cgroups
        )
        self.addCleanup(self.supervisor.close)
        self.supervisor.configure(
            control.SupervisorSettings(
                grace_ms=200,
                env=BASE_ENV,
                cgroup_root="/sys/fs/cgroup/execgo-test",
                identity=privileges.TaskIdentity(kind=privileges.SELF, owner_uid=os.geteuid(), owner_gid=os.getegid()),
                max_output_preview_bytes=1000,
            )
        )
        self.assertEqual(self.supervisor.preview_ceiling, 1000)
        self.run_task(
            "old", shell("head -c 5000 /dev/zero | tr '\\0' a"), limits=ResourceLimits(stdout_max_bytes=2**63 - 1)
        )
        written = self.result_json("old")
        self.assertEqual((written["stdout"], written["stdout_truncated"]), ("a" * 1000, True))


    def test_no_second_workload(self) -> None:
        """
        A task another supervisor took (C{running}, whether or not its
        workload is recorded yet) is declined, not started a second time;
        a repeated order for a task this supervisor runs is ignored (not
        declined: the task holds its slot).
        """
        marker = os.path.join(self.data_dir, "runs")
        self.insert("dup", shell(f"echo ran >> {marker}"))
        now = time.time_ns() // 1_000_000
        self.assertIsNotNone(transitions.claim(self.conn, "dup", 1, now))
        self.assertFalse(self.supervisor.launch("dup"))
        transitions.record_start(self.conn, "dup", 2**22 + 1, now, None)
        self.assertFalse(self.supervisor.launch("dup"))
        self.assertFalse(self.supervisor.busy)
        self.assertFalse(os.path.exists(marker))
        self.insert("mine", command("/bin/sh", "-c", "exec sleep 30"))
        self.assertTrue(self.supervisor.launch("mine"))
        self.assertTrue(self.supervisor.launch("mine"))
        self.assertEqual(self.messages, [])
        self.drive(until=lambda: not self.supervisor.pending_starts, bound=1.0)
        self.assertEqual(self.events("mine").count("started"), 1)
        self.supervisor.kill("mine")
        self.drive()


    def test_kill_unknown(self) -> None:
        """
        A kill order for a task not supervised here is ignored.
        """
        self.supervisor.kill("ghost")
        self.assertFalse(self.supervisor.busy)


MEMORY_PLAN = dict(
    limits=ResourceLimits(memory_bytes=1 << 30, pids_max=64),
    plan=plan_for(
        ResourceLimits(memory_bytes=1 << 30, pids_max=64),
        memory_enforced=True,
        pids_enforced=True,
        cgroup_enforced=True,
        oom_detection=True,
        mechanisms={"memory_bytes": "cgroup_v1", "pids_max": "cgroup_v1"},
    ),
)


class CgroupEngineTests(EngineTestCase):
    """
    How the engine uses its cgroup facility (an in-memory fake here): set-up
    failures, placement, signals, verdicts and removal.
    """

    def use(self, **kwargs: Any) -> FakeCgroups:
        """
        Rebuild the supervisor with a fake cgroup facility.
        """
        self.supervisor.close()
        self.cgroups = FakeCgroups(**kwargs)
        self.supervisor = Supervisor(
            self.db, 0.2, base_env=BASE_ENV, log=self.logged.append, cgroups=self.cgroups
        )
        self.addCleanup(self.supervisor.close)
        return self.cgroups

    def test_placement(self) -> None:
        """
        The group is created with the plan's mechanisms, the supervisor
        steps in for the spawn and out again, then the limits are written;
        the group is removed at the end.
        """
        cgroups = self.use(peak=12345)
        record = self.run_task("m", command("/bin/true"), **MEMORY_PLAN)
        self.assertEqual(record.status, "success")
        self.assertEqual(
            cgroups.calls,
            [("create", "m"), ("enter", "m"), ("leave", "m"), ("limit", (1 << 30, 64))],
        )
        [group] = cgroups.groups
        self.assertEqual(group.mechanisms, {"memory_bytes": "cgroup_v1", "pids_max": "cgroup_v1"})
        self.assertEqual(group.pids_max, 64)
        self.assertTrue(group.removed)
        assert record.usage is not None
        self.assertEqual(record.usage.memory_peak_bytes, 12345)

    def test_no_cgroup_without_enforcement(self) -> None:
        """
        A plan without C{cgroup_enforced} uses no group.
        """
        cgroups = self.use()
        self.assertEqual(self.run_task("p", command("/bin/true")).status, "success")
        self.assertEqual(cgroups.calls, [])

    def test_create_fails(self) -> None:
        """
        A group that cannot be created fails the task with
        C{sandbox_setup_failed} before anything is spawned.
        """
        self.use(fail="create")
        record = self.run_task("c", command("/bin/true"), **MEMORY_PLAN)
        self.assertEqual(record.status, "failed")
        assert record.error is not None
        self.assertEqual(record.error.code, "sandbox_setup_failed")
        self.assertTrue(record.error.message.startswith("configure cgroup: "), record.error.message)
        self.assertEqual(record.duration_ms, 0)
        self.assertNotIn("started", self.events("c"))
        self.assert_result_matches("c")

    def test_enter_fails(self) -> None:
        """
        Failing to step into the group is a launch failure; the group is
        removed and the supervisor steps back out.
        """
        cgroups = self.use(fail="enter")
        record = self.run_task("e", command("/bin/true"), **MEMORY_PLAN)
        assert record.error is not None
        self.assertEqual(record.error.code, "launch_failed")
        self.assertIn("cannot enter cgroup", record.error.message)
        self.assertIn(("leave", "e"), cgroups.calls)
        self.assertTrue(cgroups.groups[0].removed)

    def test_limit_fails(self) -> None:
        """
        Limits that cannot be written kill the already running workload and
        fail the task with C{sandbox_setup_failed}.
        """
        cgroups = self.use(fail="limit")
        record = self.run_task("l", command("/bin/sh", "-c", "exec sleep 30"), **MEMORY_PLAN)
        self.assertEqual(record.status, "failed")
        assert record.error is not None
        self.assertEqual(record.error.code, "sandbox_setup_failed")
        self.assertTrue(record.error.message.startswith("configure cgroup: "), record.error.message)
        self.assertIsNotNone(record.pid)
        self.assertFalse(group_alive(record.pid or 0))
        self.assertIn(signal.SIGKILL, cgroups.groups[0].signals)
        self.assertTrue(cgroups.groups[0].removed)

    def test_oom_verdict(self) -> None:
        """
        An OOM kill recorded by the group is C{memory_limit_exceeded}.
        """
        self.use(oom=True)
        record = self.run_task("o", command("/bin/sh", "-c", "kill -9 $$"), **MEMORY_PLAN)
        self.assertEqual(record.status, "failed")
        self.assertEqual(record.error, ErrorInfo("memory_limit_exceeded", "task exceeded memory limit"))
        self.assertEqual(record.exit_signal, signal.SIGKILL)

    def test_kill_signals_group(self) -> None:
        """
        A kill signals the whole group as well as the process group.
        """
        cgroups = self.use()
        self.insert("k", command("/bin/sh", "-c", "exec sleep 30"), **MEMORY_PLAN)
        self.supervisor.launch("k")
        self.supervisor.kill("k")
        self.drive()
        self.assertEqual(cgroups.groups[0].signals[0], signal.SIGTERM)
        self.assertEqual(self.load("k").status, "cancelled")

    def test_pids_limit_event(self) -> None:
        """
        Forks refused by the pids limit are reported in one event.
        """
        self.use(hits=3)
        self.run_task("f", command("/bin/true"), **MEMORY_PLAN)
        [event] = [e for e in eventlog.load_events(self.conn, "f") if e.event_type == "pids_limit_reached"]
        self.assertEqual(event.data, {"pids_max": 64, "refused_forks": 3})


class TimerTests(StoreMixin, SynchronousTestCase):
    """
    The supervisor's timer heap (L{Timers}), with a monotonic clock the
    test moves.
    """

    def setUp(self) -> None:
        self.make_store()
        self.now = 100.0
        self.logged: List[str] = []
        self.supervisor = Supervisor(
            self.db, 0.2, clock=Timers(lambda: self.now), base_env=BASE_ENV, log=self.logged.append
        )
        self.addCleanup(self.supervisor.close)

    def test_order_and_cancel(self) -> None:
        """
        Due timers run in deadline order, cancelled ones never; later ones
        wait; C{next_delay} skips cancelled timers.
        """
        ran: List[str] = []
        self.supervisor.call_later(2.0, lambda: ran.append("b"))
        self.supervisor.call_later(1.0, lambda: ran.append("a"))
        cancelled = self.supervisor.call_later(0.5, lambda: ran.append("x"))
        self.supervisor.call_later(5.0, lambda: ran.append("late"))
        cancelled.cancel()
        self.assertEqual(self.supervisor.next_delay(), 1.0)
        self.now += 2.0
        self.supervisor.run_due_timers()
        self.assertEqual(ran, ["a", "b"])
        self.assertEqual(self.supervisor.next_delay(), 3.0)
        self.now += 10.0
        self.assertEqual(self.supervisor.next_delay(), 0.0)
        self.supervisor.run_due_timers()
        self.assertEqual(ran, ["a", "b", "late"])
        self.assertIsNone(self.supervisor.next_delay())

    def test_error_guarded(self) -> None:
        """
        A failing timer call is logged and does not stop the others.
        """
        ran: List[str] = []

        def boom() -> None:
            raise RuntimeError("boom")

        self.supervisor.call_later(0, boom)
        self.supervisor.call_later(0, lambda: ran.append("after"))
        self.supervisor.run_due_timers()
        self.assertEqual(ran, ["after"])
        [line] = self.logged
        self.assertTrue(line.startswith("supervisor error: "))
        self.assertIn("RuntimeError: boom", line)


class ShimProcessTests(StoreMixin, SynchronousTestCase):
    """
    The C{internal-shim} subcommand as a real subprocess.
    """

    def setUp(self) -> None:
        self.make_store()

    def argv(self, task_id: str) -> List[str]:
        """
        The shim command line for a task.
        """
        return [
            sys.executable, "-m", "execgo", "internal-shim",
            "--database", self.db, "--data-dir", self.data_dir, "--task-id", task_id,
            "--termination-grace-ms", "200", "--cgroup-root", "/nonexistent",
        ]

    def test_runs_task(self) -> None:
        """
        The shim takes a queued task over, runs it to completion, writes
        C{result.json} and exits 0.
        """
        self.insert("s", shell("echo from-shim"))
        done = subprocess.run(self.argv("s"), timeout=10, capture_output=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        record = self.load("s")
        self.assertEqual(record.status, "success")
        self.assertNotEqual(record.shim_pid, os.getpid())
        self.assertEqual(self.result_json("s")["stdout"], "from-shim\n")

    def test_unknown_task(self) -> None:
        """
        An unknown task id makes the shim exit 1.
        """
        done = subprocess.run(self.argv("ghost"), timeout=10, capture_output=True)
        self.assertEqual(done.returncode, 1)

    def test_terminal_task(self) -> None:
        """
        An already terminal task is left alone (exit 0).
        """
        self.insert("t", command("/bin/true"))
        terminal.finish(self.conn, "t", records.Outcome(status="success"), 1)
        before = self.load("t")
        done = subprocess.run(self.argv("t"), timeout=10, capture_output=True)
        self.assertEqual(done.returncode, 0)
        self.assertEqual(self.load("t"), before)

    def test_kill_flag(self) -> None:
        """
        The shim notices the store's kill flag and ends the task
        C{cancelled}.
        """
        self.insert("k", command("/bin/sh", "-c", "exec sleep 30"))
        shim = subprocess.Popen(self.argv("k"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: shim.poll() is None and shim.kill())
        self.addCleanup(shim.wait)
        self.assertTrue(wait_for(lambda: self.load("k").pid is not None))
        transitions.request_kill(self.conn, "k", time.time_ns() // 1_000_000)
        self.assertEqual(shim.wait(timeout=5), 0)
        record = self.load("k")
        self.assertEqual(record.status, "cancelled")
        self.assertEqual(record.exit_signal, signal.SIGTERM)
        self.assertFalse(group_alive(record.pid or 0))


def _exists(pid: int) -> bool:
    """
    Whether C{pid} still names a process (a zombie included).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class LoopTests(EngineTestCase):
    """
    The supervisor daemon's control connections (L{execgo.supervisor.daemon.Loop}).
    """

    def setUp(self) -> None:
        super().setUp()
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        control.prepare_run_dir(self.data_dir)
        self.loop = Loop(self.supervisor, self.data_dir, 10.0, self.logged.append)
        self.loop.bind()
        self.addCleanup(lambda: self.loop.listener.close() if self.loop.listener else None)
        self.addCleanup(self.drop_connections)

    def drop_connections(self) -> None:
        """
        Close the loop's side of every connection the test left open.
        """
        for connection in list(self.loop.connections.values()):
            self.loop.drop(connection)

    def connect(self) -> Any:
        """
        A connected client socket and the loop's side of it; the hello is
        read off.
        """
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        with control.reachable(control.socket_path(self.data_dir)) as address:
            client.connect(address)
        self.loop._accept()
        client.settimeout(2.0)
        self.assertIn(b'"ev":"hello"', client.recv(65536))
        return client, list(self.loop.connections.values())[-1]

    def test_waits_bounded(self) -> None:
        """
        No single wait of a supervisor loop is longer than an hour, so a
        timer of a task stored with a huge wall time cannot overflow
        C{epoll_wait}'s millisecond timeout.
        """
        self.assertEqual(bounded(None), MAX_WAIT_S)
        self.assertEqual(bounded(float(2**40)), MAX_WAIT_S)
        self.assertEqual(bounded(0.25), 0.25)

    def test_socket_private(self) -> None:
        """
        The socket lives in a directory only the runtime's uid may enter,
        and is itself mode 0600.
        """
        run = control.run_dir(self.data_dir)
        self.assertEqual(stat.S_IMODE(os.stat(run).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(control.socket_path(self.data_dir)).st_mode), 0o600)

    def test_other_uid_refused(self) -> None:
        """
        Behind the private directory, the supervisor checks each peer
        itself: with the directory and socket opened up to everyone, a
        process of another uid connects, is refused at once with nothing
        said to it, and the attempt is logged.
        """
        if os.geteuid() != 0:
            raise self.skipTest("needs root to act as another uid")
        os.chmod(control.run_dir(self.data_dir), 0o711)
        os.chmod(control.socket_path(self.data_dir), 0o666)
        os.chmod(os.path.dirname(self.data_dir), 0o711)
        parent = self.data_dir
        while parent != "/":
            if stat.S_IMODE(os.stat(parent).st_mode) & 0o001 == 0:
                raise self.skipTest(f"{parent} is not passable for other users")
            parent = os.path.dirname(parent)
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with control.reachable(control.socket_path(self.data_dir)) as address:
                    client.connect(address)
                os.write(writer, b"c")
                client.settimeout(5)
                os.write(writer, client.recv(100) or b"-")
            except OSError as e:
                os.write(writer, f"E{e.errno}".encode())
            os._exit(0)
        os.close(writer)
        self.assertEqual(os.read(reader, 100), b"c")
        self.loop._accept()
        self.assertEqual(os.read(reader, 100), b"-")
        os.close(reader)
        os.waitpid(pid, 0)
        self.assertEqual(self.loop.connections, {})
        self.assertTrue(
            any("refused a control connection" in line and "uid 65534" in line for line in self.logged),
            self.logged,
        )

    def test_order_carries_ids_only(self) -> None:
        """
        A launch order that names an environment, a cgroup root or a grace
        period runs the task with the supervisor's own settings.
        """
        client, side = self.connect()
        self.insert("ids", shell("echo PATH=$PATH"))
        self.loop.handle(
            side,
            b'{"op":"launch","task_ids":["ids"],"env":{"PATH":"/evil"},"cgroup_root":"/tmp/x","grace_ms":1}',
        )
        self.drive()
        self.assertIn(f"PATH={BASE_ENV['PATH']}", self.read_file(self.load("ids").paths.stdout_path))
        self.assertEqual(self.supervisor.grace_s, 0.2)

    def test_settings_reloaded_on_connect(self) -> None:
        """
        Each admitted connection makes the supervisor take the settings
        file's values (a newly started server's).
        """
        settings = control.SupervisorSettings(
            grace_ms=1234,
            env={"PATH": "/usr/bin:/bin"},
            cgroup_root="/sys/fs/cgroup/execgo-test-none",
            identity=privileges.TaskIdentity(kind=privileges.SELF, owner_uid=os.geteuid(), owner_gid=os.getegid()),
            rootfs_roots=("/srv/roots",),
        )
        control.write_settings(self.data_dir, settings)
        self.connect()
        self.assertEqual(self.supervisor.grace_s, 1.234)
        self.assertEqual(self.supervisor.base_env, {"PATH": "/usr/bin:/bin"})
        self.assertEqual(self.supervisor.rootfs_roots, ("/srv/roots",))
        self.assertEqual(self.supervisor.identity, settings.identity)

    def test_declined_to_the_sender_only(self) -> None:
        """
        A declined launch order is answered on the connection it came on:
        another server connected to the same supervisor holds nothing for
        it.
        """
        sender, sender_side = self.connect()
        other, _ = self.connect()
        self.loop.handle(sender_side, b'{"op":"launch","task_ids":["ghost"]}')
        self.assertEqual(json.loads(sender.recv(65536)), {"ev": "declined", "task_id": "ghost"})
        other.setblocking(False)
        self.assertRaises(BlockingIOError, other.recv, 65536)
