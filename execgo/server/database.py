# -*- test-case-name: tests.test_api,tests.test_upkeep,tests.test_storage_faults -*-
"""
The server's asynchronous view of the task store.

Every public method runs one plain function (from here or L{execgo.store.taskdb})
in C{adbapi}'s single database thread and returns a Deferred of models, so
no SQLite call, file read or file write ever runs on the reactor thread.
The task directory work of a request (creating files, reading previews,
writing C{result.json}, deleting directories) happens in the same thread
hop as its database work.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from execgo.core import errors, outcome
from execgo.core.models import STATUS_ACCEPTED, SubmitRequest
from execgo.host.fsio import write_file
from execgo.server.batching import Batcher
from execgo.server.budget import SMALL_PREVIEW_BYTES, ByteBudget, HeldSnapshot, Hold
from execgo.store import idempotency, taskdb, wire

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
#: Reads of one snapshot under the preview budget before giving up (the
#: last one holds the whole budget, so it always succeeds).
BUDGET_ATTEMPTS = 3


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
    The last checks of a submission, then its files: queue bound, late
    checks, duplicate id (before anything touches the disk), then the
    task files.  L{Store.submit} runs it in the writer thread
    and then L{insert_txn}, in the same hop.  A submission whose
    idempotency key is stored already is answered first
    (L{idempotency.check}), so a retry of an accepted submission never
    meets the queue bound.
    """
    if task.idempotency_key is not None:
        idempotency.check(conn, task.idempotency_key, task.idempotency_hash, task.idempotency_scope)
    if taskdb.count_accepted(conn) >= max_queued:
        raise errors.QueueFull()
    check_late()
    if taskdb.task_exists(conn, task.task_id):
        raise errors.Conflict(f"task already exists: {task.task_id}")
    try:
        _create_task_files(task, request_json, now_ms / 1000.0, opened_s)
    except (OSError, ValueError) as e:
        shutil.rmtree(task.paths.task_dir, ignore_errors=True)
        raise _task_files_error(e) from None


def _task_files_error(error: Exception) -> errors.ExecgoError:
    """
    The error for task files that could not be made: a path the file
    system refuses (NUL, too long: L{execgo.core.bounds} refuses those first,
    this is the backstop) is the request's fault, anything else the
    storage's.
    """
    if isinstance(error, ValueError) or getattr(error, "errno", None) == errno.ENAMETOOLONG:
        reason = os.strerror(errno.ENAMETOOLONG) if isinstance(error, OSError) else str(error)
        return errors.InvalidInput(f"sandbox.workspace_subdir: the file system refuses the workspace path ({reason})")
    return errors.from_storage(error)


def remove_task_dir(conn: Any, task_dir: str) -> None:
    """
    Remove the files of a submission whose row was not committed (best
    effort: what stays is collected later, L{execgo.server.upkeep}).
    """
    shutil.rmtree(task_dir, ignore_errors=True)


def insert_txn(conn: Any, task: taskdb.NewTask, now_ms: int) -> None:
    """
    The row and its first events (C{submitted}, C{accepted}, C{planned},
    and C{degraded} for a degraded plan); on a conflict the files this
    submission made are removed again.
    """
    try:
        taskdb.insert_task(conn, task, now_ms)
    except errors.Conflict:
        shutil.rmtree(task.paths.task_dir, ignore_errors=True)
        raise


def finish_txn(
    conn: Any,
    task_id: str,
    verdict: taskdb.Outcome,
    now_ms: int,
    from_statuses: Sequence[str],
    ceiling: Optional[int] = None,
) -> bool:
    """
    A terminal write with its C{result.json}, written before the commit
    (its previews bounded by C{ceiling} too, see L{wire.snapshot}).
    """
    return taskdb.finish(
        conn,
        task_id,
        verdict,
        now_ms,
        from_statuses,
        prepare_result=lambda record: wire.prepare_result(record, now_ms, ceiling=ceiling),
    )


@attrs.frozen
class NeedBudget:
    """
    A snapshot read that stopped before reading: its previews add up to
    C{amount} bytes, more than it was allowed to read.
    """

    amount: int


def preview_need(record: taskdb.TaskRecord, ceiling: Optional[int]) -> int:
    """
    The bytes reading both previews of C{record} takes now: each log's
    size, at most its limit and C{ceiling} (blocking: two C{stat}s).
    """
    need = 0
    for path, limit in (
        (record.paths.stdout_path, record.limits.stdout_max_bytes),
        (record.paths.stderr_path, record.limits.stderr_max_bytes),
    ):
        try:
            size = os.stat(path).st_size
        except OSError:
            continue
        need += min(size, limit if ceiling is None else min(limit, ceiling))
    return need


def snapshot_txn(
    conn: Any, task_id: str, now_ms: int, ceiling: Optional[int] = None, allowance: Optional[int] = None
) -> "Optional[Tuple[JSON, Optional[str]] | NeedBudget]":
    """
    The status snapshot of a task, previews included, and its tenant; or
    C{None}.

    @param ceiling: bounds each preview (L{wire.snapshot}).
    @param allowance: when not C{None}, the bytes the previews may take:
        a task whose previews need more is not read (L{NeedBudget}).
    """
    record = taskdb.load_task(conn, task_id)
    if record is None:
        return None
    if allowance is not None:
        need = preview_need(record, ceiling)
        if need > allowance:
            return NeedBudget(need)
    return (wire.snapshot(record, now_ms, ceiling), record.tenant)


def kill_txn(
    conn: Any,
    task_id: str,
    owner: Optional[str],
    now_ms: int,
    any_owner: bool = False,
    ceiling: Optional[int] = None,
) -> KillResult:
    """
    The store half of a kill: an unknown task, then the owner check; a
    task not yet terminal gets its kill flag and, if still queued, is
    cancelled.

    @param any_owner: skip the owner check (an admin token's kill).
    @param ceiling: bounds the previews (L{wire.snapshot}).
    """
    record = taskdb.load_task(conn, task_id)
    if record is None:
        raise errors.NotFound(task_id)
    if not any_owner and record.owner is not None and owner != record.owner:
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
                ceiling,
            )
    record = taskdb.load_task(conn, task_id)
    assert record is not None
    return KillResult(
        snapshot=wire.snapshot(record, now_ms, ceiling),
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
        hop.  When the row does not commit (the insert or the hop's shared
        commit failed), the files this submission made are removed, so no
        task directory is left without a row.
        """
        request_json = request.to_json()
        made: List[bool] = []

        def prepare(conn: Any) -> None:
            prepare_submit(conn, task, request_json, max_queued, check_late, now_ms, self.opened_s)
            made.append(True)

        def undo(failure: Any) -> Any:
            # insert_txn removed them already on a conflict.
            if made and not failure.check(errors.Conflict):
                return self.run(remove_task_dir, task.paths.task_dir).addBoth(lambda _: failure)
            return failure

        d = self._writes.run_grouped(prepare, lambda conn, _: insert_txn(conn, task, now_ms))
        d.addErrback(undo)
        return d

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
            return self.read(snapshot_txn, task_id, now_ms, self.preview_ceiling)
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
                found = await self.read(snapshot_txn, task_id, now, self.preview_ceiling, allowance)
                if not isinstance(found, NeedBudget):
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

    def kill(
        self, task_id: str, owner: Optional[str], now_ms: int, any_owner: bool = False
    ) -> "Deferred[KillResult]":
        """
        Check and record a kill request (C{any_owner}: without the owner
        check).
        """
        return self.run(kill_txn, task_id, owner, now_ms, any_owner, self.preview_ceiling)

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
        return self.run(finish_txn, task_id, verdict, now_ms, tuple(from_statuses), self.preview_ceiling)

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
