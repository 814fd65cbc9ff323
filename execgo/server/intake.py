# -*- test-case-name: tests.test_runtime,tests.test_api,tests.test_idempotency -*-
"""
The way in for a task (L{Intake}): a submission decoded, validated,
planned, admitted and persisted, then handed to the dispatcher; a keyed
retry answered with the task it created before; a batch of submissions
taken the same way, each on its own, in one request.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union

import attrs
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from execgo.core import errors, records, rootfs, submission, validation
from execgo.core.capabilities import Capabilities
from execgo.core.cluster import NODE_ALIVE, labels_match
from execgo.core.config import RuntimeConfig
from execgo.core.constants import JSON, MODE_STRICT
from execgo.core.ledger import check_admission
from execgo.core.models import ControlContext, SubmitRequest
from execgo.core.policy import resolve_plan
from execgo.core.reservation import Reservation
from execgo.server.scheduler import QueuedTask, Scheduler
from execgo.server.taskstore import TaskStore
from execgo.server.web.auth import Principal
from execgo.store import idempotency, taskfiles

_T = TypeVar("_T")

#: How often, and how many times, a keyed retry that found its task id
#: taken looks again for the first submission's row.
SETTLE_POLL_S = 0.01
SETTLE_POLLS = 100


class Intake:
    """
    Takes submissions.

    @param reactor: paces the wait of a keyed retry for its first
        submission.
    @param config: the server's settings (the data directory, the rootfs
        roots, the capability mode, the queue and preview bounds).
    @param capabilities: the host's capability snapshot (plans, capacity).
    @param quotas: the tenants' quotas.
    @param store: the task store.
    @param scheduler: the dispatcher, handed each new task.
    @param now_ms: wall clock, epoch milliseconds.
    """

    def __init__(
        self,
        *,
        reactor: IReactorTime,
        config: RuntimeConfig,
        capabilities: Capabilities,
        quotas: Mapping[str, Reservation],
        store: TaskStore,
        scheduler: Scheduler,
        now_ms: Callable[[], int],
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.capabilities = capabilities
        self.quotas = quotas
        self.store = store
        self.scheduler = scheduler
        self.now_ms = now_ms

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
        admitted = await self._admit(submission.parse_submit(body), principal, idempotency_key)
        task_id, queued = await self._persist(admitted, self.now_ms())
        if queued is not None:
            self.scheduler.submitted(queued)
        return _accepted(task_id)

    async def submit_batch(self, body: bytes, principal: Optional[Principal] = None) -> List[Union[JSON, Failure]]:
        """
        Take a batch: each item goes through the checks of L{submit}, as a
        body of its own without an idempotency key, and is answered or
        refused on its own.  The items are admitted together, then handed
        to the store together and in their order, so its writer commits
        them in few transactions (L{execgo.server.batching}) and stores
        them in that order, with one creation time; the dispatcher then
        gets the new tasks in the same order.

        @param principal: as for L{submit}, for every item.
        @return: per item, in order, what L{submit} would have returned for
            it, or the failure it would have raised.
        @raise errors.InvalidInput: the body as a whole is refused
            (L{submission.parse_batch}); nothing is stored.
        """
        items = submission.parse_batch(body)
        admitted = await _settled(Deferred.fromCoroutine(self._admit_item(item, principal)) for item in items)
        now = self.now_ms()
        # Each _persist hands its item to the store before its first await:
        # the items reach the writer in their order.
        persisted = await _settled(
            fail(outcome) if isinstance(outcome, Failure) else Deferred.fromCoroutine(self._persist(outcome, now))
            for outcome in admitted
        )
        answers: List[Union[JSON, Failure]] = []
        for outcome in persisted:
            if isinstance(outcome, Failure):
                answers.append(outcome)
                continue
            task_id, queued = outcome
            if queued is not None:
                self.scheduler.submitted(queued)
            answers.append(_accepted(task_id))
        return answers

    async def _admit_item(self, item: Any, principal: Optional[Principal]) -> _Admitted:
        """
        One item of a batch decoded, validated (L{submission.check_submit})
        and admitted.
        """
        return await self._admit(submission.check_submit(item), principal, None)

    async def _admit(
        self, request: SubmitRequest, principal: Optional[Principal], idempotency_key: Optional[str]
    ) -> _Admitted:
        """
        The checks of a validated submission made before the store: the
        chroot roots, the plan, capacity and the tenant's quota, and
        under C{strict} the placement; the task it would create.
        """
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
            node_labels=dict(request.node_labels),
        )
        if request.node_labels and plan.capability_mode == MODE_STRICT:
            await self._check_placement(request.node_labels)
        return _Admitted(request, task, reservation)

    async def _persist(self, admitted: _Admitted, now: int) -> Tuple[str, Optional[QueuedTask]]:
        """
        Persist an admitted submission, created at C{now}.

        @return: the id to answer with, and the dispatcher's entry of the
            task it created (C{None}: a keyed retry created nothing).
        """
        request, task = admitted.request, admitted.task
        try:
            await self.store.submit(
                task,
                request,
                self.config.max_queued_tasks,
                lambda: _check_output(request, self.config.max_output_preview_bytes),
                now,
            )
        except idempotency.Replay as replay:
            return replay.task_id, None
        except errors.Conflict as conflict:
            key = task.idempotency_key
            if key is None or isinstance(conflict, idempotency.KeyReused):
                raise
            scope = task.idempotency_scope
            return await self._settle_conflict(key, task.idempotency_hash, task.task_id, scope), None
        queued = QueuedTask(
            task_id=task.task_id,
            tenant=request.tenant,
            reservation=admitted.reservation,
            created_at_ms=now,
            node_labels=dict(request.node_labels),
        )
        return task.task_id, queued

    async def _check_placement(self, wanted: Mapping[str, str]) -> None:
        """
        Under C{strict}: a task whose placement no live node of the cluster
        matches could never start (under C{adaptive} it waits for one).

        @raise errors.InvalidInput: naming the labels.
        """
        for node in await self.store.list_nodes():
            if node.state == NODE_ALIVE and labels_match(wanted, node.labels):
                return
        shown = ", ".join(f"{key}={value}" for key, value in sorted(wanted.items()))
        raise errors.InvalidInput(f"placement.node_labels: no live node has the labels {shown} (strict mode)")

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
        for _ in range(SETTLE_POLLS):
            try:
                taken = await self.store.settle_conflict(key, digest, task_id, scope)
            except idempotency.Replay as replay:
                return replay.task_id
            if taken:
                break
            await deferLater(self.reactor, SETTLE_POLL_S, lambda: None)
        raise errors.Conflict(f"task already exists: {task_id}")


@attrs.frozen
class _Admitted:
    """
    A submission that passed the checks made before the store: the
    request as it is stored, the task it creates, what it reserves.
    """

    request: SubmitRequest
    task: records.NewTask
    reservation: Reservation


async def _settled(results: Iterable["Deferred[_T]"]) -> List[Union[_T, Failure]]:
    """
    What each of C{results} fires with, in order: a failure in its place,
    not raised.
    """
    settled = await DeferredList(list(results), consumeErrors=True)
    return [value for _, value in settled]


def _accepted(task_id: str) -> JSON:
    """
    The answer to a submission that created (or found) C{task_id}.
    """
    return {"task_id": task_id, "handle_id": task_id, "status": "accepted"}


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
