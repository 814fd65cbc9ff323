"""
Tests for L{execgo.server.scheduler.Scheduler}: dispatch cycles driven by a
L{Clock}, a store whose answers the test fires by hand, and a recording
supervisor link.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core.ledger import Holding, Ledger
from execgo.core.reservation import Reservation
from execgo.server.scheduler import QueuedTask, Scheduler
from execgo.store.reads import SchedulerState
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


def state(active: Sequence[Any] = (), queued: Sequence[Any] = ()) -> SchedulerState:
    """
    A store answer to C{scheduler_state}.
    """
    return SchedulerState(active=tuple(active), queued=tuple(queued))


class SchedulerTestCase(SynchronousTestCase):
    """
    A scheduler over a 2-slot, 1000-byte ledger with tenant C{t} limited to
    one slot; every test ends stopped with no timer left.
    """

    capacity = Reservation(task_slots=2, memory_bytes=1000)
    max_queued = 10

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeDispatchStore()
        self.link = FakeLink(pid=SHIM_PID)
        self.ledger = Ledger(self.capacity, {"t": Reservation(task_slots=1)})
        self.scheduler = CountingScheduler(
            self.clock,
            self.store,
            self.link,
            self.ledger,
            max_queued=self.max_queued,
            poll_interval_s=POLL_S,
            now_ms=lambda: NOW_MS,
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

    def resync(self, answer: SchedulerState, index: int = -1) -> None:
        """
        Answer a recorded C{scheduler_state} call.
        """
        self.store.states[index].deferred.callback(answer)

    def queue(self) -> List[str]:
        """
        The scheduler's queue, in order.
        """
        return list(self.scheduler.queue)

    def dispatched(self) -> List[str]:
        """
        The tasks sent to the supervisor and not reported on, sorted.
        """
        return sorted(self.scheduler.dispatched)

    def holds(self) -> List[str]:
        """
        The tasks holding a reservation in the ledger, sorted.
        """
        return sorted(self.ledger.active)


class DispatchTests(SchedulerTestCase):
    """
    What one cycle picks, and how it hands the picks to the supervisor.
    """

    def test_nothing_before_start(self) -> None:
        """
        Submits before C{start()} queue the task but run no cycle.
        """
        self.submit(queued("a"))
        self.assertEqual(self.link.launched, [])
        self.assertEqual(self.link.refused, [])
        self.assertEqual(self.queue(), ["a"])
        self.assertEqual(self.dispatched(), [])
        self.assertEqual(self.scheduler.cycles, 0)

    def test_fifo_within_capacity(self) -> None:
        """
        Tasks are picked oldest first up to the slot capacity and sent in
        one launch order, in that order, by a single cycle; the rest waits.
        """
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["a", "b"]])
        self.assertEqual(self.dispatched(), ["a", "b"])
        self.assertEqual(self.holds(), ["a", "b"])
        self.assertEqual(self.queue(), ["c"])
        self.assertEqual(self.scheduler.cycles, 1)

    def test_standby_orders(self) -> None:
        """
        A supervisor that keeps launch orders until a slot frees, for no
        more slots than the node has, is sent as many orders again as the
        node has slots; the ledger counts them all.
        """
        self.link.slots = 2
        self.submit(*[queued(task_id) for task_id in "abcde"])
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["a", "b", "c", "d"]])
        self.assertEqual(self.holds(), ["a", "b", "c", "d"])
        self.assertTrue(self.ledger.full)
        self.scheduler.released("a")
        self.assertEqual(self.link.launched, [["a", "b", "c", "d"], ["e"]])

    def assert_no_standby(self, slots: Optional[int]) -> None:
        """
        With the supervisor's greeting naming C{slots}, no more orders
        are sent than the node has slots.
        """
        self.link.slots = slots
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["a", "b"]])
        self.assertEqual(self.queue(), ["c"])

    def test_no_standby_for_a_supervisor_without_slots(self) -> None:
        """
        A supervisor that starts every order at once is sent no more
        orders than slots.
        """
        self.assert_no_standby(None)

    def test_no_standby_for_more_slots(self) -> None:
        """
        A supervisor that keeps orders to more slots than the node has
        (another server's settings) is sent no more orders than slots.
        """
        self.assert_no_standby(3)

    def test_dispatch_logged(self) -> None:
        """
        Each dispatched task is logged at info level with its id and the
        supervisor's pid; a task left queued is not.
        """
        self.submit(queued("a"), queued("b"), queued("c"))
        with capturedLogs() as events:
            self.scheduler.start()
        logged = [e for e in events if e.get("log_format") == "task dispatched"]
        self.assertEqual([(e["task_id"], e["shim_pid"]) for e in logged], [("a", SHIM_PID), ("b", SHIM_PID)])
        self.assertEqual({e["log_level"] for e in logged}, {LogLevel.info})

    def test_dispatched_task(self) -> None:
        """
        A dispatched task leaves the queue, is kept as dispatched with its
        queue entry, holds its reservation in the ledger, and is known to
        be unfinished.
        """
        a = queued("a", memory=300, tenant="t")
        self.submit(a, queued("b", tenant="t"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["a"]])
        self.assertNotIn("a", self.scheduler.queue)
        self.assertEqual(dict(self.scheduler.dispatched), {"a": a})
        self.assertEqual(self.ledger.active["a"], Holding(tenant="t", reservation=Reservation(memory_bytes=300)))
        self.assertEqual(self.ledger.reserved.memory_bytes, 300)
        self.assertTrue(self.scheduler.knows_unfinished("a"))
        self.assertTrue(self.scheduler.knows_unfinished("b"))
        self.assertFalse(self.scheduler.knows_unfinished("unknown"))

    def test_dispatched_not_launched_again(self) -> None:
        """
        Later cycles leave a dispatched task alone: no second launch order,
        and its hold stays while the supervisor has not reported.
        """
        self.submit(queued("a"))
        self.scheduler.start()
        self.scheduler.wake()
        self.scheduler.wake()
        self.assertEqual(self.scheduler.cycles, 3)
        self.assertEqual(self.link.launched, [["a"]])
        self.assertEqual(self.dispatched(), ["a"])
        self.assertEqual(self.holds(), ["a"])

    def test_release_makes_room(self) -> None:
        """
        The end of a dispatched task (C{finished}, reported through
        C{released}) frees its slot and wakes the dispatcher, which
        launches the next task.
        """
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.start()
        self.scheduler.released("a")
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])
        self.assertEqual(self.dispatched(), ["b", "c"])
        self.assertEqual(self.holds(), ["b", "c"])
        self.assertEqual(self.queue(), [])
        self.assertFalse(self.scheduler.knows_unfinished("a"))

    def test_declined_makes_room_for_its_tenant(self) -> None:
        """
        A declined launch order (reported through C{released}) gives the
        tenant's quota back, so the tenant's next task is launched.
        """
        self.submit(queued("t1", tenant="t"), queued("t2", tenant="t"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["t1"]])
        self.scheduler.released("t1")
        self.assertEqual(self.link.launched, [["t1"], ["t2"]])
        self.assertEqual(self.dispatched(), ["t2"])
        self.assertEqual(self.holds(), ["t2"])

    def test_cancelled_dispatched_then_declined(self) -> None:
        """
        A dispatched task cancelled before the supervisor took it
        (C{dequeued}) frees its slot at once; the supervisor's later
        C{declined} for it changes nothing.
        """
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.start()
        self.scheduler.dequeued("a")
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])
        self.assertEqual(self.dispatched(), ["b", "c"])
        self.scheduler.released("a")
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])
        self.assertEqual(self.dispatched(), ["b", "c"])
        self.assertEqual(self.holds(), ["b", "c"])

    def test_tenant_quota(self) -> None:
        """
        A tenant at its quota is skipped while others go ahead.
        """
        self.submit(queued("t1", tenant="t"), queued("t2", tenant="t"), queued("x"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["t1", "x"]])
        self.assertEqual(self.queue(), ["t2"])

    def test_unknown_tenant_unbounded(self) -> None:
        """
        A tenant without a quota is bounded only by the global capacity.
        """
        self.submit(queued("u1", tenant="u"), queued("u2", tenant="u"), queued("u3", tenant="u"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["u1", "u2"]])
        self.assertEqual(self.queue(), ["u3"])

    def test_no_head_of_line_blocking(self) -> None:
        """
        A young task that does not fit lets later, smaller tasks pass.
        """
        self.submit(queued("small1", memory=200), queued("big", memory=900), queued("small2", memory=100))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["small1", "small2"]])
        self.assertEqual(self.queue(), ["big"])
        self.assertEqual(self.ledger.reserved.memory_bytes, 300)

    def test_starving_task_holds_the_queue(self) -> None:
        """
        Once a task that does not fit has waited C{starvation_ms}, no task
        behind it starts in its place, so capacity drains to it; it is
        launched when enough is released.
        """
        old = NOW_MS - self.scheduler.starvation_ms
        self.submit(
            queued("small1", memory=200),
            queued("big", memory=900, created_at_ms=old),
            queued("small2", memory=100),
        )
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["small1"]])
        self.assertEqual(self.queue(), ["big", "small2"])
        self.scheduler.released("small1")
        self.assertEqual(self.link.launched, [["small1"], ["big", "small2"]])
        self.assertEqual(self.queue(), [])

    def test_young_task_just_below_starvation(self) -> None:
        """
        A task one millisecond short of C{starvation_ms} does not hold the
        queue yet.
        """
        young = NOW_MS - self.scheduler.starvation_ms + 1
        self.submit(
            queued("small1", memory=200),
            queued("big", memory=900, created_at_ms=young),
            queued("small2", memory=100),
        )
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["small1", "small2"]])

    def test_starving_tenant_holds_only_its_tenant(self) -> None:
        """
        A task held back only by its tenant's quota holds that tenant's
        younger tasks, even ones that would fit, but not other tenants'.
        """
        self.ledger.capacity = Reservation(task_slots=3, memory_bytes=1000)
        self.ledger.quotas = {"t": Reservation(task_slots=2, memory_bytes=500)}
        old = NOW_MS - self.scheduler.starvation_ms
        self.ledger.reserve("running", "t", Reservation(memory_bytes=300))
        self.submit(
            queued("t-old", memory=400, tenant="t", created_at_ms=old),
            queued("t-young", memory=100, tenant="t"),
            queued("other", tenant="u"),
        )
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["other"]])
        self.assertEqual(self.queue(), ["t-old", "t-young"])

    def test_young_tenant_task_does_not_hold(self) -> None:
        """
        A young task over its tenant's quota lets the tenant's smaller
        tasks pass.
        """
        self.ledger.capacity = Reservation(task_slots=3, memory_bytes=1000)
        self.ledger.quotas = {"t": Reservation(task_slots=2, memory_bytes=500)}
        self.ledger.reserve("running", "t", Reservation(memory_bytes=300))
        self.submit(queued("t-big", memory=400, tenant="t"), queued("t-small", memory=100, tenant="t"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["t-small"]])
        self.assertEqual(self.queue(), ["t-big"])

    def test_disconnected(self) -> None:
        """
        When the link refuses the launch order (not connected) the picks
        stay queued in their places and hold nothing; a later wake-up with
        the link up launches them.
        """
        self.link.connected = False
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.start()
        self.assertEqual(self.link.refused, [["a", "b"]])
        self.assertEqual(self.link.launched, [])
        self.assertEqual(self.holds(), [])
        self.assertEqual(self.dispatched(), [])
        self.assertEqual(self.queue(), ["a", "b", "c"])
        self.link.connected = True
        self.scheduler.wake()
        self.assertEqual(self.link.launched, [["a", "b"]])
        self.assertEqual(self.dispatched(), ["a", "b"])
        self.assertEqual(self.queue(), ["c"])

    def test_launch_raises(self) -> None:
        """
        A link that fails while sending leaves the picks queued where they
        were and gives their holds back; the error is the cycle's.
        """

        def broken(task_ids: Any) -> bool:
            raise RuntimeError("socket gone")

        self.link.launch = broken  # type: ignore[method-assign]
        self.submit(queued("a"), queued("b"))
        with capturedLogs() as events:
            self.scheduler.start()
        self.assertEqual(self.queue(), ["a", "b"])
        self.assertEqual(self.holds(), [])
        self.assertEqual(self.dispatched(), [])
        self.assertIn(
            "socket gone", [e.get("error") for e in events if e.get("log_format") == "dispatcher iteration failed"]
        )

    def test_no_supervisor_pid(self) -> None:
        """
        Without a supervisor pid no launch order is even tried, nothing
        stays reserved and the task stays queued until there is one.
        """
        self.link.pid = None
        self.submit(queued("a"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [])
        self.assertEqual(self.link.refused, [])
        self.assertEqual(self.holds(), [])
        self.assertEqual(self.queue(), ["a"])
        self.link.pid = SHIM_PID
        self.scheduler.wake()
        self.assertEqual(self.link.launched, [["a"]])

    def test_dequeued(self) -> None:
        """
        A cancelled queued task leaves the queue and is never dispatched.
        """
        self.submit(queued("a"), queued("b"))
        self.scheduler.dequeued("a")
        self.assertEqual(self.queue(), ["b"])
        self.assertFalse(self.scheduler.knows_unfinished("a"))
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["b"]])


class SupervisorLostTests(SchedulerTestCase):
    """
    L{Scheduler.supervisor_lost} puts the orders not reported on back in
    the queue.
    """

    def dispatch_interleaved(self) -> None:
        """
        Dispatch C{a} and C{c} while C{b} (tenant C{t} at its quota) and
        C{d} (no slot left) stay queued; creation order is a, b, c, d.
        """
        self.submit(
            queued("a", tenant="t", created_at_ms=NOW_MS - 4),
            queued("b", tenant="t", created_at_ms=NOW_MS - 3),
            queued("c", created_at_ms=NOW_MS - 2),
            queued("d", created_at_ms=NOW_MS - 1),
        )
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["a", "c"]])
        self.assertEqual(self.queue(), ["b", "d"])

    def test_lost_requeues_in_creation_order(self) -> None:
        """
        The dispatched tasks go back to the queue among the queued ones in
        creation order, give their holds back, are still known unfinished,
        and are not launched while there is no supervisor.
        """
        self.dispatch_interleaved()
        self.link.pid = None
        self.link.connected = False
        self.scheduler.supervisor_lost()
        self.assertEqual(self.queue(), ["a", "b", "c", "d"])
        self.assertEqual(self.dispatched(), [])
        self.assertEqual(self.holds(), [])
        self.assertTrue(self.scheduler.knows_unfinished("a"))
        self.assertTrue(self.scheduler.knows_unfinished("c"))
        self.assertEqual(self.link.launched, [["a", "c"]])

    def test_lost_then_relaunched(self) -> None:
        """
        Once a new supervisor is connected, the returned tasks are launched
        again, oldest first, and logged with the new supervisor's pid.
        """
        self.dispatch_interleaved()
        self.link.pid = None
        self.link.connected = False
        self.scheduler.supervisor_lost()
        self.link.pid = 777
        self.link.connected = True
        with capturedLogs() as events:
            self.scheduler.wake()
        self.assertEqual(self.link.launched, [["a", "c"], ["a", "c"]])
        self.assertEqual(self.dispatched(), ["a", "c"])
        self.assertEqual(self.holds(), ["a", "c"])
        self.assertEqual(self.queue(), ["b", "d"])
        self.assertEqual(
            [(e["task_id"], e["shim_pid"]) for e in events if e.get("log_format") == "task dispatched"],
            [("a", 777), ("c", 777)],
        )

    def test_lost_wakes(self) -> None:
        """
        C{supervisor_lost} runs a cycle: with a link that can launch at
        once, the returned tasks are launched again straight away.
        """
        self.dispatch_interleaved()
        cycles = self.scheduler.cycles
        self.scheduler.supervisor_lost()
        self.assertEqual(self.scheduler.cycles, cycles + 1)
        self.assertEqual(self.link.launched, [["a", "c"], ["a", "c"]])
        self.assertEqual(self.queue(), ["b", "d"])

    def test_lost_then_failed(self) -> None:
        """
        A returned task that the old supervisor had taken is failed by the
        runtime (C{released}): it leaves the queue too and is no longer
        known unfinished, so it is never launched again.
        """
        self.dispatch_interleaved()
        self.link.pid = None
        self.link.connected = False
        self.scheduler.supervisor_lost()
        self.scheduler.released("a")
        self.assertEqual(self.queue(), ["b", "c", "d"])
        self.assertFalse(self.scheduler.knows_unfinished("a"))

    def test_lost_with_nothing_dispatched(self) -> None:
        """
        Losing the supervisor with no order outstanding leaves the queue
        and the ledger alone.
        """
        self.link.connected = False
        self.ledger.reserve("running", None, Reservation())
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        self.scheduler.supervisor_lost()
        self.assertEqual(self.queue(), ["a", "b"])
        self.assertEqual(self.holds(), ["running"])


class WakeTests(SchedulerTestCase):
    """
    Cycles never overlap; wake-ups during a cycle coalesce into one more.
    """

    def test_wake_during_cycle(self) -> None:
        """
        Any number of wake-ups during a cycle (one waiting for the store)
        run exactly one more cycle after it, and launch nothing meanwhile.
        """
        self.ledger.capacity = Reservation(task_slots=10)
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.assertEqual(self.scheduler.cycles, 2)
        self.submit(queued("a"), queued("b"))
        self.scheduler.wake()
        self.scheduler.released("x")
        self.assertEqual(self.scheduler.cycles, 2)
        self.assertEqual(self.link.launched, [])
        self.resync(state(queued=(record("a"), record("b"))))
        self.assertEqual(self.scheduler.cycles, 3)
        self.assertEqual(self.link.launched, [["a", "b"]])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_idle_wakes(self) -> None:
        """
        Wake-ups with nothing to do run one cycle each and call no store.
        """
        self.scheduler.start()
        self.scheduler.wake()
        self.scheduler.wake()
        self.assertEqual(self.scheduler.cycles, 3)
        self.assertEqual(self.store.states, [])
        self.assertEqual(self.link.launched, [])

    def test_full_ledger_runs_no_cycle(self) -> None:
        """
        While every slot is taken, submissions run no cycle (none could
        pick anything); the poll stays armed, and the next release runs a
        cycle that launches the oldest task.
        """
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        cycles = self.scheduler.cycles
        self.submit(queued("c"), queued("d"))
        self.assertEqual(self.scheduler.cycles, cycles)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.scheduler.released("a")
        self.assertEqual(self.scheduler.cycles, cycles + 1)
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])

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
        self.scheduler.supervisor_lost()
        self.assertEqual(self.scheduler.cycles, 1)
        self.assertEqual(self.link.launched, [])


class PollTests(SchedulerTestCase):
    """
    The safety-net poll re-syncs the queue and ledger from the store.
    """

    def test_poll_armed_after_cycle(self) -> None:
        """
        After a cycle one poll timer is armed for the poll interval; a new
        cycle re-arms it rather than adding another.
        """
        self.scheduler.start()
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), POLL_S)
        self.clock.advance(POLL_S / 2)
        self.scheduler.wake()
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), POLL_S * 1.5)
        self.assertEqual(self.store.states, [])

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
        self.resync(state(active=(running,), queued=(record("q1"), record("q2", memory_bytes=600), record("q3"))))
        self.assertEqual(self.holds(), ["q1", "r"])
        self.assertEqual(self.link.launched, [["q1"]])
        self.assertEqual(self.dispatched(), ["q1"])
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
        self.resync(state(active=(active,)))
        self.assertEqual(self.ledger.active["r"].reservation, Reservation(memory_bytes=700))

    def test_resync_replaces_ledger(self) -> None:
        """
        Reservations the store no longer holds (ends not reported) are
        dropped from the ledger.
        """
        self.scheduler.load(state(active=(record("gone", "running", reserved_at_ms=1),)))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.resync(state())
        self.assertEqual(self.holds(), [])

    def test_resync_merges_in_creation_order(self) -> None:
        """
        Queued tasks the dispatcher did not know of are merged into its
        queue in creation order.
        """
        self.link.connected = False
        self.submit(queued("b", created_at_ms=20))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.resync(
            state(queued=(record("a", created_at_ms=10), record("b", created_at_ms=20), record("c", created_at_ms=30)))
        )
        self.assertEqual(self.queue(), ["a", "b", "c"])

    def test_resync_drops_vanished(self) -> None:
        """
        A queued task the store no longer lists as queued (while the list is
        not cut at C{max_queued}) leaves the queue.
        """
        self.link.connected = False
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.resync(state(queued=(record("b"),)))
        self.assertEqual(self.queue(), ["b"])

    def test_resync_keeps_beyond_limit(self) -> None:
        """
        When the store's list is full (C{max_queued} rows) a task missing
        from it may just be beyond the cut: it stays queued.
        """
        self.scheduler.max_queued = 1
        self.link.connected = False
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.assertEqual(self.store.states[0].max_queued, 1)
        self.resync(state(queued=(record("b"),)))
        self.assertEqual(sorted(self.queue()), ["a", "b"])

    def test_queued_task_active_in_store_not_launched(self) -> None:
        """
        A task kept queued beyond the store's cut that the store lists as
        active (taken already) holds the stored reservation and is not
        launched; the others are.
        """
        self.scheduler.max_queued = 1
        self.link.connected = False
        self.submit(queued("a"), queued("b"))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.link.connected = True
        self.resync(state(active=(record("a", "running", reserved_at_ms=1),), queued=(record("b"),)))
        self.assertEqual(self.link.launched, [["b"]])
        self.assertEqual(self.holds(), ["a", "b"])
        self.assertEqual(self.queue(), ["a"])

    def test_released_during_resync(self) -> None:
        """
        A release reported while the store query runs is applied on top of
        the (stale) answer, not lost; it also runs one more cycle.
        """
        held = record("a", "running", reservation=Reservation(), reserved_at_ms=1)
        self.scheduler.load(state(active=(held,)))
        self.scheduler.start()
        self.clock.advance(POLL_S)
        self.scheduler.released("a")
        self.assertEqual(self.holds(), [])
        cycles = self.scheduler.cycles
        self.resync(state(active=(held,)))
        self.assertNotIn("a", self.ledger.active)
        self.assertEqual(self.scheduler.cycles, cycles + 1)

    def test_resync_failure(self) -> None:
        """
        A failed store query ends the cycle with a warning; the poll is
        armed again and the next one tries again.
        """
        self.scheduler.start()
        self.clock.advance(POLL_S)
        with capturedLogs() as events:
            self.store.states[0].deferred.errback(RuntimeError("disk I/O error"))
        [event] = [e for e in events if e.get("log_format") == "dispatcher iteration failed"]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["error"], "disk I/O error")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(POLL_S)
        self.assertEqual(len(self.store.states), 2)
        self.resync(state())


class ResyncDispatchedTests(SchedulerTestCase):
    """
    A resync while launch orders are outstanding: the store may still list
    those tasks as C{accepted}, or as C{running}, or not at all.
    """

    def setUp(self) -> None:
        super().setUp()
        self.submit(
            queued("a", memory=300, created_at_ms=NOW_MS - 3),
            queued("b", memory=200, created_at_ms=NOW_MS - 2),
            queued("c", created_at_ms=NOW_MS - 1),
        )
        self.scheduler.start()
        self.assertEqual(self.link.launched, [["a", "b"]])
        self.clock.advance(POLL_S)
        self.assertEqual(len(self.store.states), 1)

    def test_still_accepted(self) -> None:
        """
        Dispatched tasks the store still lists as queued (the supervisor
        has not taken them yet) keep their reservation, stay dispatched and
        do not go back to the queue or get launched again.
        """
        self.resync(state(queued=(record("a", memory_bytes=300), record("b", memory_bytes=200), record("c"))))
        self.assertEqual(self.holds(), ["a", "b"])
        self.assertEqual(self.ledger.reserved.memory_bytes, 500)
        self.assertEqual(self.dispatched(), ["a", "b"])
        self.assertEqual(self.queue(), ["c"])
        self.assertEqual(self.link.launched, [["a", "b"]])

    def test_listed_nowhere(self) -> None:
        """
        A dispatched task the store lists neither as active nor as queued
        has ended (or is gone) whether or not a report reaches us: the
        resync lets it go, so a lost report cannot hold a slot for ever,
        and a late one changes nothing.
        """
        self.resync(state(queued=(record("c"),)))
        self.assertEqual(self.holds(), ["c"])
        self.assertEqual(self.dispatched(), ["c"])
        self.assertEqual(self.queue(), [])
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])
        self.scheduler.released("a")
        self.assertEqual(self.holds(), ["c"])
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])

    def test_taken_by_supervisor(self) -> None:
        """
        A dispatched task the store lists as active holds the stored
        reservation; the one not taken yet is held as dispatched.
        """
        running = record("a", "running", reservation=Reservation(memory_bytes=400), reserved_at_ms=1)
        self.resync(state(active=(running,), queued=(record("b", memory_bytes=200), record("c"))))
        self.assertEqual(self.ledger.active["a"].reservation, Reservation(memory_bytes=400))
        self.assertEqual(self.ledger.active["b"].reservation, Reservation(memory_bytes=200))
        self.assertEqual(self.dispatched(), ["a", "b"])
        self.assertEqual(self.queue(), ["c"])
        self.assertEqual(self.link.launched, [["a", "b"]])

    def test_released_during_resync(self) -> None:
        """
        A dispatched task whose end is reported while the query runs stays
        released even though the stale answer lists it as active; the
        freed slot goes to the next task.
        """
        self.scheduler.released("a")
        stale = record("a", "running", reservation=Reservation(memory_bytes=300), reserved_at_ms=1)
        self.resync(state(active=(stale,), queued=(record("b", memory_bytes=200), record("c"))))
        self.assertNotIn("a", self.ledger.active)
        self.assertNotIn("a", self.scheduler.dispatched)
        self.assertNotIn("a", self.scheduler.queue)
        self.assertEqual(self.holds(), ["b", "c"])
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])

    def test_released_during_resync_listed_queued(self) -> None:
        """
        A dispatched task cancelled or ended while the query runs, that the
        stale answer still lists as C{accepted}, is not put back in the
        queue nor launched again.
        """
        self.scheduler.dequeued("a")
        self.resync(state(queued=(record("a", memory_bytes=300), record("b", memory_bytes=200), record("c"))))
        self.assertFalse(self.scheduler.knows_unfinished("a"))
        self.assertEqual(self.holds(), ["b", "c"])
        self.assertEqual(self.link.launched, [["a", "b"], ["c"]])

    def test_submitted_during_resync(self) -> None:
        """
        A task submitted while the query runs (so missing from its answer)
        stays queued.
        """
        self.submit(queued("late", created_at_ms=NOW_MS))
        self.resync(state(queued=(record("a", memory_bytes=300), record("b", memory_bytes=200), record("c"))))
        self.assertEqual(self.queue(), ["c", "late"])

    def test_lost_during_resync(self) -> None:
        """
        Tasks returned by C{supervisor_lost} while the query runs are not
        held again by the resync: the one the store lists as queued is
        queued in its place, the one it lists as running holds the stored
        reservation and leaves the queue.
        """
        self.link.pid = None
        self.scheduler.supervisor_lost()
        self.assertEqual(self.queue(), ["a", "b", "c"])
        running = record("a", "running", reservation=Reservation(memory_bytes=300), reserved_at_ms=1)
        self.resync(state(active=(running,), queued=(record("b", memory_bytes=200), record("c"))))
        self.assertEqual(self.holds(), ["a"])
        self.assertEqual(self.dispatched(), [])
        self.assertEqual(self.queue(), ["b", "c"])


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
        self.scheduler.start()
        self.clock.advance(POLL_S)
        stopped = self.scheduler.stop()
        self.assertNoResult(stopped)
        self.submit(queued("a"), queued("b"), queued("c"))
        self.scheduler.wake()
        self.resync(state(queued=(record("a"), record("b"), record("c"))))
        self.successResultOf(stopped)
        self.assertEqual(self.link.launched, [["a", "b"]])
        self.assertEqual(self.scheduler.cycles, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_during_resync(self) -> None:
        """
        Stopping while the poll's store query runs waits for it, and arms
        no poll after it.
        """
        self.scheduler.start()
        self.clock.advance(POLL_S)
        stopped = self.scheduler.stop()
        self.assertNoResult(stopped)
        self.resync(state())
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])


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
            state(
                active=(record("r", "running", reservation=Reservation(pids=3), reserved_at_ms=1, tenant="t"),),
                queued=(record("q2", created_at_ms=1), record("q1", created_at_ms=2)),
            )
        )
        self.assertEqual(self.queue(), ["q2", "q1"])
        self.assertEqual(self.holds(), ["r"])
        self.assertEqual(self.ledger.active["r"].tenant, "t")
        self.assertEqual(self.ledger.active["r"].reservation, Reservation(pids=3))

    def test_from_record(self) -> None:
        """
        A queue entry takes the tenant, creation time and the reservation
        the limits imply.
        """
        entry = QueuedTask.from_record(record("q", created_at_ms=77, memory_bytes=5, pids_max=6, tenant="t"))
        self.assertEqual(entry, QueuedTask("q", "t", Reservation(memory_bytes=5, pids=6), 77))
