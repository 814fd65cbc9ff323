# -*- test-case-name: tests.test_endings,tests.test_supervisor -*-
"""
How the supervisor engine writes the end of a task and tells the servers:
C{result.json} rendered and written aside, the terminal record (with the
start records still pending) written in one transaction, then a
C{finished} report (L{Endings}).  The ends met while reaping are written
together (L{Endings.together}); a store that cannot take a write is
retried every L{FINISH_RETRY_S}, task by task, so no task is left
C{running} once the store recovers.

Standard library only (plus C{attrs}).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

import attrs

from execgo.control import Finished, Report
from execgo.core.records import Outcome, TaskRecord
from execgo.store import connection, reads, terminal, transitions
from execgo.supervisor.starts import StartRecords
from execgo.supervisor.timers import Timer

#: The largest terminal snapshot (as C{result.json} text, which bounds its
#: compact JSON) sent with a C{finished} report; bigger ones (long output
#: previews, large metadata) are read from the store.
REPORTED_STATUS_MAX_BYTES = 32 * 1024
#: A C{result.json} longer than this (in bytes: its previews are most of
#: it) makes a rendering spike worth forgetting: the supervisor resets its
#: peak RSS after it.
PEAK_RESET_PREVIEW_CHARS = 256 * 1024
#: How soon an end the store refused is written again.
FINISH_RETRY_S = 1.0


@attrs.define
class Ending:
    """
    A task's end in the making: its verdict, the record it is rendered
    from, and its terminal write (L{terminal.TerminalWrite}, once
    prepared), which keeps the snapshot rendered for C{result.json} for
    the report when it is small enough to be reported.
    """

    task_id: str
    verdict: Outcome
    attempt: int = 0
    current: Optional[TaskRecord] = None
    write: Optional[terminal.TerminalWrite] = None


class Endings:
    """
    Writes the ends of tasks and reports them.

    @param conn: the supervisor's store connection.
    @param starts: the start records not written yet: they go in the same
        transaction, before the ends.
    @param call_later: the engine's clock: C{call_later(delay, call)}.
    @param wall_ms: wall clock, epoch milliseconds, for what is recorded.
    @param emit: takes each report for the connected servers.
    @param reset_peak_rss: forgets this process's passing memory peak.
    @param log: takes each line worth an operator's attention.
    @param preview_ceiling: bounds the previews of C{result.json}.

    @ivar preview_ceiling: as given; the engine changes it when the
        settings change.
    @ivar pending: the verdicts whose write the store refused, by task id,
        until they are written.
    @ivar successors: called inside each transaction that writes ends,
        after them (the engine's claims of the tasks that take the freed
        slots); what it returns, if anything, is called once the
        transaction is over, with whether it committed, after the ends
        are reported.  It returns something only when it claimed, which
        reads the store first (L{terminal.commit}'s C{after}).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        starts: StartRecords,
        call_later: Callable[[float, Callable[[], object]], Timer],
        wall_ms: Callable[[], int],
        emit: Callable[[Report], None],
        reset_peak_rss: Callable[[], object],
        log: Callable[[str], None],
        preview_ceiling: Optional[int] = None,
    ) -> None:
        self.conn = conn
        self.starts = starts
        self.call_later = call_later
        self.wall_ms = wall_ms
        self.emit = emit
        self.reset_peak_rss = reset_peak_rss
        self.log = log
        self.preview_ceiling = preview_ceiling
        self.pending: Dict[str, Outcome] = {}
        self.successors: Callable[[sqlite3.Connection], Optional[Callable[[bool], None]]] = lambda conn: None
        self._gathered: Optional[List[Ending]] = None
        self._settle: Optional[Callable[[bool], None]] = None

    def finish(self, task_id: str, verdict: Outcome, attempt: int = 0, current: Optional[TaskRecord] = None) -> None:
        """
        Write the terminal record of C{task_id} and, before it commits, its
        C{result.json}; then tell the servers.  Inside L{together}, the
        write waits for the others met there.

        @param attempt: how many writes of this end failed before.
        @param current: the task as last read, when it was (else it is
            read here).
        """
        ending = Ending(task_id, verdict, attempt, current)
        if self._gathered is not None:
            self._gathered.append(ending)
        else:
            self._end([ending])

    @contextmanager
    def together(self) -> Iterator[None]:
        """
        Gather the ends finished inside the block and write them in one
        transaction when it is left (however it is left): the tasks a
        reaping found ended at once.
        """
        self._gathered = []
        try:
            yield
        finally:
            gathered, self._gathered = self._gathered, None
            if gathered:
                self._end(gathered)

    def _end(self, endings: List[Ending]) -> None:
        """
        Render each task's C{result.json} aside, write every terminal
        record (and the pending start records) in one transaction, then
        report; or, when the store refuses, abandon what was written aside
        and try each again later.
        """
        now = self.wall_ms()
        try:
            for ending in endings:
                self._prepare(ending, now)
            written = self._write([e for e in endings if e.write is not None and e.write.eligible])
        except (connection.backend_of(self.conn).Error, OSError) as e:
            for ending in endings:
                if ending.write is not None:
                    ending.write.abandon()
                self.log(f"cannot record the end of {ending.task_id} (attempt {ending.attempt + 1}): {e}")
                self._retry_later(ending)
            if transitions.refused_for_lease(e):
                # Written again under the next lease, if still running then.
                self.starts.on_stale()
            self._settled(False)
            return
        except BaseException:
            self._settled(False)
            raise
        self.starts.written(written)
        for ending in endings:
            self._report(ending)
        self._settled(True)

    def _successors(self, conn: sqlite3.Connection) -> bool:
        # A claim reads the rows it takes first: whatever it returned, it read.
        self._settle = self.successors(conn)
        return self._settle is not None

    def _settled(self, committed: bool) -> None:
        settle, self._settle = self._settle, None
        if settle is not None:
            settle(committed)

    def _prepare(self, ending: Ending, now: int) -> None:
        """
        The first step of the ending's terminal write: the task as the
        write will find it (its pending start written first), its
        C{result.json} written aside.
        """
        current = ending.current
        if current is None:
            current = reads.load_task(self.conn, ending.task_id)
        ending.write = terminal.TerminalWrite(
            ending.task_id,
            ending.verdict,
            now,
            ceiling=self.preview_ceiling,
            keep_snapshot_bytes=REPORTED_STATUS_MAX_BYTES,
        )
        ending.write.prepare(None if current is None else self.starts.as_started(current))

    def _write(self, endings: List[Ending]) -> List[str]:
        """
        The terminal writes of C{endings} in one transaction with the
        pending start records (L{terminal.commit}); the start records
        written.
        """
        if not endings:
            return []
        written = terminal.commit(
            self.conn, [ending.write for ending in endings if ending.write], self.starts.write, self._successors
        )
        for ending in endings:
            if ending.write is not None and ending.write.result_missing:
                # Ended all the same; the server writes the file once the
                # data directory takes it.
                self.log(f"cannot write the result.json of {ending.task_id}; marked for repair")
        return written

    def _report(self, ending: Ending) -> None:
        """
        Tell the servers the task ended, with its terminal snapshot when
        this write made it and it is small enough.
        """
        self.pending.pop(ending.task_id, None)
        write, ending.write = ending.write, None
        carried = None
        if write is not None and write.took and write.result is not None:
            # Sent as compact JSON, no bigger than the result.json text.
            carried = write.result.snapshot
        self.emit(Finished(ending.task_id, carried))
        if write is not None and write.result is not None and write.result.size > PEAK_RESET_PREVIEW_CHARS:
            # Rendering it took memory for a moment: later workloads
            # would report that peak as theirs (see reset_peak_rss).
            self.reset_peak_rss()

    def _retry_later(self, ending: Ending) -> None:
        task_id, attempt = ending.task_id, ending.attempt + 1
        self.pending[task_id] = ending.verdict
        self.call_later(FINISH_RETRY_S, lambda: self._retry(task_id, attempt))

    def _retry(self, task_id: str, attempt: int) -> None:
        verdict = self.pending.get(task_id)
        if verdict is not None:
            self.finish(task_id, verdict, attempt)
