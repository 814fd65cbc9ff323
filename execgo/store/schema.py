# -*- test-case-name: tests.test_store -*-
"""
The store's schema: its tables and indexes, and the migrations that bring
a store written by an earlier version up to date.

L{init_schema} is idempotent and runs in one transaction, so both
processes run it whenever they open the store (the server's C{/readyz}
too).  Columns are only ever added: an older store gains the missing ones
(nullable, see L{init_schema}), and the data a new table or index needs
is filled from the rows already there (L{_scope_keys},
L{_backfill_labels}).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from execgo.core import records
from execgo.store import tallies
from execgo.store.backend import backend_of
from execgo.store.connection import transaction

#: The columns of C{tasks}: name and SQLite declaration.
TASK_COLUMNS = (
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
    # The node that claimed the task (execgo.core.cluster): NULL until one does.
    ("node_id", "TEXT"),
    # The request as request.json holds it, for the node that claims the
    # task to write its own (NULL in rows an earlier version stored).
    ("request_json", "TEXT"),
    # The node labels the task asks for (placement.node_labels), or NULL.
    ("placement_json", "TEXT"),
)
#: How many of L{TASK_COLUMNS} the first PostgreSQL schema version had.
TASK_COLUMNS_V1 = 46

#: The nodes of the cluster that shares this store (execgo.store.nodes).
NODES_TABLE = """CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY NOT NULL,
    instance TEXT NOT NULL,
    advertise_url TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    capacity_json TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    lease_epoch INTEGER NOT NULL,
    lease_expires_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
)"""
#: The running tasks of a node, found without reading the others'.
NODE_RUNNING_INDEX = "CREATE INDEX IF NOT EXISTS idx_tasks_node_running ON tasks(node_id) WHERE status = 'running'"

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS tasks ({})".format(
        ", ".join(f"{name} {decl}" for name, decl in TASK_COLUMNS)
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
    # A key is unique within its scope (execgo.core.records.Scope); the key
    # comes first so that a lookup by key alone uses the index too.
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_tasks_idempotency_scope"
    " ON tasks(idempotency_key, idempotency_scope) WHERE idempotency_key IS NOT NULL",
    # Only the few tasks waiting for their result.json: finding them is
    # one probe of an (almost always) empty index.
    "CREATE INDEX IF NOT EXISTS idx_tasks_result_missing ON tasks(result_missing)"
    " WHERE result_missing = 1",
    NODES_TABLE,
    NODE_RUNNING_INDEX,
]
#: The index of keys before they had scopes (unique per key), replaced by
#: idx_tasks_idempotency_scope.
_UNSCOPED_KEY_INDEX = "idx_tasks_idempotency"


def init_schema(conn: sqlite3.Connection) -> None:
    """
    Create missing tables, columns and indexes; safe to run at any time.
    An engine with a schema of its own (L{Backend.init_schema
    <execgo.store.backend.Backend.init_schema>}) creates that instead.
    """
    own = backend_of(conn).init_schema
    if own is not None:
        own(conn)
        return
    with transaction(conn):
        for statement in _SCHEMA[:3]:
            conn.execute(statement)
        present = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        for name, decl in TASK_COLUMNS:
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
    see L{execgo.store.idempotency.lookup}).  Runs in L{init_schema}'s transaction
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


def insert_labels(
    conn: sqlite3.Connection, task_id: str, labels: Any, created_at_ms: int, task_rowid: int
) -> None:
    """
    Index a task's control-context labels for listing (same transaction
    as the task row).
    """
    conn.cursor().executemany(
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
            insert_labels(conn, task_id, labels, created_at_ms, rowid)
