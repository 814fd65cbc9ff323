"""
Tests for L{execgo.store.terminal}: the one terminal write both processes
make, against a real store (on every backend, L{backends.each}) and real
task directories.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Callable, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import outcome
from execgo.core.records import Outcome, TaskRecord
from execgo.store import (
    connection,
    eventlog,
    pgwire,
    reads,
    schema,
    taskfiles,
    terminal,
    transitions,
)
from execgo.store.backend import SQLITE, backend_of
from tests import backends
from tests.fakes import command, new_task

NOW = 1_700_000_000_000
SUCCESS = Outcome(status="success", duration_ms=7, exit_code=0)


def temporaries(task_dir: str) -> List[str]:
    """
    The C{result.json} temporaries in a task directory.
    """
    return sorted(name for name in os.listdir(task_dir) if ".tmp-" in name)


class TerminalTestCase(SynchronousTestCase):
    """
    A fresh store with task directories on disk, on the class's backend
    (SQLite unless L{backends.each} says otherwise).
    """

    backend = backends.SQLITE_BACKEND

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.data_dir, "tasks"))
        self.conn = self.backend.connect(self, self.data_dir)
        schema.init_schema(self.conn)

    def insert(self, task_id: str, running: bool = True) -> TaskRecord:
        """
        Submit a task (its files made) and, by default, claim it.
        """
        transitions.insert_task(self.conn, new_task(self.data_dir, task_id, command(), make_dirs=True), NOW)
        if running:
            self.assertIsNotNone(transitions.claim(self.conn, task_id, 99, NOW + 1))
        return self.load(task_id)

    def load(self, task_id: str) -> TaskRecord:
        """
        A task that must exist.
        """
        record = reads.load_task(self.conn, task_id)
        assert record is not None
        return record

    def result_json(self, task_id: str) -> Any:
        """
        The task's C{result.json}, parsed.
        """
        with open(self.load(task_id).paths.result_path, encoding="utf-8") as f:
            return json.load(f)

    def marked(self) -> List[str]:
        """
        The ids marked C{result_missing}.
        """
        return [r[0] for r in self.conn.execute("SELECT task_id FROM tasks WHERE result_missing = 1 ORDER BY 1")]

    def wrap_prepare(self, around: Callable[[TaskRecord, Callable[[bool], None]], Callable[[bool], None]]) -> None:
        """
        Make L{taskfiles.prepare_result} return C{around(record, settle)}
        in place of its own C{settle}.
        """
        real = taskfiles.prepare_result

        def prepare(record: TaskRecord, *args: Any) -> Callable[[bool], None]:
            return around(record, real(record, *args))

        self.patch(taskfiles, "prepare_result", prepare)


@backends.each
class FinishTests(TerminalTestCase):
    """
    L{terminal.finish}: the whole path for one task.
    """

    def test_result_is_the_stored_snapshot(self) -> None:
        """
        The task ends with its reservation released and its terminal
        event, and its C{result.json} is the snapshot of the row as
        stored, with no temporary left.
        """
        self.insert("t")
        self.assertTrue(terminal.finish(self.conn, "t", SUCCESS, NOW + 5))
        record = self.load("t")
        self.assertEqual((record.status, record.finished_at_ms, record.released_at_ms), ("success", NOW + 5, NOW + 5))
        types = [e.event_type for e in eventlog.load_events(self.conn, "t")]
        self.assertEqual(types[-2:], ["resource_released", "finished"])
        self.assertEqual(self.result_json("t"), json.loads(json.dumps(taskfiles.snapshot(record, NOW + 5))))
        self.assertEqual(temporaries(record.paths.task_dir), [])
        self.assertEqual(self.marked(), [])

    def test_placed_before_commit(self) -> None:
        """
        The file is renamed into place while the write's transaction is
        still open: another connection sees the task still running at that
        moment, and terminal (file in place) only after.
        """
        self.insert("t")
        other = self.backend.reopen(self, self.conn)
        seen: List[Optional[str]] = []

        def around(record: TaskRecord, settle: Callable[[bool], None]) -> Callable[[bool], None]:
            def checked(took: bool) -> None:
                seen.append(reads.task_status(other, "t"))
                settle(took)

            return checked

        self.wrap_prepare(around)
        self.assertTrue(terminal.finish(self.conn, "t", SUCCESS, NOW + 5))
        self.assertEqual(seen, ["running"])
        self.assertEqual(reads.task_status(other, "t"), "success")
        self.assertTrue(os.path.exists(self.load("t").paths.result_path))

    def test_not_eligible(self) -> None:
        """
        A task not in the statuses the write may leave (ended already, or
        unknown) is left alone: nothing rendered, the first end's file
        untouched.
        """
        self.insert("t")
        self.assertTrue(terminal.finish(self.conn, "t", SUCCESS, NOW + 5))
        first = self.result_json("t")
        self.patch(taskfiles, "prepare_result", lambda *args: self.fail("rendered"))
        self.assertFalse(terminal.finish(self.conn, "t", outcome.cancelled("late"), NOW + 9))
        self.assertFalse(terminal.finish(self.conn, "ghost", SUCCESS, NOW + 9))
        self.assertFalse(terminal.finish(self.conn, "t", SUCCESS, NOW + 9, ("accepted",)))
        self.assertEqual(self.result_json("t"), first)
        self.assertEqual(self.load("t").status, "success")

    def test_unwritten_result_marks_the_row(self) -> None:
        """
        A C{result.json} that cannot be written aside does not stop the
        write: the task ends, marked for repair.
        """
        self.insert("t")

        def full(*args: Any) -> Any:
            raise OSError(28, "No space left on device")

        self.patch(taskfiles, "prepare_result", full)
        self.assertTrue(terminal.finish(self.conn, "t", SUCCESS, NOW + 5))
        record = self.load("t")
        self.assertEqual(record.status, "success")
        self.assertFalse(os.path.exists(record.paths.result_path))
        self.assertEqual(self.marked(), ["t"])

    def test_failed_commit_leaves_nothing(self) -> None:
        """
        When the transaction fails, the row stays as it was and the file
        written aside is gone.
        """
        self.insert("t")

        def broken(*args: Any) -> bool:
            raise sqlite3.OperationalError("disk I/O error")

        self.patch(terminal, "write_terminal", broken)
        self.assertRaises(sqlite3.OperationalError, terminal.finish, self.conn, "t", SUCCESS, NOW + 5)
        record = self.load("t")
        self.assertEqual(record.status, "running")
        self.assertEqual(temporaries(record.paths.task_dir), [])
        self.assertFalse(os.path.exists(record.paths.result_path))


@backends.each
class TerminalWriteTests(TerminalTestCase):
    """
    L{terminal.TerminalWrite} and L{terminal.commit}: the steps, and
    several writes in one transaction.
    """

    def prepared(self, task_id: str, out: Outcome = SUCCESS, keep: int = 0) -> terminal.TerminalWrite:
        """
        A write of C{task_id}, prepared from the task as stored.
        """
        write = terminal.TerminalWrite(task_id, out, NOW + 5, keep_snapshot_bytes=keep)
        write.prepare(reads.load_task(self.conn, task_id))
        return write

    def test_together_with_before(self) -> None:
        """
        Two writes commit in one transaction with what C{before} adds,
        whose result C{commit} returns; both files are in place.
        """
        self.insert("a")
        self.insert("b")
        writes = [self.prepared("a"), self.prepared("b")]

        def before(conn: sqlite3.Connection) -> str:
            eventlog.append_event(conn, "a", "note", None, NOW + 4)
            return "noted"

        self.assertEqual(terminal.commit(self.conn, writes, before), "noted")
        self.assertEqual([w.took for w in writes], [True, True])
        for task_id in ("a", "b"):
            self.assertEqual(self.result_json(task_id)["status"], "success")
        types = [e.event_type for e in eventlog.load_events(self.conn, "a")]
        self.assertEqual(types[-3:], ["note", "resource_released", "finished"])

    def test_after_reads_for_the_writes(self) -> None:
        """
        C{after} runs after the terminal writes (its read sees them) and
        what it writes commits with them; when it says it read, the writes
        went with its read, so on PostgreSQL the commit takes three round
        trips (the reads, C{after}'s read, the commit), not four.
        """
        self.insert("a")
        self.insert("b")
        write = self.prepared("a")
        seen: List[str] = []

        def after(conn: sqlite3.Connection) -> bool:
            seen.extend(row[0] for row in connection.rows(conn, "SELECT status FROM tasks WHERE task_id = ?", ("a",)))
            eventlog.append_event(conn, "b", "note", None, NOW + 4)
            return True

        exchanges: List[int] = []
        exchange = pgwire.exchange

        def counted(session: Any, batch: Any) -> Any:
            exchanges.append(len(batch))
            return exchange(session, batch)

        self.patch(pgwire, "exchange", counted)
        terminal.commit(self.conn, [write], lambda conn: None, after)
        round_trips = len(exchanges)
        self.assertEqual(seen, ["success"])
        self.assertTrue(write.took)
        self.assertEqual(self.result_json("a")["status"], "success")
        self.assertEqual([e.event_type for e in eventlog.load_events(self.conn, "b")][-1], "note")
        if backend_of(self.conn) is not SQLITE:
            self.assertEqual(round_trips, 3, exchanges)

    def test_lost_race(self) -> None:
        """
        A write prepared while the task was running, committed after
        another writer ended it, does not take: its file aside is removed
        and the winner's C{result.json} stays.
        """
        self.insert("t")
        late = self.prepared("t")
        self.assertTrue(late.eligible)
        self.assertTrue(terminal.finish(self.conn, "t", outcome.cancelled("first"), NOW + 3))
        terminal.commit(self.conn, [late], lambda conn: None)
        self.assertFalse(late.took)
        self.assertEqual(self.result_json("t")["status"], "cancelled")
        self.assertEqual(temporaries(self.load("t").paths.task_dir), [])

    def test_failure_abandons_every_write(self) -> None:
        """
        A failure anywhere in the transaction (here in C{before}) undoes
        it all: no write took, no file is aside or in place.
        """
        self.insert("a")
        self.insert("b")
        writes = [self.prepared("a"), self.prepared("b")]

        def refuse(conn: sqlite3.Connection) -> None:
            raise sqlite3.OperationalError("database is locked")

        self.assertRaises(sqlite3.OperationalError, terminal.commit, self.conn, writes, refuse)
        for write in writes:
            record = self.load(write.task_id)
            self.assertEqual((write.took, record.status), (False, "running"))
            self.assertEqual(temporaries(record.paths.task_dir), [])
            self.assertFalse(os.path.exists(record.paths.result_path))

    def test_rename_failure_marks_only_that_task(self) -> None:
        """
        A file that cannot be renamed into place marks its own task, and
        the other write of the transaction is placed as usual.
        """
        self.insert("a")
        self.insert("b")

        def around(record: TaskRecord, settle: Callable[[bool], None]) -> Callable[[bool], None]:
            if record.task_id == "a":
                # os.replace onto a directory that is not empty fails.
                os.makedirs(os.path.join(record.paths.result_path, "x"))
            return settle

        self.wrap_prepare(around)
        writes = [self.prepared("a"), self.prepared("b")]
        terminal.commit(self.conn, writes, lambda conn: None)
        self.assertEqual([(w.took, w.result_missing) for w in writes], [(True, True), (True, False)])
        self.assertEqual(self.marked(), ["a"])
        self.assertEqual(temporaries(self.load("a").paths.task_dir), [])
        self.assertEqual(self.result_json("b")["status"], "success")

    def test_snapshot_kept_when_small(self) -> None:
        """
        The rendered snapshot is kept for a report when its file text is
        within C{keep_snapshot_bytes}, and only its size otherwise.
        """
        self.insert("small")
        self.insert("large")
        small = self.prepared("small", keep=1 << 20)
        large = self.prepared("large", keep=10)
        terminal.commit(self.conn, [small, large], lambda conn: None)
        assert small.result is not None and large.result is not None
        self.assertEqual(small.result.snapshot, self.result_json("small"))
        self.assertIsNone(large.result.snapshot)
        path = self.load("large").paths.result_path
        self.assertEqual(large.result.size, os.path.getsize(path))

    def test_terminal_view(self) -> None:
        """
        The record C{result.json} is rendered from is the record the write
        leaves.
        """
        record = self.insert("t")
        out = outcome.failed("internal", "gone")
        view = terminal.terminal_view(record, out, NOW + 5)
        terminal.write_terminal(self.conn, "t", out, NOW + 5)
        self.assertEqual(view, self.load("t"))
