"""
Tests for L{execgo.scheduler.Scheduler}: dispatch cycles driven by a
L{Clock}, a store whose answers the test fires by hand, and a recording
supervisor link.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from execgo.ledger import Capacity, Ledger
from execgo.models import Reservation
from execgo.scheduler import QueuedTask, Scheduler
from execgo.store import SchedulerState
from tests.fakes import FakeDispatchStore, FakeLink, record

POLL_S = 0.25
NOW_MS = 5000
SHIM_PID = 4242


class CountingScheduler(Scheduler):
    """
    A scheduler that counts the dispatch cycles it runs.
    """

    cycles = 0

    async def _cycle(self) -> None:
        self.cycles += 1
        await super()._cycle()


def queued(
    task_id: str,
    memory: Optional[int] = None,
    tenant: Optional[str] = None,
    created_at_ms: int = NOW_MS,
) -> QueuedTask:
    """
    A queue entry reserving one slot and optionally memory, created now
    (so it is not starving) unless told otherwise.
    """
    return QueuedTask(task_id, tenant, Reservation(memory_bytes=memory), created_at_ms)


class SchedulerTestCase(SynchronousTestCase):
    """
    A scheduler over a 2-slot, 1000-byte ledger with tenant C{t} limited to
    one slot; every test ends stopped with no timer left.
    """

    capacity = Capacity(task_slots=2, memory_bytes=1000)
    max_queued = 10

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeDispatchStore()
        self.link = FakeLink(pid=SHIM_PID)
        self.ledger = Ledger(self.capacity, {"t": Capacity(task_slots=1)})
        self.dispatched: List[Tuple[str, int]] = []
        self.scheduler = CountingScheduler(
            self.clock,
            self.store,
            self.link,
            self.ledger,
            max_queued=self.max_queued,
            poll_interval_s=POLL_S,
            now_ms=lambda: NOW_MS,
            on_dispatched=lambda task_id, pid: self.dispatched.append((task_id, pid)),
        )
        self.addCleanup(self.assert_stops_clean)

    def assert_stops_clean(self) -> None:
        """
        C{stop()} fires at once and leaves no delayed call behind.
        """
        self.successResultOf(self.scheduler.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def submit(self, *tasks: QueuedTask) -> None:
        """
        Report newly persisted tasks, in order.
        """
        for task in tasks:
            self.scheduler.submitted(task)

    def answer(self, dispatched: List[str], skipped: Any = (), index: int = -1) -> None:
        """
        Answer a recorded dispatch call.
        """
        self.store.dispatches[index].deferred.callback((dispatched, list(skipped)))

    def picks(self) -> List[List[str]]:
        """
        The task ids of every dispatch call so far.
        """
        return [call.task_ids for call in self.store.dispatches]

    def queue(self) -> List[str]:
        """
        The scheduler's queue, in order.
        """
        return list(self.scheduler.queue)


class DispatchTests(SchedulerTestCase):
    """
    What one cycle picks, and what it does with the store's answer.
    """

    def test_nothing_before_start(self) -> None:
        """
        Submits before C{start()} queue the task but run no cycle.
        """
        self.submit(queued("a"))
        self.assertEqual(self.store.dispatches, [])
        self.assertEqual(self.queue(), ["a"])
        self.assertEqual(self.scheduler.cycles, 0)

    def test_fifo_within_capacity(self) -> None:
        """
        Tasks are picked oldest first up to the slot capacity, dispatched in
        one store call, launched in that order; the rest waits.
        """
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.start()
        self.assertEqual(self.picks(), [["a", "b"]])
        call = self.store.dispatches[0]
        self.assertEqual((call.shim_pid, call.now_ms), (SHIM_PID, NOW_MS))
        self.assertEqual(call.picks[0], ("a", Reservation()))
        self.assertEqual(self.link.launched, [])
        with capturedLogs() as self.events:
            self.answer(["a", "b"])
        self.assertEqual(self.link.launched, [["a", "b"]])
        self.assertEqual(self.dispatched, [("a", SHIM_PID), ("b", SHIM_PID)])
        self.assertEqual(
            [(e["task_id"], e["shim_pid"]) for e in self.events if e.get("log_format") == "task dispatched"],
            [("a", SHIM_PID), ("b", SHIM_PID)],
        )
        self.assertEqual(sorted(self.ledger.active), ["a", "b"])
        self.assertEqual(self.queue(), ["c"])
        # One follow-up cycle found no room: nothing more was dispatched.
        self.assertEqual(self.picks(), [["a", "b"]])
        self.assertEqual(self.scheduler.cycles, 2)

    def test_release_makes_room(self) -> None:
        """
        A released reservation wakes the dispatcher, which takes the next
        task.
        """
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.start()
        self.answer(["a", "b"])
        self.scheduler.released("a")
        self.assertEqual(self.picks(), [["a", "b"], ["c"]])
        self.answer(["c"])
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])
        self.assertEqual(sorted(self.ledger.active), ["b", "c"])
        self.assertEqual(self.queue(), [])

    def test_tenant_quota(self) -> None:
        """
        A tenant at its quota is skipped while others go ahead.
        """
        self.submit(queued("t1", tenant="t"), queued("t2", tenant="t"), queued("x"))
        self.scheduler.start()
        self.assertEqual(self.picks(), [["t1", "x"]])
        self.answer(["t1", "x"])
        self.assertEqual(self.queue(), ["t2"])

    def test_unknown_tenant_unbounded(self) -> None:
        """
        A tenant without a quota is bounded only by the global capacity.
        """
        self.submit(queued("u1", tenant="u"), queued("u2", tenant="u"))
        self.scheduler.start()
        self.assertEqual(self.picks(), [["u1", "u2"]])
        self.answer(["u1", "u2"])

    def test_no_head_of_line_blocking(self) -> None:
        """
        A task that does not fit lets later, smaller tasks pass.
        """
        self.submit(queued("small1", memory=200), queued("big", memory=900), queued("small2", memory=100))
        self.scheduler.start()
        self.assertEqual(self.picks(), [["small1", "small2"]])
        self.assertEqual(
            self.store.dispatches[0].picks[1], ("small2", Reservation(memory_bytes=100))
        )
        self.answer(["small1", "small2"])
        self.assertEqual(self.queue(), ["big"])
        self.assertEqual(self.ledger.reserved.memory_bytes, 300)

    def test_starving_task_holds_the_queue(self) -> None:
        """
        Once a task that does not fit has waited C{starvation_ms}, no task
        behind it starts in its place, so capacity drains to it.
        """
        old = NOW_MS - self.scheduler.starvation_ms
        self.submit(
            queued("small1", memory=200),
            queued("big", memory=900, created_at_ms=old),
            queued("small2", memory=100),
        )
        self.scheduler.start()
        self.assertEqual(self.picks(), [["small1"]])
        self.answer(["small1"])
        self.assertEqual(self.queue(), ["big", "small2"])

    def test_starving_tenant_holds_only_its_tenant(self) -> None:
        """
        A task held back only by its tenant's quota holds that tenant's
        younger tasks, not other tenants'.
        """
        old = NOW_MS - self.scheduler.starvation_ms
        self.ledger.reserve("running", "t", Reservation())
        self.submit(
            queued("t-old", tenant="t", created_at_ms=old),
            queued("t-young", tenant="t"),
            queued("other", tenant="u"),
        )
        self.scheduler.start()
        self.assertEqual(self.picks(), [["other"]])
        self.answer(["other"])
        self.assertEqual(self.queue(), ["t-old", "t-young"])

    def test_skipped_released(self) -> None:
        """
        Tasks the store did not dispatch (killed meanwhile) give their
        ledger entry back and are not launched.
        """
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        self.answer(["a"], ["b"])
        self.assertEqual(list(self.ledger.active), ["a"])
        self.assertEqual(self.link.launched, [["a"]])
        self.assertEqual(self.dispatched, [("a", SHIM_PID)])
        self.assertEqual(self.queue(), [])

    def test_all_skipped(self) -> None:
        """
        When nothing was dispatched nothing is launched.
        """
        self.submit(queued("a"))
        self.scheduler.start()
        self.answer([], ["a"])
        self.assertEqual(self.link.launched, [])
        self.assertEqual(dict(self.ledger.active), {})

    def test_disconnected(self) -> None:
        """
        With the supervisor link down nothing is dispatched and nothing
        stays reserved; a later wake-up dispatches.
        """
        self.link.set_connected(False)
        self.submit(queued("a"))
        self.scheduler.start()
        self.assertEqual(self.store.dispatches, [])
        self.assertEqual(dict(self.ledger.active), {})
        self.assertEqual(self.queue(), ["a"])
        self.link.set_connected(True)
        self.scheduler.wake()
        self.assertEqual(self.picks(), [["a"]])
        self.answer(["a"])
        self.assertEqual(self.link.launched, [["a"]])

    def test_no_supervisor_pid(self) -> None:
        """
        A link without a supervisor pid does not dispatch either.
        """
        self.link.pid = None
        self.submit(queued("a"))
        self.scheduler.start()
        self.assertEqual(self.store.dispatches, [])
        self.assertEqual(dict(self.ledger.active), {})

    def test_dequeued(self) -> None:
        """
        A cancelled queued task leaves the queue and is never dispatched.
        """
        self.submit(queued("a"), queued("b"))
        self.scheduler.dequeued("a")
        self.scheduler.start()
        self.assertEqual(self.picks(), [["b"]])
        self.answer(["b"])

    def test_store_failure(self) -> None:
        """
        A failed dispatch write gives the reservations back and requeues the
        tasks; the loop goes on (poll armed) and retries on the next wake.
        """
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        with capturedLogs() as events:
            self.store.dispatches[0].deferred.errback(RuntimeError("database is locked"))
        [event] = [e for e in events if e.get("log_format") == "dispatcher iteration failed"]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["error"], "database is locked")
        self.assertEqual(dict(self.ledger.active), {})
        self.assertEqual(sorted(self.queue()), ["a", "b"])
        self.assertEqual(self.link.launched, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.scheduler.wake()
        self.assertEqual(self.picks(), [["a", "b"], ["a", "b"]])
        self.answer(["a", "b"])
        self.assertEqual(self.link.launched, [["a", "b"]])

    def test_store_failure_keeps_fifo(self) -> None:
        """
        After a failed dispatch write the oldest task is still first in
        line.
        """
        self.ledger.reserve("busy", None, Reservation())
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        self.assertEqual(self.picks(), [["a"]])
        self.store.dispatches[0].deferred.errback(RuntimeError("database is locked"))
        self.assertEqual(self.queue(), ["a", "b"])
        self.scheduler.wake()
        self.assertEqual(self.picks(), [["a"], ["a"]])
        self.answer(["a"])



class WakeTests(SchedulerTestCase):
    """
    Cycles never overlap; wake-ups during a cycle coalesce into one more.
    """

    def test_wake_during_cycle(self) -> None:
        """
        Any number of wake-ups during a cycle run exactly one more cycle
        after it, which picks up everything submitted meanwhile.
        """
        self.ledger.capacity = Capacity(task_slots=10)
        self.submit(queued("a"))
        self.scheduler.start()
        self.assertEqual(self.scheduler.cycles, 1)
        self.submit(queued("b"), queued("c"))
        self.scheduler.wake()
        self.scheduler.wake()
        self.assertEqual(self.scheduler.cycles, 1)
        self.assertEqual(self.picks(), [["a"]])
        self.answer(["a"])
        self.assertEqual(self.scheduler.cycles, 2)
        self.assertEqual(self.picks(), [["a"], ["b", "c"]])
        self.answer(["b", "c"])
        self.assertEqual(self.scheduler.cycles, 2)
        self.assertEqual(self.link.launched, [["a"], ["b", "c"]])

    def test_idle_wakes(self) -> None:
        """
        Wake-ups with nothing to do run one cycle each and call no store.
        """
        self.scheduler.start()
        self.scheduler.wake()
        self.scheduler.wake()
        self.assertEqual(self.scheduler.cycles, 3)
        self.assertEqual(self.store.dispatches, [])
        self.assertEqual(self.store.states, [])

    def test_wake_before_start_ignored(self) -> None:
        """
        Wake-ups before C{start()} and after C{stop()} run nothing.
        """
        self.scheduler.wake()
        self.assertEqual(self.scheduler.cycles, 0)
        self.scheduler.start()
        self.successResultOf(self.scheduler.stop())
        self.submit(queued("a"))
        self.scheduler.released("x")
        self.assertEqual(self.scheduler.cycles, 1)
        self.assertEqual(self.store.dispatches, [])


class PollTests(SchedulerTestCase):
    """
    The safety-net poll re-syncs the queue and ledger from the store.
    """

    def test_poll_armed_after_cycle(self) -> None:
        """
        After a cycle one poll timer is armed for the poll interval.
        """
        self.scheduler.start()
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), POLL_S)
        self.scheduler.wake()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_resync(self) -> None:
        """
        The poll loads the active reservations and the queue from the store
        and dispatches what fits on top of them.
        """
        self.scheduler.start()
        self.assertEqual(self.store.states, [])
        self.clock.advance(POLL_S)
        self.assertEqual(len(self.store.states), 1)
        self.assertEqual(self.store.states[0].max_queued, self.max_queued)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        running = record("r", "running", reservation=Reservation(memory_bytes=500), reserved_at_ms=1)
        self.store.states[0].deferred.callback(
            SchedulerState(
                active=(running,),
                queued=(record("q1"), record("q2", memory_bytes=600), record("q3", tenant="t")),
            )
        )
        self.assertEqual(list(self.ledger.active), ["r", "q1"])
        self.assertEqual(self.picks(), [["q1"]])
        self.answer(["q1"])
        self.assertEqual(self.queue(), ["q2", "q3"])
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 2 * POLL_S)

    def test_resync_without_reservation_object(self) -> None:
        """
        An active task without a stored reservation object counts with the
        one its limits imply.
        """
        self.scheduler.start()
        self.clock.advance(POLL_S)
        active = record("r", "running", memory_bytes=700, reserved_at_ms=1)
        self.store.states[0].deferred.callback(SchedulerState(active=(active,), queued=()))
        self.assertEqual(self.ledger.active["r"].reservation, Reservation(memory_bytes=700))

    def test_resync_replaces_ledger(self) -> None:
        """
        Reservations the store no longer holds (ends not reported) are
        dropped from the ledger.
        """
        self.scheduler.load(
            SchedulerState(active=(record("gone", "running", reserved_at_ms=1),), queued=())
        )
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.store.states[0].deferred.callback(SchedulerState(active=(), queued=()))
        self.assertEqual(dict(self.ledger.active), {})

    def test_resync_drops_vanished(self) -> None:
        """
        A queued task the store no longer lists as queued (while the list is
        not cut at C{max_queued}) leaves the queue.
        """
        self.link.set_connected(False)
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.store.states[0].deferred.callback(SchedulerState(active=(), queued=(record("b"),)))
        self.assertEqual(self.queue(), ["b"])

    def test_resync_keeps_beyond_limit(self) -> None:
        """
        When the store's list is full (C{max_queued} rows) a task missing
        from it may just be beyond the cut: it stays queued.
        """
        self.scheduler.max_queued = 1
        self.link.set_connected(False)
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.assertEqual(self.store.states[0].max_queued, 1)
        self.store.states[0].deferred.callback(SchedulerState(active=(), queued=(record("b"),)))
        self.assertEqual(sorted(self.queue()), ["a", "b"])

    def test_released_during_resync(self) -> None:
        """
        A release reported while the store query runs is applied on top of
        the (stale) answer, not lost; it also runs one more cycle.
        """
        held = record("a", "running", reservation=Reservation(), reserved_at_ms=1)
        self.scheduler.load(SchedulerState(active=(held,), queued=()))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.scheduler.released("a")
        self.assertEqual(dict(self.ledger.active), {})
        cycles = self.scheduler.cycles
        self.store.states[0].deferred.callback(SchedulerState(active=(held,), queued=()))
        self.assertNotIn("a", self.ledger.active)
        self.assertEqual(self.scheduler.cycles, cycles + 1)

    def test_resync_failure(self) -> None:
        """
        A failed store query ends the cycle; the next poll tries again.
        """
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.store.states[0].deferred.errback(RuntimeError("disk I/O error"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(POLL_S)
        self.assertEqual(len(self.store.states), 2)
        self.store.states[1].deferred.callback(SchedulerState(active=(), queued=()))


class LoadTests(SchedulerTestCase):
    """
    L{Scheduler.load} and L{QueuedTask.from_record}.
    """

    def test_load(self) -> None:
        """
        Loading replaces the queue (store order) and the ledger.
        """
        self.submit(queued("old"))
        self.ledger.reserve("stale", None, Reservation())
        self.scheduler.load(
            SchedulerState(
                active=(record("r", "running", reservation=Reservation(pids=3), reserved_at_ms=1, tenant="t"),),
                queued=(record("q2", created_at_ms=1), record("q1", created_at_ms=2)),
            )
        )
        self.assertEqual(self.queue(), ["q2", "q1"])
        self.assertEqual(list(self.ledger.active), ["r"])
        self.assertEqual(self.ledger.active["r"].tenant, "t")
        self.assertEqual(self.ledger.active["r"].reservation, Reservation(pids=3))

    def test_from_record(self) -> None:
        """
        A queue entry takes the tenant, creation time and the reservation
        the limits imply.
        """
        entry = QueuedTask.from_record(
            record("q", created_at_ms=77, memory_bytes=5, pids_max=6, tenant="t")
        )
        self.assertEqual(entry, QueuedTask("q", "t", Reservation(memory_bytes=5, pids=6), 77))


class StopTests(SchedulerTestCase):
    """
    L{Scheduler.stop} cancels the poll and waits for a running cycle.
    """

    def test_stop_idle(self) -> None:
        """
        Stopping an idle scheduler cancels the poll timer at once.
        """
        self.scheduler.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(self.scheduler.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_waits_for_cycle(self) -> None:
        """
        The Deferred of C{stop()} fires only when the running cycle ends;
        the cycle completes its dispatch and no further cycle or poll runs.
        """
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.start()
        stopped = self.scheduler.stop()
        self.assertNoResult(stopped)
        self.scheduler.wake()
        self.answer(["a", "b"])
        self.successResultOf(stopped)
        self.assertEqual(self.link.launched, [["a", "b"]])
        self.assertEqual(self.scheduler.cycles, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_during_resync(self) -> None:
        """
        Stopping while the poll's store query runs waits for it.
        """
        self.scheduler.start()
        self.clock.advance(POLL_S)
        stopped = self.scheduler.stop()
        self.assertNoResult(stopped)
        self.store.states[0].deferred.callback(SchedulerState(active=(), queued=()))
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
