# -*- test-case-name: tests.test_starts,tests.test_supervisor -*-
"""
The start records of the supervisor engine: a workload's start (its pid,
when, its script) is not written on its own but with the supervisor's
next transaction (the next claim, or the task's own terminal write when
it ends first), and at the latest after L{START_RECORD_DELAY_S}: a short
task then costs two transactions instead of three.

Standard library only (plus C{attrs}).
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Dict, List, Optional

import attrs

from execgo.core.records import TaskRecord
from execgo.store import connection, transitions
from execgo.supervisor.timers import Timer

#: The longest a start waits for a transaction to go with.
START_RECORD_DELAY_S = 0.005
#: How soon starts the store refused are written again.
START_RETRY_S = 1.0


@attrs.frozen
class StartRecord:
    """
    A workload's start, not yet written to the store.
    """

    task_id: str
    pid: int
    at_ms: int
    script_path: Optional[str]


class StartRecords:
    """
    The starts not yet written, each written with the next transaction
    that takes them (L{write}, then L{written} once it commits) or by a
    timer of their own (L{flush}).

    @param conn: the supervisor's store connection, for L{flush}.
    @param call_later: the engine's clock: C{call_later(delay, call)}.
    @param log: takes each line worth an operator's attention.

    @ivar pending: the starts not written yet, by task id.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        call_later: Callable[[float, Callable[[], object]], Timer],
        log: Callable[[str], None],
    ) -> None:
        self.conn = conn
        self.call_later = call_later
        self.log = log
        self.pending: Dict[str, StartRecord] = {}
        self._timer: Optional[Timer] = None
        #: Called with the connection at the head of every write
        #: transaction of the supervisor (L{write}): the node's lease
        #: guard, when it holds one that fences (set by the engine).
        self.guard: Callable[[sqlite3.Connection], None] = lambda conn: None
        #: Called when the store refused a write for a stale lease.
        self.on_stale: Callable[[], None] = lambda: None

    def add(self, start: StartRecord) -> None:
        """
        Write C{start} with the next transaction, at the latest after
        L{START_RECORD_DELAY_S}.
        """
        self.pending[start.task_id] = start
        if self._timer is None:
            self._timer = self.call_later(START_RECORD_DELAY_S, self.flush)

    def write(self, conn: sqlite3.Connection) -> List[str]:
        """
        Write every pending start inside the transaction open on C{conn},
        after the lease guard (L{guard}: every write transaction of the
        supervisor goes through here first); the ids written, for
        L{written} once it commits.
        """
        self.guard(conn)
        for start in self.pending.values():
            transitions.record_start(conn, start.task_id, start.pid, start.at_ms, start.script_path)
        return list(self.pending)

    def written(self, task_ids: List[str]) -> None:
        """
        The transaction that wrote the starts of C{task_ids} committed:
        forget them (and the timer, when none is left).
        """
        for task_id in task_ids:
            self.pending.pop(task_id, None)
        if not self.pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def as_started(self, record: TaskRecord) -> TaskRecord:
        """
        C{record} as it will be once its pending start is written (what a
        terminal write, which writes it first, renders from).
        """
        start = self.pending.get(record.task_id)
        if start is None:
            return record
        return attrs.evolve(
            record,
            pid=start.pid,
            pgid=start.pid,
            started_at_ms=start.at_ms,
            updated_at_ms=start.at_ms,
            paths=attrs.evolve(record.paths, script_path=start.script_path or record.paths.script_path),
        )

    def flush(self) -> None:
        """
        Write every pending start now, in a transaction of its own; a store
        that refuses is tried again after L{START_RETRY_S} (the workloads
        run and are supervised meanwhile).
        """
        self._timer = None
        if not self.pending:
            return
        try:
            with connection.transaction(self.conn):
                written = self.write(self.conn)
        except (connection.backend_of(self.conn).Error, OSError) as e:
            self.log(f"cannot record the start of {sorted(self.pending)}: {e}")
            if transitions.refused_for_lease(e):
                self.on_stale()
            self._timer = self.call_later(START_RETRY_S, self.flush)
            return
        self.written(written)
