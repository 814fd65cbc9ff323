# -*- test-case-name: tests.test_membership -*-
"""
The node's lease in the store, held by its supervisor.

The supervisor is the process that keeps the node's workloads and
outlives a restart of the server, so it is the one that says the node
lives: it takes the lease when it starts (L{nodes.take_lease}), renews it
every third of the lease (L{renew_interval_s}) and gives it up when it
stops with nothing running (L{Membership.leave}: the node is C{left}).

Fencing: a supervisor that cannot renew (the database is unreachable
from here) kills its workloads before its lease can run out, three
quarters of a lease after the last renewal that got through was sent, so
no workload of a node the others may already count as lost still runs.
That deadline is kept by a thread of its own (L{Watchdog}), so a loop
stuck waiting for a database that stopped answering cannot miss it.  A
lease found lost (marked C{lost}, or run out) is fenced at once, then a
new one is taken: the node rejoins under the next epoch.  Standard library
only.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Callable, Optional, Protocol

from execgo.core.cluster import NodeLease, renew_interval_s
from execgo.store import nodes
from execgo.store.backend import backend_of
from execgo.supervisor.timers import Timer, Timers

#: The part of a lease after the last renewal sent at which an unrenewed
#: lease is fenced.
FENCE_AT = 0.75


class Deadline(Protocol):
    """
    What fences the node when its lease is not renewed in time.
    """

    def arm(self, deadline: float) -> None:
        """
        Fire at C{deadline} (monotonic seconds) unless armed again first.
        """

    def disarm(self) -> None:
        """
        Do not fire.
        """


class NoDeadline:
    """
    The L{Deadline} of a store only this node uses (SQLite in its data
    directory): no other node can count it lost, so nothing is fenced.
    """

    def arm(self, deadline: float) -> None:
        pass

    def disarm(self) -> None:
        pass


class Watchdog:
    """
    A L{Deadline} kept by a daemon thread on the monotonic clock: it
    calls C{fire} (from that thread) once the deadline passes unmoved.
    C{fire} must be safe to call beside the supervisor's loop: it only
    sends signals.
    """

    def __init__(self, fire: Callable[[], None], monotonic: Callable[[], float] = time.monotonic) -> None:
        self.fire = fire
        self.monotonic = monotonic
        self._deadline: Optional[float] = None
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def arm(self, deadline: float) -> None:
        with self._changed:
            self._deadline = deadline
            self._changed.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="execgo-lease-watchdog", daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        with self._changed:
            self._deadline = None
            self._changed.notify()

    def _watch(self) -> None:
        while True:
            with self._changed:
                while self._deadline is None or self.monotonic() < self._deadline:
                    wait = None if self._deadline is None else self._deadline - self.monotonic()
                    self._changed.wait(wait)
                self._deadline = None
            self.fire()


class Membership:
    """
    Takes, renews and gives up one node's lease, and fences the node when
    it cannot.

    @param conn: the supervisor's store connection.
    @param lease: whose lease, and how long.
    @param clock: the engine's clock and timers.
    @param wall_ms: wall clock, epoch milliseconds (what the store holds).
    @param fence: kills every workload of the node now (also from the
        watchdog's thread: it must only send signals).
    @param log: takes each line worth an operator's attention.
    @param deadline: what fences the node when a renewal is late
        (L{Watchdog} by default).
    @param fencing: whether the node is fenced at all (C{False} on a store
        no other node shares: a lease then only says the node lives).

    @ivar epoch: the epoch of the lease held (C{None}: none held).
    @ivar fenced: the node's workloads were killed for a lease it could
        not keep, and no lease has been held since: it claims nothing.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        lease: NodeLease,
        clock: Timers,
        wall_ms: Callable[[], int],
        fence: Callable[[], None],
        log: Callable[[str], None] = lambda line: None,
        deadline: Optional[Deadline] = None,
        fencing: bool = True,
    ) -> None:
        self.conn = conn
        self.lease = lease
        self.clock = clock
        self.wall_ms = wall_ms
        self.fence = fence
        self.log = log
        self.epoch: Optional[int] = None
        self.fenced = False
        self._failing = False
        self._timer: Optional[Timer] = None
        late = f"lease of node {lease.node_id} not renewed in time: its workloads are killed"
        self.fencing = fencing
        if not fencing:
            deadline = NoDeadline()
        self.deadline: Deadline = (
            Watchdog(lambda: self._fence(late), clock.monotonic) if deadline is None else deadline
        )

    @property
    def held(self) -> bool:
        """
        Whether the node may claim tasks: a lease is held and not fenced.
        """
        return self.epoch is not None and not self.fenced

    def start(self) -> None:
        """
        Take the lease now and keep renewing it.
        """
        self.tick()

    def tick(self) -> None:
        """
        One renewal (or, with no lease held, one attempt to take one),
        then the next one scheduled; a lease that cannot be kept is
        fenced.
        """
        sent = self.clock.monotonic()
        self._timer = self.clock.call_later(renew_interval_s(self.lease.lease_ms), self.tick)
        try:
            kept = self._renew_or_take()
        except backend_of(self.conn).Error as e:
            if not self._failing:
                # Said once per outage: it is tried again every renewal.
                self.log(f"cannot renew the lease of node {self.lease.node_id}: {e}")
            self._failing = True
            kept = False
        if kept:
            if self._failing:
                self.log(f"the lease of node {self.lease.node_id} is renewed again")
            self._failing = False
            self.deadline.arm(sent + FENCE_AT * self.lease.lease_ms / 1000.0)
            self.fenced = False

    def _renew_or_take(self) -> bool:
        lease = self.lease
        if self.epoch is not None:
            if nodes.renew(self.conn, lease.node_id, self.epoch, lease.lease_ms, self.wall_ms()):
                return True
            self.epoch = None
            self.deadline.disarm()
            self._fence(f"lease of node {lease.node_id} lost: its workloads are killed; joining again")
        self.epoch = nodes.take_lease(self.conn, lease.node_id, lease.instance, lease.lease_ms, self.wall_ms())
        if self.epoch is None:
            self.log(f"node id {lease.node_id} is not this data directory's: no lease taken")
            return False
        return True

    def lost(self) -> None:
        """
        The store refused a write under the lease held (it ran out, or was
        marked C{lost}): fence now; the next renewal takes a new one.
        """
        if self.epoch is None:
            return
        self.epoch = None
        self.deadline.disarm()
        self._fence(f"lease of node {self.lease.node_id} found stale: its workloads are killed; joining again")

    def _fence(self, why: str) -> None:
        if not self.fencing:
            return
        self.log(why)
        self.fenced = True
        self.fence()

    def leave(self) -> None:
        """
        Stop renewing and give the lease up (the node is C{left}); a store
        that cannot be reached now lets the lease run out instead.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.deadline.disarm()
        if self.epoch is None:
            return
        try:
            nodes.leave(self.conn, self.lease.node_id, self.epoch, self.wall_ms())
        except backend_of(self.conn).Error as e:
            self.log(f"cannot leave as node {self.lease.node_id}: {e}")
        self.epoch = None
