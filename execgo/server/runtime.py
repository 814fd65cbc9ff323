# -*- test-case-name: tests.test_runtime,tests.test_api,tests.test_upkeep,tests.test_integration -*-
"""
The runtime's operations, independent of HTTP: submit, status, events,
kill, the runtime views, recovery, GC, and reactions to the supervisor.

L{Runtime} is built by L{execgo.server.service} from its parts (store, scheduler,
supervisor link, capability snapshot) and used by L{execgo.server.web.api}; it owns no
sockets and reads no global state.  It reads and kills tasks itself, and
builds, from what it is given, the parts with jobs of their own: the
way in for submissions (L{Intake}), its views of itself
(L{RuntimeViews}), the recovery of tasks whose supervisor is gone
(L{Recovery}) and the garbage collection (L{GarbageCollector}).

With authentication, the operations on one task take the request's
principal and begin with L{Runtime.require_visible}: a task of another
tenant is answered exactly like an unknown one.  Without authentication
the principal is C{None} and every task is visible.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Mapping, Optional, Union

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from execgo import control
from execgo.core import errors, render
from execgo.core.capabilities import Capabilities
from execgo.core.cluster import cluster_view
from execgo.core.config import RuntimeConfig
from execgo.core.constants import JSON, STATUS_RUNNING, TERMINAL_STATUSES
from execgo.core.records import QueuedTask
from execgo.core.reservation import Reservation
from execgo.host.cgroups import Cgroups
from execgo.host.privileges import TaskIdentity
from execgo.server import budget
from execgo.server.directkill import DirectKills
from execgo.server.gc import GarbageCollector
from execgo.server.intake import Intake
from execgo.server.link import SupervisorLink
from execgo.server.nodewatch import NodeWatch
from execgo.server.recovery import Recovery
from execgo.server.relay import Relay, RelayFailed, from_node
from execgo.server.scheduler import Scheduler
from execgo.server.snapshots import TerminalSnapshots
from execgo.server.taskstore import TaskStore
from execgo.server.upkeep import Upkeep
from execgo.server.views import RuntimeViews
from execgo.server.waiters import Waiters
from execgo.server.web.auth import Principal, visible
from execgo.server.web.responses import StreamingRequest
from execgo.server.web.streams import Streams
from execgo.store import listing, notices

log = Logger()

#: A relayed status answer may take this many times the preview ceiling
#: (two previews, JSON escapes), plus the rest of the snapshot.
RELAY_BODY_FACTOR = 4
RELAY_BODY_SLACK = 1 << 20


class Runtime:
    """
    Everything the API does, over injected parts.

    @param now_ms: wall clock, epoch milliseconds.
    @param started_at: the C{/runtime/info} start timestamp.
    @param cgroups: the per-task cgroup facility, to clean up after tasks
        whose supervisor is gone (C{None} when cgroups are off).
    @param identity: who tasks run as, to kill what is left of a lost
        task's uid and hand its files back.
    @param upkeep: the repairs after storage faults and the data
        directory's readiness probe (default: over C{store} and
        C{<data_dir>/tasks}).
    @param in_thread: runs a blocking call off the reactor thread
        (C{deferToThread}; a test runs it in place): the clean-up after
        lost tasks, the default C{upkeep}'s probe.

    @ivar accepting: whether the server serves (set by the service once
        recovery is done, cleared when it stops).
    @ivar direct_kills: kills running tasks while no supervisor is
        connected (L{DirectKills}).
    @ivar intake: takes submissions (L{Intake}).
    @ivar views: the runtime's views of itself (L{RuntimeViews}).
    @ivar recovery: recovers the tasks whose supervisor is gone
        (L{Recovery}).
    @ivar gc: collects expired tasks (L{GarbageCollector}).
    """

    def __init__(
        self,
        *,
        reactor: IReactorTime,
        config: RuntimeConfig,
        runtime_id: str,
        capabilities: Capabilities,
        quotas: Mapping[str, Reservation],
        store: TaskStore,
        scheduler: Scheduler,
        link: SupervisorLink,
        now_ms: Callable[[], int],
        started_at: str,
        version: str,
        cgroups: Optional[Cgroups] = None,
        identity: Optional[TaskIdentity] = None,
        upkeep: Optional[Upkeep] = None,
        in_thread: Callable[..., "defer.Deferred[Any]"] = deferToThread,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.runtime_id = runtime_id
        self.store = store
        self.scheduler = scheduler
        self.link = link
        self.now_ms = now_ms
        self.version = version
        if upkeep is None:
            tasks_dir = os.path.join(config.data_dir_abs, "tasks")
            upkeep = Upkeep(store, tasks_dir, now_ms, reactor, in_thread=in_thread)
        self.waiters = Waiters(reactor)
        self.finished = TerminalSnapshots()
        self.relay = Relay(reactor, RELAY_BODY_FACTOR * config.max_output_preview_bytes + RELAY_BODY_SLACK)
        # On SQLite the runtime is a cluster of one: every log is here.
        self.streams = Streams(store, self.waiters, self.relay if config.database.is_postgres else None)
        self.accepting = False
        self.direct_kills = DirectKills(reactor, config.termination_grace_ms / 1000.0)
        quotas = dict(quotas)
        self.intake = Intake(
            reactor=reactor,
            config=config,
            capabilities=capabilities,
            quotas=quotas,
            store=store,
            scheduler=scheduler,
            now_ms=now_ms,
        )
        self.views = RuntimeViews(
            runtime_id=runtime_id,
            version=version,
            started_at=started_at,
            capabilities=capabilities,
            config=config,
            quotas=quotas,
            store=store,
            scheduler=scheduler,
            link=link,
            upkeep=upkeep,
        )
        self.recovery = Recovery(
            reactor=reactor,
            store=store,
            scheduler=scheduler,
            link=link,
            waiters=self.waiters,
            upkeep=upkeep,
            now_ms=now_ms,
            max_queued=config.max_queued_tasks,
            accepting=lambda: self.accepting,
            cgroups=cgroups,
            identity=identity,
            in_thread=in_thread,
        )
        self.gc = GarbageCollector(
            reactor=reactor,
            store=store,
            upkeep=upkeep,
            finished=self.finished,
            now_ms=now_ms,
            interval_s=config.gc_interval_ms / 1000.0,
            retention_ms=config.result_retention_secs * 1000,
            accepting=lambda: self.accepting,
        )
        self.node_watch = NodeWatch(reactor, store, self.waiters, now_ms, lambda: self.accepting)

    async def submit(
        self, body: bytes, principal: Optional[Principal] = None, idempotency_key: Optional[str] = None
    ) -> JSON:
        """
        Take a submission (L{Intake.submit}).
        """
        return await self.intake.submit(body, principal, idempotency_key)

    async def submit_batch(self, body: bytes, principal: Optional[Principal] = None) -> List[Union[JSON, Failure]]:
        """
        Take a batch of submissions, each on its own (L{Intake.submit_batch}).
        """
        return await self.intake.submit_batch(body, principal)

    # Tenancy

    async def require_visible(self, task_id: str, principal: Optional[Principal]) -> None:
        """
        The tenancy check of every operation on one task, made before it
        reads or changes anything: L{errors.NotFound} for an unknown task
        and, with authentication, for a task C{principal} may not see
        (L{auth.visible}), so the two cannot be told apart.

        The task's tenant comes from memory when it is there (a kept
        terminal snapshot, the dispatcher's queue and reservations), else
        from the store.  A task's tenant never changes.
        """
        if principal is None or principal.admin:
            return
        kept = self.finished.kept(task_id)
        if kept is not None:
            known, tenant = True, kept.tenant
        else:
            known, tenant = self.scheduler.unfinished_tenant(task_id)
        if not known:
            known, tenant = await self.store.tenant_of(task_id)
        if not known or not visible(principal, tenant):
            raise errors.NotFound(task_id)

    # Reading

    async def status(
        self,
        task_id: str,
        wait_ms: int = 0,
        principal: Optional[Principal] = None,
        relay: Optional[Mapping[str, str]] = None,
    ) -> JSON:
        """
        The status snapshot; L{errors.NotFound} for an unknown id (or one
        C{principal} may not see).

        @param wait_ms: long-poll: when the task is not terminal, answer as
            soon as it is, or after this many milliseconds with its state
            then.
        @param relay: the caller's credentials, to ask the node that runs
            (or ran) the task for its output when it is another node
            (L{execgo.server.relay}); C{None}: answer from here alone.
        """
        await self.require_visible(task_id, principal)
        deadline = self.reactor.seconds() + wait_ms / 1000.0
        while True:
            kept = self.finished.get(task_id)
            if kept is not None:
                return kept
            remaining = deadline - self.reactor.seconds()
            watch = self.waiters.wait(task_id, remaining) if wait_ms > 0 and remaining > 0 else None
            try:
                if watch is not None and self.scheduler.knows_unfinished(task_id):
                    # Queued or running here: no need to read it before waiting,
                    # nor after when the end came with its terminal snapshot.
                    notice = await watch
                    if isinstance(notice, dict):
                        return notice
                else:
                    snapshot = await self._read_snapshot(task_id, relay)
                    if watch is None or snapshot["status"] in TERMINAL_STATUSES:
                        return snapshot
                    # Not sent: its previews (and their share of the preview
                    # budget) are not kept through the wait.
                    budget.release(snapshot)
                    del snapshot
                    notice = await watch
            finally:
                if watch is not None and not watch.called:
                    # Nobody awaits it any more: its CancelledError is expected.
                    watch.addErrback(lambda failure: failure.trap(defer.CancelledError))
                    watch.cancel()
            if not notice:
                # The wait is over: the state now.
                return await self._read_snapshot(task_id, relay)
            # Woken: the task may have ended, or only changed (a claim elsewhere,
            # a resync): look again, for the rest of the wait.

    async def _read_snapshot(self, task_id: str, relay: Optional[Mapping[str, str]] = None) -> JSON:
        """
        The snapshot from the store (kept when terminal);
        L{errors.NotFound} for an unknown id.  A task of another node has
        its output there: asked for it with C{relay} (L{_relayed}).
        """
        found = await self.store.snapshot(task_id, self.now_ms())
        if found is None:
            raise errors.NotFound(task_id)
        snapshot, tenant = found
        node_id = snapshot.get("node_id")
        if node_id is not None and not self._runs_here(node_id):
            return await self._relayed(snapshot, node_id, relay)
        if snapshot["status"] in TERMINAL_STATUSES:
            self.finished.put(task_id, snapshot, tenant)
        return snapshot

    async def _relayed(self, snapshot: JSON, node_id: str, relay: Optional[Mapping[str, str]]) -> JSON:
        """
        The snapshot of a task node C{node_id} runs (or ran) as that node
        gives it, output included; when it cannot be had, the store's
        (with empty previews) and C{output_unavailable}, saying why.
        """
        if relay is None:
            return {**snapshot, "output_unavailable": "a relayed request is answered from the store alone"}
        try:
            return await from_node(
                self.store, node_id, lambda address: self.relay.snapshot(address, snapshot["task_id"], relay)
            )
        except RelayFailed as e:
            return {**snapshot, "output_unavailable": str(e)}

    async def list_tasks(self, query: listing.ListQuery, principal: Optional[Principal] = None) -> JSON:
        """
        One page of the task listing, see L{listing.list_page}; with a
        principal that is not an admin, of its own tenant's tasks only
        (another C{tenant=} gives an empty page).
        """
        if principal is not None and not principal.admin:
            scoped = listing.within_tenant(query, principal.tenant)
            if scoped is None:
                return {"tasks": [], "next_cursor": None}
            query = scoped
        return await self.store.list_page(query, self.now_ms())

    async def events(self, task_id: str, after_seq: int = 0, principal: Optional[Principal] = None) -> List[JSON]:
        """
        The event log (the events after C{after_seq}); L{errors.NotFound}
        for an unknown id (or one C{principal} may not see).
        """
        await self.require_visible(task_id, principal)
        events = await self.store.events(task_id, after_seq)
        if events is None:
            raise errors.NotFound(task_id)
        return [render.render_event(event) for event in events]

    async def stream_log(
        self,
        request: StreamingRequest,
        task_id: str,
        name: str,
        offset: int,
        follow: bool,
        principal: Optional[Principal],
        relay: Optional[Mapping[str, str]] = None,
    ) -> bytes:
        """
        Serve a task's C{stdout} or C{stderr} (L{Streams.log}), once
        L{require_visible} has passed: nothing is sent before.  A task of
        another node: relayed from it with C{relay}, as for L{status}.
        """
        await self.require_visible(task_id, principal)
        return await self.streams.log(request, task_id, name, offset, follow, relay)

    async def stream_events(
        self, request: StreamingRequest, task_id: str, after_seq: int, principal: Optional[Principal]
    ) -> bytes:
        """
        Serve a task's events as NDJSON (L{Streams.events}), once
        L{require_visible} has passed: nothing is sent before.
        """
        await self.require_visible(task_id, principal)
        return await self.streams.events(request, task_id, after_seq)

    # Kill

    async def kill(
        self,
        task_id: str,
        owner: Optional[str],
        principal: Optional[Principal] = None,
        relay: Optional[Mapping[str, str]] = None,
    ) -> JSON:
        """
        Cancel a task: queued tasks end at once; running ones
        are signalled by their supervisor (or directly, if none is
        connected).  An admin's kill skips the owner check; a task
        C{principal} may not see is L{errors.NotFound}, before the owner
        check.  The answer for a task another node runs is that node's
        status (output included), asked with C{relay} as L{status} does.
        """
        await self.require_visible(task_id, principal)
        any_owner = principal is not None and principal.admin
        result = await self.store.kill(task_id, owner, self.now_ms(), any_owner)
        record = result.record
        if result.cancelled_queued:
            self.scheduler.dequeued(task_id)
            self.waiters.notify(task_id)
        elif result.flagged and record.status == STATUS_RUNNING and self._runs_here(record.node_id):
            if not self.link.kill(task_id) and record.pgid is not None:
                self.direct_kills.kill(task_id, record.pgid)
            self.scheduler.wake()
        # A task another node runs is signalled by that node: the kill's
        # notice (execgo.store.notices.KILLED) reaches it at the commit.
        if record.node_id is not None and not self._runs_here(record.node_id):
            return await self._relayed(result.snapshot, record.node_id, relay)
        return result.snapshot

    def _runs_here(self, node_id: Optional[str]) -> bool:
        """
        Whether a task claimed by C{node_id} is this node's to signal.
        """
        return node_id is None or node_id == self.runtime_id

    def on_notice(self, notice: notices.Notice) -> None:
        """
        What another node did, heard from the store
        (L{execgo.store.notices}): a submission to queue, a claim to drop
        from the queue and count against its tenant's quota, an end to
        wake long-polls and streams for, a kill to signal here.
        """
        data = notice.data or {}
        if data.get("origin") == self.runtime_id:
            return
        task_id = notice.task_id
        try:
            if notice.kind == notices.SUBMITTED and notice.data is None:
                # Too large to carry: the store has it.
                self.scheduler.resync()
            elif notice.kind == notices.SUBMITTED:
                self.scheduler.learned(QueuedTask.from_json(task_id, data))
            elif notice.kind == notices.CLAIMED and data.get("node") != self.runtime_id:
                reservation = Reservation.from_json(data.get("reservation") or {})
                self.scheduler.claimed_elsewhere(task_id, data.get("tenant"), reservation)
            elif notice.kind == notices.ENDED:
                self.scheduler.ended_elsewhere(task_id)
                self.waiters.notify(task_id)
            elif notice.kind == notices.KILLED and task_id in self.scheduler.ledger.active:
                self.link.kill(task_id)
        except (ValueError, TypeError, AttributeError) as e:
            log.warn("a cluster notice was malformed", notice=str(notice), error=str(e))

    def resync(self) -> None:
        """
        Look at the store again (the notices of a while may be lost): the
        dispatcher rebuilds itself, and every long-poll and stream reads
        its task again.
        """
        self.scheduler.resync()
        self.waiters.notify_all()

    # Runtime views

    def info(self) -> JSON:
        """
        The C{/api/v1/runtime/info} body.
        """
        return self.views.info()

    def capabilities_json(self) -> JSON:
        """
        The cached capability snapshot.
        """
        return self.views.capabilities_json()

    def config_json(self) -> JSON:
        """
        The non-secret effective configuration.
        """
        return self.views.config_json()

    async def resources(self) -> JSON:
        """
        The ledger view, computed from the store.
        """
        return await self.views.resources()

    async def cluster(self) -> JSON:
        """
        The C{/api/v1/runtime/cluster} body, from the store.
        """
        return cluster_view(await self.store.list_nodes())

    async def metrics(self) -> str:
        """
        The Prometheus exposition.
        """
        return await self.views.metrics()

    async def ready(self) -> None:
        """
        Whether the runtime is ready (L{RuntimeViews.ready}).

        @raise errors.Unavailable: naming what is wrong.
        """
        await self.views.ready()

    # Supervisor reports

    def on_supervisor_message(self, message: control.Report) -> None:
        """
        A task ended (its reservation is released in the store already;
        the report carries its terminal snapshot when that is small, which
        answers the long-polls waiting for it without a store read), or the
        supervisor declined a launch order because the task was not
        C{accepted} any more.
        """
        if isinstance(message, control.Declined):
            self.scheduler.released(message.task_id)
            # A long-poll that trusted it was here to be told of its end
            # (another node took it) looks again.
            self.waiters.notify(message.task_id)
        elif isinstance(message, control.Finished):
            task_id = message.task_id
            self.direct_kills.ended(task_id)
            # Its tenant, for the snapshot kept below, from its reservation
            # (a task unknown here is not kept: its next read is).
            known, tenant = self.scheduler.unfinished_tenant(task_id)
            self.scheduler.released(task_id)
            final = message.status
            if final is not None and known:
                self.finished.put(task_id, final, tenant)
            self.waiters.notify(task_id, final if final is not None else True)

    def on_supervisor_lost(self, pid: int) -> None:
        """
        The supervisor's connection closed: once it is gone, fail what it
        was running, then start a new one (L{Recovery.supervisor_lost}).
        """
        self.recovery.supervisor_lost(pid)

    # Recovery and GC

    async def recover(self) -> None:
        """
        Start-up recovery (L{Recovery.recover}).
        """
        await self.recovery.recover()

    def start_gc(self) -> None:
        """
        Run GC every C{gc_interval_ms}, first one interval from now, and
        the watch over the cluster's nodes (L{NodeWatch}).
        """
        self.gc.start()
        self.node_watch.start()

    async def collect_garbage(self) -> int:
        """
        One GC pass now (L{GarbageCollector.collect}): how many tasks were
        collected.
        """
        return await self.gc.collect()

    def stop_timers(self) -> None:
        """
        Cancel GC, direct-kill and supervisor-replacement timers; answer
        every long-poll now; cut every log and event stream short.
        """
        self.streams.close_all()
        self.waiters.cancel_all()
        self.gc.stop()
        self.node_watch.stop()
        self.direct_kills.stop()
        self.recovery.stop()
