"""
Tests for L{execgo.supervisor.membership}: the node's lease taken, renewed,
fenced and given up by L{Membership} over a real SQLite store, on a
monotonic clock the test moves by hand (L{Timers}) with a recording
deadline; L{Watchdog}'s thread on an injected monotonic clock; and the
engine's side of it (L{execgo.supervisor.engine.Supervisor.launch_all}
declining without a lease, L{execgo.supervisor.engine.Supervisor.fence}).
"""

from __future__ import annotations

import signal
import sqlite3
import threading
from typing import Any, Callable, List, Optional, Tuple

from twisted.trial.unittest import SynchronousTestCase

from execgo import control
from execgo.core import outcome
from execgo.core.cluster import NODE_ALIVE, NODE_LEFT, NODE_LOST, NodeInfo, NodeLease, NodeRecord
from execgo.core.reservation import Reservation
from execgo.core.results import ErrorInfo
from execgo.store import connection, nodes, schema, transitions
from execgo.supervisor import reaping
from execgo.supervisor.membership import FENCE_AT, Membership, NoDeadline, Watchdog
from execgo.supervisor.timers import Timers
from tests.fakes import command, new_task
from tests.test_engine import EngineHarness

#: The lease of the tests: renewed every second, fenced 2.25 s after a
#: renewal was sent.
LEASE_MS = 3000
RENEW_S = 1.0
FENCE_S = 2.25
#: Where the test's clocks start.
MONO0 = 500.0
WALL0 = 1_700_000_000_000
NODE = "n1"
MINE = "instance-mine"
THEIRS = "instance-theirs"
#: How long a test waits for the watchdog's thread to do (or not do) something.
THREAD_WAIT_S = 5.0
QUIET_WAIT_S = 0.3


def node_info(instance: str = MINE, node_id: str = NODE) -> NodeInfo:
    """
    What a node says of itself when it joins.
    """
    return NodeInfo(
        node_id=node_id,
        instance=instance,
        advertise_url="http://10.0.0.1:8080",
        labels={"zone": "a"},
        capacity=Reservation(task_slots=4),
    )


class RecordingDeadline:
    """
    A L{execgo.supervisor.membership.Deadline} that records every call, in
    order: C{("arm", deadline)} and C{("disarm",)}.
    """

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []

    def arm(self, deadline: float) -> None:
        """
        Record the deadline.
        """
        self.calls.append(("arm", deadline))

    def disarm(self) -> None:
        """
        Record the disarming.
        """
        self.calls.append(("disarm",))

    def arms(self) -> List[float]:
        """
        The deadlines armed, in order.
        """
        return [call[1] for call in self.calls if call[0] == "arm"]


class NotHeld:
    """
    A membership whose lease is not held: what L{Supervisor.launch_all}
    reads of it.
    """

    held = False


class Held:
    """
    A membership whose lease is held.
    """

    held = True


class MembershipHarness(SynchronousTestCase):
    """
    A store with node L{NODE} joined by instance L{MINE} at L{WALL0}, a
    fake monotonic clock at L{MONO0} with its L{Timers}, a fake wall clock,
    a recording fence and deadline, and a log.
    """

    def setUp(self) -> None:
        path = self.mktemp()
        self.conn = connection.connect(path)
        self.addCleanup(self.conn.close)
        schema.init_schema(self.conn)
        # The supervisor's connection is its own, as in the daemon.
        self.mconn = connection.connect(path)
        self.addCleanup(self.mconn.close)
        self.now = [MONO0]
        self.wall = [WALL0]
        self.timers = Timers(monotonic=lambda: self.now[0])
        self.deadline = RecordingDeadline()
        self.logged: List[str] = []
        #: At each fence: (fenced, epoch) of the membership as it was then.
        self.fences: List[Tuple[bool, Optional[int]]] = []
        self.membership: Optional[Membership] = None
        nodes.join(self.conn, node_info(), LEASE_MS, WALL0)

    def fence(self) -> None:
        """
        Record a fence, with what the membership said at that moment.
        """
        assert self.membership is not None
        self.fences.append((self.membership.fenced, self.membership.epoch))

    def make(self, instance: str = MINE, node_id: str = NODE, lease_ms: int = LEASE_MS) -> Membership:
        """
        A membership over the supervisor's connection, on the test's clocks.
        """
        self.membership = Membership(
            self.mconn,
            NodeLease(node_id, instance, lease_ms),
            self.timers,
            lambda: self.wall[0],
            self.fence,
            self.logged.append,
            deadline=self.deadline,
        )
        return self.membership

    def advance(self, seconds: float, wall_ms: Optional[int] = None) -> None:
        """
        Move both clocks on (the wall clock by C{wall_ms}, by default as
        much as the monotonic one), then run the timers that are due.
        """
        self.now[0] += seconds
        self.wall[0] += int(round(seconds * 1000)) if wall_ms is None else wall_ms
        self.timers.run_due(lambda call: call())

    def node(self) -> NodeRecord:
        """
        The node's row as the store holds it now.
        """
        record = nodes.load_node(self.conn, NODE)
        assert record is not None
        return record

    def epoch(self) -> int:
        """
        The lease epoch the store holds for the node now.
        """
        return int(self.conn.execute("SELECT lease_epoch FROM nodes WHERE node_id = ?", (NODE,)).fetchone()[0])

    def store_fails(self, name: str, message: str = "database is locked") -> List[bool]:
        """
        Make C{nodes.<name>} raise C{sqlite3.OperationalError} while the
        returned switch's only item is true (it starts true).
        """
        failing = [True]
        real: Callable[..., Any] = getattr(nodes, name)

        def maybe_fail(*args: Any, **kwargs: Any) -> Any:
            if failing[0]:
                raise sqlite3.OperationalError(message)
            return real(*args, **kwargs)

        self.patch(nodes, name, maybe_fail)
        return failing


class StartTests(MembershipHarness):
    """
    L{Membership.start}: the lease taken (or not) at once.
    """

    def test_takes_the_lease(self) -> None:
        """
        A node joined by its own instance starts under epoch 1: C{held},
        not C{fenced}, the row's lease renewed from now, the deadline armed
        at three quarters of a lease from now, nothing fenced or logged.
        """
        self.wall[0] = WALL0 + 400
        membership = self.make()
        membership.start()
        self.assertEqual(membership.epoch, 1)
        self.assertTrue(membership.held)
        self.assertFalse(membership.fenced)
        node = self.node()
        self.assertEqual((node.state, node.lease_expires_at_ms), (NODE_ALIVE, WALL0 + 400 + LEASE_MS))
        self.assertEqual(self.epoch(), 1)
        self.assertEqual(self.deadline.calls, [("arm", MONO0 + FENCE_S)])
        self.assertEqual(self.fences, [])
        self.assertEqual(self.logged, [])

    def test_not_held_before_start(self) -> None:
        """
        A membership that has not started holds nothing.
        """
        membership = self.make()
        self.assertIsNone(membership.epoch)
        self.assertFalse(membership.held)
        self.assertEqual(self.deadline.calls, [])
        self.assertIsNone(self.timers.next_delay())

    def test_schedules_the_next_renewal(self) -> None:
        """
        The next renewal is due a third of a lease after the start.
        """
        self.make().start()
        self.assertEqual(self.timers.next_delay(), RENEW_S)

    def test_lease_run_out_before_start(self) -> None:
        """
        A lease that ran out before the supervisor started is taken again
        under the next epoch, starting now.
        """
        self.wall[0] = WALL0 + LEASE_MS + 1
        membership = self.make()
        membership.start()
        self.assertEqual(membership.epoch, 2)
        self.assertTrue(membership.held)
        node = self.node()
        self.assertEqual(
            (node.state, node.started_at_ms, node.lease_expires_at_ms),
            (NODE_ALIVE, WALL0 + LEASE_MS + 1, WALL0 + 2 * LEASE_MS + 1),
        )
        self.assertEqual(self.epoch(), 2)
        self.assertEqual(self.fences, [])

    def test_left_before_start(self) -> None:
        """
        A node that left is joined again under the next epoch.
        """
        self.assertTrue(nodes.leave(self.conn, NODE, 1, WALL0 + 10))
        membership = self.make()
        membership.start()
        self.assertEqual(membership.epoch, 2)
        self.assertEqual(self.node().state, NODE_ALIVE)

    def test_another_instance(self) -> None:
        """
        A node id whose row is another instance's gets no lease: C{held} is
        false, a line says why, the row is untouched, nothing is armed or
        fenced, and the next try is scheduled.
        """
        membership = self.make(instance=THEIRS)
        membership.start()
        self.assertIsNone(membership.epoch)
        self.assertFalse(membership.held)
        self.assertEqual(self.logged, [f"node id {NODE} is not this data directory's: no lease taken"])
        node = self.node()
        self.assertEqual((node.state, node.lease_expires_at_ms), (NODE_ALIVE, WALL0 + LEASE_MS))
        self.assertEqual(self.epoch(), 1)
        self.assertEqual(self.deadline.calls, [])
        self.assertEqual(self.fences, [])
        self.assertEqual(self.timers.next_delay(), RENEW_S)

    def test_another_instance_tried_again(self) -> None:
        """
        Each tick tries again to take the lease of another instance's node
        id, and fails again the same way, with nothing fenced.
        """
        membership = self.make(instance=THEIRS)
        membership.start()
        self.advance(RENEW_S)
        self.advance(RENEW_S)
        self.assertEqual(len(self.logged), 3)
        self.assertEqual(len(set(self.logged)), 1)
        self.assertFalse(membership.held)
        self.assertEqual(self.fences, [])
        self.assertEqual(self.deadline.calls, [])

    def test_no_row(self) -> None:
        """
        A node id the store does not know (the server never joined it)
        gets no lease either, and no row is made.
        """
        membership = self.make(node_id="ghost")
        membership.start()
        self.assertIsNone(membership.epoch)
        self.assertFalse(membership.held)
        self.assertEqual(self.logged, ["node id ghost is not this data directory's: no lease taken"])
        self.assertIsNone(nodes.load_node(self.conn, "ghost"))


class RenewalTests(MembershipHarness):
    """
    L{Membership.tick}: the lease renewed every third of a lease, each
    renewal moving the fencing deadline.
    """

    def test_tick_renews(self) -> None:
        """
        Each tick renews the lease of the same epoch to a lease from the
        wall clock's now, and arms the deadline three quarters of a lease
        after the tick's start.
        """
        membership = self.make()
        membership.start()
        self.advance(RENEW_S)
        self.assertEqual(self.node().lease_expires_at_ms, WALL0 + 1000 + LEASE_MS)
        self.assertEqual(self.deadline.arms(), [MONO0 + FENCE_S, MONO0 + RENEW_S + FENCE_S])
        self.advance(RENEW_S)
        self.assertEqual(self.node().lease_expires_at_ms, WALL0 + 2000 + LEASE_MS)
        self.assertEqual(self.deadline.arms()[-1], MONO0 + 2 * RENEW_S + FENCE_S)
        self.assertEqual(membership.epoch, 1)
        self.assertEqual(self.epoch(), 1)
        self.assertTrue(membership.held)
        self.assertEqual(self.fences, [])
        self.assertEqual(self.logged, [])

    def test_renewal_every_third_of_a_lease(self) -> None:
        """
        Nothing happens until a third of a lease has passed, then the
        renewal runs; and again a third of a lease after that.
        """
        self.make().start()
        self.advance(RENEW_S - 0.125)
        self.assertEqual(len(self.deadline.arms()), 1)
        self.assertEqual(self.node().lease_expires_at_ms, WALL0 + LEASE_MS)
        self.advance(0.125)
        self.assertEqual(len(self.deadline.arms()), 2)
        self.assertEqual(self.timers.next_delay(), RENEW_S)

    def test_one_timer_at_a_time(self) -> None:
        """
        Ten intervals make exactly ten renewals: each tick schedules one
        next tick, no more.
        """
        self.make().start()
        for _ in range(10):
            self.advance(RENEW_S)
        self.assertEqual(len(self.deadline.arms()), 11)
        self.assertEqual(self.timers.next_delay(), RENEW_S)

    def test_interval_and_deadline_follow_the_lease(self) -> None:
        """
        For other lease lengths, the renewal comes every third of the lease
        and the deadline is L{FENCE_AT} of the lease after the tick.
        """
        for lease_ms in (1000, 10_000, 60_000):
            self.timers = Timers(monotonic=lambda: self.now[0])
            self.deadline = RecordingDeadline()
            self.make(lease_ms=lease_ms).start()
            self.assertAlmostEqual(self.timers.next_delay() or 0.0, lease_ms / 3000.0)
            self.assertEqual(self.deadline.arms(), [MONO0 + FENCE_AT * lease_ms / 1000.0])
        self.assertEqual(FENCE_AT, 0.75)

    def test_deadline_counts_from_the_send(self) -> None:
        """
        The deadline and the next renewal count from when the renewal was
        sent, not from when a slow store answered it.
        """
        membership = self.make()

        def slow_wall_ms() -> int:
            self.now[0] += 0.5
            return self.wall[0]

        membership.wall_ms = slow_wall_ms
        membership.start()
        self.assertEqual(self.deadline.arms(), [MONO0 + FENCE_S])
        self.assertEqual(self.timers.next_delay(), RENEW_S - 0.5)


class LostLeaseTests(MembershipHarness):
    """
    A lease found lost is fenced at once, then taken again under the next
    epoch.
    """

    def test_marked_lost(self) -> None:
        """
        A node another node marked C{lost}: the next tick disarms the
        deadline, fences (with C{fenced} set and no epoch held), logs, and
        takes a new lease under epoch 2, which clears C{fenced} and arms the
        deadline again.
        """
        membership = self.make()
        membership.start()
        self.assertEqual(nodes.mark_lost(self.conn, WALL0 + LEASE_MS + 1), [NODE])
        self.assertEqual(self.node().state, NODE_LOST)
        self.advance(RENEW_S)
        self.assertEqual(self.fences, [(True, None)])
        self.assertEqual(
            self.deadline.calls,
            [("arm", MONO0 + FENCE_S), ("disarm",), ("arm", MONO0 + RENEW_S + FENCE_S)],
        )
        self.assertEqual(self.logged, [f"lease of node {NODE} lost: its workloads are killed; joining again"])
        self.assertEqual(membership.epoch, 2)
        self.assertFalse(membership.fenced)
        self.assertTrue(membership.held)
        node = self.node()
        self.assertEqual(
            (node.state, node.started_at_ms, node.lease_expires_at_ms),
            (NODE_ALIVE, WALL0 + 1000, WALL0 + 1000 + LEASE_MS),
        )
        self.assertEqual(self.epoch(), 2)

    def test_fenced_once(self) -> None:
        """
        After the fence and the new lease, the following ticks renew epoch
        2 without fencing again.
        """
        membership = self.make()
        membership.start()
        nodes.mark_lost(self.conn, WALL0 + LEASE_MS + 1)
        self.advance(RENEW_S)
        self.advance(RENEW_S)
        self.advance(RENEW_S)
        self.assertEqual(len(self.fences), 1)
        self.assertEqual(membership.epoch, 2)
        self.assertEqual(self.node().lease_expires_at_ms, WALL0 + 3000 + LEASE_MS)

    def test_run_out(self) -> None:
        """
        A lease that ran out unmarked (the loop was held up past it) is
        fenced as well, and taken again under epoch 2.
        """
        membership = self.make()
        membership.start()
        self.advance(RENEW_S, wall_ms=LEASE_MS)
        self.assertEqual(self.fences, [(True, None)])
        self.assertEqual(membership.epoch, 2)
        self.assertTrue(membership.held)
        self.assertEqual(self.epoch(), 2)

    def test_taken_over(self) -> None:
        """
        A node id taken over by another instance once it was lost: the
        tick fences, takes no lease, and says so; C{fenced} stays set and
        nothing is armed again.  Later ticks do not fence again.
        """
        membership = self.make()
        membership.start()
        nodes.mark_lost(self.conn, WALL0 + LEASE_MS + 1)
        nodes.join(self.conn, node_info(THEIRS), LEASE_MS, WALL0 + 500)
        self.advance(RENEW_S)
        self.assertEqual(self.fences, [(True, None)])
        self.assertEqual(
            self.logged,
            [
                f"lease of node {NODE} lost: its workloads are killed; joining again",
                f"node id {NODE} is not this data directory's: no lease taken",
            ],
        )
        self.assertIsNone(membership.epoch)
        self.assertTrue(membership.fenced)
        self.assertFalse(membership.held)
        self.assertEqual(self.deadline.calls[-1], ("disarm",))
        self.advance(RENEW_S)
        self.assertEqual(len(self.fences), 1)
        self.assertEqual(self.deadline.calls[-1], ("disarm",))
        self.assertFalse(membership.held)

    def test_watchdog_fence_then_renewal(self) -> None:
        """
        The default deadline is a L{Watchdog} whose firing fences the node
        (C{fenced}, not C{held}, a line logged); a renewal that gets
        through afterwards clears C{fenced} under the same epoch.
        """
        default = Membership(
            self.mconn,
            NodeLease(NODE, MINE, LEASE_MS),
            self.timers,
            lambda: self.wall[0],
            self.fence,
            self.logged.append,
        )
        watchdog = default.deadline
        self.assertIsInstance(watchdog, Watchdog)
        assert isinstance(watchdog, Watchdog)
        # Its thread is left unstarted: the recording deadline stands in.
        default.deadline = self.deadline
        self.membership = default
        default.start()
        watchdog.fire()
        self.assertEqual(self.fences, [(True, 1)])
        self.assertTrue(default.fenced)
        self.assertFalse(default.held)
        self.assertEqual(self.logged, [f"lease of node {NODE} not renewed in time: its workloads are killed"])
        self.advance(RENEW_S)
        self.assertFalse(default.fenced)
        self.assertTrue(default.held)
        self.assertEqual(default.epoch, 1)
        self.assertEqual(len(self.fences), 1)


class UnsharedStoreTests(MembershipHarness):
    """
    On a store no other node shares (C{fencing=False}) the lease only says
    the node lives: nothing is ever fenced.
    """

    def test_never_fenced(self) -> None:
        """
        A lease found lost is taken again without a fence, and late
        renewals arm nothing that could fire.
        """
        membership = Membership(
            self.mconn, NodeLease(NODE, MINE, LEASE_MS), self.timers, lambda: self.wall[0], self.fence,
            self.logged.append, fencing=False,
        )
        self.membership = membership
        membership.start()
        self.assertIsInstance(membership.deadline, NoDeadline)
        nodes.mark_lost(self.conn, WALL0 + LEASE_MS + 1)
        self.advance(RENEW_S)
        self.assertEqual(self.fences, [])
        self.assertEqual((membership.epoch, membership.fenced, membership.held), (2, False, True))


class StoreFailureTests(MembershipHarness):
    """
    A store that cannot be reached: the tick logs and goes on; the
    deadline it does not move is what fences.
    """

    def test_renew_raises(self) -> None:
        """
        A renewal the store refuses is logged; nothing is fenced, disarmed
        or armed, the epoch is kept, and the next tick is scheduled.
        """
        membership = self.make()
        membership.start()
        self.store_fails("renew")
        self.advance(RENEW_S)
        self.assertEqual(self.logged, [f"cannot renew the lease of node {NODE}: database is locked"])
        self.assertEqual(self.fences, [])
        self.assertEqual(self.deadline.calls, [("arm", MONO0 + FENCE_S)])
        self.assertEqual(membership.epoch, 1)
        self.assertTrue(membership.held)
        self.assertEqual(self.timers.next_delay(), RENEW_S)
        self.assertEqual(self.node().lease_expires_at_ms, WALL0 + LEASE_MS)

    def test_store_back_in_time(self) -> None:
        """
        A store back before the lease ran out renews the same epoch and
        arms the deadline from that tick.
        """
        membership = self.make()
        membership.start()
        failing = self.store_fails("renew")
        self.advance(RENEW_S)
        failing[0] = False
        self.advance(RENEW_S)
        self.assertEqual(self.deadline.arms(), [MONO0 + FENCE_S, MONO0 + 2 * RENEW_S + FENCE_S])
        self.assertEqual(membership.epoch, 1)
        self.assertEqual(self.fences, [])
        self.assertEqual(self.node().lease_expires_at_ms, WALL0 + 2000 + LEASE_MS)

    def test_store_back_too_late(self) -> None:
        """
        A store back after the lease ran out: the lease is lost, fenced,
        and taken again under epoch 2.
        """
        membership = self.make()
        membership.start()
        failing = self.store_fails("renew")
        self.advance(RENEW_S)
        self.advance(RENEW_S)
        # Said once per outage, not at every renewal.
        self.assertEqual(len(self.logged), 1)
        failing[0] = False
        self.advance(RENEW_S)
        self.assertEqual(self.fences, [(True, None)])
        self.assertEqual(membership.epoch, 2)
        self.assertTrue(membership.held)

    def test_closed_connection(self) -> None:
        """
        A connection that cannot be used at all is a store error like any
        other: logged, nothing fenced or armed, the next tick scheduled.
        """
        membership = self.make()
        membership.start()
        self.mconn.close()
        self.advance(RENEW_S)
        self.assertEqual(len(self.logged), 1)
        self.assertTrue(self.logged[0].startswith(f"cannot renew the lease of node {NODE}: "), self.logged)
        self.assertEqual(self.fences, [])
        self.assertEqual(len(self.deadline.arms()), 1)
        self.assertEqual(self.timers.next_delay(), RENEW_S)

    def test_start_while_the_store_is_away(self) -> None:
        """
        A start whose take the store refuses holds nothing and arms nothing;
        the next tick, with the store back, takes epoch 1.
        """
        failing = self.store_fails("take_lease", "unable to open database file")
        membership = self.make()
        membership.start()
        self.assertEqual(self.logged, [f"cannot renew the lease of node {NODE}: unable to open database file"])
        self.assertFalse(membership.held)
        self.assertEqual(self.deadline.calls, [])
        failing[0] = False
        self.advance(RENEW_S)
        self.assertEqual(membership.epoch, 1)
        self.assertTrue(membership.held)
        self.assertEqual(self.deadline.arms(), [MONO0 + RENEW_S + FENCE_S])

    def test_take_raises_after_the_fence(self) -> None:
        """
        A lease found lost is fenced even when the new take then fails:
        C{fenced} stays set until a later tick takes epoch 2.
        """
        membership = self.make()
        membership.start()
        nodes.mark_lost(self.conn, WALL0 + LEASE_MS + 1)
        failing = self.store_fails("take_lease")
        self.advance(RENEW_S)
        self.assertEqual(self.fences, [(True, None)])
        self.assertTrue(membership.fenced)
        self.assertFalse(membership.held)
        self.assertEqual(self.deadline.calls[-1], ("disarm",))
        failing[0] = False
        self.advance(RENEW_S)
        self.assertEqual(membership.epoch, 2)
        self.assertFalse(membership.fenced)
        self.assertEqual(len(self.fences), 1)


class LeaveTests(MembershipHarness):
    """
    L{Membership.leave}: the lease given up when the supervisor stops.
    """

    def test_leave(self) -> None:
        """
        Leaving cancels the renewals, disarms the deadline and marks the
        node C{left} as of now; no epoch is held any more.
        """
        membership = self.make()
        membership.start()
        self.advance(RENEW_S)
        membership.leave()
        self.assertIsNone(self.timers.next_delay())
        self.assertEqual(self.deadline.calls[-1], ("disarm",))
        node = self.node()
        self.assertEqual((node.state, node.lease_expires_at_ms), (NODE_LEFT, WALL0 + 1000))
        self.assertIsNone(membership.epoch)
        self.assertFalse(membership.held)
        calls = list(self.deadline.calls)
        self.advance(10 * RENEW_S)
        self.assertEqual(self.deadline.calls, calls)
        self.assertEqual(self.node().state, NODE_LEFT)

    def test_leave_without_a_lease(self) -> None:
        """
        Leaving with no lease held (another instance's id) writes nothing.
        """
        membership = self.make(instance=THEIRS)
        membership.start()
        membership.leave()
        self.assertIsNone(self.timers.next_delay())
        self.assertEqual(self.deadline.calls, [("disarm",)])
        self.assertEqual(self.node().state, NODE_ALIVE)

    def test_leave_before_start(self) -> None:
        """
        Leaving before starting disarms and writes nothing.
        """
        membership = self.make()
        membership.leave()
        self.assertEqual(self.deadline.calls, [("disarm",)])
        self.assertEqual(self.node().state, NODE_ALIVE)

    def test_leave_while_the_store_is_away(self) -> None:
        """
        A leave the store refuses is logged and lets the lease run out:
        the renewals stop, the epoch is dropped, the row stays C{alive}.
        """
        membership = self.make()
        membership.start()
        self.store_fails("leave", "disk I/O error")
        membership.leave()
        self.assertEqual(self.logged, [f"cannot leave as node {NODE}: disk I/O error"])
        self.assertIsNone(membership.epoch)
        self.assertIsNone(self.timers.next_delay())
        self.assertEqual(self.node().state, NODE_ALIVE)


class WatchdogTests(SynchronousTestCase):
    """
    L{Watchdog}: a deadline kept by a thread of its own, on an injected
    monotonic clock.
    """

    def setUp(self) -> None:
        self.now = [100.0]
        self.fired = threading.Event()
        self.fire_threads: List[str] = []
        self.watchdog = Watchdog(self.fire, monotonic=lambda: self.now[0])

    def fire(self) -> None:
        """
        Record which thread fired, and signal it.
        """
        self.fire_threads.append(threading.current_thread().name)
        self.fired.set()

    def test_past_deadline_fires(self) -> None:
        """
        A deadline armed in the past fires, once, from the watchdog's own
        thread.
        """
        self.watchdog.arm(50.0)
        self.assertTrue(self.fired.wait(THREAD_WAIT_S))
        self.assertEqual(self.fire_threads, ["execgo-lease-watchdog"])
        self.fired.clear()
        self.assertFalse(self.fired.wait(QUIET_WAIT_S))
        self.assertEqual(len(self.fire_threads), 1)

    def test_fires_when_the_clock_passes(self) -> None:
        """
        A deadline just ahead fires once the monotonic clock reaches it,
        not before.
        """
        self.watchdog.arm(100.05)
        self.assertFalse(self.fired.wait(QUIET_WAIT_S))
        self.now[0] = 100.05
        self.assertTrue(self.fired.wait(THREAD_WAIT_S))

    def test_disarm_prevents_firing(self) -> None:
        """
        A deadline disarmed before it passes never fires, even once the
        clock has gone past it.
        """
        self.watchdog.arm(100.05)
        self.watchdog.disarm()
        self.now[0] = 200.0
        self.assertFalse(self.fired.wait(QUIET_WAIT_S))
        self.assertEqual(self.fire_threads, [])

    def test_disarm_far_deadline(self) -> None:
        """
        A deadline far ahead, disarmed, does not fire.
        """
        self.watchdog.arm(1e6)
        self.watchdog.disarm()
        self.assertFalse(self.fired.wait(QUIET_WAIT_S))

    def test_rearm_later(self) -> None:
        """
        Arming again moves the deadline later: the first one passing fires
        nothing.
        """
        self.watchdog.arm(100.05)
        self.watchdog.arm(1000.0)
        self.now[0] = 200.0
        self.assertFalse(self.fired.wait(QUIET_WAIT_S))

    def test_rearm_earlier(self) -> None:
        """
        Arming again moves the deadline earlier too: a far deadline moved
        into the past fires at once.
        """
        self.watchdog.arm(1e6)
        self.assertFalse(self.fired.wait(QUIET_WAIT_S))
        self.watchdog.arm(99.0)
        self.assertTrue(self.fired.wait(THREAD_WAIT_S))

    def test_armed_again_after_firing(self) -> None:
        """
        A watchdog that fired can be armed again, and fires again.
        """
        self.watchdog.arm(50.0)
        self.assertTrue(self.fired.wait(THREAD_WAIT_S))
        self.fired.clear()
        self.watchdog.arm(60.0)
        self.assertTrue(self.fired.wait(THREAD_WAIT_S))
        self.assertEqual(len(self.fire_threads), 2)


class EngineMembershipTests(EngineHarness, SynchronousTestCase):
    """
    The engine's side: no claims without the lease, and every workload
    killed by a fence, ending C{failed}, C{internal}, C{node_lost}.
    """

    def setUp(self) -> None:
        self.make_engine()

    def hold_lease(self) -> Tuple[int, Membership]:
        """
        Join node L{NODE} now and let the engine hold its lease, as the
        daemon does (L{execgo.supervisor.daemon.hold_lease}): the wall
        time of the join and the membership, started.
        """
        wall_ms = int(self.now * 1000)
        nodes.join(self.conn, node_info(), LEASE_MS, wall_ms)
        membership = Membership(
            self.supervisor.conn,
            NodeLease(NODE, MINE, LEASE_MS),
            self.supervisor.clock,
            self.supervisor.wall_ms,
            self.supervisor.fence,
            self.logged.append,
            deadline=RecordingDeadline(),
        )
        self.supervisor.membership = membership
        self.supervisor.node_id = NODE
        membership.start()
        return wall_ms, membership

    def insert(self, task_id: str) -> None:
        """
        Insert an C{accepted} task without launching it.
        """
        task = new_task(self.data_dir, task_id, command("/bin/true"), make_dirs=True)
        transitions.insert_task(self.conn, task, int(self.now * 1000))

    def assert_node_lost(self, task_id: str) -> None:
        """
        The task ended C{failed}, C{internal}, L{outcome.NODE_LOST}.
        """
        record = self.load(task_id)
        self.assertEqual(record.status, "failed")
        self.assertEqual(record.error, ErrorInfo("internal", outcome.NODE_LOST))

    def test_launch_all_declined_without_the_lease(self) -> None:
        """
        With a membership whose lease is not held, every order is declined:
        each C{on_declined} given is called once, every answer is C{False},
        nothing is claimed or spawned.
        """
        self.supervisor.membership = NotHeld()  # type: ignore[assignment]
        self.insert("a")
        self.insert("b")
        declined: List[str] = []
        answers = self.supervisor.launch_all(
            [("a", lambda: declined.append("a")), ("b", None), ("c", lambda: declined.append("c"))]
        )
        self.assertEqual(answers, [False, False, False])
        self.assertEqual(declined, ["a", "c"])
        self.assertEqual(self.processes.workloads, {})
        self.assertEqual(self.supervisor.by_task, {})
        self.assertEqual((self.load("a").status, self.load("b").status), ("accepted", "accepted"))
        self.assertIsNone(self.supervisor.next_delay())

    def test_launch_declined_without_the_lease(self) -> None:
        """
        L{Supervisor.launch} answers C{False} and calls its C{on_declined}.
        """
        self.supervisor.membership = NotHeld()  # type: ignore[assignment]
        self.insert("a")
        declined: List[str] = []
        self.assertFalse(self.supervisor.launch("a", lambda: declined.append("a")))
        self.assertEqual(declined, ["a"])
        self.assertEqual(self.load("a").status, "accepted")

    def test_launch_with_the_lease(self) -> None:
        """
        With the lease held, orders are claimed and started as usual.
        """
        self.supervisor.membership = Held()  # type: ignore[assignment]
        self.insert("a")
        declined: List[str] = []
        self.assertEqual(self.supervisor.launch_all([("a", lambda: declined.append("a"))]), [True])
        self.assertEqual(declined, [])
        self.assertEqual(self.load("a").status, "running")
        self.assertIn("a", self.supervisor.by_task)

    def test_fence_kills_every_workload(self) -> None:
        """
        L{Supervisor.fence} marks every running workload C{fenced} and sends
        SIGKILL to it at once (no SIGTERM first, even to one that ignores
        it); once reaped, each ends C{failed}, C{internal}, C{node_lost},
        with the signal that killed it, and is reported.
        """
        self.processes.behaviour = {"ignores": {signal.SIGTERM}}
        a = self.launch("a")
        b = self.launch("b")
        self.advance(0.25)
        self.supervisor.fence()
        self.assertTrue(self.supervisor.by_task["a"].fenced)
        self.assertTrue(self.supervisor.by_task["b"].fenced)
        self.assertEqual(self.processes.sent(a), [signal.SIGKILL])
        self.assertEqual(self.processes.sent(b), [signal.SIGKILL])
        self.advance()
        for task_id in ("a", "b"):
            self.assert_node_lost(task_id)
            self.assertEqual(self.load(task_id).exit_signal, signal.SIGKILL)
        self.assertEqual(sorted(r.task_id for r in self.reports if isinstance(r, control.Finished)), ["a", "b"])
        self.assertFalse(self.supervisor.busy)

    def test_fence_overrides_a_kill(self) -> None:
        """
        A workload killed on request and fenced before it is reaped ends
        C{node_lost}, not C{cancelled}.
        """
        pid = self.launch("k")
        self.supervisor.kill("k")
        self.supervisor.fence()
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM, signal.SIGKILL])
        self.advance()
        self.assert_node_lost("k")

    def test_fence_spares_a_reaped_workload(self) -> None:
        """
        A workload reaped already (its group still draining) is not
        C{fenced}: it ends as it exited.
        """
        self.processes.behaviour = {"immortal": True}
        pid = self.launch("done")
        self.processes.exit(pid, 0, leftovers=1)
        self.advance()
        self.supervisor.fence()
        self.assertFalse(self.supervisor.by_task["done"].fenced)
        self.advance(reaping.GROUP_DRAIN_LIMIT_S)
        record = self.load("done")
        self.assertEqual((record.status, record.error), ("success", None))

    def test_fence_with_nothing_running(self) -> None:
        """
        A fence with no workload sends nothing.
        """
        self.supervisor.fence()
        self.assertEqual(self.processes.signals, [])

    def test_lost_lease_fences_the_engine(self) -> None:
        """
        A membership on the engine's clock and connection, fencing with
        L{Supervisor.fence}: a lease marked lost kills the running workload
        at the next renewal (it ends C{node_lost}), the node rejoins under
        epoch 2, and launches go on.
        """
        wall_ms, membership = self.hold_lease()
        pid = self.launch("a")
        nodes.mark_lost(self.conn, wall_ms + LEASE_MS + 1)
        self.advance(RENEW_S)
        self.assertEqual(self.processes.sent(pid), [signal.SIGKILL])
        self.advance()
        self.assert_node_lost("a")
        self.assertEqual(membership.epoch, 2)
        self.assertTrue(membership.held)
        self.launch("b")
        self.assertEqual(self.load("b").status, "running")

    def test_stale_lease_refuses_claims(self) -> None:
        """
        A lease the store holds lost before the next renewal noticed: the
        claim is refused in the store (nothing is claimed), the order is
        declined, and the node fences at once.
        """
        wall_ms, membership = self.hold_lease()
        pid = self.launch("a")
        nodes.mark_lost(self.conn, wall_ms + LEASE_MS + 1)
        self.assertTrue(membership.held)
        self.insert("b")
        declined: List[str] = []
        self.assertEqual(self.supervisor.launch_all([("b", lambda: declined.append("b"))]), [False])
        self.assertEqual(declined, ["b"])
        self.assertEqual(self.load("b").status, "accepted")
        self.assertEqual(self.processes.sent(pid), [signal.SIGKILL])
        self.assertFalse(membership.held)
        self.assertTrue(any(line.startswith("claims refused: ") for line in self.logged), self.logged)

    def test_taken_over_node_claims_nothing(self) -> None:
        """
        A lease lost to another instance of the same node id fences the
        engine, and its launch orders are declined from then on.
        """
        wall_ms, membership = self.hold_lease()
        pid = self.launch("a")
        nodes.mark_lost(self.conn, wall_ms + LEASE_MS + 1)
        nodes.join(self.conn, node_info(THEIRS), LEASE_MS, wall_ms + 1)
        self.advance(RENEW_S)
        self.assertEqual(self.processes.sent(pid), [signal.SIGKILL])
        self.advance()
        self.assert_node_lost("a")
        self.assertFalse(membership.held)
        self.insert("b")
        declined: List[str] = []
        self.assertFalse(self.supervisor.launch("b", lambda: declined.append("b")))
        self.assertEqual(declined, ["b"])
        self.assertEqual(self.load("b").status, "accepted")
