# -*- test-case-name: tests.test_store -*-
"""
The server's asynchronous view of the task store.

Every public method runs one plain function (from here or L{execgo.taskdb})
in C{adbapi}'s single database thread and returns a Deferred of models, so
no SQLite call, file read or file write ever runs on the reactor thread.
The task directory work of a request (creating files, reading previews,
writing C{result.json}, deleting directories) happens in the same thread
hop as its database work.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from execgo import errors, idempotency, outcome, taskdb, wire
from execgo.batching import Batcher
from execgo.fsio import write_file
from execgo.models import STATUS_ACCEPTED, SubmitRequest

JSON = Dict[str, Any]


@attrs.frozen
class KillResult:
    """
    What a kill request did: the snapshot to answer with, and what the
    server must still do (signal a running task, forget a queued one).
    """

    snapshot: JSON
    record: taskdb.TaskRecord
    flagged: bool
    cancelled_queued: bool


@attrs.frozen
class SchedulerState:
    """
    What the dispatcher rebuilds itself from: active reservations and the
    queue, oldest first.
    """

    active: Tuple[taskdb.TaskRecord, ...]
    queued: Tuple[Any, ...]


CLAIM_STALE_S = 60.0


def _claim_task_dir(task_dir: str, now_s: float, opened_s: float = 0.0) -> None:
    """
    Create the task directory exclusively: its existence is what keeps two
    concurrent submissions with one id from both writing files.  A
    directory without a row that was made before this server opened the
    store (left by a crash between file creation and the insert: no
    submission of ours can be making it), or longer ago than
    L{CLAIM_STALE_S}, is taken over.
    """
    try:
        os.mkdir(task_dir)
        return
    except FileExistsError:
        pass
    made = os.stat(task_dir).st_mtime
    if made >= opened_s and now_s - made < CLAIM_STALE_S:
        raise errors.Conflict(f"task already exists: {os.path.basename(task_dir)}")
    shutil.rmtree(task_dir, ignore_errors=True)
    os.mkdir(task_dir)


def _create_task_files(
    task: taskdb.NewTask, request_json: JSON, now_s: float, opened_s: float = 0.0
) -> None:
    paths = task.paths
    _claim_task_dir(paths.task_dir, now_s, opened_s)
    os.makedirs(paths.workspace_dir, exist_ok=True)
    write_file(paths.request_path, wire.pretty(request_json).encode("utf-8"), exclusive=True, mode=0o600)
    for log in (paths.stdout_path, paths.stderr_path):
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT, 0o600))


def prepare_submit(
    conn: Any,
    task: taskdb.NewTask,
    request_json: JSON,
    max_queued: int,
    check_late: Callable[[], None],
    now_ms: int,
    opened_s: float = 0.0,
) -> None:
    """
    The checks and files of submit (C{behavior.md} 3 steps 7-9): queue
    bound, late checks, duplicate id (before anything touches the disk),
    then the task files.  L{Store.submit} runs it in the writer thread
    and then L{insert_txn}, in the same hop.  A submission whose
    idempotency key is stored already is answered first
    (L{idempotency.check}), so a retry of an accepted submission never
    meets the queue bound.
    """
    if task.idempotency_key is not None:
        idempotency.check(conn, task.idempotency_key, task.idempotency_hash)
    if taskdb.count_accepted(conn) >= max_queued:
        raise errors.QueueFull()
    check_late()
    if taskdb.task_exists(conn, task.task_id):
        raise errors.Conflict(f"task already exists: {task.task_id}")
    try:
        _create_task_files(task, request_json, now_ms / 1000.0, opened_s)
    except OSError as e:
        shutil.rmtree(task.paths.task_dir, ignore_errors=True)
        raise errors.from_storage(e) from None


def insert_txn(conn: Any, task: taskdb.NewTask, now_ms: int) -> None:
    """
    The row and its first events (step 10); on a conflict the files this
    submission made are removed again.
    """
    try:
        taskdb.insert_task(conn, task, now_ms)
    except errors.Conflict:
        shutil.rmtree(task.paths.task_dir, ignore_errors=True)
        raise


def finish_txn(
    conn: Any, task_id: str, verdict: taskdb.Outcome, now_ms: int, from_statuses: Sequence[str]
) -> bool:
    """
    A terminal write with its C{result.json}, written before the commit.
    """
    return taskdb.finish(
        conn,
        task_id,
        verdict,
        now_ms,
        from_statuses,
        prepare_result=lambda record: wire.prepare_result(record, now_ms),
    )


def snapshot_txn(conn: Any, task_id: str, now_ms: int) -> Optional[JSON]:
    """
    The status snapshot of a task, previews included, or C{None}.
    """
    record = taskdb.load_task(conn, task_id)
    return None if record is None else wire.snapshot(record, now_ms)


def kill_txn(conn: Any, task_id: str, owner: Optional[str], now_ms: int) -> KillResult:
    """
    The store half of a kill (C{api.md} 5 checks, C{behavior.md} 9).
    """
    record = taskdb.load_task(conn, task_id)
    if record is None:
        raise errors.NotFound(task_id)
    if record.owner is not None and owner != record.owner:
        raise errors.PermissionDenied(f"kill requires owner '{record.owner}'")
    flagged = False
    cancelled = False
    if not record.terminal:
        flagged = taskdb.request_kill(conn, task_id, now_ms)
        if flagged and record.status == STATUS_ACCEPTED:
            cancelled = finish_txn(
                conn,
                task_id,
                outcome.cancelled("task cancelled before execution"),
                now_ms,
                (STATUS_ACCEPTED,),
            )
    record = taskdb.load_task(conn, task_id)
    assert record is not None
    return KillResult(
        snapshot=wire.snapshot(record, now_ms),
        record=record,
        flagged=flagged,
        cancelled_queued=cancelled,
    )


def scheduler_state_txn(conn: Any, max_queued: int) -> SchedulerState:
    """
    Active reservations and up to C{max_queued} queued tasks.
    """
    return SchedulerState(
        active=tuple(taskdb.load_active(conn)),
        queued=tuple(taskdb.load_queue(conn, max(max_queued, 0))),
    )


def gc_txn(conn: Any, cutoff_ms: int, limit: int) -> Tuple[List[str], List[Tuple[str, str]]]:
    """
    Delete expired terminal tasks: directory first, then the row.

    @return: the collected ids, and C{(task_id, error)} for directories that
        could not be removed (their rows stay for the next run).
    """
    collected: List[str] = []
    failures: List[Tuple[str, str]] = []
    for task_id, task_dir in taskdb.gc_candidates(conn, cutoff_ms, limit):
        try:
            shutil.rmtree(task_dir)
        except FileNotFoundError:
            pass
        except OSError as e:
            failures.append((task_id, str(e)))
            continue
        taskdb.delete_task(conn, task_id)
        collected.append(task_id)
    return collected, failures


class Store:
    """
    The task store behind C{adbapi}: one writer connection in one thread
    (every change, and the reads whose order against changes matters), and
    a small pool of reader connections for the API's reads, which WAL lets
    run beside the writer without blocking it.

    @param pool: the writer pool, see L{open_pool}.
    @param reader: the reader pool (defaults to the writer).
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        reader: Optional[adbapi.ConnectionPool] = None,
        reader_lanes: int = 1,
    ) -> None:
        self.pool = pool
        self.reader = pool if reader is None else reader
        self.opened_s = time.time()
        self._writes = Batcher(pool, group=taskdb.transaction)
        self._reads = self._writes if reader is None else Batcher(self.reader, reader_lanes)

    def run(self, func: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """
        Run C{func(connection, *args)} in the writer thread (batched with
        other writes under load, in order).
        """
        return self._writes.run(func, *args)

    def read(self, func: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """
        Run the read-only C{func(connection, *args)} on a reader connection.
        """
        return self._reads.run(func, *args)

    def init_schema(self) -> "Deferred[None]":
        """
        Create or upgrade the schema (idempotent; C{/readyz} runs it too).
        """
        return self.run(taskdb.init_schema)

    def submit(
        self,
        task: taskdb.NewTask,
        request: SubmitRequest,
        max_queued: int,
        check_late: Callable[[], None],
        now_ms: int,
    ) -> "Deferred[None]":
        """
        Persist a validated, planned submission: checks and files, then
        the insert, which commits with the other submissions of its writer
        hop.
        """
        request_json = request.to_json()
        return self._writes.run_grouped(
            lambda conn: prepare_submit(conn, task, request_json, max_queued, check_late, now_ms, self.opened_s),
            lambda conn, _: insert_txn(conn, task, now_ms),
        )

    def snapshot(self, task_id: str, now_ms: int) -> "Deferred[Optional[JSON]]":
        """
        The status snapshot of a task, or C{None} when unknown.
        """
        return self.read(snapshot_txn, task_id, now_ms)

    def load(self, task_id: str) -> "Deferred[Optional[taskdb.TaskRecord]]":
        """
        The stored record of a task, or C{None}.
        """
        return self.run(taskdb.load_task, task_id)

    def events(self, task_id: str, after_seq: int = 0) -> "Deferred[List[taskdb.Event]]":
        """
        A task's events after C{after_seq}, ascending.
        """
        return self.read(taskdb.load_events, task_id, after_seq)

    def kill(self, task_id: str, owner: Optional[str], now_ms: int) -> "Deferred[KillResult]":
        """
        Check and record a kill request.
        """
        return self.run(kill_txn, task_id, owner, now_ms)

    def finish(
        self,
        task_id: str,
        verdict: taskdb.Outcome,
        now_ms: int,
        from_statuses: Sequence[str] = taskdb.UNFINISHED,
    ) -> "Deferred[bool]":
        """
        Make a task terminal (conditionally) and write its C{result.json}.
        """
        return self.run(finish_txn, task_id, verdict, now_ms, tuple(from_statuses))

    def scheduler_state(self, max_queued: int) -> "Deferred[SchedulerState]":
        """
        What the dispatcher rebuilds itself from.
        """
        return self.run(scheduler_state_txn, max_queued)

    def by_status(self, statuses: Sequence[str]) -> "Deferred[List[taskdb.TaskRecord]]":
        """
        Every task in one of C{statuses}, oldest first.
        """
        return self.run(taskdb.load_by_status, tuple(statuses))

    def gc(self, cutoff_ms: int, limit: int) -> "Deferred[Tuple[List[str], List[Tuple[str, str]]]]":
        """
        Collect expired terminal tasks.
        """
        return self.run(gc_txn, cutoff_ms, limit)

    def close(self) -> None:
        """
        Stop the pools' threads and close their connections.
        """
        if self.reader is not self.pool:
            self.reader.close()
        self.pool.close()


def open_pool(reactor: Any, path: str, connections: int = 1) -> adbapi.ConnectionPool:
    """
    SQLite connections (one by default: the writer), each in its own
    thread, configured for WAL.
    """
    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        isolation_level=None,
        cp_min=1,
        cp_max=connections,
        cp_openfun=taskdb.configure,
        cp_reactor=reactor,
    )
