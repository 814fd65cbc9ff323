# -*- test-case-name: tests.test_api,tests.test_upkeep,tests.test_integration -*-
"""
The runtime's operations, independent of HTTP: submit, status, events,
kill, the runtime views, recovery, and reactions to the supervisor.

L{Runtime} is built by L{execgo.server.service} from its parts (store, scheduler,
supervisor link, capability snapshot) and used by L{execgo.server.web.api}; it owns no
sockets and reads no global state.

With authentication, the operations on one task take the request's
principal and begin with L{Runtime.require_visible}: a task of another
tenant is answered exactly like an unknown one.  Without authentication
the principal is C{None} and every task is visible.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Callable, Dict, List, Mapping, Optional

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from execgo import control
from execgo.core import errors, outcome, records, recovery, render, rootfs, submission, timestamps, validation
from execgo.core.capabilities import Capabilities
from execgo.core.config import RuntimeConfig
from execgo.core.ledger import check_admission
from execgo.core.models import (
    STATUS_RUNNING,
    TERMINAL_STATUSES,
    ControlContext,
    Reservation,
    SubmitRequest,
)
from execgo.core.policy import resolve_plan
from execgo.core.resourceview import ActiveReservation, render_resources
from execgo.host import escalation, privileges
from execgo.host.cgroups import Cgroups
from execgo.host.privileges import TaskIdentity
from execgo.host.procinfo import is_supervisor
from execgo.server import budget, metrics
from execgo.server.link import SupervisorLink
from execgo.server.scheduler import QueuedTask, Scheduler
from execgo.server.snapshots import TerminalSnapshots
from execgo.server.taskstore import TaskStore
from execgo.server.upkeep import Upkeep
from execgo.server.waiters import Waiters
from execgo.server.web.auth import Principal, visible
from execgo.server.web.responses import StreamingRequest
from execgo.server.web.streams import Streams
from execgo.store import idempotency, listing, taskfiles

log = Logger()

JSON = Dict[str, Any]
GC_BATCH = 256


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
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.runtime_id = runtime_id
        self.capabilities = capabilities
        self.quotas = dict(quotas)
        self.store = store
        self.scheduler = scheduler
        self.link = link
        self.now_ms = now_ms
        self.started_at = started_at
        self.version = version
        self.cgroups = cgroups
        self.identity = identity
        if upkeep is None:
            upkeep = Upkeep(store, os.path.join(config.data_dir_abs, "tasks"), now_ms, reactor)
        self.upkeep = upkeep
        self.waiters = Waiters(reactor)
        self.finished = TerminalSnapshots()
        self.streams = Streams(store, self.waiters)
        self.accepting = False
        self._gc_call: Any = None
        self._kill_timers: Dict[str, Any] = {}

    # Submit

    async def submit(
        self, body: bytes, principal: Optional[Principal] = None, idempotency_key: Optional[str] = None
    ) -> JSON:
        """
        Decode, validate, plan, admit and persist a submission; wake the
        dispatcher.  Checks run in this order: decoding and validation,
        the plan (in strict mode), capacity and the tenant's quota, then,
        in the store, a stored idempotency key, the queue bound, the
        output bounds and the duplicate id.

        @param principal: with authentication on, the token's tenant and
            owner, which replace what the body claims.
        @param idempotency_key: a validated C{Idempotency-Key}: a retry
            (same key, same normalised request) gets the stored task's
            answer and creates nothing; the same key with another request
            is L{errors.Conflict}.
        """
        request = submission.parse_submit(body)
        rootfs.check_rootfs(request.sandbox, self.config.rootfs_roots_abs)
        if principal is not None:
            request = _as_principal(request, principal)
        digest = None if idempotency_key is None else idempotency.request_hash(request.to_json())
        scope = records.OPEN_SCOPE if principal is None else records.tenant_scope(principal.tenant)
        plan = resolve_plan(request, self.capabilities, self.config.default_capability_mode)
        reservation = Reservation.for_limits(request.limits)
        check_admission(reservation, self.capabilities.capacity, self.quotas, request.tenant)
        task_id = request.task_id if request.task_id is not None else str(uuid.uuid4())
        task = records.NewTask(
            task_id=task_id,
            execution=request.execution,
            limits=request.limits,
            sandbox=request.sandbox,
            metadata=dict(request.metadata),
            plan=plan,
            control_context=request.control_context,
            paths=taskfiles.task_paths(
                self.config.data_dir_abs, task_id, request.execution, request.sandbox.workspace_subdir
            ),
            idempotency_key=idempotency_key,
            idempotency_hash=digest,
            idempotency_scope=scope,
        )
        now = self.now_ms()
        try:
            await self.store.submit(
                task,
                request,
                self.config.max_queued_tasks,
                lambda: _check_output(request, self.config.max_output_preview_bytes),
                now,
            )
        except idempotency.Replay as replay:
            return {"task_id": replay.task_id, "handle_id": replay.task_id, "status": "accepted"}
        except errors.Conflict as conflict:
            if idempotency_key is None or isinstance(conflict, idempotency.KeyReused):
                raise
            replayed = await self._settle_conflict(idempotency_key, digest, task_id, scope)
            return {"task_id": replayed, "handle_id": replayed, "status": "accepted"}
        self.scheduler.submitted(
            QueuedTask(task_id=task_id, tenant=request.tenant, reservation=reservation, created_at_ms=now)
        )
        return {"task_id": task_id, "handle_id": task_id, "status": "accepted"}

    async def _settle_conflict(
        self, key: str, digest: Optional[str], task_id: str, scope: records.Scope
    ) -> str:
        """
        A keyed submission found its task id taken (by a concurrent first
        submission with the same key and id that has not committed yet, or
        by another task): wait, bounded, for the winner's row.

        @return: the id to answer a retry with.
        @raise errors.Conflict: the id belongs to another task.
        """
        for _ in range(100):
            try:
                taken = await self.store.settle_conflict(key, digest, task_id, scope)
            except idempotency.Replay as replay:
                return replay.task_id
            if taken:
                break
            await _sleep(self.reactor, 0.01)
        raise errors.Conflict(f"task already exists: {task_id}")

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

    async def status(self, task_id: str, wait_ms: int = 0, principal: Optional[Principal] = None) -> JSON:
        """
        The status snapshot; L{errors.NotFound} for an unknown id (or one
        C{principal} may not see).

        @param wait_ms: long-poll: when the task is not terminal, answer as
            soon as it is, or after this many milliseconds with its state
            then.
        """
        await self.require_visible(task_id, principal)
        kept = self.finished.get(task_id)
        if kept is not None:
            return kept
        watch = self.waiters.wait(task_id, wait_ms / 1000.0) if wait_ms > 0 else None
        try:
            if watch is not None and self.scheduler.knows_unfinished(task_id):
                # Queued or running here: no need to read it before waiting,
                # nor after when the end came with its terminal snapshot.
                notice = await watch
                if isinstance(notice, dict):
                    return notice
            else:
                snapshot = await self._read_snapshot(task_id)
                if watch is None or snapshot["status"] in TERMINAL_STATUSES:
                    return snapshot
                # Not sent: its previews (and their share of the preview
                # budget) are not kept through the wait.
                budget.release(snapshot)
                del snapshot
                await watch
        finally:
            if watch is not None and not watch.called:
                # Nobody awaits it any more: its CancelledError is expected.
                watch.addErrback(lambda failure: failure.trap(defer.CancelledError))
                watch.cancel()
        return await self._read_snapshot(task_id)

    async def _read_snapshot(self, task_id: str) -> JSON:
        """
        The snapshot from the store (kept when terminal);
        L{errors.NotFound} for an unknown id.
        """
        found = await self.store.snapshot(task_id, self.now_ms())
        if found is None:
            raise errors.NotFound(task_id)
        snapshot, tenant = found
        if snapshot["status"] in TERMINAL_STATUSES:
            self.finished.put(task_id, snapshot, tenant)
        return snapshot

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
    ) -> bytes:
        """
        Serve a task's C{stdout} or C{stderr} (L{Streams.log}), once
        L{require_visible} has passed: nothing is sent before.
        """
        await self.require_visible(task_id, principal)
        return await self.streams.log(request, task_id, name, offset, follow)

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

    async def kill(self, task_id: str, owner: Optional[str], principal: Optional[Principal] = None) -> JSON:
        """
        Cancel a task: queued tasks end at once; running ones
        are signalled by their supervisor (or directly, if none is
        connected).  An admin's kill skips the owner check; a task
        C{principal} may not see is L{errors.NotFound}, before the owner
        check.
        """
        await self.require_visible(task_id, principal)
        any_owner = principal is not None and principal.admin
        result = await self.store.kill(task_id, owner, self.now_ms(), any_owner)
        record = result.record
        if result.cancelled_queued:
            self.scheduler.dequeued(task_id)
            self.waiters.notify(task_id)
        elif result.flagged and record.status == STATUS_RUNNING:
            if not self.link.kill(task_id) and record.pgid is not None:
                self._signal_directly(task_id, record.pgid)
            self.scheduler.wake()
        return result.snapshot

    def _signal_directly(self, task_id: str, pgid: int) -> None:
        """
        Kill a running task by escalation (L{escalation.terminate}) from
        here, while no supervisor is connected to do it.
        """
        self._kill_timers[task_id] = escalation.terminate(
            escalation.group_signaller(pgid),
            self.config.termination_grace_ms / 1000.0,
            lambda delay, kill: self.reactor.callLater(delay, self._kill_later, task_id, kill),
            self._kill_timers.get(task_id),
        )

    def _kill_later(self, task_id: str, kill: Callable[[], None]) -> None:
        """
        The grace period of a direct kill is over: forget its timer and
        take the last step.
        """
        self._kill_timers.pop(task_id, None)
        kill()

    # Runtime views

    def info(self) -> JSON:
        """
        The C{/api/v1/runtime/info} body.
        """
        return {
            "runtime_id": self.runtime_id,
            "version": self.version,
            "started_at": self.started_at,
            "snapshot_version": "v1",
            "platform": self.capabilities.to_json()["platform"],
        }

    def capabilities_json(self) -> JSON:
        """
        The cached capability snapshot.
        """
        return self.capabilities.to_json()

    def config_json(self) -> JSON:
        """
        The non-secret effective configuration.
        """
        return self.config.to_json(self.runtime_id)

    async def resources(self) -> JSON:
        """
        The ledger view, computed from the store.
        """
        active, waiting = await self.store.resources()
        return render_resources(
            self.runtime_id,
            self.capabilities.capacity,
            self.quotas,
            [
                ActiveReservation(
                    task_id=record.task_id,
                    status=record.status,
                    tenant=record.tenant,
                    reservation=record.reservation or Reservation.for_limits(record.limits),
                    reserved_at=None
                    if record.reserved_at_ms is None
                    else timestamps.format_ms(record.reserved_at_ms),
                )
                for record in active
            ],
            waiting,
        )

    async def metrics(self) -> str:
        """
        The Prometheus exposition.
        """
        snapshot = await self.store.metrics()
        ledger = self.scheduler.ledger
        capacity, reserved = ledger.capacity, ledger.reserved
        view = [("task_slots", reserved.task_slots, capacity.task_slots)]
        if capacity.memory_bytes is not None:
            view.append(("memory_bytes", reserved.memory_bytes or 0, capacity.memory_bytes))
        if capacity.pids is not None:
            view.append(("pids", reserved.pids or 0, capacity.pids))
        return metrics.render(snapshot, view)

    async def ready(self) -> None:
        """
        Check the supervisor answers and the data directory can be written
        (full, read only or not permitted: not ready), and re-run the
        (idempotent) storage initialisation.

        @raise errors.Unavailable: naming what is wrong.
        """
        reason = self.link.health()
        if reason is not None:
            raise errors.Unavailable(reason)
        await self.upkeep.check_writable()
        await self.store.init_schema()

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
        elif isinstance(message, control.Finished):
            task_id = message.task_id
            timer = self._kill_timers.pop(task_id, None)
            if timer is not None and timer.active():
                timer.cancel()
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
        was running, then start a new one.
        """
        log.warn("lost the supervisor {pid}", pid=pid)
        self.scheduler.supervisor_lost()
        defer.ensureDeferred(self._replace_supervisor(pid)).addErrback(
            lambda failure: log.failure("replacing the supervisor failed", failure)
        )

    async def _replace_supervisor(self, pid: int) -> None:
        for _ in range(200):
            if not is_supervisor(pid):
                break
            await _sleep(self.reactor, 0.01)
        await self.fail_orphans(f"supervisor {pid} exited unexpectedly")
        if self.accepting:
            await self.link.ensure()
            self.scheduler.wake()

    # Recovery and GC

    async def recover(self) -> None:
        """
        Start-up recovery: apply L{recovery.plan_recovery} to every
        non-terminal task, then rebuild the dispatcher from the store;
        then write the C{result.json} files a storage fault left out
        (L{Upkeep.at_start}).
        """
        unfinished = await self.store.by_status(("accepted", "running"))
        for action in recovery.plan_recovery(unfinished, is_supervisor):
            now = self.now_ms()
            if action.kind == recovery.RELEASE_ORPHAN:
                await self.store.release_orphan_reservation(action.task_id, now)
            elif action.kind == recovery.RECOVERED:
                await self.store.mark_recovered(action.task_id, action.reservation, now)
            else:
                await self._fail_lost(action, "recovery_lost")
        self.scheduler.load(await self.store.scheduler_state(self.config.max_queued_tasks))
        await self.upkeep.at_start()

    async def fail_orphans(self, message: str) -> None:
        """
        While serving: fail every running task whose supervisor is gone.
        """
        running = await self.store.by_status(("running",))
        for action in recovery.plan_recovery(running, is_supervisor):
            if action.kind == recovery.LOST:
                await self._fail_lost(action, message)
                self.scheduler.released(action.task_id)

    async def _fail_lost(self, action: recovery.RecoveryAction, message: str) -> None:
        if action.kill_pgid is not None:
            escalation.kill_now(escalation.group_signaller(action.kill_pgid))
        if self.cgroups is not None:
            await deferToThread(self.cgroups.discard, action.task_id)
        if action.record is not None:
            await deferToThread(self._bury, action.record)
        await self.store.finish(
            action.task_id, outcome.failed("internal", message), self.now_ms(), (STATUS_RUNNING,)
        )
        self.waiters.notify(action.task_id)

    def _bury(self, record: records.TaskRecord) -> None:
        """
        What is left of a lost task before its end frees its uid: every
        process of that uid killed, its files handed back (blocking: run
        in a thread).
        """
        try:
            privileges.hand_back(
                self.identity, record.run_as, record.paths.task_dir, record.paths.script_path, emptied=False
            )
        except OSError as e:
            log.warn("cannot hand back the files of {task_id}", task_id=record.task_id, error=str(e))

    def start_gc(self) -> None:
        """
        Run GC every C{gc_interval_ms}, first one interval from now.
        """
        self._gc_call = self.reactor.callLater(self.config.gc_interval_ms / 1000.0, self._gc_tick)

    def _gc_tick(self) -> None:
        self._gc_call = None
        d = defer.ensureDeferred(self.collect_garbage())
        d.addErrback(lambda failure: log.warn("gc failed", error=str(failure.value)))
        d.addBoth(lambda _: self.start_gc() if self.accepting else None)

    async def collect_garbage(self) -> int:
        """
        Delete terminal tasks older than the retention period, after the
        repairs of L{Upkeep.run_pass} (missing C{result.json} files, task
        directories without a row).

        @return: how many tasks were collected.
        """
        await self.upkeep.run_pass()
        retention_ms = self.config.result_retention_secs * 1000
        now = self.now_ms()
        cutoff = now - retention_ms if retention_ms <= now else now
        collected, failures = await self.store.gc(cutoff, GC_BATCH)
        self.finished.discard_all(collected)
        for task_id, error in failures:
            log.warn("gc could not remove a task directory", task_id=task_id, error=error)
        return len(collected)

    def stop_timers(self) -> None:
        """
        Cancel GC and direct-kill timers; answer every long-poll now; cut
        every log and event stream short.
        """
        self.streams.close_all()
        self.waiters.cancel_all()
        if self._gc_call is not None and self._gc_call.active():
            self._gc_call.cancel()
        self._gc_call = None
        for timer in self._kill_timers.values():
            if timer.active():
                timer.cancel()
        self._kill_timers.clear()


def _as_principal(request: SubmitRequest, principal: Principal) -> SubmitRequest:
    """
    The request with the token's tenant and owner in its control context.
    """
    context = request.control_context or ControlContext()
    context = attrs.evolve(context, tenant=principal.tenant, owner=principal.owner)
    return attrs.evolve(request, control_context=context)


def _check_output(request: SubmitRequest, ceiling: int) -> None:
    """
    The late checks of the output limits: the contract's 2^63-1 bound,
    then the server's preview ceiling (C{--max-output-preview-bytes}).
    """
    validation.check_output_limits(request)
    validation.check_output_ceiling(request, ceiling)


def _sleep(reactor: IReactorTime, seconds: float) -> "defer.Deferred[None]":
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
