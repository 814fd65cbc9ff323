# -*- test-case-name: tests.test_store -*-
"""
The changes of a task before its end: its insert, the claim that makes it
C{running}, its start, its timeout and kill flags, and what recovery
changes; then L{kill}, which ends a queued task too (the end itself is
L{execgo.store.terminal}).

Every change is one short transaction (or joins the caller's, see
L{execgo.store.connection.transaction}), appends its event in that
transaction, and is conditional (C{UPDATE ... WHERE status = ?} with a
rowcount check), so two writers racing on one task never both take it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Union

import attrs

from execgo.core import errors, ledger, outcome
from execgo.core.cluster import NODE_ALIVE
from execgo.core.constants import JSON, STATUS_ACCEPTED, STATUS_RUNNING
from execgo.core.models import ResourceLimits
from execgo.core.records import NewTask, QueuedTask, TaskRecord
from execgo.core.reservation import Reservation
from execgo.host.privileges import TaskIdentity
from execgo.store import idempotency, notices, taskfiles
from execgo.store.backend import Query, backend_of
from execgo.store.connection import dumps, fetch_all, transaction
from execgo.store.eventlog import NewEvent, append_event, append_event_while, append_events
from execgo.store.reads import ACTIVE_BY_TENANT, RUNNING_UIDS, load_task
from execgo.store.schema import insert_labels
from execgo.store.terminal import finish


def insert_task(
    conn: sqlite3.Connection,
    task: NewTask,
    now_ms: int,
    origin: Optional[str] = None,
    request_json: Optional[JSON] = None,
) -> None:
    """
    Insert a new C{accepted} task and its first events in one transaction,
    and tell the cluster's nodes (L{notices.SUBMITTED}).

    @param origin: the node that accepted it (its own notice is not news
        to it).
    @param request_json: the request as C{request.json} holds it, kept for
        the node that claims the task.
    @raise errors.Conflict: a task with this id exists already.
    """
    plan = task.plan
    context_json = None if task.control_context is None else dumps(task.control_context.to_json())
    values = {
        "task_id": task.task_id,
        "handle_id": task.task_id,
        "status": STATUS_ACCEPTED,
        "execution_json": dumps(task.execution.to_json()),
        "limits_json": dumps(task.limits.to_json()),
        "sandbox_json": dumps(task.sandbox.to_json()),
        "metadata_json": dumps(dict(task.metadata)),
        "created_at_ms": now_ms,
        "updated_at_ms": now_ms,
        "task_dir": task.paths.task_dir,
        "workspace_dir": task.paths.workspace_dir,
        "request_path": task.paths.request_path,
        "result_path": task.paths.result_path,
        "stdout_path": task.paths.stdout_path,
        "stderr_path": task.paths.stderr_path,
        "script_path": task.paths.script_path,
        "stdout_max_bytes": task.limits.stdout_max_bytes,
        "stderr_max_bytes": task.limits.stderr_max_bytes,
        "execution_plan_json": dumps(plan.to_json()),
        "control_context_json": context_json,
        "tenant": None if task.control_context is None else task.control_context.tenant,
        "owner": None if task.control_context is None else task.control_context.owner,
        "request_json": None if request_json is None else dumps(request_json),
        "placement_json": dumps(dict(task.node_labels)) if task.node_labels else None,
    }
    if task.idempotency_key is not None:
        values["idempotency_key"] = task.idempotency_key
        values["idempotency_hash"] = task.idempotency_hash
        values["idempotency_scope"] = task.idempotency_scope.name
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    with transaction(conn):
        # A taken id or key inserts nothing rather than failing, so the
        # transaction stays usable for the lookup below.
        inserted = conn.execute(
            f"INSERT INTO tasks ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING RETURNING rowid",
            tuple(values.values()),
        ).fetchall()
        if not inserted:
            if task.idempotency_key is not None:
                # A concurrent first submission with this key won: answer
                # like a retry (or 409 if it carried another request).
                idempotency.check(conn, task.idempotency_key, task.idempotency_hash, task.idempotency_scope)
            raise errors.Conflict(f"task already exists: {task.task_id}")
        if task.control_context is not None and task.control_context.labels:
            insert_labels(conn, task.task_id, task.control_context.labels, now_ms, int(inserted[0][0]))
        events: List[NewEvent] = [
            ("submitted", "task submitted", now_ms, None),
            ("accepted", "task accepted", now_ms, None),
            ("planned", "execution plan resolved", now_ms, plan.to_json()),
        ]
        if plan.degraded:
            degraded = {
                "fallback_reasons": list(plan.fallback_reasons),
                "effective_sandbox": plan.effective_sandbox.to_json(),
            }
            events.append(("degraded", "execution plan degraded", now_ms, degraded))
        append_events(conn, task.task_id, events)
        tenant = None if task.control_context is None else task.control_context.tenant
        queued = QueuedTask(task.task_id, tenant, Reservation.for_limits(task.limits), now_ms, task.node_labels)
        notices.announce(conn, notices.SUBMITTED, task.task_id, {**queued.to_json(), "origin": origin})


class NoIdentity(Exception):
    """
    Every uid of the task uid range is held by a running task.
    """


class NoFiles(Exception):
    """
    The files of a task another node accepted could not be made here.
    """


class StaleLease(Exception):
    """
    The node's lease is not held any more: what it would write is refused.
    """


#: The SQLSTATE of a write refused by L{guard_lease} (a class of its own,
#: as PostgreSQL leaves C{E}-classes to applications).
STALE_LEASE = "EX001"


def guard_lease(conn: sqlite3.Connection, node_id: str, epoch: int, now_ms: int) -> None:
    """
    In the open transaction: make it fail, with SQLSTATE L{STALE_LEASE},
    unless node C{node_id} still holds its lease of C{epoch} (sent with
    the transaction's next statement: no round trip of its own).  Only on
    an engine whose store other nodes share (PostgreSQL).
    """
    backend_of(conn).execute_later(conn, "SELECT execgo_lease_held(?, ?, ?)", (node_id, epoch, now_ms))


def refused_for_lease(error: BaseException) -> bool:
    """
    Whether the store refused a write because the lease it was made under
    is not held (L{StaleLease}, or L{guard_lease}'s error).
    """
    return isinstance(error, StaleLease) or getattr(error, "sqlstate", None) == STALE_LEASE


def lease_query(node_id: Optional[str]) -> Query:
    """
    The query of node C{node_id}'s lease, for L{check_lease}.
    """
    return ("SELECT lease_epoch, lease_expires_at_ms, state FROM nodes WHERE node_id = ?", (node_id,))


def check_lease(found: List[Any], epoch: int, now_ms: int) -> None:
    """
    The lease read by L{lease_query} is still held under C{epoch}.

    @raise StaleLease: when it is not (the caller's transaction then rolls
        back: nothing it wrote stays).
    """
    if not found:
        raise StaleLease("the node is not in the store")
    held_epoch, expires, state = found[0]
    if int(held_epoch) != epoch or state != NODE_ALIVE or int(expires) <= now_ms:
        raise StaleLease(f"the lease of epoch {epoch} is not held (epoch {held_epoch}, {state}, until {expires})")


class OverQuota(Exception):
    """
    The task's tenant holds its quota: the task stays queued, unchanged.
    """


def claim(
    conn: sqlite3.Connection,
    task_id: str,
    shim_pid: int,
    now_ms: int,
    identity: Optional[TaskIdentity] = None,
) -> Optional[TaskRecord]:
    """
    Take an C{accepted} task for launching under supervisor C{shim_pid}:
    move it to C{running} with its reservation (event C{resource_reserved})
    and, with an C{identity}, the uid and gid it runs as (one no other
    running task holds), all in one transaction, so of two launch orders
    for one task only one ever starts it, and no two running tasks share
    a uid.

    @return: the task as it now stands; an C{accepted} task flagged for kill
        comes back unchanged (the caller cancels it); C{None}, changing
        nothing, when the task is unknown or not C{accepted}.
    @raise NoIdentity: changing nothing, when no uid is free.
    """
    claimed = claim_all(conn, [task_id], shim_pid, now_ms, identity)[0]
    if isinstance(claimed, (NoIdentity, NoFiles, OverQuota)):
        raise claimed
    return claimed


#: What L{claim_all} made of one task: as L{claim} returns it, or the
#: L{NoIdentity} (or L{NoFiles}, L{OverQuota}) it would raise.
Claimed = Union[TaskRecord, None, NoIdentity, NoFiles, OverQuota]


def claim_all(
    conn: sqlite3.Connection,
    task_ids: Sequence[str],
    shim_pid: int,
    now_ms: int,
    identity: Optional[TaskIdentity] = None,
    node_id: Optional[str] = None,
    data_dir: Optional[str] = None,
    quotas: Optional[Mapping[str, Reservation]] = None,
    epoch: Optional[int] = None,
) -> List[Claimed]:
    """
    L{claim} for each of C{task_ids} (distinct), in one transaction (or
    the caller's) whose reads go in one round trip: no two of them, nor
    any of them and a task already running, share a uid.  With C{quotas},
    a task whose tenant's quota the running tasks of every node (and those
    claimed before it here) fill is not taken (L{OverQuota}): quotas hold
    across a cluster, whichever node claims.

    With C{epoch}, the claim is made under node C{node_id}'s lease of
    that epoch, read in the same round trip: a lease that is not held
    any more (run out, marked C{lost}, another epoch) claims nothing.

    @return: for each task, in order, what L{claim} returns, or the
        L{NoIdentity} it raises (that task changed nothing; the others
        are claimed all the same).
    @raise StaleLease: changing nothing, when the lease is not held.
    """
    row = "SELECT * FROM tasks WHERE task_id = ?" + backend_of(conn).for_update
    queries: List[Query] = [(row, (task_id,)) for task_id in task_ids]
    # Read with the rows, whatever they say: one round trip.
    if identity is not None and identity.per_task:
        queries.append(RUNNING_UIDS)
    if quotas:
        queries.append(ACTIVE_BY_TENANT)
    if epoch is not None:
        queries.append(lease_query(node_id))
    with transaction(conn):
        found = fetch_all(conn, queries)
        if epoch is not None:
            check_lease(found[-1], epoch, now_ms)
        extra = iter(found[len(task_ids) :])
        used = {int(row[0]) for row in next(extra)} if identity is not None and identity.per_task else set()
        held = _held_by_tenant(next(extra)) if quotas else {}
        claims: List[Claimed] = []
        for rows in found[: len(task_ids)]:
            over = _over_quota(rows, quotas or {}, held)
            if over is not None:
                claims.append(over)
                continue
            claims.append(_claim_found(conn, rows, shim_pid, now_ms, identity, used, node_id, data_dir))
        return claims


def _held_by_tenant(found: List[Any]) -> Dict[str, Reservation]:
    """
    What the running tasks hold, summed per tenant, from L{ACTIVE_BY_TENANT}.
    """
    held: Dict[str, Reservation] = {}
    for tenant, reservation in found:
        if tenant is not None and reservation is not None:
            amount = Reservation.from_json(json.loads(reservation))
            held[tenant] = ledger.add(held.get(tenant, ledger.NOTHING), amount)
    return held


def _over_quota(
    found: List[Any], quotas: Mapping[str, Reservation], held: Dict[str, Reservation]
) -> Optional["OverQuota"]:
    """
    L{OverQuota} when the C{accepted} task of C{found} does not fit its
    tenant's quota next to C{held}; else C{None}, and what it takes is
    added to C{held} (a claim that then fails for another reason holds a
    little less than counted: it errs towards the quota).
    """
    if not found or found[0]["status"] != STATUS_ACCEPTED:
        return None
    tenant = found[0]["tenant"]
    if tenant is None or tenant not in quotas:
        return None
    amount = Reservation.for_limits(ResourceLimits.from_json(json.loads(found[0]["limits_json"])))
    used = held.get(tenant, ledger.NOTHING)
    if not ledger.fits_on_top(amount, used, quotas[tenant]):
        return OverQuota(f"tenant {tenant!r} holds its quota on the cluster's nodes")
    held[tenant] = ledger.add(used, amount)
    return None


def _claim_found(
    conn: sqlite3.Connection,
    found: List[Any],
    shim_pid: int,
    now_ms: int,
    identity: Optional[TaskIdentity],
    used: Set[int],
    node_id: Optional[str] = None,
    data_dir: Optional[str] = None,
) -> Claimed:
    """
    L{claim} of the task whose row (locked) is C{found}, in the open
    transaction; the uid it takes is added to C{used}, the uids taken.
    A task another node accepted gets its files in C{data_dir}, this
    node's (L{taskfiles.create_claimed}), and its row says so.
    """
    if not found:
        return None
    record = TaskRecord.from_row(found[0])
    if record.status != STATUS_ACCEPTED or record.kill_requested:
        return record if record.status == STATUS_ACCEPTED else None
    if data_dir is not None and not taskfiles.under(record.paths.task_dir, data_dir):
        paths = taskfiles.task_paths(data_dir, record.task_id, record.execution, record.sandbox.workspace_subdir)
        try:
            taskfiles.create_claimed(paths, found[0]["request_json"])
        except OSError as e:
            return NoFiles(f"cannot create the task's files in {paths.task_dir}: {e.strerror or e}")
        record = attrs.evolve(record, paths=paths)
    run_as = None
    if identity is not None:
        run_as = identity.pick(used if identity.per_task else frozenset())
        if run_as is None:
            return NoIdentity(identity.describe())
        used.add(run_as.uid)
    reservation = Reservation.for_limits(record.limits)
    # The row is locked and known: the update's result says nothing new.
    backend_of(conn).execute_later(
        conn,
        "UPDATE tasks SET status = ?, shim_pid = ?, reservation_json = ?, reserved_at_ms = ?,"
        " released_at_ms = NULL, updated_at_ms = ?, run_uid = ?, run_gid = ?, node_id = ?, task_dir = ?,"
        " workspace_dir = ?, request_path = ?, result_path = ?, stdout_path = ?, stderr_path = ?, script_path = ?"
        " WHERE task_id = ?",
        (
            STATUS_RUNNING,
            shim_pid,
            dumps(reservation.to_json()),
            now_ms,
            now_ms,
            None if run_as is None else run_as.uid,
            None if run_as is None else run_as.gid,
            node_id,
            *attrs.astuple(record.paths),
            record.task_id,
        ),
    )
    append_event(conn, record.task_id, "resource_reserved", "task resources reserved", now_ms, reservation.to_json())
    if node_id is not None:
        claim = {"node": node_id, "tenant": record.tenant, "reservation": reservation.to_json()}
        notices.announce(conn, notices.CLAIMED, record.task_id, claim)
    return attrs.evolve(
        record,
        status=STATUS_RUNNING,
        shim_pid=shim_pid,
        reservation=reservation,
        reserved_at_ms=now_ms,
        released_at_ms=None,
        updated_at_ms=now_ms,
        run_as=run_as,
        node_id=node_id,
    )


def record_start(conn: sqlite3.Connection, task_id: str, pid: int, now_ms: int, script_path: Optional[str]) -> None:
    """
    Record that the workload C{pid} (leader of process group C{pid}) of
    the C{running} task C{task_id} runs, with a C{started} event; nothing
    for a task not C{running}.  Neither statement's result is read, so
    both go with the transaction's next one.
    """
    with transaction(conn):
        backend_of(conn).execute_later(
            conn,
            "UPDATE tasks SET pid = ?, pgid = ?, started_at_ms = ?, updated_at_ms = ?,"
            " script_path = COALESCE(?, script_path) WHERE task_id = ? AND status = ?",
            (pid, pid, now_ms, now_ms, script_path, task_id, STATUS_RUNNING),
        )
        append_event_while(conn, task_id, STATUS_RUNNING, "started", "task started", now_ms)


def record_timeout(conn: sqlite3.Connection, task_id: str, now_ms: int) -> bool:
    """
    Set the timeout flag and append C{timeout_triggered}, once per task.
    """
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE tasks SET timeout_triggered = 1, updated_at_ms = ?"
            " WHERE task_id = ? AND status = ? AND timeout_triggered = 0",
            (now_ms, task_id, STATUS_RUNNING),
        )
        if cursor.rowcount != 1:
            return False
        append_event(conn, task_id, "timeout_triggered", "timeout triggered", now_ms)
    return True


def request_kill(conn: sqlite3.Connection, task_id: str, now_ms: int, origin: Optional[str] = None) -> bool:
    """
    Set the kill flag of a non-terminal task and append C{kill_requested};
    the node that runs it is told (L{notices.KILLED}; C{origin}: the node
    that asks).

    @return: whether the task was non-terminal (and so was flagged).
    """
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE tasks SET kill_requested = 1, kill_requested_at_ms = ?, updated_at_ms = ?"
            " WHERE task_id = ? AND status IN (?, ?)",
            (now_ms, now_ms, task_id, STATUS_ACCEPTED, STATUS_RUNNING),
        )
        if cursor.rowcount != 1:
            return False
        append_event(conn, task_id, "kill_requested", "kill requested", now_ms)
        notices.announce(conn, notices.KILLED, task_id, {"origin": origin})
    return True


def _release_in_txn(conn: sqlite3.Connection, task_id: str, now_ms: int, message: str) -> None:
    row = conn.execute(
        "SELECT reservation_json FROM tasks WHERE task_id = ?"
        " AND reserved_at_ms IS NOT NULL AND released_at_ms IS NULL" + backend_of(conn).for_update,
        (task_id,),
    ).fetchone()
    if row is None:
        return
    backend_of(conn).execute_later(
        conn,
        "UPDATE tasks SET released_at_ms = ?, updated_at_ms = ? WHERE task_id = ?",
        (now_ms, now_ms, task_id),
    )
    append_event(conn, task_id, "resource_released", message, now_ms, json.loads(row[0]))


def release_orphan_reservation(conn: sqlite3.Connection, task_id: str, now_ms: int) -> None:
    """
    Recovery: release the reservation a still-queued task holds.
    """
    with transaction(conn):
        _release_in_txn(
            conn, task_id, now_ms, "orphan accepted-task reservation released during recovery"
        )


def mark_recovered(
    conn: sqlite3.Connection, task_id: str, reservation: Optional[Reservation], now_ms: int
) -> bool:
    """
    Recovery: a running task whose supervisor is alive.  Rebuild its
    reservation when it has none active, then append C{recovered}.
    """
    with transaction(conn):
        row = conn.execute(
            "SELECT reserved_at_ms, released_at_ms FROM tasks WHERE task_id = ? AND status = ?"
            + backend_of(conn).for_update,
            (task_id, STATUS_RUNNING),
        ).fetchone()
        if row is None:
            return False
        if reservation is not None and (row[0] is None or row[1] is not None):
            conn.execute(
                "UPDATE tasks SET reservation_json = ?, reserved_at_ms = ?, released_at_ms = NULL"
                " WHERE task_id = ?",
                (dumps(reservation.to_json()), now_ms, task_id),
            )
            append_event(
                conn,
                task_id,
                "resource_reserved",
                "resource reservation reconstructed during recovery",
                now_ms,
                reservation.to_json(),
            )
        conn.execute("UPDATE tasks SET updated_at_ms = ? WHERE task_id = ?", (now_ms, task_id))
        append_event(conn, task_id, "recovered", "task recovered", now_ms)
    return True


@attrs.frozen
class KillResult:
    """
    What a kill request did: the snapshot to answer with, and what the
    server must still do (signal a running task, forget a queued one).
    """

    snapshot: JSON
    record: TaskRecord
    flagged: bool
    cancelled_queued: bool


def kill(
    conn: sqlite3.Connection,
    task_id: str,
    owner: Optional[str],
    now_ms: int,
    any_owner: bool = False,
    ceiling: Optional[int] = None,
    origin: Optional[str] = None,
) -> KillResult:
    """
    The store half of a kill: an unknown task, then the owner check; a
    task not yet terminal gets its kill flag and, if still queued, is
    cancelled (its terminal write, L{finish}).

    @param any_owner: skip the owner check (an admin token's kill).
    @param ceiling: bounds the previews (L{taskfiles.snapshot}).
    @param origin: the node that asks (L{request_kill}).
    @raise errors.NotFound: no such task.
    @raise errors.PermissionDenied: another owner's task.
    """
    record = load_task(conn, task_id)
    if record is None:
        raise errors.NotFound(task_id)
    if not any_owner and record.owner is not None and owner != record.owner:
        raise errors.PermissionDenied(f"kill requires owner '{record.owner}'")
    flagged = False
    cancelled = False
    if not record.terminal:
        flagged = request_kill(conn, task_id, now_ms, origin)
        if flagged and record.status == STATUS_ACCEPTED:
            cancelled = finish(
                conn,
                task_id,
                outcome.cancelled("task cancelled before execution"),
                now_ms,
                (STATUS_ACCEPTED,),
                ceiling,
            )
    record = load_task(conn, task_id)
    assert record is not None
    return KillResult(
        snapshot=taskfiles.snapshot(record, now_ms, ceiling),
        record=record,
        flagged=flagged,
        cancelled_queued=cancelled,
    )
