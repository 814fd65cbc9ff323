"""
Tests for L{execgo.core.recovery.plan_recovery}: every case of start-up recovery
(C{docs/architecture.md}, "What survives a crash, and why").
"""

from __future__ import annotations

from typing import Iterable, List

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.recovery import (
    LOST,
    RECOVERED,
    RELEASE_ORPHAN,
    RecoveryAction,
    plan_recovery,
)
from execgo.core.reservation import Reservation
from tests.fakes import record


class Probe:
    """
    A supervisor liveness probe answering from a set of live pids and
    recording what it was asked.
    """

    def __init__(self, alive: Iterable[int] = ()) -> None:
        self.alive = set(alive)
        self.asked: List[int] = []

    def __call__(self, pid: int) -> bool:
        self.asked.append(pid)
        return pid in self.alive


class PlanRecoveryTests(SynchronousTestCase):
    """
    L{plan_recovery} decides per task, oldest first.
    """

    def test_accepted_with_reservation(self) -> None:
        """
        A queued task holding an active reservation has it released.
        """
        task = record("q", "accepted", reservation=Reservation(), reserved_at_ms=5)
        self.assertEqual(
            plan_recovery([task], Probe()), [RecoveryAction(RELEASE_ORPHAN, "q")]
        )

    def test_accepted_without_reservation(self) -> None:
        """
        A queued task without an active reservation (none, or one already
        released) needs nothing.
        """
        plain = record("a", "accepted")
        released = record(
            "b", "accepted", reservation=Reservation(), reserved_at_ms=5, released_at_ms=6
        )
        probe = Probe()
        self.assertEqual(plan_recovery([plain, released], probe), [])
        self.assertEqual(probe.asked, [])

    def test_running_alive_without_reservation(self) -> None:
        """
        A running task whose supervisor lives and that holds no active
        reservation is recovered with one rebuilt from its limits.
        """
        task = record(
            "r", "running", shim_pid=10, pid=11, memory_bytes=64, pids_max=8,
            reservation=Reservation(), reserved_at_ms=1, released_at_ms=2,
        )
        probe = Probe({10})
        self.assertEqual(
            plan_recovery([task], probe),
            [RecoveryAction(RECOVERED, "r", reservation=Reservation(memory_bytes=64, pids=8))],
        )
        self.assertEqual(probe.asked, [10])
        never = record("n", "running", shim_pid=10)
        self.assertEqual(
            plan_recovery([never], probe),
            [RecoveryAction(RECOVERED, "n", reservation=Reservation())],
        )

    def test_running_alive_with_reservation(self) -> None:
        """
        A running task still holding its reservation is recovered without
        rebuilding anything.
        """
        task = record("r", "running", shim_pid=10, reservation=Reservation(), reserved_at_ms=1)
        self.assertEqual(
            plan_recovery([task], Probe({10})), [RecoveryAction(RECOVERED, "r", reservation=None)]
        )

    def test_running_supervisor_gone(self) -> None:
        """
        A running task whose supervisor is gone is lost; its workload group
        is named for killing, and the task itself (its uid's processes are
        killed and its files handed back).
        """
        task = record("r", "running", shim_pid=10, pid=11, reservation=Reservation(), reserved_at_ms=1)
        self.assertEqual(
            plan_recovery([task], Probe({99})), [RecoveryAction(LOST, "r", kill_pgid=11, record=task)]
        )

    def test_running_without_supervisor_pid(self) -> None:
        """
        A running task with no recorded supervisor is lost without probing.
        """
        probe = Probe({0})
        task = record("r", "running")
        self.assertEqual(plan_recovery([task], probe), [RecoveryAction(LOST, "r", kill_pgid=None, record=task)])
        self.assertEqual(probe.asked, [])

    def test_terminal_untouched(self) -> None:
        """
        Terminal tasks get no action, even with an active-looking
        reservation or a live pid.
        """
        probe = Probe({10})
        tasks = [
            record(task_id, status, shim_pid=10, reservation=Reservation(), reserved_at_ms=1)
            for task_id, status in (("s", "success"), ("f", "failed"), ("c", "cancelled"))
        ]
        self.assertEqual(plan_recovery(tasks, probe), [])
        self.assertEqual(probe.asked, [])

    def test_order(self) -> None:
        """
        Actions come in the order of the given (oldest first) tasks.
        """
        tasks = [
            record("lost", "running", shim_pid=1),
            record("orphan", "accepted", reservation=Reservation(), reserved_at_ms=1),
            record("idle", "accepted"),
            record("alive", "running", shim_pid=2, reservation=Reservation(), reserved_at_ms=1),
        ]
        actions = plan_recovery(tasks, Probe({2}))
        self.assertEqual(
            [(a.kind, a.task_id) for a in actions],
            [(LOST, "lost"), (RELEASE_ORPHAN, "orphan"), (RECOVERED, "alive")],
        )
