# -*- test-case-name: tests.test_terminal -*-
"""
How a task ends: the one terminal write, made by the supervisor when it
reaps a workload and by the server when it cancels a queued task or buries
a task whose supervisor is gone.

A terminal write has three steps (L{TerminalWrite}):

1. before any lock, the task as it stands decides whether the write can
   still happen (it is in one of the statuses the write may leave), and
   its C{result.json} is rendered from the record as the write will leave
   it (L{terminal_view}) and written aside (L{ResultFile});
2. in one transaction, the conditional write of the terminal record, the
   release of the reservation and the terminal event
   (L{write_terminal}), and, after the last write and before the commit,
   the file renamed into place, so no reader ever sees a terminal task
   without its C{result.json} and the write lock is held only for a
   rename;
3. when the transaction did not commit (or the write found the task ended
   already), the file aside is removed.

A C{result.json} that cannot be written or put in place (a full or
read-only data directory) does not stop the write: the row is marked
C{result_missing} in the same transaction (L{mark_result_missing}) and the
server writes the file from the row later
(L{execgo.store.repairs.repair_results}).  L{finish} is the whole path for
one task; L{commit} writes several prepared ones in one transaction (the
supervisor's endings reaped together).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import attrs

from execgo.core.constants import (
    JSON,
    STATUS_ACCEPTED,
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_RUNNING,
    STATUS_SUCCESS,
)
from execgo.core.records import Outcome, TaskRecord
from execgo.store import notices, taskfiles
from execgo.store.backend import Query, backend_of
from execgo.store.connection import dumps, fetch_all, rows, transaction
from execgo.store.eventlog import NewEvent, append_events
from execgo.store.reads import load_task

T = TypeVar("T")

#: The statuses a terminal write may leave.
UNFINISHED = (STATUS_ACCEPTED, STATUS_RUNNING)

_TERMINAL_EVENT = {
    STATUS_SUCCESS: ("finished", "task finished"),
    STATUS_FAILED: ("failed", "task failed"),
    STATUS_CANCELLED: ("cancelled", "task cancelled"),
}


def terminal_view(record: TaskRecord, outcome: Outcome, now_ms: int) -> TaskRecord:
    """
    The record as L{write_terminal} will leave it, for rendering
    C{result.json} before the write.
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


def eligible_query(conn: sqlite3.Connection, task_id: str, from_statuses: Sequence[str]) -> Query:
    """
    The query that finds, and locks, the task a terminal write may end:
    its row when it is in one of C{from_statuses}, with its reservation and
    whether that is held.
    """
    marks = ", ".join("?" for _ in from_statuses)
    return (
        "SELECT reservation_json, reserved_at_ms IS NOT NULL AND released_at_ms IS NULL"
        f" FROM tasks WHERE task_id = ? AND status IN ({marks}){backend_of(conn).for_update}",
        (task_id, *from_statuses),
    )


def write_terminal(
    conn: sqlite3.Connection,
    task_id: str,
    outcome: Outcome,
    now_ms: int,
    from_statuses: Sequence[str] = UNFINISHED,
    found: Optional[List[Any]] = None,
) -> bool:
    """
    The row half of a terminal write: in one transaction (or the
    caller's), and only if the task is still in one of C{from_statuses},
    the terminal record, the release of its reservation and the terminal
    event.  It leaves C{result.json} alone: see L{finish}.

    @param found: the rows of L{eligible_query}, read in this transaction
        already (else they are read here).
    @return: whether this call made the task terminal.
    """
    error_json = None if outcome.error is None else dumps(outcome.error.to_json())
    usage_json = None if outcome.usage is None else dumps(outcome.usage.to_json())
    with transaction(conn):
        if found is None:
            found = rows(conn, *eligible_query(conn, task_id, from_statuses))
        if not found:
            return False
        reservation_json, reserved = found[0]
        # The reservation is released in the same statement; the row is
        # locked and known, so its result says nothing new.
        backend_of(conn).execute_later(
            conn,
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
        events: List[NewEvent] = []
        if reserved:
            data = None if reservation_json is None else json.loads(reservation_json)
            events.append(("resource_released", "task resources released", now_ms, data))
        event_type, message = _TERMINAL_EVENT[outcome.status]
        events.append((event_type, message, now_ms, None))
        append_events(conn, task_id, events)
        notices.announce(conn, notices.ENDED, task_id)
    return True


def mark_result_missing(conn: sqlite3.Connection, task_id: str) -> None:
    """
    Note, in the caller's transaction, that a terminal task has no
    C{result.json}: the server writes it from the row once the data
    directory takes it (L{execgo.store.repairs.repair_results}).
    """
    conn.execute("UPDATE tasks SET result_missing = 1 WHERE task_id = ?", (task_id,))


@attrs.define
class ResultFile:
    """
    A task's C{result.json} written beside its place (L{write_aside}),
    waiting for the terminal write: put in place (L{place}) inside the
    write's transaction, or removed (L{discard}) when the write did not
    happen.

    @ivar size: the size of the file's UTF-8 text, which bounds the
        snapshot's compact encoding.
    @ivar snapshot: the status snapshot the file holds, when its text is
        no longer than the C{keep_bytes} it was written with (else
        C{None}: a large one is not held).
    """

    _settle: Callable[[bool], None]
    size: int = 0
    snapshot: Optional[JSON] = None
    _settled: bool = False

    @classmethod
    def write_aside(
        cls, view: TaskRecord, now_ms: int, ceiling: Optional[int] = None, keep_bytes: int = 0
    ) -> "ResultFile":
        """
        Render the snapshot of C{view} (blocking: its previews are read)
        and write it beside the task's C{result.json}
        (L{taskfiles.prepare_result}: no temporary stays when this fails).

        @param ceiling: bounds the previews (C{--max-output-preview-bytes}).
        @param keep_bytes: keep the snapshot (L{snapshot}) when the file's
            text is at most this long.
        @raise OSError: the file could not be written.
        """
        rendered: List[Tuple[JSON, int]] = []
        settle = taskfiles.prepare_result(view, now_ms, lambda status, size: rendered.append((status, size)), ceiling)
        if not rendered:
            return cls(settle)
        status, size = rendered[0]
        return cls(settle, size, status if size <= keep_bytes else None)

    def place(self) -> None:
        """
        Rename the file into place.

        @raise OSError: it is not in place (and its temporary is gone).
        """
        self._settled = True
        self._settle(True)

    def discard(self) -> None:
        """
        Remove the file aside, unless it was placed or removed already (a
        failure to remove it is left to the server's repairs).
        """
        if self._settled:
            return
        self._settled = True
        try:
            self._settle(False)
        except OSError:
            pass


@attrs.define
class TerminalWrite:
    """
    One task's terminal write, in the steps of this module's description:
    L{prepare}, then (in one transaction) L{write} and L{place}, and
    L{abandon} when that transaction did not commit.  A caller prepares
    its writes and hands them to L{commit}, which runs the other steps;
    L{finish} does it all for one task.

    @ivar from_statuses: the statuses the write may leave.
    @ivar ceiling: bounds the previews of C{result.json}.
    @ivar keep_snapshot_bytes: keep the rendered snapshot
        (L{ResultFile.snapshot}) when its file text is at most this long.
    @ivar eligible: L{prepare} found the task in one of C{from_statuses}.
    @ivar took: this write made the task terminal (and committed, once
        L{commit} has returned).
    @ivar result: the file written aside (C{None}: not rendered, or it
        could not be written).
    @ivar result_missing: the task ended without its C{result.json}, and
        its row is marked for repair.
    """

    task_id: str
    outcome: Outcome
    now_ms: int
    from_statuses: Tuple[str, ...] = UNFINISHED
    ceiling: Optional[int] = None
    keep_snapshot_bytes: int = 0
    eligible: bool = False
    took: bool = False
    result: Optional[ResultFile] = None
    result_missing: bool = False

    def prepare(self, current: Optional[TaskRecord]) -> bool:
        """
        Before any lock: whether the task as it stands (C{current}, as the
        write will find it; C{None}: unknown) is in one of
        C{from_statuses}, and if so, its C{result.json} rendered from
        L{terminal_view} and written aside.  An C{OSError} there does not
        prevent the write (it will mark the task).

        @return: L{eligible}.
        """
        self.eligible = current is not None and current.status in self.from_statuses
        if current is not None and self.eligible:
            try:
                self.result = ResultFile.write_aside(
                    terminal_view(current, self.outcome, self.now_ms),
                    self.now_ms,
                    self.ceiling,
                    self.keep_snapshot_bytes,
                )
            except OSError:
                self.result = None
        return self.eligible

    def query(self, conn: sqlite3.Connection) -> Query:
        """
        The read L{write} starts from (L{eligible_query}).
        """
        return eligible_query(conn, self.task_id, self.from_statuses)

    def write(self, conn: sqlite3.Connection, found: Optional[List[Any]] = None) -> bool:
        """
        In the open transaction: the conditional row write
        (L{write_terminal}), from the rows of L{query} when they were read
        already.

        @return: L{took}.
        """
        self.took = write_terminal(conn, self.task_id, self.outcome, self.now_ms, self.from_statuses, found)
        return self.took

    def place(self, conn: sqlite3.Connection) -> None:
        """
        In the open transaction, after L{write} and before the commit: put
        C{result.json} in place; when it cannot be (it was not written
        aside, or the rename failed), mark the row for repair.
        """
        if not self.took:
            return
        try:
            if self.result is None:
                raise OSError("result.json could not be written")
            self.result.place()
        except OSError:
            self.result_missing = True
            mark_result_missing(conn, self.task_id)

    def abandon(self) -> None:
        """
        The write did not happen (or did not commit): nothing took, and
        the file aside is removed.
        """
        self.took = False
        self.result_missing = False
        if self.result is not None:
            self.result.discard()


def commit(
    conn: sqlite3.Connection,
    writes: Sequence[TerminalWrite],
    before: Callable[[sqlite3.Connection], T],
    after: Callable[[sqlite3.Connection], bool] = lambda conn: False,
) -> T:
    """
    Prepared writes in one transaction of their own (never run this
    inside a transaction of the caller's: its rollback would not be
    seen): C{before(conn)} first, then each L{TerminalWrite.write}, then
    C{after(conn)}, then each L{TerminalWrite.place}.  When anything
    raises, the transaction is rolled back and every write abandoned
    before the error goes on; after the commit, the writes that did not
    take are abandoned.

    @param before: more of the same transaction (the supervisor's pending
        start records, which a terminal write must not overtake).
    @param after: more of the same transaction, which the terminal writes
        come before (the supervisor's claims of the tasks that take the
        slots and uids these ends free); it returns whether it read from
        the store, which sent the terminal writes (and surfaced their
        errors) before anything is placed, so no round trip of their own is
        needed.  What it writes goes with the commit.
    @return: what C{before} returned.
    """
    try:
        with transaction(conn):
            done = before(conn)
            # Every write's read in one round trip.
            for write, found in zip(writes, fetch_all(conn, [write.query(conn) for write in writes])):
                write.write(conn, found)
            if not after(conn):
                # Every row written before any file is placed.
                backend_of(conn).send_waiting(conn)
            for write in writes:
                write.place(conn)
    except BaseException:
        for write in writes:
            write.abandon()
        raise
    for write in writes:
        if not write.took:
            write.abandon()
    return done


def _nothing(conn: sqlite3.Connection) -> None:
    return None


def finish(
    conn: sqlite3.Connection,
    task_id: str,
    outcome: Outcome,
    now_ms: int,
    from_statuses: Sequence[str] = UNFINISHED,
    ceiling: Optional[int] = None,
) -> bool:
    """
    The terminal write of one task, with its C{result.json}: the task is
    read, and if it is still in one of C{from_statuses}, written as
    L{commit} writes (see the module's description).

    @param ceiling: bounds the previews of C{result.json}.
    @return: whether this call made the task terminal.
    """
    write = TerminalWrite(task_id, outcome, now_ms, tuple(from_statuses), ceiling)
    if not write.prepare(load_task(conn, task_id)):
        return False
    commit(conn, [write], _nothing)
    return write.took
