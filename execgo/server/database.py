# -*- test-case-name: tests.test_database,tests.test_api,tests.test_upkeep,tests.test_storage_faults -*-
"""
The server's task store: L{Store}, the L{execgo.server.taskstore.TaskStore}
over C{adbapi}, on SQLite or PostgreSQL (L{open_pool}).

Every method runs plain functions of L{execgo.store} in C{adbapi}'s
database threads and returns a Deferred of models, so no database call,
file read or file write ever runs on the reactor thread.  The task
directory work of a request (creating files, reading previews, writing
C{result.json}, deleting directories) happens in the same thread hop as
its database work.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from execgo.core import errors
from execgo.core.cluster import NodeInfo, NodeRecord
from execgo.core.constants import JSON
from execgo.core.databaseurl import DatabaseUrl
from execgo.core.models import SubmitRequest
from execgo.core.records import Event, NewTask, Outcome, Scope, TaskRecord
from execgo.core.reservation import Reservation
from execgo.server.batching import Batcher
from execgo.server.budget import SMALL_PREVIEW_BYTES, ByteBudget, HeldSnapshot, Hold
from execgo.store import (
    eventlog,
    gc,
    idempotency,
    listing,
    logfiles,
    nodes,
    reads,
    repairs,
    schema,
    status,
    submission,
    tallies,
    terminal,
    transitions,
)
from execgo.store.backend import SqliteConnection
from execgo.store.connection import configure, transaction
from execgo.store.gc import Failures
from execgo.store.listing import ListQuery
from execgo.store.logfiles import OpenLog
from execgo.store.reads import SchedulerState
from execgo.store.tallies import MetricsSnapshot
from execgo.store.transitions import KillResult

#: Reads of one snapshot under the preview budget before giving up (the
#: last one holds the whole budget, so it always succeeds).
BUDGET_ATTEMPTS = 3


class Store:
    """
    The task store behind C{adbapi}: one writer connection in one thread
    (every change, and the reads whose order against changes matters), and
    a small pool of reader connections for the API's reads, which WAL lets
    run beside the writer without blocking it.  The methods are those of
    L{execgo.server.taskstore.TaskStore}, whose docstrings say what each
    guarantees.

    @param pool: the writer pool, see L{open_pool}.
    @param reader: the reader pool (defaults to the writer).
    @param preview_ceiling: C{--max-output-preview-bytes}: no preview read
        here is longer (C{None}: the tasks' own limits alone).
    @param budget: the byte budget large preview reads share (C{None}:
        none); see L{snapshot}.
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        reader: Optional[adbapi.ConnectionPool] = None,
        reader_lanes: int = 1,
        preview_ceiling: Optional[int] = None,
        budget: Optional[ByteBudget] = None,
    ) -> None:
        self.pool = pool
        self.reader = pool if reader is None else reader
        self.preview_ceiling = preview_ceiling
        self.budget = budget
        self.opened_s = time.time()
        #: The node this server is (L{execgo.core.cluster}): the reservations
        #: it reads are its own node's.
        self.node_id: Optional[str] = None
        self._writes = Batcher(pool, group=transaction)
        self._reads = self._writes if reader is None else Batcher(self.reader, reader_lanes)

    def _write(self, func: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """
        Run C{func(connection, *args)} in the writer thread (batched with
        other writes under load, in order).
        """
        return self._writes.run(func, *args)

    def _read(self, func: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """
        Run the read-only C{func(connection, *args)} on a reader connection.
        """
        return self._reads.run(func, *args)

    # Schema

    def init_schema(self) -> "Deferred[None]":
        """
        Create or upgrade the schema (idempotent; C{/readyz} runs it too).
        """
        return self._write(schema.init_schema)

    # Submission

    def submit(
        self,
        task: NewTask,
        request: SubmitRequest,
        max_queued: int,
        check_late: Callable[[], None],
        now_ms: int,
    ) -> "Deferred[None]":
        """
        Persist a validated, planned submission: checks and files, then
        the insert, which commits with the other submissions of its writer
        hop (the queue bound counts those prepared before it as queued).
        When the row does not commit (the insert or the hop's shared
        commit failed), the files this submission made are removed, so no
        task directory is left without a row.
        """
        request_json = request.to_json()
        made: List[bool] = []

        def prepare(conn: Any, pending: int) -> None:
            submission.prepare_submit(
                conn, task, request_json, max_queued, check_late, now_ms, self.opened_s, pending
            )
            made.append(True)

        def undo(failure: Any) -> Any:
            # submission.insert removed them already on a conflict.
            if made and not failure.check(errors.Conflict):
                removed = self._write(lambda conn: submission.remove_task_dir(task.paths.task_dir))
                return removed.addBoth(lambda _: failure)
            return failure

        d = self._writes.run_grouped(
            prepare, lambda conn, _: submission.insert(conn, task, now_ms, self.node_id, request_json)
        )
        d.addErrback(undo)
        return d

    def settle_conflict(
        self, key: str, digest: Optional[str], task_id: str, scope: Scope
    ) -> "Deferred[Optional[bool]]":
        """
        Whether a keyed submission's lost race was a retry (raises
        L{idempotency.Replay}) or a taken id (L{idempotency.settle_conflict}).
        """
        return self._read(idempotency.settle_conflict, key, digest, task_id, scope)

    # Reading

    def tenant_of(self, task_id: str) -> "Deferred[Tuple[bool, Optional[str]]]":
        """
        Whether the task exists, and its tenant.
        """
        return self._read(reads.tenant_of, task_id)

    def snapshot(self, task_id: str, now_ms: int) -> "Deferred[Optional[Tuple[JSON, Optional[str]]]]":
        """
        The status snapshot of a task and its tenant, or C{None} when
        unknown.

        With a budget, previews adding up to more than
        L{SMALL_PREVIEW_BYTES} are read only under a reservation of what
        they take (waited for on the reactor, never in the reader thread);
        the snapshot then carries it (a L{HeldSnapshot}) for whoever sends
        it to release.
        """
        if self.budget is None:
            return self._read(status.read_snapshot, task_id, now_ms, self.preview_ceiling, None, self.node_id)
        return Deferred.fromCoroutine(self._budgeted_snapshot(self.budget, task_id, now_ms))

    async def _budgeted_snapshot(
        self, budget: ByteBudget, task_id: str, now_ms: int
    ) -> Optional[Tuple[JSON, Optional[str]]]:
        began = time.monotonic()
        hold: Optional[Hold] = None
        try:
            for attempt in range(BUDGET_ATTEMPTS):
                allowance: Optional[int] = SMALL_PREVIEW_BYTES
                if hold is not None:
                    # Holding the whole budget, the read takes what it needs.
                    allowance = None if hold.amount >= budget.capacity else max(hold.amount, SMALL_PREVIEW_BYTES)
                # The clock moves on while a read waits for its turn.
                now = now_ms + int((time.monotonic() - began) * 1000)
                found = await self._read(
                    status.read_snapshot, task_id, now, self.preview_ceiling, allowance, self.node_id
                )
                if not isinstance(found, status.NeedBudget):
                    if found is None or hold is None:
                        return found
                    held, hold = hold, None
                    return HeldSnapshot(found[0], held), found[1]
                if hold is not None:
                    hold.release()
                    hold = None
                # A running task's logs grow: ask for a little more than
                # measured, and for everything the budget has at the last try.
                want = found.amount + found.amount // 4 + SMALL_PREVIEW_BYTES
                if attempt >= BUDGET_ATTEMPTS - 2:
                    want = budget.capacity
                hold = await budget.take(want)
            raise errors.Internal(f"cannot reserve the previews of {task_id}")
        finally:
            if hold is not None:
                hold.release()

    def list_page(self, query: ListQuery, now_ms: int) -> "Deferred[JSON]":
        """
        One page of the task listing.
        """
        return self._read(listing.list_page, query, now_ms)

    def events(self, task_id: str, after_seq: int = 0) -> "Deferred[Optional[List[Event]]]":
        """
        A task's events after C{after_seq}, ascending; C{None} when unknown.
        """
        return self._read(eventlog.events_if_exists, task_id, after_seq)

    def poll_events(self, task_id: str, after_seq: int) -> "Deferred[Tuple[Optional[str], List[Event]]]":
        """
        A task's status, then its events after C{after_seq}.
        """
        return self._read(eventlog.poll_events, task_id, after_seq)

    def open_log(self, task_id: str, name: str) -> "Deferred[Optional[OpenLog]]":
        """
        Open a task's C{stdout} or C{stderr} log.
        """
        return self._read(logfiles.open_log, task_id, name, self.node_id)

    def read_log(self, task_id: str, fd: int, pos: int, end: Optional[int]) -> "Deferred[Tuple[bytes, bool]]":
        """
        The next chunk of an open log, and whether the stream is complete.
        """
        return self._read(logfiles.read_log, task_id, fd, pos, end)

    def resources(self) -> "Deferred[Tuple[List[TaskRecord], int]]":
        """
        The tasks holding a reservation, and the queued ones holding none.
        """
        return self._read(reads.resources_rows, self.node_id)

    def metrics(self) -> "Deferred[MetricsSnapshot]":
        """
        The trigger-kept counts and histograms.
        """
        return self._read(tallies.snapshot)

    # Transitions

    def kill(
        self, task_id: str, owner: Optional[str], now_ms: int, any_owner: bool = False
    ) -> "Deferred[KillResult]":
        """
        Check and record a kill request (C{any_owner}: without the owner
        check).
        """
        return self._write(transitions.kill, task_id, owner, now_ms, any_owner, self.preview_ceiling, self.node_id)

    def finish(
        self,
        task_id: str,
        verdict: Outcome,
        now_ms: int,
        from_statuses: Sequence[str] = terminal.UNFINISHED,
    ) -> "Deferred[bool]":
        """
        Make a task terminal (conditionally) with its C{result.json}.
        """
        return self._write(terminal.finish, task_id, verdict, now_ms, tuple(from_statuses), self.preview_ceiling)

    def release_orphan_reservation(self, task_id: str, now_ms: int) -> "Deferred[None]":
        """
        Recovery: release a queued task's reservation.
        """
        return self._write(transitions.release_orphan_reservation, task_id, now_ms)

    def mark_recovered(self, task_id: str, reservation: Optional[Reservation], now_ms: int) -> "Deferred[bool]":
        """
        Recovery: a running task whose supervisor lives.
        """
        return self._write(transitions.mark_recovered, task_id, reservation, now_ms)

    # Recovery and the dispatcher

    def by_status(self, statuses: Sequence[str]) -> "Deferred[List[TaskRecord]]":
        """
        Every task in one of C{statuses}, oldest first.
        """
        return self._write(reads.load_by_status, tuple(statuses))

    def scheduler_state(self, max_queued: int) -> "Deferred[SchedulerState]":
        """
        What the dispatcher rebuilds itself from.
        """
        return self._write(reads.scheduler_state, max_queued, self.node_id)

    # Collection and repairs

    def gc(self, cutoff_ms: int, limit: int) -> "Deferred[Tuple[List[str], Failures]]":
        """
        Collect expired terminal tasks.
        """
        return self._write(gc.collect_expired, cutoff_ms, limit)

    def mark_missing_results(self, limit: int) -> "Deferred[List[str]]":
        """
        Mark recently finished tasks without their C{result.json}.
        """
        return self._write(repairs.mark_missing_results, limit, self.node_id)

    def repair_results(self, now_ms: int, limit: int) -> "Deferred[Tuple[List[str], Failures]]":
        """
        Write the marked tasks' C{result.json} files.
        """
        return self._write(repairs.repair_results, now_ms, limit, self.preview_ceiling, self.node_id)

    def task_dir_names(self, tasks_dir: str) -> "Deferred[List[str]]":
        """
        The names under C{tasks_dir} that could be task directories (on a
        reader thread: no connection needed).
        """
        return self._read(lambda conn: gc.task_dir_names(tasks_dir))

    def collect_orphans(
        self, tasks_dir: str, names: Sequence[str], now_s: float, remove_limit: int
    ) -> "Deferred[Tuple[List[str], List[str], Failures]]":
        """
        Remove the stale directories without a row, in the writer thread
        (so no submission makes one or commits its row meanwhile).
        """
        return self._write(
            gc.collect_orphans, tasks_dir, names, now_s, self.opened_s, remove_limit, gc.ORPHAN_MIN_AGE_S, self.node_id
        )

    # The cluster's nodes

    def join_node(self, node: NodeInfo, lease_ms: int, now_ms: int) -> "Deferred[None]":
        """
        Record this node as a member, or refuse its id.
        """
        return self._write(nodes.join, node, lease_ms, now_ms)

    def list_nodes(self) -> "Deferred[List[NodeRecord]]":
        """
        Every node the store knows.
        """
        return self._read(nodes.list_nodes)

    def mark_lost_nodes(self, now_ms: int) -> "Deferred[List[str]]":
        """
        The other nodes whose lease ran out, marked C{lost}.
        """
        return self._write(nodes.mark_lost, now_ms, self.node_id)

    def node_states(self) -> "Deferred[Dict[str, int]]":
        """
        How many nodes are in each state.
        """
        return self._read(nodes.count_by_state)

    def load_node(self, node_id: str) -> "Deferred[Optional[NodeRecord]]":
        """
        One node, or C{None} when the store does not know it.
        """
        return self._read(nodes.load_node, node_id)

    def orphaned_tasks(self) -> "Deferred[List[str]]":
        """
        The running tasks of the other nodes that are lost or left.
        """
        return self._read(nodes.orphaned_tasks, self.node_id)

    def close(self) -> None:
        """
        Stop the pools' threads and close their connections.
        """
        if self.reader is not self.pool:
            self.reader.close()
        self.pool.close()


def open_pool(reactor: Any, database: DatabaseUrl, connections: int = 1) -> adbapi.ConnectionPool:
    """
    Connections (one by default: the writer), each in its own thread, to
    the store at C{database}: L{open_postgres_pool} or L{open_sqlite_pool}.
    """
    if database.is_postgres:
        return open_postgres_pool(reactor, database, connections)
    return open_sqlite_pool(reactor, database.without_password, connections)


def open_postgres_pool(reactor: Any, database: DatabaseUrl, connections: int = 1) -> adbapi.ConnectionPool:
    """
    PostgreSQL connections (L{execgo.store.postgres.PgConnection}, which
    opens itself again after the server cut it), each in its own thread.
    C{cp_reconnect}: a connection that cannot even roll back is dropped
    and the next job opens another.  Nothing is connected until the first
    job: a database that is down fails the jobs (503), not the pool.
    """
    return adbapi.ConnectionPool(
        "execgo.store.postgres",
        database.connect_url,
        password=database.password,
        cp_min=1,
        cp_max=connections,
        cp_reconnect=True,
        cp_noisy=False,
        cp_reactor=reactor,
    )


def open_sqlite_pool(reactor: Any, path: str, connections: int = 1) -> adbapi.ConnectionPool:
    """
    SQLite connections (one by default: the writer), each in its own
    thread, configured for WAL, each naming its backend
    (L{SqliteConnection}).
    """
    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        isolation_level=None,
        factory=SqliteConnection,
        cp_min=1,
        cp_max=connections,
        cp_openfun=configure,
        cp_reactor=reactor,
    )
