# -*- test-case-name: tests.test_scheduler -*-
"""
The dispatcher: moves queued tasks to the supervisor when the ledger has
room for them.

It keeps the queue and the ledger in memory, rebuilt from the store at
start, and runs a dispatch cycle whenever something may have freed or
needed capacity: a submit, a kill, a task's end (reported by the
supervisor), or the safety-net poll.  Cycles never overlap; a wake-up that
arrives during a cycle runs one more cycle after it.

A dispatch writes nothing: the dispatcher reserves the task in its ledger
and sends the launch order, and the supervisor moves the task from
C{accepted} to C{running} in the store itself, in the transaction that
takes it (L{execgo.store.transitions.claim}).  So a slot that frees is refilled
without waiting for the store, and the running state is written where the
process is started.  Until the supervisor reports the task's end, or
declines it because it is not C{accepted} any more, the dispatcher keeps
it as I{dispatched}; if the supervisor goes away first, the orders it did
not take go back to the queue.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Set, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from execgo.core.ledger import Ledger
from execgo.core.records import QueuedTask
from execgo.core.reservation import Reservation
from execgo.store.reads import SchedulerState

log = Logger()

#: How long a node leaves a task another node accepted to that node.
DEFERENCE_MS = 10


class DispatchStore(Protocol):
    """
    What the dispatcher needs of the store.
    """

    def scheduler_state(self, max_queued: int) -> "defer.Deferred[SchedulerState]": ...


class SupervisorOrders(Protocol):
    """
    What the dispatcher needs of the supervisor link
    (L{execgo.server.link.SupervisorLink}): the supervisor's pid, the task
    slots it keeps launch orders to, and a way to send it launch orders.
    """

    pid: Optional[int]
    slots: Optional[int]

    def launch(self, task_ids: Sequence[str]) -> bool: ...


def _queued(item: Any) -> QueuedTask:
    """
    A queue entry from the store's state: a L{QueuedTask} already, or a
    full record.
    """
    return item if isinstance(item, QueuedTask) else QueuedTask.from_record(item)


class Scheduler:
    """
    Queue plus ledger plus dispatch cycles.

    @param reactor: for the poll timer and deferred cycle starts.
    @param now_ms: wall clock in epoch milliseconds.
    @param labels: this node's labels: a task whose placement asks for
        others is left to the nodes that have them.
    @param node_id: this node: a task another node accepted is left to that
        node for its first C{deference_ms} (unless its placement names
        labels), so nodes do not all race to claim the same task.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        store: DispatchStore,
        link: SupervisorOrders,
        ledger: Ledger,
        max_queued: int,
        poll_interval_s: float,
        now_ms: Callable[[], int],
        starvation_ms: int = 1000,
        labels: Optional[Mapping[str, str]] = None,
        node_id: Optional[str] = None,
        deference_ms: int = DEFERENCE_MS,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.link = link
        self.ledger = ledger
        self.max_queued = max_queued
        self.poll_interval_s = poll_interval_s
        self.now_ms = now_ms
        self.starvation_ms = starvation_ms
        self.labels: Mapping[str, str] = dict(labels or {})
        self.node_id = node_id
        self.deference_ms = deference_ms
        self._deferred_wake: Optional[IDelayedCall] = None
        self.queue: "OrderedDict[str, QueuedTask]" = OrderedDict()
        self.dispatched: Dict[str, QueuedTask] = {}
        self._cycling: Optional[defer.Deferred[None]] = None
        self._wake_pending = False
        self._resync_pending = False
        self._released_during_resync: Optional[Set[str]] = None
        self._submitted_during_resync: Optional[Set[str]] = None
        self._poll: Optional[IDelayedCall] = None
        self._running = False

    # Input

    def load(self, state: SchedulerState) -> None:
        """
        Replace the queue and the ledger with what the store holds.
        """
        self.queue = OrderedDict(
            (entry.task_id, entry) for entry in map(_queued, state.queued)
        )
        self._load_ledger(state)

    def _load_ledger(self, state: SchedulerState) -> None:
        for task_id in list(self.ledger.active):
            self.ledger.release(task_id)
        for record in state.active:
            reservation = record.reservation or Reservation.for_limits(record.limits)
            self.ledger.reserve(record.task_id, record.tenant, reservation)
        for task_id in list(self.ledger.elsewhere):
            self.ledger.release_elsewhere(task_id)
        for task_id, tenant, reservation in state.elsewhere:
            self.ledger.hold_elsewhere(task_id, tenant, reservation)

    def submitted(self, task: QueuedTask) -> None:
        """
        A new task was persisted in C{accepted}.
        """
        self.queue[task.task_id] = task
        if self._submitted_during_resync is not None:
            self._submitted_during_resync.add(task.task_id)
        self.wake()

    def dequeued(self, task_id: str) -> None:
        """
        A queued task left the queue (cancelled).
        """
        self.queue.pop(task_id, None)
        self.released(task_id)

    def released(self, task_id: str) -> None:
        """
        A task's reservation was released (it ended, or the supervisor
        declined it because it was not C{accepted} any more): it is neither
        dispatched nor queued any more.
        """
        self.dispatched.pop(task_id, None)
        self.queue.pop(task_id, None)
        self.ledger.release(task_id)
        if self._released_during_resync is not None:
            self._released_during_resync.add(task_id)
        self.wake()

    # What the other nodes of a cluster did (L{execgo.store.notices})

    def learned(self, task: QueuedTask) -> None:
        """
        Another node accepted C{task}: queue it here too, unless this
        dispatcher knows it already (it may be claimed by the time it would
        be sent: the claim then declines it).
        """
        task_id = task.task_id
        if task_id in self.queue or task_id in self.dispatched or task_id in self.ledger.active:
            return
        self.submitted(task)

    def claimed_elsewhere(self, task_id: str, tenant: Optional[str], reservation: Reservation) -> None:
        """
        Another node claimed C{task_id}: it leaves this queue, and what it
        holds counts against its tenant's quota here too (quotas hold
        across the cluster).  An order this node sent for it is declined
        by its supervisor.
        """
        self.queue.pop(task_id, None)
        self.ledger.hold_elsewhere(task_id, tenant, reservation)

    def ended_elsewhere(self, task_id: str) -> None:
        """
        A task ended that another node ran (or that was cancelled while
        queued): what it held is free for its tenant again.
        """
        if task_id in self.dispatched or task_id in self.ledger.active:
            # Ours: its end comes from our supervisor.
            return
        self.queue.pop(task_id, None)
        self.ledger.release_elsewhere(task_id)
        self.wake()

    def supervisor_lost(self) -> None:
        """
        The supervisor went away: the orders it did not report on go back
        to the queue, in their places (one it did take is C{running} in the
        store, and the next launch order for it is declined).
        """
        returned = list(self.dispatched.values())
        self.dispatched.clear()
        for task in returned:
            self.ledger.release(task.task_id)
        self._merge_into_queue(returned)
        self.wake()

    def knows_unfinished(self, task_id: str) -> bool:
        """
        Whether the task is queued or holds a reservation here, so it is
        certainly stored and not terminal (an end is reported before its
        reservation leaves the ledger).
        """
        return task_id in self.queue or task_id in self.ledger.active

    def unfinished_tenant(self, task_id: str) -> Tuple[bool, Optional[str]]:
        """
        Whether the task is queued or holds a reservation here (as
        L{knows_unfinished}), and if so its tenant.
        """
        queued = self.queue.get(task_id)
        if queued is not None:
            return True, queued.tenant
        held = self.ledger.active.get(task_id)
        if held is not None:
            return True, held.tenant
        return False, None

    # Cycles

    def start(self) -> None:
        """
        Run a first cycle now and start the safety-net poll.
        """
        self._running = True
        self.wake()

    def stop(self) -> "defer.Deferred[None]":
        """
        Stop polling; the Deferred fires when no cycle runs any more.
        """
        self._running = False
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None
        if self._deferred_wake is not None and self._deferred_wake.active():
            self._deferred_wake.cancel()
        self._deferred_wake = None
        if self._cycling is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        self._cycling.addBoth(lambda _: done.callback(None))
        return done

    def resync(self) -> None:
        """
        Rebuild from the store in a cycle soon (as the safety-net poll
        does): changes may have happened unseen.
        """
        self._resync_pending = True
        self.wake()

    def wake(self) -> None:
        """
        Ask for a dispatch cycle soon (coalesced with one in progress).
        While every slot is taken a cycle could pick nothing, so none runs
        (a submission under load costs no cycle); the poll stays armed.
        """
        if not self._running:
            return
        if self.ledger.full and not self._resync_pending:
            return
        if self._cycling is not None:
            self._wake_pending = True
            return
        self._cycling = defer.ensureDeferred(self._cycle())
        self._cycling.addBoth(self._cycle_done)

    def _cycle_done(self, result: Any) -> None:
        if isinstance(result, defer.Failure):
            log.warn("dispatcher iteration failed", error=str(result.value))
        self._cycling = None
        if self._wake_pending:
            self._wake_pending = False
            self.wake()
        elif self._running:
            self._arm_poll()

    def _arm_poll(self) -> None:
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = self.reactor.callLater(self.poll_interval_s, self._on_poll)

    def _on_poll(self) -> None:
        self._poll = None
        self._resync_pending = True
        self.wake()

    async def _cycle(self) -> None:
        if self._resync_pending:
            self._resync_pending = False
            await self._resync()
        self.ledger.standby = self._standby()
        picks = self._pick()
        if not picks:
            return
        pid = self.link.pid
        sent = False
        try:
            sent = pid is not None and self.link.launch([task.task_id for task in picks])
        finally:
            if not sent:
                # The picks stay queued where they were; only their holds go.
                for task in picks:
                    self.ledger.release(task.task_id)
        if not sent:
            return
        for task in picks:
            del self.queue[task.task_id]
            self.dispatched[task.task_id] = task
            log.info("task dispatched", task_id=task.task_id, shim_pid=pid)

    def _standby(self) -> int:
        """
        How many launch orders beyond the free slots the supervisor may be
        sent: as many as the node has slots, when the connected supervisor
        keeps orders until a slot frees and holds to no more slots than
        this node has (L{execgo.supervisor.slots}); else none.
        """
        slots = self.link.slots
        capacity = self.ledger.capacity.task_slots
        return capacity if slots is not None and slots <= capacity else 0

    def _pick(self) -> List[QueuedTask]:
        """
        The queued tasks that fit now, oldest first (in a cluster, its own
        before the other nodes', L{_in_turn}).

        A task that does not fit lets younger, smaller ones pass (no
        head-of-line blocking) only while it is young: once it has waited
        C{starvation_ms}, nothing behind it may start in its place — no
        task at all if the runtime's capacity is what it lacks, no task of
        its tenant if its quota is — so the capacity it needs drains to it
        instead of to a stream of small tasks.
        """
        picks: List[QueuedTask] = []
        now = self.now_ms()
        held_tenants: Set[Optional[str]] = set()
        deferred_until: Optional[int] = None
        for task in self._in_turn():
            if self.ledger.full:
                break
            if task.task_id in self.ledger.active or task.tenant in held_tenants:
                continue
            if not task.fits_node(self.labels):
                # Another node's (or none yet: it waits for one).
                continue
            if self._defers_to_origin(task, now):
                until = task.created_at_ms + self.deference_ms
                deferred_until = until if deferred_until is None else min(deferred_until, until)
                continue
            if self.ledger.fits(task.reservation, task.tenant):
                self.ledger.reserve(task.task_id, task.tenant, task.reservation)
                picks.append(task)
                continue
            if now - task.created_at_ms < self.starvation_ms:
                continue
            if not self.ledger.fits_capacity(task.reservation):
                break
            held_tenants.add(task.tenant)
        if deferred_until is not None:
            self._wake_at(deferred_until, now)
        return picks

    def _in_turn(self) -> Iterator[QueuedTask]:
        """
        The queue in the order this node considers it: oldest first, but
        in a cluster the tasks it accepted itself (or that only some nodes
        may run) before those other nodes accepted, which their own nodes
        serve first: nodes that all took the oldest task of the cluster
        would mostly race each other for it.

        Lazily: L{_pick} stops at the first task that fills the ledger, so
        a cycle costs the tasks it looks at, not the whole queue (a
        thousand queued tasks made every cycle walk a thousand).  The
        queue must not change while this is consumed.
        """
        others = False
        for task in self.queue.values():
            if self.node_id is not None and self._origins_elsewhere(task):
                others = True
            else:
                yield task
        if others:
            for task in self.queue.values():
                if self._origins_elsewhere(task):
                    yield task

    def _origins_elsewhere(self, task: QueuedTask) -> bool:
        """
        Whether C{task} is another node's to serve first: that node
        accepted it, and any node may run it (no labels asked for).
        """
        return task.origin is not None and task.origin != self.node_id and not task.node_labels

    def _defers_to_origin(self, task: QueuedTask, now: int) -> bool:
        """
        Whether C{task} is still left to the node that accepted it.
        """
        return self._origins_elsewhere(task) and now - task.created_at_ms < self.deference_ms

    def _wake_at(self, when_ms: int, now: int) -> None:
        """
        Run a cycle at C{when_ms} (one pending at a time, the earliest).
        """
        if self._deferred_wake is not None and self._deferred_wake.active():
            if self._deferred_wake.getTime() <= self.reactor.seconds() + (when_ms - now) / 1000.0:
                return
            self._deferred_wake.cancel()
        self._deferred_wake = self.reactor.callLater(max(0, when_ms - now) / 1000.0, self.wake)

    async def _resync(self) -> None:
        """
        Rebuild the ledger from the store (the store is the truth: this
        catches ends the supervisor could not report).  Ends reported and
        submissions made while the query ran are applied again afterwards.
        """
        self._released_during_resync = set()
        self._submitted_during_resync = set()
        try:
            state = await self.store.scheduler_state(self.max_queued)
        finally:
            released, self._released_during_resync = self._released_during_resync, None
            submitted, self._submitted_during_resync = self._submitted_during_resync, None
        self._load_ledger(state)
        queued = [_queued(item) for item in state.queued]
        stored = {entry.task_id for entry in queued}
        for task in list(self.dispatched.values()):
            if task.task_id in self.ledger.active:
                continue
            if task.task_id in stored:
                # Sent and not taken yet: still held.
                self.ledger.reserve(task.task_id, task.tenant, task.reservation)
            else:
                # Ended (or gone) with no report to us: nothing to hold.
                del self.dispatched[task.task_id]
        for task_id in released:
            self.ledger.release(task_id)
        for task_id in [task_id for task_id in self.queue if task_id not in stored]:
            # Gone from the queue behind our back (e.g. a shim took it).
            if len(queued) < self.max_queued and task_id not in submitted:
                del self.queue[task_id]
        self._merge_into_queue(
            [
                entry
                for entry in queued
                if entry.task_id not in self.queue
                and entry.task_id not in self.ledger.active
                and entry.task_id not in released
            ]
        )

    def _merge_into_queue(self, tasks: Sequence[QueuedTask]) -> None:
        """
        Put C{tasks} into the queue in creation order.
        """
        if tasks:
            merged = sorted([*self.queue.values(), *tasks], key=lambda task: task.created_at_ms)
            self.queue = OrderedDict((task.task_id, task) for task in merged)
