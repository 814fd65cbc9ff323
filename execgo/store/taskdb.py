# -*- test-case-name: tests.test_taskdb -*-
"""
The task store as plain functions over one C{sqlite3} connection.

The server runs these through C{adbapi} (L{execgo.server.database}); the supervisor runs
them directly on its own connection.  Both processes share one database in
WAL mode, so every write is a short C{BEGIN IMMEDIATE} transaction, and every
state transition is conditional (C{UPDATE ... WHERE status = ?}) so that the
first terminal write wins and later ones change nothing.  Timestamps are
integer milliseconds since the epoch.  The values read and written are in
L{execgo.core.records}.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence, Set, Tuple

import attrs

from execgo.core import errors, records
from execgo.core.models import (
    STATUS_ACCEPTED,
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_RUNNING,
    STATUS_SUCCESS,
    Reservation,
    ResourceLimits,
)
from execgo.core.records import (
    CHANGING_COLUMNS,
    Event,
    NewTask,
    Outcome,
    QueuedTask,
    TaskRecord,
)
from execgo.host.privileges import TaskIdentity
from execgo.store import idempotency, tallies

_TASK_COLUMNS = (
    ("task_id", "TEXT PRIMARY KEY NOT NULL"),
    ("handle_id", "TEXT NOT NULL"),
    ("status", "TEXT NOT NULL"),
    ("execution_json", "TEXT NOT NULL"),
    ("limits_json", "TEXT NOT NULL"),
    ("sandbox_json", "TEXT NOT NULL"),
    ("metadata_json", "TEXT NOT NULL DEFAULT '{}'"),
    ("created_at_ms", "INTEGER NOT NULL"),
    ("updated_at_ms", "INTEGER NOT NULL"),
    ("started_at_ms", "INTEGER"),
    ("finished_at_ms", "INTEGER"),
    ("duration_ms", "INTEGER"),
    ("shim_pid", "INTEGER"),
    ("pid", "INTEGER"),
    ("pgid", "INTEGER"),
    ("exit_code", "INTEGER"),
    ("exit_signal", "INTEGER"),
    ("error_code", "TEXT"),
    ("error_json", "TEXT"),
    ("usage_json", "TEXT"),
    ("task_dir", "TEXT NOT NULL"),
    ("workspace_dir", "TEXT NOT NULL"),
    ("request_path", "TEXT NOT NULL"),
    ("result_path", "TEXT NOT NULL"),
    ("stdout_path", "TEXT NOT NULL"),
    ("stderr_path", "TEXT NOT NULL"),
    ("script_path", "TEXT"),
    ("stdout_max_bytes", "INTEGER NOT NULL"),
    ("stderr_max_bytes", "INTEGER NOT NULL"),
    ("kill_requested", "INTEGER NOT NULL DEFAULT 0"),
    ("kill_requested_at_ms", "INTEGER"),
    ("timeout_triggered", "INTEGER NOT NULL DEFAULT 0"),
    ("result_json", "TEXT"),
    ("execution_plan_json", "TEXT"),
    ("control_context_json", "TEXT"),
    ("reservation_json", "TEXT"),
    ("reserved_at_ms", "INTEGER"),
    ("released_at_ms", "INTEGER"),
    ("tenant", "TEXT"),
    ("owner", "TEXT"),
    ("idempotency_key", "TEXT"),
    ("idempotency_hash", "TEXT"),
    ("run_uid", "INTEGER"),
    ("run_gid", "INTEGER"),
    ("idempotency_scope", "TEXT"),
    # 1 while a terminal task's result.json could not be written (a full
    # or read-only data directory): GC writes it once it can (upkeep).
    ("result_missing", "INTEGER"),
)

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS tasks ({})".format(
        ", ".join(f"{name} {decl}" for name, decl in _TASK_COLUMNS)
    ),
    """CREATE TABLE IF NOT EXISTS task_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
        event_type TEXT NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        message TEXT,
        data_json TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS runtime_counters (
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (name, labels)
    )""",
    "CREATE INDEX IF NOT EXISTS idx_tasks_status_created ON tasks(status, created_at_ms)",
    "CREATE INDEX IF NOT EXISTS idx_tasks_finished ON tasks(finished_at_ms)",
    "CREATE INDEX IF NOT EXISTS idx_task_events_task_seq ON task_events(task_id, seq)",
    "CREATE INDEX IF NOT EXISTS idx_tasks_reserved ON tasks(released_at_ms, reserved_at_ms)"
    " WHERE reserved_at_ms IS NOT NULL AND released_at_ms IS NULL",
    # Listing (execgo.store.listing): newest first by (created_at_ms, rowid); an
    # index on (x, created_at_ms) also holds the rowid, so it serves both.
    "CREATE INDEX IF NOT EXISTS idx_tasks_created ON tasks(created_at_ms)",
    "CREATE INDEX IF NOT EXISTS idx_tasks_tenant_created ON tasks(tenant, created_at_ms)",
    "CREATE INDEX IF NOT EXISTS idx_tasks_owner_created ON tasks(owner, created_at_ms)",
    """CREATE TABLE IF NOT EXISTS task_labels (
        task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        task_rowid INTEGER NOT NULL,
        PRIMARY KEY (task_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS idx_task_labels_kv"
    " ON task_labels(key, value, created_at_ms, task_rowid)",
    # A key is unique within its scope (execgo.store.records.Scope); the key
    # comes first so that a lookup by key alone uses the index too.
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_tasks_idempotency_scope"
    " ON tasks(idempotency_key, idempotency_scope) WHERE idempotency_key IS NOT NULL",
    # Only the few tasks waiting for their result.json: finding them is
    # one probe of an (almost always) empty index.
    "CREATE INDEX IF NOT EXISTS idx_tasks_result_missing ON tasks(result_missing)"
    " WHERE result_missing = 1",
]
#: The index of keys before they had scopes (unique per key), replaced by
#: idx_tasks_idempotency_scope.
_UNSCOPED_KEY_INDEX = "idx_tasks_idempotency"

BUSY_TIMEOUT_MS = 5000
#: The statuses a terminal write may leave.
UNFINISHED = (STATUS_ACCEPTED, STATUS_RUNNING)


def dumps(value: Any) -> str:
    """
    Compact JSON with raw UTF-8, as stored in JSON columns.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_sorted(value: Any) -> str:
    """
    Compact JSON with keys sorted at every level, as event data is stored.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def configure(conn: sqlite3.Connection) -> None:
    """
    Apply the connection settings every user of the store needs: WAL,
    C{synchronous=NORMAL}, foreign keys and a busy timeout.
    """
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def connect(path: str) -> sqlite3.Connection:
    """
    Open and configure a connection to the store at C{path}.
    """
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    configure(conn)
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    """
    Create missing tables, columns and indexes; safe to run at any time.
    """
    with transaction(conn):
        for statement in _SCHEMA[:3]:
            conn.execute(statement)
        present = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        for name, decl in _TASK_COLUMNS:
            if name not in present:
                decl = decl.replace(" PRIMARY KEY", "").replace(" NOT NULL", "")
                conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} {decl}")
        labels_fresh = not _table_exists(conn, "task_labels")
        if "idempotency_scope" not in present or _index_exists(conn, _UNSCOPED_KEY_INDEX):
            _scope_keys(conn)
        for statement in _SCHEMA[3:]:
            conn.execute(statement)
        conn.execute(f"DROP INDEX IF EXISTS {_UNSCOPED_KEY_INDEX}")
        if labels_fresh:
            _backfill_labels(conn)
        tallies.install(conn)


def _scope_keys(conn: sqlite3.Connection) -> None:
    """
    Put the keys stored before keys had scopes into the open scope (those
    stored with authentication then still count for their task's tenant,
    see L{idempotency.lookup}).  Runs in L{init_schema}'s transaction
    whenever the column is new or the old index is still there (a store
    an earlier version wrote to since), before the new index is made and
    the old one dropped: the keys are unique already, so the new index
    cannot fail, and a failure of any step leaves the store as it was.
    """
    conn.execute(
        "UPDATE tasks SET idempotency_scope = ? WHERE idempotency_key IS NOT NULL AND idempotency_scope IS NULL",
        (records.OPEN,),
    )


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        is not None
    )


def _index_exists(conn: sqlite3.Connection, name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)).fetchone()
        is not None
    )


def _insert_labels(
    conn: sqlite3.Connection, task_id: str, labels: Any, created_at_ms: int, task_rowid: int
) -> None:
    """
    Index a task's control-context labels for listing (same transaction
    as the task row).
    """
    conn.executemany(
        "INSERT INTO task_labels (task_id, key, value, created_at_ms, task_rowid) VALUES (?, ?, ?, ?, ?)",
        [(task_id, str(key), str(value), created_at_ms, task_rowid) for key, value in labels.items()],
    )


def _backfill_labels(conn: sqlite3.Connection) -> None:
    """
    Fill a new C{task_labels} table from the tasks stored before it existed.
    """
    rows = conn.execute(
        "SELECT task_id, control_context_json, created_at_ms, rowid FROM tasks"
        " WHERE control_context_json IS NOT NULL"
    ).fetchall()
    for task_id, context, created_at_ms, rowid in rows:
        try:
            labels = json.loads(context).get("labels") or {}
        except (ValueError, AttributeError):
            continue
        if isinstance(labels, dict) and labels:
            _insert_labels(conn, task_id, labels, created_at_ms, rowid)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """
    Take the write lock, retrying every few hundred microseconds.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ms between
    tries: with the server and the supervisor writing short transactions
    into one store, that turns sub-millisecond waits into tens of
    milliseconds.  The busy timeout is switched off only for this statement.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000.0
        delay = 0.0001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """
    Run the body in one C{BEGIN IMMEDIATE} transaction: committed on
    success, rolled back on any exception.  Inside an open transaction the
    body simply joins it (so transitions compose into one commit).
    """
    if conn.in_transaction:
        yield conn
        return
    _begin_immediate(conn)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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
        )
        for task_id, tenant, limits, created in conn.execute(
            "SELECT task_id, tenant, limits_json, created_at_ms FROM tasks WHERE status = ?"
            " ORDER BY created_at_ms, rowid LIMIT ?",
            (STATUS_ACCEPTED, limit),
        )
    ]


_TERMINAL_EVENT = {
    STATUS_SUCCESS: ("finished", "task finished"),
    STATUS_FAILED: ("failed", "task failed"),
    STATUS_CANCELLED: ("cancelled", "task cancelled"),
}


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> List[sqlite3.Row]:
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(sql, params).fetchall()


def append_event(
    conn: sqlite3.Connection,
    task_id: str,
    event_type: str,
    message: Optional[str],
    timestamp_ms: int,
    data: Any = None,
) -> None:
    """
    Append one event; call inside the transaction of the change it records.
    """
    conn.execute(
        "INSERT INTO task_events (task_id, event_type, timestamp_ms, message, data_json)"
        " VALUES (?, ?, ?, ?, ?)",
        (task_id, event_type, timestamp_ms, message, None if data is None else dumps_sorted(data)),
    )


def task_exists(conn: sqlite3.Connection, task_id: str) -> bool:
    """
    Whether a row with this id is stored.
    """
    return conn.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone() is not None


def tenant_of(conn: sqlite3.Connection, task_id: str) -> Tuple[bool, Optional[str]]:
    """
    Whether the task exists, and its tenant (the C{tenant} column).
    """
    row = conn.execute("SELECT tenant FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return (False, None) if row is None else (True, row[0])


def count_accepted(conn: sqlite3.Connection) -> int:
    """
    The number of tasks in C{accepted}, from the trigger-kept tally (O(1),
    where counting the rows would cost as much as the queue is long).
    """
    row = conn.execute(
        "SELECT value FROM task_tallies WHERE kind = 'status' AND key = ?", (STATUS_ACCEPTED,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def insert_task(conn: sqlite3.Connection, task: NewTask, now_ms: int) -> None:
    """
    Insert a new C{accepted} task and its first events in one transaction.

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
    }
    if task.idempotency_key is not None:
        values["idempotency_key"] = task.idempotency_key
        values["idempotency_hash"] = task.idempotency_hash
        values["idempotency_scope"] = task.idempotency_scope.name
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    with transaction(conn):
        try:
            cursor = conn.execute(f"INSERT INTO tasks ({names}) VALUES ({marks})", tuple(values.values()))
        except sqlite3.IntegrityError:
            if task.idempotency_key is not None:
                # A concurrent first submission with this key won: answer
                # like a retry (or 409 if it carried another request).
                idempotency.check(conn, task.idempotency_key, task.idempotency_hash, task.idempotency_scope)
            raise errors.Conflict(f"task already exists: {task.task_id}") from None
        if task.control_context is not None and task.control_context.labels:
            _insert_labels(conn, task.task_id, task.control_context.labels, now_ms, int(cursor.lastrowid or 0))
        append_event(conn, task.task_id, "submitted", "task submitted", now_ms)
        append_event(conn, task.task_id, "accepted", "task accepted", now_ms)
        append_event(conn, task.task_id, "planned", "execution plan resolved", now_ms, plan.to_json())
        if plan.degraded:
            append_event(
                conn,
                task.task_id,
                "degraded",
                "execution plan degraded",
                now_ms,
                {
                    "fallback_reasons": list(plan.fallback_reasons),
                    "effective_sandbox": plan.effective_sandbox.to_json(),
                },
            )


def load_task(conn: sqlite3.Connection, task_id: str) -> Optional[TaskRecord]:
    """
    The task with this id, or C{None}.
    """
    rows = _rows(conn, "SELECT * FROM tasks WHERE task_id = ?", (task_id,))
    return TaskRecord.from_row(rows[0]) if rows else None


def refresh(conn: sqlite3.Connection, record: TaskRecord) -> Optional[TaskRecord]:
    """
    C{record} with the columns a non-terminal task's transitions change
    read again (L{records.CHANGING_COLUMNS}), or C{None} when the task is
    gone: a full L{load_task} for a fraction of the decoding.
    """
    rows = _rows(conn, f"SELECT {CHANGING_COLUMNS} FROM tasks WHERE task_id = ?", (record.task_id,))
    return record.refreshed(rows[0]) if rows else None


def load_events(conn: sqlite3.Connection, task_id: str, after_seq: int = 0) -> List[Event]:
    """
    The task's events with C{seq > after_seq}, ascending.
    """
    return [
        Event(
            seq=row["seq"],
            task_id=row["task_id"],
            event_type=row["event_type"],
            timestamp_ms=row["timestamp_ms"],
            message=row["message"],
            data=None if row["data_json"] is None else json.loads(row["data_json"]),
        )
        for row in _rows(
            conn,
            "SELECT * FROM task_events WHERE task_id = ? AND seq > ? ORDER BY seq",
            (task_id, after_seq),
        )
    ]


def load_active(conn: sqlite3.Connection) -> List[TaskRecord]:
    """
    Tasks holding an active reservation, by reservation then creation time.
    """
    return [
        TaskRecord.from_row(row)
        for row in _rows(
            conn,
            "SELECT * FROM tasks WHERE reserved_at_ms IS NOT NULL AND released_at_ms IS NULL"
            " ORDER BY reserved_at_ms, created_at_ms",
        )
    ]


def load_by_status(conn: sqlite3.Connection, statuses: Sequence[str], limit: int = -1) -> List[TaskRecord]:
    """
    Tasks in any of C{statuses}, oldest first, at most C{limit} (-1: all).
    """
    marks = ", ".join("?" for _ in statuses)
    return [
        TaskRecord.from_row(row)
        for row in _rows(
            conn,
            f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY created_at_ms, rowid LIMIT ?",
            (*statuses, limit),
        )
    ]


class NoIdentity(Exception):
    """
    Every uid of the task uid range is held by a running task.
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
    with transaction(conn):
        rows = _rows(conn, "SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        if not rows:
            return None
        record = TaskRecord.from_row(rows[0])
        if record.status != STATUS_ACCEPTED or record.kill_requested:
            return record if record.status == STATUS_ACCEPTED else None
        run_as = None
        if identity is not None:
            run_as = identity.pick(running_uids(conn) if identity.per_task else frozenset())
            if run_as is None:
                raise NoIdentity(identity.describe())
        reservation = Reservation.for_limits(record.limits)
        conn.execute(
            "UPDATE tasks SET status = ?, shim_pid = ?, reservation_json = ?, reserved_at_ms = ?,"
            " released_at_ms = NULL, updated_at_ms = ?, run_uid = ?, run_gid = ? WHERE task_id = ?",
            (
                STATUS_RUNNING,
                shim_pid,
                dumps(reservation.to_json()),
                now_ms,
                now_ms,
                None if run_as is None else run_as.uid,
                None if run_as is None else run_as.gid,
                task_id,
            ),
        )
        append_event(
            conn, task_id, "resource_reserved", "task resources reserved", now_ms, reservation.to_json()
        )
    return attrs.evolve(
        record,
        status=STATUS_RUNNING,
        shim_pid=shim_pid,
        reservation=reservation,
        reserved_at_ms=now_ms,
        released_at_ms=None,
        updated_at_ms=now_ms,
        run_as=run_as,
    )


def running_uids(conn: sqlite3.Connection) -> Set[int]:
    """
    The uids the running tasks hold.
    """
    return {
        int(row[0])
        for row in conn.execute(
            "SELECT run_uid FROM tasks WHERE status = ? AND run_uid IS NOT NULL", (STATUS_RUNNING,)
        )
    }


def record_start(
    conn: sqlite3.Connection, task_id: str, pid: int, now_ms: int, script_path: Optional[str]
) -> bool:
    """
    Record that the workload C{pid} (leader of process group C{pid}) runs.
    """
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE tasks SET pid = ?, pgid = ?, started_at_ms = ?, updated_at_ms = ?,"
            " script_path = COALESCE(?, script_path) WHERE task_id = ? AND status = ?",
            (pid, pid, now_ms, now_ms, script_path, task_id, STATUS_RUNNING),
        )
        if cursor.rowcount != 1:
            return False
        append_event(conn, task_id, "started", "task started", now_ms)
    return True


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


def request_kill(conn: sqlite3.Connection, task_id: str, now_ms: int) -> bool:
    """
    Set the kill flag of a non-terminal task and append C{kill_requested}.

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
    return True


def _release_in_txn(conn: sqlite3.Connection, task_id: str, now_ms: int, message: str) -> None:
    row = conn.execute(
        "SELECT reservation_json FROM tasks WHERE task_id = ?"
        " AND reserved_at_ms IS NOT NULL AND released_at_ms IS NULL",
        (task_id,),
    ).fetchone()
    if row is None:
        return
    conn.execute(
        "UPDATE tasks SET released_at_ms = ?, updated_at_ms = ? WHERE task_id = ?",
        (now_ms, now_ms, task_id),
    )
    append_event(conn, task_id, "resource_released", message, now_ms, json.loads(row[0]))


def terminal_view(record: TaskRecord, outcome: Outcome, now_ms: int) -> TaskRecord:
    """
    The record as L{finish} will leave it, for rendering C{result.json}
    before the write.
    """
    return attrs.evolve(
        record,
        status=outcome.status,
        finished_at_ms=now_ms,
        updated_at_ms=now_ms,
        duration_ms=outcome.duration_ms,
        exit_code=outcome.exit_code,
        exit_signal=outcome.exit_signal,
        error=outcome.error,
        usage=outcome.usage,
        released_at_ms=now_ms if record.reservation_active else record.released_at_ms,
    )


#: Puts a prepared C{result.json} in place (C{True}) or throws it away.
Settle = Callable[[bool], None]


def prepare_terminal(
    conn: sqlite3.Connection,
    task_id: str,
    outcome: Outcome,
    now_ms: int,
    from_statuses: Sequence[str],
    prepare_result: Callable[[TaskRecord], Settle],
    current: Optional[TaskRecord] = None,
) -> Tuple[bool, Optional[Settle]]:
    """
    The first half of L{finish}, before any lock: whether the task (as
    given, else read) is still in one of C{from_statuses}, and if so its
    C{result.json} rendered aside from its terminal view (L{unwritten}
    when that failed with an C{OSError}, which does not prevent the write:
    placing it fails, and the write marks the task, see L{place_result}).
    """
    if current is None:
        current = load_task(conn, task_id)
    if current is None or current.status not in from_statuses:
        return False, None
    try:
        return True, prepare_result(terminal_view(current, outcome, now_ms))
    except OSError:
        return True, unwritten


def unwritten(took: bool) -> None:
    """
    The L{Settle} of a C{result.json} that could not be written aside:
    nothing to remove, and nothing to put in place.
    """
    if took:
        raise OSError("result.json could not be written")


def place_result(settle: Optional[Settle]) -> bool:
    """
    Put a prepared C{result.json} in place (inside the terminal write's
    transaction, before it commits); a failure does not stop the write.

    @return: C{False} when a C{result.json} was due and is not in place
        (it could not be written aside, or renamed): the caller marks the
        task with L{mark_result_missing} in the same transaction.
    """
    if settle is not None:
        try:
            settle(True)
        except OSError:
            return False
    return True


def mark_result_missing(conn: sqlite3.Connection, task_id: str) -> None:
    """
    Note, in the caller's transaction, that a terminal task has no
    C{result.json}: the server's GC writes it from the row once the data
    directory takes it (L{execgo.server.upkeep.repair_results}).
    """
    conn.execute("UPDATE tasks SET result_missing = 1 WHERE task_id = ?", (task_id,))


def discard_result(settle: Optional[Settle]) -> None:
    """
    Throw away a prepared C{result.json} whose terminal write did not
    happen (nothing when it was never made or is already in place).
    """
    if settle is not None:
        try:
            settle(False)
        except OSError:
            pass


def finish(
    conn: sqlite3.Connection,
    task_id: str,
    outcome: Outcome,
    now_ms: int,
    from_statuses: Sequence[str] = UNFINISHED,
    prepare_result: Optional[Callable[[TaskRecord], Settle]] = None,
    current: Optional[TaskRecord] = None,
) -> bool:
    """
    Write the terminal record, release the reservation and append the
    terminal event, all in one transaction and only if the task is still in
    one of C{from_statuses}.

    @param prepare_result: renders and writes C{result.json} aside from the
        terminal view of the task, before the write lock is taken, and
        returns a function that puts it in place (C{True}, called inside the
        transaction just before it commits) or throws it away (C{False}).
        So no reader ever sees a terminal task without its C{result.json},
        and the lock is held only for a rename.  An C{OSError} from it does
        not prevent the terminal write.
    @param current: the task as just read by the caller (else it is read
        here), what C{result.json} is rendered from.
    @return: whether this call made the task terminal.
    """
    settle: Optional[Settle] = None
    if prepare_result is not None:
        eligible, settle = prepare_terminal(
            conn, task_id, outcome, now_ms, from_statuses, prepare_result, current
        )
        if not eligible:
            return False
    took = False
    try:
        took = write_terminal(conn, task_id, outcome, now_ms, from_statuses, settle)
    finally:
        if not took:
            discard_result(settle)
    return took


def write_terminal(
    conn: sqlite3.Connection,
    task_id: str,
    outcome: Outcome,
    now_ms: int,
    from_statuses: Sequence[str],
    settle: Optional[Settle],
) -> bool:
    """
    The write half of L{finish}: in one transaction (or the caller's), and
    only if the task is still in one of C{from_statuses}, the terminal
    record, the release and the terminal event; C{settle(True)} just
    before the commit.

    @return: whether this call made the task terminal.
    """
    marks = ", ".join("?" for _ in from_statuses)
    error_json = None if outcome.error is None else dumps(outcome.error.to_json())
    usage_json = None if outcome.usage is None else dumps(outcome.usage.to_json())
    with transaction(conn):
        row = conn.execute(
            "SELECT reservation_json, reserved_at_ms IS NOT NULL AND released_at_ms IS NULL"
            f" FROM tasks WHERE task_id = ? AND status IN ({marks})",
            (task_id, *from_statuses),
        ).fetchone()
        if row is None:
            return False
        reservation_json, reserved = row
        # The reservation is released in the same statement.
        conn.execute(
            "UPDATE tasks SET status = ?, finished_at_ms = ?, updated_at_ms = ?, duration_ms = ?,"
            " exit_code = ?, exit_signal = ?, error_code = ?, error_json = ?, usage_json = ?,"
            " released_at_ms = CASE WHEN ? THEN ? ELSE released_at_ms END"
            " WHERE task_id = ?",
            (
                outcome.status,
                now_ms,
                now_ms,
                outcome.duration_ms,
                outcome.exit_code,
                outcome.exit_signal,
                None if outcome.error is None else outcome.error.code,
                error_json,
                usage_json,
                bool(reserved),
                now_ms,
                task_id,
            ),
        )
        if reserved:
            data = None if reservation_json is None else json.loads(reservation_json)
            append_event(conn, task_id, "resource_released", "task resources released", now_ms, data)
        event_type, message = _TERMINAL_EVENT[outcome.status]
        append_event(conn, task_id, event_type, message, now_ms)
        if not place_result(settle):
            mark_result_missing(conn, task_id)
    return True


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
            "SELECT reserved_at_ms, released_at_ms FROM tasks WHERE task_id = ? AND status = ?",
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


def gc_candidates(conn: sqlite3.Connection, cutoff_ms: int, limit: int) -> List[Tuple[str, str]]:
    """
    C{(task_id, task_dir)} of terminal tasks finished at or before the cutoff.
    """
    return [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT task_id, task_dir FROM tasks WHERE finished_at_ms IS NOT NULL"
            " AND finished_at_ms <= ? AND status IN (?, ?, ?) ORDER BY finished_at_ms LIMIT ?",
            (cutoff_ms, STATUS_SUCCESS, STATUS_FAILED, STATUS_CANCELLED, limit),
        )
    ]


def delete_task(conn: sqlite3.Connection, task_id: str) -> None:
    """
    Delete a terminal task's row and, by cascade, its events.
    """
    with transaction(conn):
        conn.execute(
            "DELETE FROM tasks WHERE task_id = ? AND status IN (?, ?, ?)",
            (task_id, STATUS_SUCCESS, STATUS_FAILED, STATUS_CANCELLED),
        )


def resources_rows(conn: sqlite3.Connection) -> Tuple[List[TaskRecord], int]:
    """
    The tasks holding an active reservation, and how many C{accepted}
    tasks hold none.
    """
    active = load_active(conn)
    waiting = conn.execute(
        "SELECT COUNT(*) FROM tasks WHERE status = ? AND NOT"
        " (reserved_at_ms IS NOT NULL AND released_at_ms IS NULL)",
        (STATUS_ACCEPTED,),
    ).fetchone()[0]
    return active, waiting


def events_if_exists(conn: sqlite3.Connection, task_id: str, after_seq: int = 0) -> Optional[List[Event]]:
    """
    The task's events, or C{None} when the task is unknown.
    """
    if not task_exists(conn, task_id):
        return None
    return load_events(conn, task_id, after_seq)

