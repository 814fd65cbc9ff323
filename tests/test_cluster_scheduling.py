"""
Tests for the cluster parts of the dispatcher: what other nodes hold in the
L{Ledger} (L{Ledger.hold_elsewhere}), the L{Scheduler}'s handling of what
other nodes did (L{Scheduler.learned}, L{Scheduler.claimed_elsewhere},
L{Scheduler.ended_elsewhere}), placement by node labels, and a resync
that loads the other nodes' holds.  Driven by a L{Clock}, a store whose
answers the test fires by hand and a recording supervisor link.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from execgo.core.ledger import Holding, Ledger
from execgo.core.records import QueuedTask
from execgo.core.reservation import Reservation
from execgo.store.reads import SchedulerState
from tests.fakes import FakeDispatchStore, FakeLink, record
from tests.test_scheduler import CountingScheduler

POLL_S = 0.25
NOW_MS = 5000
SHIM_PID = 4242
ONE = Reservation(task_slots=1)


def queued(
    task_id: str,
    tenant: Optional[str] = None,
    memory: Optional[int] = None,
    node_labels: Optional[Dict[str, str]] = None,
    created_at_ms: int = NOW_MS,
) -> QueuedTask:
    """
    A queue entry reserving one slot (and optionally memory), created now,
    optionally placed on nodes with C{node_labels}.
    """
    return QueuedTask(task_id, tenant, Reservation(memory_bytes=memory), created_at_ms, dict(node_labels or {}))


def state(
    active: Sequence[Any] = (),
    queued: Sequence[Any] = (),
    elsewhere: Sequence[Tuple[str, Optional[str], Reservation]] = (),
) -> SchedulerState:
    """
    A store answer to C{scheduler_state}.
    """
    return SchedulerState(active=tuple(active), queued=tuple(queued), elsewhere=tuple(elsewhere))


class LedgerElsewhereTests(SynchronousTestCase):
    """
    L{Ledger.hold_elsewhere} and L{Ledger.release_elsewhere}: other nodes'
    tasks count against quotas, not against this node's capacity.
    """

    def setUp(self) -> None:
        self.ledger = Ledger(
            Reservation(task_slots=2, memory_bytes=1000),
            {"t": Reservation(task_slots=2, memory_bytes=500), "one": ONE},
        )

    def test_counts_against_the_quota(self) -> None:
        """
        A tenant's own task plus one elsewhere fill its two-slot quota: the
        next does not fit; another tenant's does.
        """
        self.ledger.reserve("own", "t", ONE)
        self.assertTrue(self.ledger.fits(ONE, "t"))
        self.ledger.hold_elsewhere("far", "t", ONE)
        self.assertFalse(self.ledger.fits(ONE, "t"))
        self.assertTrue(self.ledger.fits(ONE, "u"))
        self.assertTrue(self.ledger.fits(ONE, None))

    def test_elsewhere_alone_fills_the_quota(self) -> None:
        """
        Tasks elsewhere alone can fill a quota: a tenant limited to one
        slot running one elsewhere gets none here.
        """
        self.ledger.hold_elsewhere("far", "one", ONE)
        self.assertFalse(self.ledger.fits(ONE, "one"))

    def test_memory_elsewhere_counts(self) -> None:
        """
        Memory held elsewhere counts against the tenant's memory quota.
        """
        self.ledger.hold_elsewhere("far", "t", Reservation(memory_bytes=400))
        self.assertTrue(self.ledger.fits(Reservation(memory_bytes=100), "t"))
        self.assertFalse(self.ledger.fits(Reservation(memory_bytes=101), "t"))

    def test_not_against_capacity(self) -> None:
        """
        What runs elsewhere leaves this node's capacity alone: C{full},
        C{fits_capacity}, C{reserved} and C{active} are as before.
        """
        self.ledger.hold_elsewhere("far1", "u", Reservation(memory_bytes=900))
        self.ledger.hold_elsewhere("far2", "u", ONE)
        self.ledger.hold_elsewhere("far3", None, ONE)
        self.assertFalse(self.ledger.full)
        self.assertTrue(self.ledger.fits_capacity(Reservation(memory_bytes=1000)))
        self.assertTrue(self.ledger.fits(Reservation(memory_bytes=1000), "u"))
        self.assertEqual(self.ledger.reserved.task_slots, 0)
        self.assertEqual(dict(self.ledger.active), {})
        self.assertEqual(self.ledger.tenant_reserved("u").task_slots, 0)

    def test_elsewhere_view(self) -> None:
        """
        C{elsewhere} shows each task held elsewhere with its tenant and
        reservation, read-only.
        """
        self.ledger.hold_elsewhere("far", "t", ONE)
        self.assertEqual(dict(self.ledger.elsewhere), {"far": Holding(tenant="t", reservation=ONE)})
        with self.assertRaises(TypeError):
            self.ledger.elsewhere["x"] = Holding(None, ONE)  # type: ignore[index]

    def test_release_frees_the_quota(self) -> None:
        """
        Releasing a task held elsewhere gives its share of the quota back.
        """
        self.ledger.hold_elsewhere("far", "one", ONE)
        self.ledger.release_elsewhere("far")
        self.assertTrue(self.ledger.fits(ONE, "one"))
        self.assertEqual(dict(self.ledger.elsewhere), {})

    def test_release_twice(self) -> None:
        """
        Releasing twice, or a task never held, is harmless: the other
        holds of the tenant still count.
        """
        self.ledger.hold_elsewhere("far1", "t", ONE)
        self.ledger.hold_elsewhere("far2", "t", ONE)
        self.ledger.release_elsewhere("far1")
        self.ledger.release_elsewhere("far1")
        self.ledger.release_elsewhere("never")
        self.assertEqual(list(self.ledger.elsewhere), ["far2"])
        self.ledger.reserve("own", "t", ONE)
        self.assertFalse(self.ledger.fits(ONE, "t"))
        self.ledger.release_elsewhere("far2")
        self.ledger.release_elsewhere("far2")
        self.assertTrue(self.ledger.fits(ONE, "t"))

    def test_hold_again_replaces(self) -> None:
        """
        Holding the same task again replaces its hold instead of counting
        it twice.
        """
        self.ledger.hold_elsewhere("far", "t", ONE)
        self.ledger.hold_elsewhere("far", "t", ONE)
        self.assertTrue(self.ledger.fits(ONE, "t"))
        self.ledger.hold_elsewhere("far", "one", ONE)
        self.assertTrue(self.ledger.fits(Reservation(task_slots=2), "t"))
        self.assertFalse(self.ledger.fits(ONE, "one"))

    def test_release_elsewhere_leaves_own(self) -> None:
        """
        Releasing a task elsewhere does not release this node's task of the
        same id, nor the other way round.
        """
        self.ledger.reserve("x", "one", ONE)
        self.ledger.release_elsewhere("x")
        self.assertIn("x", self.ledger.active)
        self.ledger.release("x")
        self.ledger.hold_elsewhere("x", "one", ONE)
        self.ledger.release("x")
        self.assertFalse(self.ledger.fits(ONE, "one"))


class ClusterSchedulerTestCase(SynchronousTestCase):
    """
    A scheduler over a 2-slot ledger with tenant C{one} limited to one
    slot; every test ends stopped with no timer left.
    """

    labels: Optional[Dict[str, str]] = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = FakeDispatchStore()
        self.link = FakeLink(pid=SHIM_PID)
        self.ledger = Ledger(Reservation(task_slots=2), {"one": ONE})
        self.scheduler = CountingScheduler(
            self.clock,
            self.store,
            self.link,
            self.ledger,
            max_queued=10,
            poll_interval_s=POLL_S,
            now_ms=lambda: NOW_MS,
            labels=self.labels,
        )
        self.addCleanup(self.assert_stops_clean)

    def assert_stops_clean(self) -> None:
        """
        C{stop()} fires at once and leaves no delayed call behind.
        """
        self.successResultOf(self.scheduler.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def launched(self) -> List[str]:
        """
        Every task sent to the supervisor, in order.
        """
        return [task_id for order in self.link.launched for task_id in order]


class LearnedTests(ClusterSchedulerTestCase):
    """
    L{Scheduler.learned}: a task another node accepted.
    """

    def test_unknown_task_queued_and_dispatched(self) -> None:
        """
        An unknown task is queued and a cycle runs for it.
        """
        self.scheduler.start()
        cycles = self.scheduler.cycles
        self.scheduler.learned(queued("a"))
        self.assertEqual(self.scheduler.cycles, cycles + 1)
        self.assertEqual(self.launched(), ["a"])
        self.assertEqual(list(self.scheduler.dispatched), ["a"])

    def test_queued_before_start(self) -> None:
        """
        Before the start it is queued only.
        """
        task = queued("a")
        self.scheduler.learned(task)
        self.assertEqual(dict(self.scheduler.queue), {"a": task})
        self.assertEqual(self.launched(), [])

    def test_already_queued_ignored(self) -> None:
        """
        A task queued already keeps its entry and its place.
        """
        first, second = queued("a", created_at_ms=1), queued("b", created_at_ms=2)
        self.scheduler.submitted(first)
        self.scheduler.submitted(second)
        self.scheduler.learned(queued("a", tenant="other", created_at_ms=3))
        self.assertEqual(list(self.scheduler.queue.items()), [("a", first), ("b", second)])

    def test_already_dispatched_ignored(self) -> None:
        """
        A task this node dispatched is not queued again nor sent twice,
        even once its hold left the ledger (a C{load} that did not list it
        as active yet).
        """
        self.scheduler.start()
        self.scheduler.submitted(queued("a"))
        self.scheduler.load(state())
        self.assertNotIn("a", self.ledger.active)
        self.scheduler.learned(queued("a"))
        self.assertEqual(self.launched(), ["a"])
        self.assertEqual(list(self.scheduler.queue), [])

    def test_already_active_ignored(self) -> None:
        """
        A task holding a reservation here (running on this node) is not
        queued again.
        """
        self.ledger.reserve("a", None, ONE)
        self.scheduler.start()
        self.scheduler.learned(queued("a"))
        self.assertEqual(list(self.scheduler.queue), [])
        self.assertEqual(self.launched(), [])


class ClaimedElsewhereTests(ClusterSchedulerTestCase):
    """
    L{Scheduler.claimed_elsewhere}: another node took a task.
    """

    def test_leaves_the_queue_and_holds(self) -> None:
        """
        The task leaves this queue and is held elsewhere with its tenant
        and reservation.
        """
        self.scheduler.submitted(queued("a", tenant="one"))
        self.scheduler.claimed_elsewhere("a", "one", ONE)
        self.assertEqual(list(self.scheduler.queue), [])
        self.assertEqual(dict(self.ledger.elsewhere), {"a": Holding(tenant="one", reservation=ONE)})
        self.assertFalse(self.scheduler.knows_unfinished("a"))

    def test_quota_held_across_nodes(self) -> None:
        """
        A tenant with a one-slot quota whose task runs elsewhere gets
        nothing dispatched here; another tenant's task goes.
        """
        self.scheduler.submitted(queued("a", tenant="one"))
        self.scheduler.submitted(queued("b", tenant="one"))
        self.scheduler.submitted(queued("c", tenant="u"))
        self.scheduler.claimed_elsewhere("a", "one", ONE)
        self.scheduler.start()
        self.assertEqual(self.launched(), ["c"])
        self.assertEqual(list(self.scheduler.queue), ["b"])

    def test_unknown_task_held(self) -> None:
        """
        A task this node never queued is held elsewhere all the same.
        """
        self.scheduler.claimed_elsewhere("far", "one", ONE)
        self.scheduler.submitted(queued("b", tenant="one"))
        self.scheduler.start()
        self.assertEqual(self.launched(), [])


class EndedElsewhereTests(ClusterSchedulerTestCase):
    """
    L{Scheduler.ended_elsewhere}: a task another node ran ended.
    """

    def test_frees_the_quota_and_wakes(self) -> None:
        """
        Its hold is released and a cycle runs: the tenant's next task is
        dispatched.
        """
        self.scheduler.submitted(queued("b", tenant="one"))
        self.scheduler.claimed_elsewhere("a", "one", ONE)
        self.scheduler.start()
        self.assertEqual(self.launched(), [])
        cycles = self.scheduler.cycles
        self.scheduler.ended_elsewhere("a")
        self.assertEqual(dict(self.ledger.elsewhere), {})
        self.assertEqual(self.launched(), ["b"])
        self.assertEqual(self.scheduler.cycles, cycles + 1)

    def test_queued_task_cancelled_elsewhere(self) -> None:
        """
        A task still queued here that was cancelled elsewhere leaves the
        queue.
        """
        self.scheduler.submitted(queued("a"))
        self.scheduler.ended_elsewhere("a")
        self.assertEqual(list(self.scheduler.queue), [])
        self.scheduler.start()
        self.assertEqual(self.launched(), [])

    def test_dispatched_task_ignored(self) -> None:
        """
        A task this node dispatched keeps its hold and stays dispatched:
        its end comes from this node's supervisor.
        """
        self.scheduler.start()
        self.scheduler.submitted(queued("a", tenant="one"))
        self.scheduler.load(state())
        cycles = self.scheduler.cycles
        self.scheduler.ended_elsewhere("a")
        self.assertEqual(list(self.scheduler.dispatched), ["a"])
        self.assertEqual(self.scheduler.cycles, cycles)

    def test_active_task_ignored(self) -> None:
        """
        A task holding a reservation here (recovered as running on this
        node) keeps it.
        """
        self.ledger.reserve("a", "one", ONE)
        self.scheduler.start()
        cycles = self.scheduler.cycles
        self.scheduler.ended_elsewhere("a")
        self.assertIn("a", self.ledger.active)
        self.assertFalse(self.ledger.fits(ONE, "one"))
        self.assertEqual(self.scheduler.cycles, cycles)

    def test_unknown_task_harmless(self) -> None:
        """
        The end of a task never seen changes nothing.
        """
        self.scheduler.claimed_elsewhere("far", "one", ONE)
        self.scheduler.ended_elsewhere("other")
        self.assertEqual(list(self.ledger.elsewhere), ["far"])


class LabelsTests(ClusterSchedulerTestCase):
    """
    Placement: a node dispatches only the tasks whose C{node_labels} it
    has.
    """

    labels = {"zone": "a", "disk": "ssd"}

    def test_placement(self) -> None:
        """
        A task asking for another zone stays queued; one asking for this
        node's labels, and one asking for none, are dispatched.
        """
        self.scheduler.submitted(queued("other", node_labels={"zone": "b"}))
        self.scheduler.submitted(queued("here", node_labels={"zone": "a"}))
        self.scheduler.submitted(queued("anywhere"))
        self.scheduler.start()
        self.assertEqual(self.launched(), ["here", "anywhere"])
        self.assertEqual(list(self.scheduler.queue), ["other"])

    def test_every_label_needed(self) -> None:
        """
        A task is dispatched only when the node has every label it asks
        for.
        """
        self.scheduler.submitted(queued("both", node_labels={"zone": "a", "disk": "ssd"}))
        self.scheduler.submitted(queued("partial", node_labels={"zone": "a", "gpu": "yes"}))
        self.scheduler.start()
        self.assertEqual(self.launched(), ["both"])
        self.assertEqual(list(self.scheduler.queue), ["partial"])

    def test_foreign_task_takes_no_slot(self) -> None:
        """
        Tasks placed elsewhere hold no slot nor block the queue: with two
        slots, the two tasks behind them are dispatched.
        """
        for i in range(3):
            self.scheduler.submitted(queued(f"b{i}", node_labels={"zone": "b"}, created_at_ms=1))
        self.scheduler.submitted(queued("x"))
        self.scheduler.submitted(queued("y"))
        self.scheduler.start()
        self.assertEqual(self.launched(), ["x", "y"])
        self.assertEqual(sorted(self.ledger.active), ["x", "y"])


class UnlabelledNodeTests(ClusterSchedulerTestCase):
    """
    A node without labels runs only the tasks that ask for none.
    """

    def test_labelled_task_not_here(self) -> None:
        """
        A task asking for a label stays queued on a node with none.
        """
        self.scheduler.submitted(queued("placed", node_labels={"zone": "a"}))
        self.scheduler.submitted(queued("free"))
        self.scheduler.start()
        self.assertEqual(self.launched(), ["free"])


class ResyncTests(ClusterSchedulerTestCase):
    """
    L{Scheduler.load} and L{Scheduler.resync}: the other nodes' holds
    rebuilt from the store.
    """

    def test_load_fills_elsewhere(self) -> None:
        """
        C{load} puts each C{(task_id, tenant, reservation)} of the state's
        C{elsewhere} in the ledger's, which then counts against quotas.
        """
        big = Reservation(memory_bytes=64)
        self.scheduler.load(
            state(queued=[queued("q", tenant="one")], elsewhere=[("far1", "one", ONE), ("far2", None, big)])
        )
        self.assertEqual(
            dict(self.ledger.elsewhere),
            {"far1": Holding(tenant="one", reservation=ONE), "far2": Holding(tenant=None, reservation=big)},
        )
        self.scheduler.start()
        self.assertEqual(self.launched(), [])
        self.assertEqual(list(self.scheduler.queue), ["q"])

    def test_load_replaces_elsewhere(self) -> None:
        """
        A later C{load} forgets the holds the store no longer has.
        """
        self.scheduler.load(state(elsewhere=[("far1", "one", ONE)]))
        self.scheduler.load(state(elsewhere=[("far2", None, ONE)]))
        self.assertEqual(list(self.ledger.elsewhere), ["far2"])
        self.assertTrue(self.ledger.fits(ONE, "one"))

    def test_resync_reads_the_store(self) -> None:
        """
        C{resync()} makes a cycle read the store now, whose C{elsewhere}
        then replaces the ledger's.
        """
        self.scheduler.start()
        self.assertEqual(self.store.states, [])
        self.scheduler.claimed_elsewhere("stale", "one", ONE)
        self.scheduler.resync()
        self.assertEqual(len(self.store.states), 1)
        self.assertEqual(self.store.states[0].max_queued, 10)
        self.store.states[0].deferred.callback(state(elsewhere=[("far", "u", ONE)]))
        self.assertEqual(dict(self.ledger.elsewhere), {"far": Holding(tenant="u", reservation=ONE)})

    def test_resync_while_full(self) -> None:
        """
        A resync reads the store even while every slot is taken (when a
        plain wake runs no cycle).
        """
        self.ledger.reserve("a", None, ONE)
        self.ledger.reserve("b", None, ONE)
        self.scheduler.start()
        self.assertEqual(self.store.states, [])
        self.scheduler.resync()
        self.assertEqual(len(self.store.states), 1)
        self.store.states[0].deferred.callback(
            state(active=[record("a", "running", reservation=ONE), record("b", "running", reservation=ONE)])
        )
