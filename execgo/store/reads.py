# -*- test-case-name: tests.test_store -*-
"""
Reading tasks back as models (L{execgo.core.records}): one task, the
tasks in some states, the queue, the reservations.

Plain functions over one C{sqlite3} connection; none of them writes.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, List, Optional, Sequence, Tuple

import attrs

from execgo.core.constants import STATUS_ACCEPTED, STATUS_RUNNING
from execgo.core.models import ResourceLimits
from execgo.core.records import CHANGING_COLUMNS, QueuedTask, TaskRecord
from execgo.core.reservation import Reservation
from execgo.store.backend import Query
from execgo.store.connection import fetch_all, rows


@attrs.frozen
class SchedulerState:
    """
    What the dispatcher rebuilds itself from: active reservations and the
    queue, oldest first; in a cluster, also what the other nodes hold
    (C{elsewhere}: task id, tenant and reservation of each).
    """

    active: Tuple[TaskRecord, ...]
    queued: Tuple[Any, ...]
    elsewhere: Tuple[Tuple[str, Optional[str], Reservation], ...] = ()


def load_task(conn: sqlite3.Connection, task_id: str) -> Optional[TaskRecord]:
    """
    The task with this id, or C{None}.
    """
    found = rows(conn, "SELECT * FROM tasks WHERE task_id = ?", (task_id,))
    return TaskRecord.from_row(found[0]) if found else None


def refresh(conn: sqlite3.Connection, record: TaskRecord) -> Optional[TaskRecord]:
    """
    C{record} with the columns a non-terminal task's transitions change
    read again (L{execgo.core.records.CHANGING_COLUMNS}), or C{None} when
    the task is gone: a full L{load_task} for a fraction of the decoding.
    """
    return refresh_all(conn, [record])[0]


def refresh_all(conn: sqlite3.Connection, records: Sequence[TaskRecord]) -> List[Optional[TaskRecord]]:
    """
    L{refresh} for each of C{records}, the reads together (one round trip
    to a database server).
    """
    query = f"SELECT {CHANGING_COLUMNS} FROM tasks WHERE task_id = ?"
    found = fetch_all(conn, [(query, (record.task_id,)) for record in records])
    return [record.refreshed(rows[0]) if rows else None for record, rows in zip(records, found)]


def exists_query(task_id: str) -> Query:
    """
    The query that finds a row with this id (L{task_exists}).
    """
    return ("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,))


def task_exists(conn: sqlite3.Connection, task_id: str) -> bool:
    """
    Whether a row with this id is stored.
    """
    return bool(rows(conn, *exists_query(task_id)))


def task_status(conn: sqlite3.Connection, task_id: str) -> Optional[str]:
    """
    The stored status of a task, or C{None} when there is no such task.
    """
    row = conn.execute("SELECT status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return None if row is None else row[0]


def tenant_of(conn: sqlite3.Connection, task_id: str) -> Tuple[bool, Optional[str]]:
    """
    Whether the task exists, and its tenant (the C{tenant} column).
    """
    row = conn.execute("SELECT tenant FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return (False, None) if row is None else (True, row[0])


def load_active(conn: sqlite3.Connection, node_id: Optional[str] = None) -> List[TaskRecord]:
    """
    Tasks holding an active reservation, by reservation then creation time:
    all of them, or those of node C{node_id} (and those no node claimed).
    """
    sql = "SELECT * FROM tasks WHERE reserved_at_ms IS NOT NULL AND released_at_ms IS NULL"
    params: Tuple[Any, ...] = ()
    if node_id is not None:
        sql += " AND (node_id = ? OR node_id IS NULL)"
        params = (node_id,)
    return [TaskRecord.from_row(row) for row in rows(conn, sql + " ORDER BY reserved_at_ms, created_at_ms", params)]


def load_by_status(conn: sqlite3.Connection, statuses: Sequence[str], limit: int = -1) -> List[TaskRecord]:
    """
    Tasks in any of C{statuses}, oldest first, at most C{limit} (negative:
    all).
    """
    marks = ", ".join("?" for _ in statuses)
    sql = f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY created_at_ms, rowid"
    params: Tuple[Any, ...] = tuple(statuses)
    if limit >= 0:
        sql += " LIMIT ?"
        params += (limit,)
    return [TaskRecord.from_row(row) for row in rows(conn, sql, params)]


def load_queue(conn: sqlite3.Connection, limit: int) -> List[QueuedTask]:
    """
    Up to C{limit} C{accepted} tasks, oldest first, reading only what the
    dispatcher needs (no full record decoding: the queue may be long).
    """
    return [
        QueuedTask(
            task_id=task_id,
            tenant=tenant,
            reservation=Reservation.for_limits(ResourceLimits.from_json(json.loads(limits))),
            created_at_ms=created,
            node_labels=json.loads(placement) if placement else {},
        )
        for task_id, tenant, limits, created, placement in conn.execute(
            "SELECT task_id, tenant, limits_json, created_at_ms, placement_json FROM tasks WHERE status = ?"
            " ORDER BY created_at_ms, rowid LIMIT ?",
            (STATUS_ACCEPTED, limit),
        )
    ]


def scheduler_state(conn: sqlite3.Connection, max_queued: int, node_id: Optional[str] = None) -> SchedulerState:
    """
    Active reservations (of node C{node_id}, L{load_active}) and up to
    C{max_queued} queued tasks.
    """
    return SchedulerState(
        active=tuple(load_active(conn, node_id)),
        queued=tuple(load_queue(conn, max(max_queued, 0))),
        elsewhere=() if node_id is None else tuple(held_elsewhere(conn, node_id)),
    )


def held_elsewhere(conn: sqlite3.Connection, node_id: str) -> List[Tuple[str, Optional[str], Reservation]]:
    """
    The active reservations of the tasks other nodes claimed: task id,
    tenant and reservation of each.
    """
    return [
        (task_id, tenant, Reservation.from_json(json.loads(reservation)) if reservation else Reservation())
        for task_id, tenant, reservation in rows(
            conn,
            "SELECT task_id, tenant, reservation_json FROM tasks"
            " WHERE reserved_at_ms IS NOT NULL AND released_at_ms IS NULL AND node_id <> ?",
            (node_id,),
        )
    ]


#: The query of the trigger-kept tally of C{accepted} tasks (L{count_accepted}).
ACCEPTED_TALLY: Query = ("SELECT value FROM task_tallies WHERE kind = 'status' AND key = ?", (STATUS_ACCEPTED,))


def count_accepted(conn: sqlite3.Connection, found: Optional[List[Any]] = None) -> int:
    """
    The number of tasks in C{accepted}, from the trigger-kept tally (O(1),
    where counting the rows would cost as much as the queue is long): read
    now, or from the rows of L{ACCEPTED_TALLY} read already (C{found}).
    """
    tally = rows(conn, *ACCEPTED_TALLY) if found is None else found
    return int(tally[0][0]) if tally else 0


#: The query of what every task holding a reservation holds, and its tenant.
ACTIVE_BY_TENANT: Query = (
    "SELECT tenant, reservation_json FROM tasks WHERE reserved_at_ms IS NOT NULL AND released_at_ms IS NULL",
    (),
)

#: The query of the uids the running tasks hold.
RUNNING_UIDS: Query = ("SELECT run_uid FROM tasks WHERE status = ? AND run_uid IS NOT NULL", (STATUS_RUNNING,))


def resources_rows(conn: sqlite3.Connection, node_id: Optional[str] = None) -> Tuple[List[TaskRecord], int]:
    """
    The tasks holding an active reservation (of node C{node_id},
    L{load_active}), and how many C{accepted} tasks hold none.
    """
    active = load_active(conn, node_id)
    waiting = conn.execute(
        "SELECT COUNT(*) FROM tasks WHERE status = ? AND NOT"
        " (reserved_at_ms IS NOT NULL AND released_at_ms IS NULL)",
        (STATUS_ACCEPTED,),
    ).fetchone()[0]
    return active, waiting
