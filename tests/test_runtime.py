"""
Tests for L{execgo.server.runtime.Runtime} driven directly, not through
HTTP: submissions dispatched to a fake supervisor link, the supervisor's
typed reports answering the waiters, kills (queued, running, and with the
supervisor gone), the recovery of tasks whose supervisor is gone, GC, and
the tenancy check.

Everything runs synchronously: the real store (a temporary SQLite file,
and again a PostgreSQL database: L{tests.backends.each}) with its SQL run
inline, blocking calls run in place (the runtime's
C{in_thread}), and time on a L{MemoryReactorClock}
(L{tests.apifixture.MemoryRuntime}).  Only the kills that must reach a
process group use a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from execgo import control
from execgo.core import errors, outcome
from execgo.core.config import RuntimeConfig
from execgo.core.records import Outcome
from execgo.server.recovery import GONE_POLL_S, GONE_POLLS, REPLACE_RETRY_S, Recovery
from execgo.server.service import wall_ms
from execgo.server.snapshots import Kept
from execgo.server.upkeep import Upkeep
from execgo.server.web.auth import Principal
from execgo.store import reads, schema, terminal, transitions
from tests import backends
from tests.apifixture import MemoryRuntime, tmp_data_dir
from tests.fakes import run_now

SUPERVISOR_PID = 4242
GRACE_MS = 250
ALPHA = Principal(tenant="alpha", owner="alice")
BETA = Principal(tenant="beta", owner="bob")


def body(task_id: str) -> bytes:
    """
    A submission of C{/bin/true} with the id C{task_id}.
    """
    return json.dumps({"task_id": task_id, "execution": {"kind": "command", "program": "/bin/true"}}).encode()


def dead_pid() -> int:
    """
    The pid of a process that has exited and been reaped.
    """
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    return child.pid


class RuntimeCase(SynchronousTestCase):
    """
    A started in-memory runtime whose supervisor link is connected, with
    helpers that play the supervisor's part in the store.
    """

    connected = True
    backend = backends.SQLITE_BACKEND

    def setUp(self) -> None:
        self.data_dir = tmp_data_dir(self)
        config = RuntimeConfig(
            data_dir=self.data_dir, termination_grace_ms=GRACE_MS, database_url=self.backend.database_url(self)
        )
        self.rt = MemoryRuntime(self.data_dir, config)
        self.runtime = self.rt.runtime
        self.link = self.rt.link
        self.link.pid = SUPERVISOR_PID
        self.link.connected = self.connected
        self.prepared = False

    def start(self) -> None:
        """
        Start the runtime (recovery, then the dispatcher); stopped, with
        no timer left, when the test ends.
        """
        self.rt.start()
        self.addCleanup(self.rt.stop)

    def settle(self, coroutine: Any) -> Any:
        """
        The result of a runtime coroutine, which must finish at once.
        """
        return self.rt.done(defer.ensureDeferred(coroutine))

    def sql(self, func: Any, *args: Any) -> Any:
        """
        C{func(connection, *args)} on the store's connection.
        """
        return self.rt.done(self.rt.pool.runWithConnection(func, *args))

    def submit(self, task_id: str, principal: Optional[Principal] = None) -> Dict[str, Any]:
        """
        Submit a task through the runtime; its answer.
        """
        if not self.prepared:
            self.sql(schema.init_schema)
            self.prepared = True
        answer: Dict[str, Any] = self.settle(self.runtime.submit(body(task_id), principal))
        return answer

    def claim(self, task_id: str, shim_pid: int = SUPERVISOR_PID, pgid: Optional[int] = None) -> None:
        """
        What a supervisor does with a launch order: the task C{running}
        under C{shim_pid}, and, with a C{pgid}, its workload started.
        """
        self.assertIsNotNone(self.sql(transitions.claim, task_id, shim_pid, wall_ms()))
        if pgid is not None:
            self.sql(transitions.record_start, task_id, pgid, wall_ms(), None)

    def end(self, task_id: str, verdict: Outcome, at_ms: Optional[int] = None) -> None:
        """
        What a supervisor does when a task ends: its terminal write.
        """
        self.assertTrue(self.sql(terminal.finish, task_id, verdict, wall_ms() if at_ms is None else at_ms))

    def load(self, task_id: str) -> Any:
        """
        The stored task (C{None} when there is none).
        """
        return self.sql(reads.load_task, task_id)

    def workload(self, ignore_term: bool = False) -> "subprocess.Popen[bytes]":
        """
        A real process leading a process group of its own, standing for a
        task's workload; killed and reaped when the test ends.
        """
        trap = "trap '' TERM; " if ignore_term else ""
        child = subprocess.Popen(
            ["/bin/sh", "-c", trap + "echo ready; exec sleep 30"], start_new_session=True, stdout=subprocess.PIPE
        )

        def reap() -> None:
            if child.poll() is None:
                child.kill()
            child.wait()
            assert child.stdout is not None
            child.stdout.close()

        self.addCleanup(reap)
        assert child.stdout is not None
        self.assertEqual(child.stdout.readline(), b"ready\n")
        return child


@backends.each
class DispatchTests(RuntimeCase):
    """
    A submission goes to the supervisor; its reports answer the waiters
    and free the dispatcher.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_submit_dispatches(self) -> None:
        """
        A submission is stored C{accepted} and sent to the supervisor in a
        launch order at once, holding its reservation.
        """
        self.assertEqual(self.submit("a"), {"task_id": "a", "handle_id": "a", "status": "accepted"})
        self.assertEqual(self.link.launched, [["a"]])
        self.assertEqual(self.load("a").status, "accepted")
        self.assertEqual(list(self.rt.scheduler.ledger.active), ["a"])

    def test_finished_answers_the_long_poll(self) -> None:
        """
        A long-poll on a dispatched task waits; the C{finished} report
        answers it with the snapshot it carries, frees the reservation,
        and keeps the snapshot, so the next status reads nothing.
        """
        self.submit("a")
        poll = defer.ensureDeferred(self.runtime.status("a", wait_ms=60_000))
        self.assertNoResult(poll)
        final = {"task_id": "a", "status": "success", "exit_code": 0}
        self.runtime.on_supervisor_message(control.Finished("a", final))
        self.assertIs(self.successResultOf(poll), final)
        self.assertEqual(list(self.rt.scheduler.ledger.active), [])
        self.assertEqual(self.runtime.finished.kept("a"), Kept(final, None))
        jobs = self.rt.pool.jobs
        self.assertIs(self.settle(self.runtime.status("a")), final)
        self.assertEqual(self.rt.pool.jobs, jobs)

    def test_finished_without_status_reads_the_store(self) -> None:
        """
        A C{finished} report without its snapshot (too big to carry)
        answers the long-poll from the store.
        """
        self.submit("a")
        self.claim("a")
        poll = defer.ensureDeferred(self.runtime.status("a", wait_ms=60_000))
        self.end("a", Outcome(status="success", exit_code=0))
        self.assertNoResult(poll)
        self.runtime.on_supervisor_message(control.Finished("a"))
        snapshot = self.successResultOf(poll)
        self.assertEqual((snapshot["status"], snapshot["exit_code"]), ("success", 0))
        self.assertFalse(self.rt.scheduler.knows_unfinished("a"))

    def test_long_poll_deadline(self) -> None:
        """
        Without a report, the long-poll answers with the task as it stands
        once its wait has passed.
        """
        self.submit("a")
        poll = defer.ensureDeferred(self.runtime.status("a", wait_ms=2000))
        self.rt.clock.advance(1.999)
        self.assertNoResult(poll)
        self.rt.clock.advance(0.001)
        self.assertEqual(self.successResultOf(poll)["status"], "accepted")

    def test_declined_frees_the_order(self) -> None:
        """
        A C{declined} report frees the slot its launch order held: the
        task queued for want of one is sent.
        """
        for task_id in "abcde":
            self.submit(task_id)
        self.assertEqual(self.link.launched, [["a"], ["b"], ["c"], ["d"]])
        self.runtime.on_supervisor_message(control.Declined("a"))
        self.assertEqual(self.link.launched[-1], ["e"])
        self.assertEqual(sorted(self.rt.scheduler.ledger.active), ["b", "c", "d", "e"])


@backends.each
class KillTests(RuntimeCase):
    """
    Kills of queued and running tasks, with and without a supervisor to
    send the order to.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_kill_queued(self) -> None:
        """
        A task not dispatched yet is cancelled at once in the store: no
        order is sent, it leaves the queue, and its long-poll is answered.
        """
        self.link.connected = False
        self.submit("q")
        self.assertEqual(self.link.refused, [["q"]])
        poll = defer.ensureDeferred(self.runtime.status("q", wait_ms=60_000))
        snapshot = self.settle(self.runtime.kill("q", None))
        self.assertEqual(snapshot["status"], "cancelled")
        self.assertEqual(self.link.killed, [])
        self.assertFalse(self.rt.scheduler.knows_unfinished("q"))
        self.assertEqual(self.successResultOf(poll)["status"], "cancelled")
        self.assertTrue(os.path.exists(self.load("q").paths.result_path))

    def test_kill_running_sends_the_order(self) -> None:
        """
        A running task is flagged in the store and the kill order goes to
        the supervisor; the server signals nothing itself.
        """
        self.submit("r")
        self.claim("r", pgid=dead_pid())
        snapshot = self.settle(self.runtime.kill("r", None))
        self.assertEqual(snapshot["status"], "running")
        self.assertTrue(self.load("r").kill_requested)
        self.assertEqual(self.link.killed, ["r"])
        self.assertEqual(self.runtime.direct_kills.timers, {})

    def test_kill_running_without_supervisor(self) -> None:
        """
        With no supervisor connected, the server escalates itself: SIGTERM
        to the task's process group at once, SIGKILL one grace period
        later on the reactor's clock.
        """
        child = self.workload(ignore_term=True)
        self.submit("r")
        self.claim("r", pgid=child.pid)
        self.link.connected = False
        self.settle(self.runtime.kill("r", None))
        self.assertEqual(self.link.killed, ["r"])
        self.assertEqual(list(self.runtime.direct_kills.timers), ["r"])
        self.rt.clock.advance(GRACE_MS / 2000.0)
        self.assertIsNone(child.poll())
        self.rt.clock.advance(GRACE_MS / 2000.0)
        self.assertEqual(child.wait(timeout=5), -signal.SIGKILL)
        self.assertEqual(self.runtime.direct_kills.timers, {})

    def test_end_calls_the_escalation_off(self) -> None:
        """
        A task whose end is reported during the grace period of a direct
        kill gets no SIGKILL.
        """
        child = self.workload(ignore_term=True)
        self.submit("r")
        self.claim("r", pgid=child.pid)
        self.link.connected = False
        self.settle(self.runtime.kill("r", None))
        self.runtime.on_supervisor_message(control.Finished("r"))
        self.assertEqual(self.runtime.direct_kills.timers, {})
        self.rt.clock.advance(GRACE_MS / 1000.0)
        self.assertIsNone(child.poll())


@backends.each
class RecoveryTests(RuntimeCase):
    """
    Tasks whose supervisor is gone, found at start-up or when the
    supervisor's connection closes.
    """

    def assert_lost(self, task_id: str, message: str) -> None:
        """
        The task ended C{failed}/C{internal} with C{message}, its
        C{result.json} written, its reservation released.
        """
        record = self.load(task_id)
        self.assertEqual((record.status, record.error.code, record.error.message), ("failed", "internal", message))
        self.assertFalse(record.reservation_active)
        with open(record.paths.result_path) as result:
            self.assertEqual(json.load(result)["status"], "failed")

    def test_lost_at_start(self) -> None:
        """
        At start-up, a task left C{running} under a dead supervisor is
        failed C{internal}: its workload's group killed, its
        C{result.json} written (the blocking clean-up run through the
        runtime's C{in_thread}, in place here); an C{accepted} task is
        queued again and dispatched.
        """
        child = self.workload()
        self.submit("lost")
        self.claim("lost", shim_pid=dead_pid(), pgid=child.pid)
        self.submit("queued")
        self.start()
        self.assert_lost("lost", "recovery_lost")
        self.assertEqual(child.wait(timeout=5), -signal.SIGKILL)
        self.assertEqual(self.load("queued").status, "accepted")
        self.assertEqual(self.link.launched, [["queued"]])

    def test_supervisor_lost(self) -> None:
        """
        When the supervisor's connection closes and it is gone, what it
        ran is failed C{internal}, its long-polls answered, and a new
        supervisor is asked for; the orders it had are queued again, and
        the one it never took is sent again.
        """
        self.start()
        pid = dead_pid()
        self.submit("ran")
        self.claim("ran", shim_pid=pid)
        self.submit("sent")
        poll = defer.ensureDeferred(self.runtime.status("ran", wait_ms=60_000))
        del self.link.calls[:]
        self.link.connected = False
        self.runtime.on_supervisor_lost(pid)
        self.assert_lost("ran", f"supervisor {pid} exited unexpectedly")
        self.assertEqual(self.successResultOf(poll)["status"], "failed")
        self.assertEqual(self.link.calls, ["link.ensure"])
        self.assertEqual((self.link.refused[0], self.link.refused[-1]), (["ran", "sent"], ["sent"]))
        self.assertEqual(list(self.rt.scheduler.queue), ["sent"])

    def test_replacement_retried(self) -> None:
        """
        A supervisor that cannot be started again (its store away, say) is
        tried again every L{REPLACE_RETRY_S} until one starts; stopping
        the runtime calls a pending try off.
        """
        self.start()
        pid = dead_pid()
        self.link.connected = False
        self.link.refuse_starts = 2
        self.runtime.on_supervisor_lost(pid)
        self.assertEqual(self.link.calls.count("link.ensure"), 1)
        self.rt.clock.advance(REPLACE_RETRY_S)
        self.assertEqual(self.link.calls.count("link.ensure"), 2)
        self.rt.clock.advance(REPLACE_RETRY_S)
        self.assertEqual(self.link.calls.count("link.ensure"), 3)
        self.rt.clock.advance(REPLACE_RETRY_S * 5)
        self.assertEqual(self.link.calls.count("link.ensure"), 3)
        self.link.refuse_starts = 1
        timers = len(self.rt.clock.getDelayedCalls())
        self.runtime.on_supervisor_lost(pid)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 3)
        self.assertEqual(len(self.rt.clock.getDelayedCalls()), timers + 1)
        # The cleanup's stop finds no timer left: the retry is called off.

    def test_waits_for_the_supervisor_to_go(self) -> None:
        """
        A supervisor still alive when its connection closed is checked
        again every L{GONE_POLL_S} on the clock; what it ran is failed
        only once it is gone, or after L{GONE_POLLS} checks.
        """
        self.start()
        self.submit("ran")
        self.claim("ran")
        alive: List[int] = []
        recovery = Recovery(
            reactor=self.rt.clock,
            store=self.rt.store,
            scheduler=self.rt.scheduler,
            link=self.link,  # type: ignore[arg-type]
            waiters=self.runtime.waiters,
            upkeep=Upkeep(self.rt.store, os.path.join(self.data_dir, "tasks"), wall_ms, self.rt.clock),
            now_ms=wall_ms,
            max_queued=10,
            accepting=lambda: False,
            in_thread=run_now,
            supervisor_alive=lambda pid: alive.append(pid) is None and len(alive) <= GONE_POLLS,
        )
        recovery.supervisor_lost(SUPERVISOR_PID)
        for _ in range(GONE_POLLS - 1):
            self.rt.clock.advance(GONE_POLL_S)
        self.assertEqual(self.load("ran").status, "running")
        self.rt.clock.advance(GONE_POLL_S)
        self.assertEqual(self.load("ran").status, "failed")
        self.assertEqual(alive[:GONE_POLLS], [SUPERVISOR_PID] * GONE_POLLS)


@backends.each
class GarbageTests(RuntimeCase):
    """
    GC deletes the terminal tasks past the retention period, rows and
    directories, on its timer.
    """

    def setUp(self) -> None:
        super().setUp()
        self.link.connected = False
        self.start()

    def test_expired_collected(self) -> None:
        """
        A terminal task finished longer ago than the retention period is
        deleted with its directory and forgotten; a recent one and a
        queued one stay.
        """
        retention_ms = self.rt.config.result_retention_secs * 1000
        for task_id in ("old", "recent", "queued"):
            self.submit(task_id)
        self.end("old", outcome.cancelled("x"), wall_ms() - retention_ms - 1000)
        self.end("recent", outcome.cancelled("x"))
        self.settle(self.runtime.status("old"))
        self.assertIsNotNone(self.runtime.finished.kept("old"))
        old_dir = self.load("old").paths.task_dir
        self.assertEqual(self.settle(self.runtime.collect_garbage()), 1)
        self.assertIsNone(self.load("old"))
        self.assertFalse(os.path.exists(old_dir))
        self.assertIsNone(self.runtime.finished.kept("old"))
        self.failureResultOf(defer.ensureDeferred(self.runtime.status("old")), errors.NotFound)
        self.assertEqual([self.load(t).status for t in ("recent", "queued")], ["cancelled", "accepted"])

    def test_on_its_timer(self) -> None:
        """
        GC runs every C{gc_interval_ms}, first one interval after it
        starts, and its timer is cancelled when the runtime stops.
        """
        interval = self.rt.config.gc_interval_ms / 1000.0
        self.submit("first")
        self.end("first", outcome.cancelled("x"), 0)
        self.runtime.start_gc()
        self.rt.clock.advance(interval / 2)
        self.assertIsNotNone(self.load("first"))
        self.rt.clock.advance(interval / 2)
        self.assertIsNone(self.load("first"))
        self.submit("second")
        self.end("second", outcome.cancelled("x"), 0)
        self.rt.clock.advance(interval)
        self.assertIsNone(self.load("second"))


@backends.each
class TenancyTests(RuntimeCase):
    """
    L{Runtime.require_visible}: a task of another tenant is answered as an
    unknown one, wherever its tenant is found.
    """

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def assert_hidden(self, task_id: str, principal: Principal) -> None:
        """
        C{task_id} is L{errors.NotFound} for C{principal}, as an unknown
        id is.
        """
        for asked in (task_id, "unknown"):
            failure = self.failureResultOf(
                defer.ensureDeferred(self.runtime.require_visible(asked, principal)), errors.NotFound
            )
            self.assertEqual(str(failure.value), str(errors.NotFound(asked)))

    def assert_visible(self, task_id: str, *principals: Optional[Principal]) -> None:
        """
        C{task_id} is visible to each of C{principals}.
        """
        for principal in principals:
            self.successResultOf(defer.ensureDeferred(self.runtime.require_visible(task_id, principal)))

    def test_other_tenants_hidden(self) -> None:
        """
        A task of C{alpha} is hidden from C{beta}, whether the runtime
        finds its tenant in the dispatcher, in a kept snapshot or in the
        store; its own tenant, an admin and no authentication see it.
        """
        self.submit("a", ALPHA)
        admin = Principal(tenant="ops", admin=True)
        # In the dispatcher's ledger.
        self.assert_hidden("a", BETA)
        self.assert_visible("a", ALPHA, admin, None)
        # In a kept terminal snapshot.
        self.runtime.on_supervisor_message(control.Finished("a", {"task_id": "a", "status": "success"}))
        self.assertEqual(self.runtime.finished.kept("a"), Kept({"task_id": "a", "status": "success"}, "alpha"))
        self.assert_hidden("a", BETA)
        self.assert_visible("a", ALPHA)
        # In the store alone.
        self.runtime.finished.discard_all(["a"])
        self.assertFalse(self.rt.scheduler.knows_unfinished("a"))
        self.assert_hidden("a", BETA)
        self.assert_visible("a", ALPHA, admin, None)

    def test_operations_check_first(self) -> None:
        """
        Status, events and kill of another tenant's task are
        L{errors.NotFound}, and the kill changes nothing.
        """
        self.submit("a", ALPHA)
        for operation in (
            self.runtime.status("a", 0, BETA),
            self.runtime.events("a", 0, BETA),
            self.runtime.kill("a", None, BETA),
        ):
            self.failureResultOf(defer.ensureDeferred(operation), errors.NotFound)
        self.assertFalse(self.load("a").kill_requested)
