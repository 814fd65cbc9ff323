# -*- test-case-name: tests.test_store -*-
"""
Aggregates of the task store, kept by triggers (L{TRIGGERS}; on
PostgreSQL as PL/pgSQL functions, L{execgo.store.postgres}), so that
C{/metrics} reads a few small tables instead of scanning every task.

Two kinds, both maintained in the same transaction as the change that
moves them, whichever process (server or supervisor) writes it:

 - I{tallies} (table C{task_tallies}) describe the rows stored now: tasks
   by status, by tenant and status, by error code, and the histogram of
   recorded durations.  They go down when a task changes state or GC
   deletes it, exactly like the contract's four C{/metrics} families
   computed from the rows (C{docs/api.md}, "Metrics").
 - I{counters} (table C{runtime_counters}) never go down: submissions per
   tenant, finishes per status, code and tenant, and the queue-wait,
   dispatch-to-start and run-time histograms.  GC and restarts leave them
   alone.

Standard library only.
"""

from __future__ import annotations

import sqlite3
from typing import Dict, List, Sequence, Tuple

import attrs

DURATION_BUCKETS_MS = (100, 250, 500, 1000, 5000, 10000, 30000, 60000, 300000)
QUEUE_WAIT_BUCKETS_MS = (1, 5, 10, 50, 100, 500, 1000, 5000, 30000, 300000)
SPAWN_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 1000)
RUN_TIME_BUCKETS_MS = DURATION_BUCKETS_MS
SEP = "\x1f"

_TERMINAL = "('success', 'failed', 'cancelled')"


def _bucket(expr: str, bounds: Sequence[int]) -> str:
    """
    SQL for the index of the first bound C{expr} does not exceed (the
    last index, C{len(bounds)}, is C{+Inf}).
    """
    cases = " ".join(f"WHEN {expr} <= {bound} THEN {i}" for i, bound in enumerate(bounds))
    return f"(CASE {cases} ELSE {len(bounds)} END)"


@attrs.frozen
class Upsert:
    """
    One upsert a trigger makes: add C{amount} to C{table}'s row C{(kind,
    key)} when C{when} holds (SQL expressions over C{OLD} and C{NEW}).
    """

    table: str
    kind: str
    key: str
    amount: str
    when: str = "TRUE"

    @property
    def columns(self) -> Tuple[str, str]:
        """
        The table's key columns, and all its columns.
        """
        if self.table == "task_tallies":
            return "kind, key", "kind, key, value"
        return "name, labels", "name, labels, value"

    def sql(self) -> str:
        """
        The upsert as one statement every engine's trigger body accepts.
        The C{WHERE} is there even when always true (SQLite needs it to
        parse an upsert over a C{SELECT}); the stored C{value} is named
        with its table, which every engine reads unambiguously.
        """
        return (
            f"INSERT INTO {self.table} ({self.columns[1]}) SELECT {self.kind}, {self.key}, {self.amount}"
            f" WHERE {self.when}{self.on_conflict}"
        )

    @property
    def on_conflict(self) -> str:
        """
        The end of the upsert's statement: a row already there gets the
        amount added, and the statement ends.
        """
        return f" ON CONFLICT({self.columns[0]}) DO UPDATE SET value = {self.table}.value + excluded.value;"


def _add(table: str, kind: str, key: str, amount: str, when: str = "TRUE") -> Upsert:
    """
    One L{Upsert}.
    """
    return Upsert(table, kind, key, amount, when)


def _row_tallies(row: str, sign: str) -> Tuple[Upsert, ...]:
    """
    The tally changes one stored row makes (C{sign} is C{+1} or C{-1}).
    """
    stored = f"{row}.duration_ms IS NOT NULL AND {row}.finished_at_ms IS NOT NULL"
    return (
            _add("task_tallies", "'status'", f"{row}.status", sign),
            _add(
                "task_tallies",
                "'tenant_status'",
                f"COALESCE({row}.tenant, '') || char(31) || {row}.status",
                sign,
            ),
            _add("task_tallies", "'error'", f"{row}.error_code", sign, f"{row}.error_code IS NOT NULL"),
            _add(
                "task_tallies",
                "'duration_bucket'",
                f"CAST({_bucket(f'{row}.duration_ms', DURATION_BUCKETS_MS)} AS TEXT)",
                sign,
                stored,
            ),
            _add("task_tallies", "'duration_sum'", "''", f"{sign} * {row}.duration_ms", stored),
            _add("task_tallies", "'duration_count'", "''", sign, stored),
    )


def _histogram(name: str, value: str, bounds: Sequence[int]) -> Tuple[Upsert, ...]:
    return (
        _add("runtime_counters", f"'{name}_bucket'", f"CAST({_bucket(value, bounds)} AS TEXT)", "1"),
        _add("runtime_counters", f"'{name}_sum'", "''", value),
        _add("runtime_counters", f"'{name}_count'", "''", "1"),
    )


@attrs.frozen
class Trigger:
    """
    One trigger on C{tasks} keeping tallies or counters, in the terms
    every engine's trigger syntax is built from.

    @ivar name: the trigger's name.
    @ivar event: what fires it (C{INSERT}, C{DELETE}, C{UPDATE OF ...}).
    @ivar when: the condition on C{OLD}/C{NEW} (empty: always).
    @ivar upserts: what it adds, in order.
    @ivar paired: the upserts are two halves, the old row's taken away
        and the new row's added, the I{i}-th of each moving the same
        tally: a pair whose columns did not change cancels out (an engine
        may skip it).
    """

    name: str
    event: str
    when: str
    upserts: Tuple[Upsert, ...]
    paired: bool = False

    @property
    def body(self) -> str:
        """
        Its statements, each ending in C{;}.
        """
        return "\n".join(upsert.sql() for upsert in self.upserts)


TRIGGERS = (
    Trigger(
        "tally_insert",
        "INSERT",
        "",
        _row_tallies("NEW", "1") + (_add("runtime_counters", "'submitted'", "COALESCE(NEW.tenant, '')", "1"),),
    ),
    Trigger("tally_delete", "DELETE", "", _row_tallies("OLD", "-1")),
    Trigger(
        "tally_update",
        "UPDATE OF status, error_code, duration_ms, finished_at_ms",
        "",
        _row_tallies("OLD", "-1") + _row_tallies("NEW", "1"),
        paired=True,
    ),
    Trigger(
        "count_finished",
        "UPDATE OF status",
        f"NEW.status IN {_TERMINAL} AND OLD.status NOT IN {_TERMINAL}",
        (
            _add(
                "runtime_counters",
                "'finished'",
                "NEW.status || char(31) || COALESCE(NEW.error_code, '') || char(31) || COALESCE(NEW.tenant, '')",
                "1",
            ),
        )
        + _histogram("run_time", "COALESCE(NEW.duration_ms, 0)", RUN_TIME_BUCKETS_MS),
    ),
    Trigger(
        "count_started",
        "UPDATE OF started_at_ms",
        "OLD.started_at_ms IS NULL AND NEW.started_at_ms IS NOT NULL",
        _histogram("queue_wait", "MAX(0, NEW.started_at_ms - NEW.created_at_ms)", QUEUE_WAIT_BUCKETS_MS)
        + _histogram(
            "spawn_latency",
            "MAX(0, NEW.started_at_ms - COALESCE(NEW.reserved_at_ms, NEW.started_at_ms))",
            SPAWN_BUCKETS_MS,
        ),
    ),
)


def _sqlite_trigger(trigger: Trigger) -> str:
    """
    One of L{TRIGGERS} in SQLite's syntax.
    """
    when = f" WHEN {trigger.when}" if trigger.when else ""
    return (
        f"CREATE TRIGGER IF NOT EXISTS {trigger.name} AFTER {trigger.event} ON tasks{when} BEGIN\n"
        f"{trigger.body}\nEND"
    )


#: The tally table and triggers on SQLite.
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS task_tallies (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        value INTEGER NOT NULL,
        PRIMARY KEY (kind, key)
    )""",
] + [_sqlite_trigger(trigger) for trigger in TRIGGERS]


def install(conn: sqlite3.Connection) -> None:
    """
    Create the tally table and the triggers (inside the schema
    transaction).  A store that had tasks before the tallies existed gets
    them counted once, here.
    """
    fresh = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'task_tallies'"
    ).fetchone() is None
    for statement in SCHEMA:
        conn.execute(statement)
    if fresh:
        _recount(conn)


def _recount(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM task_tallies")
    stored = "duration_ms IS NOT NULL AND finished_at_ms IS NOT NULL"
    queries = [
        "SELECT 'status', status, COUNT(*) FROM tasks GROUP BY status",
        "SELECT 'tenant_status', COALESCE(tenant, '') || char(31) || status, COUNT(*)"
        " FROM tasks GROUP BY 2",
        "SELECT 'error', error_code, COUNT(*) FROM tasks WHERE error_code IS NOT NULL GROUP BY 2",
        f"SELECT 'duration_bucket', CAST({_bucket('duration_ms', DURATION_BUCKETS_MS)} AS TEXT), COUNT(*)"
        f" FROM tasks WHERE {stored} GROUP BY 2",
        f"SELECT 'duration_sum', '', COALESCE(SUM(duration_ms), 0) FROM tasks WHERE {stored}",
        f"SELECT 'duration_count', '', COUNT(*) FROM tasks WHERE {stored}",
    ]
    for query in queries:
        conn.execute(f"INSERT INTO task_tallies (kind, key, value) {query}")


@attrs.frozen
class Histogram:
    """
    A histogram read back: per-bucket counts (not cumulative; the last is
    C{+Inf}), the sum and the count.
    """

    bounds: Tuple[int, ...]
    buckets: Tuple[int, ...]
    total: int
    count: int

    def cumulative(self) -> List[int]:
        """
        The C{le} counts of the Prometheus exposition, C{+Inf} last.
        """
        out, running = [], 0
        for value in self.buckets:
            running += value
            out.append(running)
        return out


@attrs.frozen
class MetricsSnapshot:
    """
    Everything C{/metrics} renders from the store.
    """

    by_status: Tuple[Tuple[str, int], ...]
    by_error: Tuple[Tuple[str, int], ...]
    by_tenant_status: Tuple[Tuple[str, str, int], ...]
    duration: Histogram
    submitted: Tuple[Tuple[str, int], ...]
    finished: Tuple[Tuple[str, str, str, int], ...]
    queue_wait: Histogram
    spawn_latency: Histogram
    run_time: Histogram

    @property
    def running(self) -> int:
        """
        Tasks in C{running}.
        """
        return dict(self.by_status).get("running", 0)


def _histogram_from(values: Dict[Tuple[str, str], int], name: str, bounds: Sequence[int]) -> Histogram:
    return Histogram(
        bounds=tuple(bounds),
        buckets=tuple(values.get((f"{name}_bucket", str(i)), 0) for i in range(len(bounds) + 1)),
        total=values.get((f"{name}_sum", ""), 0),
        count=values.get((f"{name}_count", ""), 0),
    )


def snapshot(conn: sqlite3.Connection) -> MetricsSnapshot:
    """
    Read the tallies and counters (a few small tables: the cost does not
    depend on how many tasks are stored), both in one statement, so from
    one snapshot of the store.
    """
    tallies: Dict[Tuple[str, str], int] = {}
    counters: Dict[Tuple[str, str], int] = {}
    for table, name, key, value in conn.execute(
        "SELECT 'tally', kind, key, value FROM task_tallies"
        " UNION ALL SELECT 'counter', name, labels, value FROM runtime_counters"
    ).fetchall():
        (tallies if table == "tally" else counters)[(name, key)] = value
    by_tenant_status = []
    for (kind, key), value in sorted(tallies.items()):
        if kind == "tenant_status" and value:
            tenant, _, status = key.partition(SEP)
            by_tenant_status.append((tenant, status, value))
    finished = []
    for (name, labels), value in sorted(counters.items()):
        if name == "finished":
            status, code, tenant = (labels.split(SEP) + ["", "", ""])[:3]
            finished.append((status, code, tenant, value))
    return MetricsSnapshot(
        by_status=tuple(
            (key, value) for (kind, key), value in sorted(tallies.items()) if kind == "status" and value
        ),
        by_error=tuple(
            (key, value) for (kind, key), value in sorted(tallies.items()) if kind == "error" and value
        ),
        by_tenant_status=tuple(by_tenant_status),
        duration=_histogram_from(tallies, "duration", DURATION_BUCKETS_MS),
        submitted=tuple(
            (labels, value) for (name, labels), value in sorted(counters.items()) if name == "submitted"
        ),
        finished=tuple(finished),
        queue_wait=_histogram_from(counters, "queue_wait", QUEUE_WAIT_BUCKETS_MS),
        spawn_latency=_histogram_from(counters, "spawn_latency", SPAWN_BUCKETS_MS),
        run_time=_histogram_from(counters, "run_time", RUN_TIME_BUCKETS_MS),
    )
