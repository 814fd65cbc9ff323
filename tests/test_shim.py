"""
Tests for the single-task shim's loop (L{execgo.supervisor.shim.supervise_one})
over an engine with a clock the test moves and fake kernel edges: no
workload process, no sleep.  The C{internal-shim} subcommand as a real
subprocess is tested in C{tests.test_supervisor}.
"""

from __future__ import annotations

import signal
from typing import List, Optional

from twisted.trial.unittest import SynchronousTestCase

from execgo.store import transitions
from execgo.supervisor.shim import supervise_one
from tests.fakes import command, new_task
from tests.test_engine import EngineHarness


class SuperviseOneTests(EngineHarness, SynchronousTestCase):
    """
    One task, launched, watched and driven to its recorded end.
    """

    def setUp(self) -> None:
        self.make_engine()
        transitions.insert_task(self.conn, new_task(self.data_dir, "one", command(), make_dirs=True), 1)
        self.waits: List[Optional[float]] = []

    def note(self, delay: Optional[float]) -> None:
        """
        Keep a wait and move the clock by it (a loop that waits on and on
        fails the test).
        """
        self.waits.append(delay)
        self.assertLess(len(self.waits), 100, "the loop does not end")
        self.now += delay or 0.0

    def test_runs_to_the_end(self) -> None:
        """
        The loop waits no longer than the next timer, and returns once the
        workload's end is written.
        """

        def wait(delay: Optional[float]) -> None:
            self.note(delay)
            if len(self.waits) == 3:
                [workload] = self.processes.workloads.values()
                self.processes.exit(workload.pid, 3)

        supervise_one(self.supervisor, "one", wait)
        self.assertEqual(self.load("one").exit_code, 3)
        self.assertFalse(self.supervisor.busy)
        self.assertEqual(len(self.waits), 3)
        self.assertNotIn(None, self.waits)

    def test_kill_flag(self) -> None:
        """
        The store's kill flag, set while the loop waits, ends the task
        C{cancelled} by SIGTERM.
        """

        def wait(delay: Optional[float]) -> None:
            self.note(delay)
            if len(self.waits) == 2:
                transitions.request_kill(self.conn, "one", int(self.now * 1000))

        supervise_one(self.supervisor, "one", wait)
        record = self.load("one")
        self.assertEqual((record.status, record.exit_signal), ("cancelled", signal.SIGTERM))

    def test_killed_before_it_ran(self) -> None:
        """
        A task flagged for kill before it was taken ends C{cancelled} with
        no workload started and no wait.
        """
        transitions.request_kill(self.conn, "one", 1)
        supervise_one(self.supervisor, "one", self.waits.append)
        self.assertEqual(self.load("one").status, "cancelled")
        self.assertEqual((self.waits, self.processes.workloads), ([], {}))
