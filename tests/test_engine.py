"""
Tests for L{execgo.supervisor.engine.Supervisor}'s timers, kill escalation
and verdicts, driven by a clock the test moves and fake kernel edges
(L{FakeProcesses}): no workload process is started and nothing sleeps.
The real-process tier, for what needs the kernel, is
C{tests.test_supervisor}.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from execgo import control
from execgo.core.models import ResourceLimits
from execgo.core.results import ErrorInfo
from execgo.store import connection, schema, transitions
from execgo.supervisor import endings as endings_module
from execgo.supervisor import engine as engine_module
from execgo.supervisor import launcher, reaping, starts
from execgo.supervisor.engine import Supervisor
from execgo.supervisor.timers import Timers
from tests.fakes import FakeCgroups, FakeProcesses, StoreReads, command, new_task, plan_for

GRACE_S = 0.5
class EngineHarness(StoreReads):
    """
    A supervisor engine over a temporary store, on a clock the test moves
    (L{advance}) with fake kernel edges (L{FakeProcesses}).
    """

    cgroups: Any = None

    def make_engine(self: Any) -> None:
        """
        Create the data directory, the store and the engine.
        """
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.data_dir, "tasks"))
        self.db = os.path.join(self.data_dir, "runtime.db")
        self.conn = connection.connect(self.db)
        self.addCleanup(self.conn.close)
        schema.init_schema(self.conn)
        self.now = 1000.0
        self.processes = FakeProcesses()
        self.logged: List[str] = []
        self.supervisor = Supervisor(
            self.db,
            GRACE_S,
            clock=Timers(lambda: self.now),
            processes=self.processes,
            wall_ms=lambda: int(self.now * 1000),
            base_env={"PATH": "/usr/bin:/bin"},
            log=self.logged.append,
            cgroups=self.cgroups,
            detect_cgroups=lambda root: None,
        )
        self.addCleanup(self.supervisor.close)
        self.reports: List[control.Report] = []
        self.supervisor.listeners.append(self.reports.append)

    def advance(self: Any, seconds: float = 0.0) -> None:
        """
        Move the clock on, then do what the supervisor's loop does: reap,
        run the timers that are due.
        """
        self.now += seconds
        self.supervisor.reap()
        self.supervisor.run_due_timers()

    def insert(self: Any, *task_ids: str) -> None:
        """
        Store C{accepted} C{/bin/true} tasks (their files made), launched
        by no one yet.
        """
        for task_id in task_ids:
            task = new_task(self.data_dir, task_id, command("/bin/true"), make_dirs=True)
            transitions.insert_task(self.conn, task, int(self.now * 1000))

    def launch(self: Any, task_id: str, wall_time_ms: int = 10_000, **kwargs: Any) -> int:
        """
        Insert a task and launch it; its fake pid.
        """
        limits = ResourceLimits(wall_time_ms=wall_time_ms)
        task = new_task(self.data_dir, task_id, command("/bin/true"), limits, make_dirs=True, **kwargs)
        transitions.insert_task(self.conn, task, int(self.now * 1000))
        self.assertTrue(self.supervisor.launch(task_id))
        return self.supervisor.by_task[task_id].pid



class EscalationTests(EngineHarness, SynchronousTestCase):
    """
    Wall time, kills and their escalation, on the engine's clock.
    """

    def setUp(self) -> None:
        self.make_engine()

    def test_wall_time_escalates(self) -> None:
        """
        A workload that ignores SIGTERM gets it exactly at its wall time and
        SIGKILL exactly one grace period later; it ends C{failed}/C{timeout}
        with the duration the clock measured, and no timer is left.
        """
        self.processes.behaviour = {"ignores": {signal.SIGTERM}}
        pid = self.launch("slow", wall_time_ms=2000)
        self.advance(1.875)
        self.assertEqual(self.processes.signals, [])
        self.advance(0.125)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM])
        self.assertTrue(self.load("slow").timeout_triggered)
        self.advance(GRACE_S - 0.125)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM])
        self.advance(0.125)
        self.advance()
        self.assertEqual(self.processes.sent(pid)[:2], [signal.SIGTERM, signal.SIGKILL])
        record = self.load("slow")
        self.assertEqual(record.status, "failed")
        self.assertEqual(record.error, ErrorInfo("timeout", "task exceeded wall_time_ms"))
        self.assertEqual(record.exit_signal, signal.SIGKILL)
        assert record.usage is not None
        self.assertEqual(record.usage.duration_ms, 2500)
        self.assertEqual(self.events("slow").count("timeout_triggered"), 1)
        self.assertFalse(self.supervisor.busy)
        self.assertIsNone(self.supervisor.next_delay())

    def test_wall_time_from_the_plan(self) -> None:
        """
        The wall timer reads the plan's C{wall_time_ms}, where every other
        enforced limit comes from, not the requested limits.
        """
        limits = ResourceLimits(wall_time_ms=5000)
        plan = plan_for(ResourceLimits(wall_time_ms=1000))
        pid = self.launch("planned", wall_time_ms=limits.wall_time_ms, plan=plan)
        self.advance(1.0)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM])

    def test_exit_on_sigterm_after_timeout(self) -> None:
        """
        A workload that exits 0 on its timeout's SIGTERM is still
        C{failed}/C{timeout}; its SIGKILL is called off (the one sent is
        for its group's leftovers, as it is reaped).
        """
        self.processes.behaviour = {"exit_on": {signal.SIGTERM: 0}}
        pid = self.launch("t0", wall_time_ms=125)
        self.advance(0.125)
        self.advance()
        record = self.load("t0")
        self.assertEqual(record.error, ErrorInfo("timeout", "task exceeded wall_time_ms"))
        self.assertEqual(record.exit_code, 0)
        self.advance(GRACE_S * 2)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM, signal.SIGKILL])
        self.assertIsNone(self.supervisor.next_delay())

    def test_kill_terminates_then_kills(self) -> None:
        """
        A kill sends SIGTERM at once; a repeated one sends it again but
        leaves the SIGKILL one grace period after the first.  The task
        ends C{cancelled}.
        """
        self.processes.behaviour = {"ignores": {signal.SIGTERM}}
        pid = self.launch("k")
        self.supervisor.kill("k")
        self.advance(0.25)
        self.supervisor.kill("k")
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM, signal.SIGTERM])
        self.advance(GRACE_S - 0.25)
        self.assertEqual(self.processes.sent(pid)[2], signal.SIGKILL)
        self.advance()
        record = self.load("k")
        self.assertEqual(record.status, "cancelled")
        self.assertEqual(record.error, ErrorInfo("cancelled", "task cancelled"))
        self.assertEqual(record.exit_signal, signal.SIGKILL)
        assert record.usage is not None
        self.assertEqual(record.usage.duration_ms, 500)

    def test_kill_obeyed_escalation_called_off(self) -> None:
        """
        A workload that dies of the SIGTERM gets no SIGKILL from the
        escalation, however long the clock runs on (only the one its
        group's leftovers get as it is reaped); it ends C{cancelled} by
        SIGTERM.
        """
        pid = self.launch("polite")
        self.supervisor.kill("polite")
        self.advance()
        self.advance(GRACE_S * 10)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM, signal.SIGKILL])
        record = self.load("polite")
        self.assertEqual(record.status, "cancelled")
        self.assertEqual(record.exit_signal, signal.SIGTERM)
        self.assertIsNone(self.supervisor.next_delay())

    def test_kill_after_exit(self) -> None:
        """
        A kill that comes once the workload has exited sends nothing: not
        while its group drains (the verdict then takes the kill), not once
        its end is written (nothing changes).
        """
        self.processes.behaviour = {"immortal": True}
        pid = self.launch("late")
        self.processes.exit(pid, 0, leftovers=1)
        self.advance()
        self.supervisor.kill("late")
        self.assertNotIn(signal.SIGTERM, self.processes.sent(pid))
        self.advance(reaping.GROUP_DRAIN_LIMIT_S)
        self.assertEqual(self.load("late").status, "cancelled")
        self.processes.behaviour = {}
        pid = self.launch("done")
        self.processes.exit(pid, 0)
        self.advance()
        self.supervisor.kill("done")
        self.assertEqual(self.processes.sent(pid), [signal.SIGKILL])
        self.assertEqual(self.load("done").status, "success")

    def test_grace_of_the_launch(self) -> None:
        """
        A running workload keeps the grace period it was launched with when
        the settings change.
        """
        self.processes.behaviour = {"ignores": {signal.SIGTERM}}
        pid = self.launch("g")
        self.supervisor.grace_s = 5.0
        self.supervisor.kill("g")
        self.advance(GRACE_S)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM, signal.SIGKILL])

    def test_exit_cancels_timers(self) -> None:
        """
        A workload that exits before its wall time gets no signal but the
        SIGKILL for its group's leftovers, ends C{success}, and leaves no
        timer behind.
        """
        pid = self.launch("quick", wall_time_ms=1000)
        self.advance(0.25)
        self.processes.exit(pid, 0)
        self.advance()
        self.assertEqual(self.processes.sent(pid), [signal.SIGKILL])
        record = self.load("quick")
        self.assertEqual(record.status, "success")
        assert record.usage is not None
        self.assertEqual((record.usage.duration_ms, record.usage.user_cpu_ms), (250, 7))
        self.advance(5.0)
        self.assertEqual(self.processes.sent(pid), [signal.SIGKILL])
        self.assertIsNone(self.supervisor.next_delay())
        self.assertEqual(self.reports, [control.Finished("quick", self.reports[0].status)])

    def test_kill_flag_watch(self) -> None:
        """
        The single-task watch polls the store's kill flag every
        L{engine_module.KILL_FLAG_POLL_S} and escalates once it is set.
        """
        pid = self.launch("w")
        self.supervisor.watch_kill_flag("w")
        self.advance(engine_module.KILL_FLAG_POLL_S)
        self.assertEqual(self.processes.signals, [])
        transitions.request_kill(self.conn, "w", int(self.now * 1000))
        self.advance(engine_module.KILL_FLAG_POLL_S)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM])
        self.advance()
        self.assertEqual(self.load("w").status, "cancelled")
        self.assertIsNone(self.supervisor.next_delay())


class DrainTests(EngineHarness, SynchronousTestCase):
    """
    A workload's group must be empty before its end is written; the wait
    is bounded.
    """

    def setUp(self) -> None:
        self.make_engine()

    def test_leftovers_killed(self) -> None:
        """
        Leftovers in the leader's group get SIGKILL while the leader is
        reaped, and the task ends at once.
        """
        pid = self.launch("bg")
        self.processes.exit(pid, 0, leftovers=2)
        self.advance()
        self.assertEqual(self.processes.sent(pid), [signal.SIGKILL])
        self.assertEqual(self.load("bg").status, "success")

    def test_drain_bounded(self) -> None:
        """
        Leftovers that will not die are sent SIGKILL every drain step, and
        the task ends once L{reaping.GROUP_DRAIN_LIMIT_S} has passed.
        """
        self.processes.behaviour = {"immortal": True}
        pid = self.launch("stuck")
        self.processes.exit(pid, 0, leftovers=1)
        self.advance()
        self.assertEqual(self.load("stuck").status, "running")
        self.advance(reaping.GROUP_DRAIN_LIMIT_S / 2)
        self.assertEqual(self.load("stuck").status, "running")
        self.advance(reaping.GROUP_DRAIN_LIMIT_S / 2)
        self.assertEqual(self.load("stuck").status, "success")
        self.assertEqual(set(self.processes.sent(pid)), {signal.SIGKILL})
        self.assertGreater(len(self.processes.sent(pid)), 2)
        self.assertIsNone(self.supervisor.next_delay())


class LaunchTests(EngineHarness, SynchronousTestCase):
    """
    Launch failures and what is recorded when the kernel edge refuses.
    """

    def setUp(self) -> None:
        self.make_engine()

    def test_spawn_refused(self) -> None:
        """
        A spawn that fails ends the task C{failed}/C{launch_failed} at once,
        with no timer left.
        """
        self.processes.fail = launcher.LaunchError("[Errno 2] No such file or directory")
        task = new_task(self.data_dir, "nf", command("/nope"), make_dirs=True)
        transitions.insert_task(self.conn, task, int(self.now * 1000))
        self.assertTrue(self.supervisor.launch("nf"))
        record = self.load("nf")
        self.assertEqual(record.status, "failed")
        self.assertEqual(
            record.error, ErrorInfo("launch_failed", "spawn process: [Errno 2] No such file or directory")
        )
        self.assertFalse(self.supervisor.busy)
        self.assertIsNone(self.supervisor.next_delay())

    def test_start_recorded_on_the_clock(self) -> None:
        """
        The start is written with the next transaction, at the latest
        L{starts.START_RECORD_DELAY_S} after the spawn.
        """
        pid = self.launch("s")
        self.assertIsNone(self.load("s").pid)
        self.advance(starts.START_RECORD_DELAY_S)
        record = self.load("s")
        self.assertEqual((record.pid, record.started_at_ms), (pid, 1_000_000))


class SlotTests(EngineHarness, SynchronousTestCase):
    """
    Launch orders beyond the node's task slots wait in the engine
    (L{Supervisor.order}) and start, in order, as ends free slots.
    """

    def setUp(self) -> None:
        self.make_engine()
        self.supervisor.slots.limit = 2
        self.declined: List[str] = []

    def order(self, *task_ids: str) -> None:
        """
        Store C{accepted} tasks and order them launched, in one order.
        """
        self.insert(*task_ids)
        self.supervisor.order([(task_id, functools.partial(self.declined.append, task_id)) for task_id in task_ids])

    def end(self, task_id: str) -> None:
        """
        The workload of C{task_id} exits 0 and the loop turns.
        """
        self.processes.exit(self.supervisor.by_task[task_id].pid, 0)
        self.advance()

    def test_waits_for_a_slot(self) -> None:
        """
        No more workloads than slots run; the orders beyond stay
        C{accepted} in the store and start, oldest first, as soon as an
        end is written, with no word from a server.
        """
        self.order("a", "b", "c", "d")
        self.assertEqual(sorted(self.supervisor.by_task), ["a", "b"])
        self.assertEqual([self.load(t).status for t in "cd"], ["accepted", "accepted"])
        self.end("a")
        self.assertEqual(self.load("a").status, "success")
        self.assertEqual(sorted(self.supervisor.by_task), ["b", "c"])
        self.assertEqual(self.load("c").status, "running")
        self.end("b")
        self.end("c")
        self.assertEqual(sorted(self.supervisor.by_task), ["d"])
        self.end("d")
        self.assertEqual([self.load(t).status for t in "abcd"], ["success"] * 4)
        self.assertEqual(len(self.processes.workloads), 4)
        self.assertEqual(self.declined, [])
        self.assertFalse(self.supervisor.busy)

    def test_cancelled_while_waiting(self) -> None:
        """
        A task cancelled while its order waits is declined when its turn
        comes, and the slot goes to the next order at once.
        """
        self.order("a", "b", "c")
        self.supervisor.slots.limit = 1
        self.end("a")
        self.assertEqual(sorted(self.supervisor.by_task), ["b"])
        transitions.kill(self.conn, "c", None, int(self.now * 1000))
        self.order("d")
        self.end("b")
        self.assertEqual(self.declined, ["c"])
        self.assertEqual(sorted(self.supervisor.by_task), ["d"])
        self.assertEqual(self.load("c").status, "cancelled")

    def test_end_written_by_a_timer(self) -> None:
        """
        An end written by a timer (the drain of a group that outlived its
        leader) frees its slot in the same turn, not on the next wake-up.
        """
        self.supervisor.slots.limit = 1
        self.processes.behaviour = {"immortal": True}
        self.order("a", "b")
        self.processes.exit(self.supervisor.by_task["a"].pid, 0, leftovers=1)
        self.advance()
        self.assertEqual(self.load("a").status, "running")
        self.advance(reaping.GROUP_DRAIN_LIMIT_S)
        self.assertEqual(self.load("a").status, "success")
        self.assertEqual(sorted(self.supervisor.by_task), ["b"])

    def test_claimed_with_the_end(self) -> None:
        """
        The order that takes a freed slot is claimed in the transaction
        that writes the end: one commit turns the slot over.
        """
        self.supervisor.slots.limit = 1
        self.order("a", "b")
        statements: List[str] = []
        self.supervisor.conn.set_trace_callback(statements.append)
        self.end("a")
        self.supervisor.conn.set_trace_callback(None)
        self.assertEqual(sorted(self.supervisor.by_task), ["b"])
        self.assertEqual((self.load("a").status, self.load("b").status), ("success", "running"))
        self.assertEqual([s for s in statements if s.startswith(("BEGIN", "COMMIT"))], ["BEGIN IMMEDIATE", "COMMIT"])

    def test_claim_undone_with_the_end(self) -> None:
        """
        When the transaction that writes an end fails after the claim of
        its successor, both are undone: the order is kept first again, and
        both are written when the end is tried again.
        """
        self.supervisor.slots.limit = 1
        self.order("a", "b", "c")
        claim = self.supervisor.claim_successors
        conn = self.supervisor.conn

        def refuse_once(*args: Any, **kwargs: Any) -> Any:
            del conn.execute
            raise sqlite3.OperationalError("disk I/O error")

        def then_fail(conn: Any) -> Any:
            settle = claim(conn)
            # The next statement (the place of the result or the commit) fails.
            conn.execute = refuse_once
            self.supervisor.endings.successors = claim
            return settle

        self.supervisor.endings.successors = then_fail
        self.end("a")
        self.assertEqual((self.load("a").status, self.load("b").status), ("running", "accepted"))
        self.assertEqual(self.supervisor.by_task, {})
        self.assertEqual(self.supervisor.slots.take(occupied=0)[0][0], "b")
        self.supervisor.slots.put_back([("b", None)])
        self.advance(endings_module.FINISH_RETRY_S)
        self.assertEqual((self.load("a").status, self.load("b").status), ("success", "running"))
        self.assertEqual(sorted(self.supervisor.by_task), ["b"])
        self.assertEqual(self.load("c").status, "accepted")

    def test_no_limit(self) -> None:
        """
        Without a limit (settings written before there was one) every
        order starts at once.
        """
        self.supervisor.slots.limit = None
        self.order("a", "b", "c")
        self.assertEqual(sorted(self.supervisor.by_task), ["a", "b", "c"])

    def test_configured(self) -> None:
        """
        The limit is the settings' C{max_running_tasks}.
        """
        self.supervisor.configure(
            control.SupervisorSettings(
                grace_ms=500, env={}, cgroup_root="/nonexistent", identity=None, max_running_tasks=3  # type: ignore[arg-type]
            )
        )
        self.assertEqual(self.supervisor.slots.limit, 3)


class CgroupSignalTests(EngineHarness, SynchronousTestCase):
    """
    The escalation reaches a task's cgroups as well as its process group.
    """

    def setUp(self) -> None:
        self.cgroups = FakeCgroups()
        self.make_engine()

    def test_both_steps_reach_the_cgroup(self) -> None:
        """
        SIGTERM and, after the grace period, SIGKILL go to the cgroup too.
        """
        self.processes.behaviour = {"ignores": {signal.SIGTERM}}
        limits = ResourceLimits(memory_bytes=1 << 30, pids_max=64)
        plan = plan_for(
            limits,
            memory_enforced=True,
            pids_enforced=True,
            cgroup_enforced=True,
            mechanisms={"memory_bytes": "cgroup_v2", "pids_max": "cgroup_v2"},
        )
        pid = self.launch("cg", plan=plan)
        self.supervisor.kill("cg")
        self.advance(GRACE_S)
        [group] = self.cgroups.groups
        self.assertEqual(group.signals[:2], [signal.SIGTERM, signal.SIGKILL])
        self.assertEqual(self.processes.sent(pid)[:2], [signal.SIGTERM, signal.SIGKILL])
        self.advance()
        self.assertTrue(group.removed)


class StoreOutageTests(EngineHarness, SynchronousTestCase):
    """
    The store cannot be used for a while (a database restart): the engine
    goes on supervising, and writes what happened meanwhile once it can.
    """

    def setUp(self) -> None:
        self.make_engine()

    def store_down(self) -> None:
        """
        Every statement on the engine's connection fails, as on a database
        that is away, until L{store_up}.
        """
        conn = self.supervisor.conn

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        conn.execute = refuse
        conn.cursor = refuse

    def store_up(self) -> None:
        """
        The engine's connection works again.
        """
        del self.supervisor.conn.execute
        del self.supervisor.conn.cursor

    def test_end_waits_for_the_store(self) -> None:
        """
        A workload that exits while the store is away stays supervised
        (nothing escapes the loop); once the store is back its end is
        written, once.
        """
        pid = self.launch("t")
        self.advance(0.1)
        self.store_down()
        self.processes.exit(pid, 0)
        self.advance(0.1)
        self.advance(3.0)
        self.assertTrue(self.supervisor.busy)
        self.assertEqual(self.load("t").status, "running")
        self.store_up()
        self.advance(1.0)
        self.advance(1.0)
        self.assertEqual(self.load("t").status, "success")
        self.assertEqual(self.events("t").count("finished"), 1)
        self.assertFalse(self.supervisor.busy)

    def test_slot_held_until_the_end_is_written(self) -> None:
        """
        A workload that exits while the store is away keeps its slot until
        its end is written: the order waiting for a slot starts only then.
        """
        self.supervisor.slots.limit = 1
        self.insert("a", "b")
        self.supervisor.order([("a", None), ("b", None)])
        pid = self.supervisor.by_task["a"].pid
        self.store_down()
        self.processes.exit(pid, 0)
        for _ in range(4):
            self.advance(1.0)
            self.assertEqual(len(self.processes.workloads), 1)
        self.store_up()
        self.advance(1.0)
        self.advance(1.0)
        self.assertEqual(self.load("a").status, "success")
        self.assertEqual(sorted(self.supervisor.by_task), ["b"])

    def test_timeout_while_the_store_is_away(self) -> None:
        """
        The wall timer fires while the store is away: the workload is
        signalled at once; the timeout is recorded before the task's end
        once the store is back.
        """
        pid = self.launch("slow", wall_time_ms=1000)
        self.advance(0.1)
        self.store_down()
        self.advance(0.9)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM])
        self.advance(0.1)
        self.advance(2.0)
        self.assertEqual(self.load("slow").status, "running")
        self.store_up()
        self.advance(1.0)
        self.advance(1.0)
        record = self.load("slow")
        self.assertEqual((record.status, record.error), ("failed", ErrorInfo("timeout", "task exceeded wall_time_ms")))
        events = self.events("slow")
        self.assertEqual(events.count("timeout_triggered"), 1)
        self.assertLess(events.index("timeout_triggered"), events.index("failed"))
