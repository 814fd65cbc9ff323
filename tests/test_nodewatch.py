"""
Tests for L{execgo.server.nodewatch.NodeWatch}: the look at the cluster's
leases and the end of a lost node's tasks, over a fake store whose answers
are fired Deferreds, real L{Waiters}, and a L{Clock}.
"""

from __future__ import annotations

import sqlite3
from typing import Any, List, Optional, Sequence, Set, Tuple

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core import outcome
from execgo.core.constants import STATUS_RUNNING
from execgo.core.records import Outcome
from execgo.core.results import ErrorInfo
from execgo.server.nodewatch import WATCH_INTERVAL_S, NodeWatch
from execgo.server.waiters import Waiters

NOW_MS = 1_700_000_000_000


class FakeNodeStore:
    """
    What L{NodeWatch} asks of the task store, in memory, recording every
    call in order.

    @ivar lost: the node ids the next C{mark_lost_nodes} calls answer.
    @ivar orphans: the task ids C{orphaned_tasks} answers.
    @ivar ends: the task ids whose C{finish} answers C{True} (each only
        once: it is terminal afterwards).
    @ivar fail: when set, the step (C{"mark"}, C{"orphans"}, C{"finish"})
        whose Deferred fails with C{sqlite3.OperationalError}.
    """

    def __init__(self) -> None:
        self.lost: List[str] = []
        self.orphans: List[str] = []
        self.ends: Set[str] = set()
        self.fail: Optional[str] = None
        self.calls: List[Tuple[Any, ...]] = []
        self.finished: List[Tuple[str, Outcome, int, Tuple[str, ...]]] = []

    def _answer(self, step: str, value: Any) -> "defer.Deferred[Any]":
        if self.fail == step:
            return defer.fail(sqlite3.OperationalError("database is locked"))
        return defer.succeed(value)

    def mark_lost_nodes(self, now_ms: int) -> "defer.Deferred[List[str]]":
        """
        Record the call; answer L{lost}.
        """
        self.calls.append(("mark_lost_nodes", now_ms))
        return self._answer("mark", list(self.lost))

    def orphaned_tasks(self) -> "defer.Deferred[List[str]]":
        """
        Record the call; answer L{orphans}.
        """
        self.calls.append(("orphaned_tasks",))
        return self._answer("orphans", list(self.orphans))

    def finish(
        self, task_id: str, verdict: Outcome, now_ms: int, from_statuses: Sequence[str]
    ) -> "defer.Deferred[bool]":
        """
        Record the call; answer whether the task was one of L{ends} (and
        forget it: a second finish of it makes nothing terminal).
        """
        self.calls.append(("finish", task_id))
        self.finished.append((task_id, verdict, now_ms, tuple(from_statuses)))
        ended = task_id in self.ends
        self.ends.discard(task_id)
        return self._answer("finish", ended)


class NodeWatchTestCase(SynchronousTestCase):
    """
    A node watch over a L{FakeNodeStore} on a L{Clock}, accepting unless
    told otherwise.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeNodeStore()
        self.waiters = Waiters(self.clock)
        self.accepting = True
        self.wall = [NOW_MS]
        self.watch = NodeWatch(
            self.clock,
            self.store,  # type: ignore[arg-type]
            self.waiters,
            lambda: self.wall[0],
            lambda: self.accepting,
        )

    def sweep(self) -> int:
        """
        One look now; how many tasks it ended.
        """
        ended: int = self.successResultOf(defer.ensureDeferred(self.watch.sweep()))
        return ended

    def looks(self) -> int:
        """
        How many looks have run (each starts by marking lost nodes).
        """
        return sum(1 for call in self.store.calls if call[0] == "mark_lost_nodes")


class SweepTests(NodeWatchTestCase):
    """
    L{NodeWatch.sweep}: one look.
    """

    def test_marks_then_ends(self) -> None:
        """
        A look marks the nodes whose lease ran out as of now first, then
        ends each orphaned task C{failed}, C{internal}, C{node_lost}, only
        from C{running}, as of now.
        """
        self.store.lost = ["n2"]
        self.store.orphans = ["t1", "t2"]
        self.store.ends = {"t1", "t2"}
        self.assertEqual(self.sweep(), 2)
        self.assertEqual(
            self.store.calls,
            [("mark_lost_nodes", NOW_MS), ("orphaned_tasks",), ("finish", "t1"), ("finish", "t2")],
        )
        for task_id, (finished_id, verdict, now_ms, statuses) in zip(["t1", "t2"], self.store.finished):
            self.assertEqual(finished_id, task_id)
            self.assertEqual(verdict, outcome.node_lost())
            self.assertEqual((verdict.status, verdict.error), ("failed", ErrorInfo("internal", outcome.NODE_LOST)))
            self.assertEqual(now_ms, NOW_MS)
            self.assertEqual(statuses, (STATUS_RUNNING,))

    def test_wall_clock_read_for_each_step(self) -> None:
        """
        The marking and each end are dated by the wall clock when they are
        made.
        """
        self.wall[0] = NOW_MS + 1234
        self.store.orphans = ["t1"]
        self.sweep()
        self.assertEqual(self.store.calls[0], ("mark_lost_nodes", NOW_MS + 1234))
        self.assertEqual(self.store.finished[0][2], NOW_MS + 1234)

    def test_waiters_of_ended_tasks_notified(self) -> None:
        """
        The long-polls of a task this look ended fire (with C{True}); those
        of a task another node ended first do not.
        """
        self.store.orphans = ["mine", "raced"]
        self.store.ends = {"mine"}
        ended = self.waiters.wait("mine", 10)
        raced = self.waiters.wait("raced", 10)
        self.assertEqual(self.sweep(), 1)
        self.assertIs(self.successResultOf(ended), True)
        self.assertNoResult(raced)
        self.clock.advance(10)
        self.assertIs(self.successResultOf(raced), False)
        self.assertEqual(len(self.waiters), 0)

    def test_counts_only_tasks_it_ended(self) -> None:
        """
        The count is of the finishes that made a task terminal; every
        orphan is tried.
        """
        self.store.orphans = ["a", "b", "c"]
        self.store.ends = {"b"}
        self.assertEqual(self.sweep(), 1)
        self.assertEqual([call[1] for call in self.store.calls if call[0] == "finish"], ["a", "b", "c"])

    def test_nothing_lost(self) -> None:
        """
        A look with no orphan ends nothing and logs nothing.
        """
        with capturedLogs() as events:
            self.assertEqual(self.sweep(), 0)
        self.assertEqual(self.store.finished, [])
        self.assertEqual(list(events), [])

    def test_logged(self) -> None:
        """
        Each node marked lost and each task ended are logged as warnings;
        a task not ended by this look is not.
        """
        self.store.lost = ["n2", "n3"]
        self.store.orphans = ["t1", "t2"]
        self.store.ends = {"t2"}
        with capturedLogs() as events:
            self.sweep()
        lost = [e["node_id"] for e in events if e.get("log_format") == "node {node_id} lost: its lease ran out"]
        ended = [e["task_id"] for e in events if e.get("log_format") == "task {task_id} ended: its node was lost"]
        self.assertEqual((lost, ended), (["n2", "n3"], ["t2"]))
        self.assertEqual({e["log_level"] for e in events}, {LogLevel.warn})

    def test_second_look_ends_nothing_again(self) -> None:
        """
        A task ended by one look and still reported as orphaned by the next
        (another node's view lagging) is not counted or notified twice.
        """
        self.store.orphans = ["t1"]
        self.store.ends = {"t1"}
        self.assertEqual(self.sweep(), 1)
        late = self.waiters.wait("t1", 10)
        self.assertEqual(self.sweep(), 0)
        self.assertNoResult(late)
        self.waiters.cancel_all()

    def test_failing_store_fails_the_look(self) -> None:
        """
        A store that fails makes the look fail with its error, and stops
        it: no orphan is looked for after a failed marking.
        """
        self.store.fail = "mark"
        self.store.orphans = ["t1"]
        self.failureResultOf(defer.ensureDeferred(self.watch.sweep()), sqlite3.OperationalError)
        self.assertEqual(self.store.calls, [("mark_lost_nodes", NOW_MS)])


class TimerTests(NodeWatchTestCase):
    """
    L{NodeWatch.start} and L{NodeWatch.stop}: the looks on a timer.
    """

    def test_first_look_after_the_interval(self) -> None:
        """
        C{start()} looks nothing now: the first look comes one interval
        later.
        """
        self.watch.start()
        self.assertEqual(self.looks(), 0)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), WATCH_INTERVAL_S)
        self.clock.advance(WATCH_INTERVAL_S - 0.001)
        self.assertEqual(self.looks(), 0)
        self.clock.advance(0.001)
        self.assertEqual(self.looks(), 1)

    def test_every_interval_while_accepting(self) -> None:
        """
        While the server accepts, a look is followed by the next one an
        interval later, one timer at a time.
        """
        self.watch.start()
        self.clock.pump([WATCH_INTERVAL_S] * 5)
        self.assertEqual(self.looks(), 5)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 6 * WATCH_INTERVAL_S)
        self.watch.stop()

    def test_custom_interval(self) -> None:
        """
        The interval given is the one kept.
        """
        watch = NodeWatch(self.clock, self.store, self.waiters, lambda: NOW_MS, lambda: True, interval_s=0.25)  # type: ignore[arg-type]
        watch.start()
        self.clock.advance(0.25)
        self.clock.advance(0.25)
        self.assertEqual(self.looks(), 2)
        watch.stop()

    def test_not_again_once_not_accepting(self) -> None:
        """
        A look that ends while the server no longer accepts sets no timer.
        """
        self.watch.start()
        self.clock.advance(WATCH_INTERVAL_S)
        self.accepting = False
        self.clock.advance(WATCH_INTERVAL_S)
        self.assertEqual(self.looks(), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 * WATCH_INTERVAL_S)
        self.assertEqual(self.looks(), 2)

    def test_stop_cancels(self) -> None:
        """
        C{stop()} calls the next look off; stopping again, or before any
        start, is harmless.
        """
        self.watch.stop()
        self.watch.start()
        self.clock.advance(WATCH_INTERVAL_S)
        self.watch.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 * WATCH_INTERVAL_S)
        self.assertEqual(self.looks(), 1)
        self.watch.stop()

    def test_tasks_ended_on_the_timer(self) -> None:
        """
        A look on the timer ends the orphans and wakes their waiters as
        L{NodeWatch.sweep} does.
        """
        self.store.orphans = ["t1"]
        self.store.ends = {"t1"}
        waiter = self.waiters.wait("t1", 10)
        self.watch.start()
        self.clock.advance(WATCH_INTERVAL_S)
        self.assertIs(self.successResultOf(waiter), True)
        self.watch.stop()

    def test_failing_store_does_not_stop_the_looks(self) -> None:
        """
        A look the store fails is logged as a warning, and the next look
        comes an interval later all the same and does its work.
        """
        self.store.fail = "mark"
        self.store.orphans = ["t1"]
        self.store.ends = {"t1"}
        self.watch.start()
        with capturedLogs() as events:
            self.clock.advance(WATCH_INTERVAL_S)
        [failed] = [e for e in events if e.get("log_format") == "node watch failed"]
        self.assertEqual(failed["log_level"], LogLevel.warn)
        self.assertIn("database is locked", failed["error"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.store.fail = None
        waiter = self.waiters.wait("t1", 10)
        self.clock.advance(WATCH_INTERVAL_S)
        self.assertEqual(self.looks(), 2)
        self.assertIs(self.successResultOf(waiter), True)
        self.watch.stop()

    def test_failing_finish_does_not_stop_the_looks(self) -> None:
        """
        A finish the store fails ends that look; the next look tries the
        task again.
        """
        self.store.fail = "finish"
        self.store.orphans = ["t1"]
        self.store.ends = {"t1"}
        self.watch.start()
        with capturedLogs():
            self.clock.advance(WATCH_INTERVAL_S)
        self.store.fail = None
        self.store.ends = {"t1"}
        waiter = self.waiters.wait("t1", 10)
        self.clock.advance(WATCH_INTERVAL_S)
        self.assertEqual([call[1] for call in self.store.calls if call[0] == "finish"], ["t1", "t1"])
        self.assertIs(self.successResultOf(waiter), True)
        self.watch.stop()
