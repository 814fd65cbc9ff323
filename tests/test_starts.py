"""
Tests for L{execgo.supervisor.starts}: the supervisor's start records,
written with the next transaction or on their own short timer, over a
real temporary store and a clock the test moves.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, List

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core.records import TaskRecord
from execgo.store import connection, reads, schema, transitions
from execgo.supervisor.starts import (
    START_RECORD_DELAY_S,
    START_RETRY_S,
    StartRecord,
    StartRecords,
)
from execgo.supervisor.timers import Timers
from tests.fakes import new_task

NOW_S = 1000.0
SUPERVISOR_PID = 4242


class Refusing:
    """
    A store connection that refuses every statement while C{refuse} is
    set (as a locked or full store does), and is the real one otherwise.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.refuse = True

    def execute(self, *args: Any) -> Any:
        """
        Refuse, or run the statement.
        """
        if self.refuse:
            raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class StoreCase(SynchronousTestCase):
    """
    A temporary store with running tasks, a clock the test moves
    (L{advance}) and the statements run on the store's connection
    (L{statements}).
    """

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.data_dir, "tasks"))
        self.conn = connection.connect(os.path.join(self.data_dir, "runtime.db"))
        self.addCleanup(self.conn.close)
        schema.init_schema(self.conn)
        self.now = NOW_S
        self.clock = Timers(lambda: self.now)
        self.logged: List[str] = []
        self.statements: List[str] = []

    def running(self, task_id: str) -> TaskRecord:
        """
        Insert a task and take it, as a launch order does; the record.
        """
        transitions.insert_task(self.conn, new_task(self.data_dir, task_id, make_dirs=True), self.wall_ms())
        record = transitions.claim(self.conn, task_id, SUPERVISOR_PID, self.wall_ms())
        assert record is not None
        return record

    def wall_ms(self) -> int:
        """
        The wall clock: the test's clock, in milliseconds.
        """
        return int(self.now * 1000)

    def advance(self, seconds: float) -> None:
        """
        Move the clock on and run the timers that are due.
        """
        self.now += seconds
        self.clock.run_due(lambda call: call())

    def trace(self) -> None:
        """
        Record the statements run on the store's connection from now on.
        """
        self.conn.set_trace_callback(self.statements.append)
        self.addCleanup(self.conn.set_trace_callback, None)

    def load(self, task_id: str) -> TaskRecord:
        """
        A task that must exist.
        """
        record = reads.load_task(self.conn, task_id)
        assert record is not None
        return record


class StartRecordTests(StoreCase):
    """
    L{StartRecords}: each start goes with the next transaction, at the
    latest after L{START_RECORD_DELAY_S}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.starts = StartRecords(self.conn, self.clock.call_later, self.logged.append)

    def test_written_with_the_next_transaction(self) -> None:
        """
        A start written inside another transaction is forgotten once it
        commits, and its timer called off.
        """
        self.running("t")
        self.starts.add(StartRecord("t", 77, 5000, None))
        self.assertAlmostEqual(self.clock.next_delay(), START_RECORD_DELAY_S)
        with connection.transaction(self.conn):
            written = self.starts.write(self.conn)
        self.assertEqual(written, ["t"])
        self.assertEqual(self.starts.pending, {"t": StartRecord("t", 77, 5000, None)})
        self.starts.written(written)
        self.assertEqual(self.starts.pending, {})
        self.assertIsNone(self.clock.next_delay())
        record = self.load("t")
        self.assertEqual((record.pid, record.pgid, record.started_at_ms), (77, 77, 5000))

    def test_one_timer_for_many(self) -> None:
        """
        Starts recorded together share one timer, and are written in one
        transaction when it runs.
        """
        self.running("a")
        self.running("b")
        self.starts.add(StartRecord("a", 1, 5000, None))
        self.advance(START_RECORD_DELAY_S / 2)
        self.starts.add(StartRecord("b", 2, 5001, None))
        self.trace()
        self.advance(START_RECORD_DELAY_S / 2)
        self.assertEqual(self.statements.count("COMMIT"), 1)
        self.assertEqual((self.load("a").pid, self.load("b").pid), (1, 2))
        self.assertEqual(self.starts.pending, {})
        self.assertIsNone(self.clock.next_delay())

    def test_as_started(self) -> None:
        """
        A record is rendered as its pending start will leave it; one
        without a pending start is left as it is.
        """
        record = self.running("t")
        self.assertIs(self.starts.as_started(record), record)
        self.starts.add(StartRecord("t", 77, 5000, "/x/script"))
        started = self.starts.as_started(record)
        self.assertEqual(
            started,
            attrs.evolve(
                record,
                pid=77,
                pgid=77,
                started_at_ms=5000,
                updated_at_ms=5000,
                paths=attrs.evolve(record.paths, script_path="/x/script"),
            ),
        )

    def test_refused_flush_retried(self) -> None:
        """
        A store that refuses the starts has them tried again
        L{START_RETRY_S} later, the refusal logged; nothing is lost.
        """
        self.running("t")
        refusing = Refusing(self.conn)
        starts = StartRecords(refusing, self.clock.call_later, self.logged.append)  # type: ignore[arg-type]
        starts.add(StartRecord("t", 77, 5000, None))
        self.advance(START_RECORD_DELAY_S)
        self.assertEqual(self.logged, ["cannot record the start of ['t']: database is locked"])
        self.assertEqual(list(starts.pending), ["t"])
        self.assertAlmostEqual(self.clock.next_delay(), START_RETRY_S)
        refusing.refuse = False
        self.advance(START_RETRY_S)
        self.assertEqual(self.load("t").pid, 77)
        self.assertEqual(starts.pending, {})

    def test_nothing_to_flush(self) -> None:
        """
        A flush with nothing pending opens no transaction.
        """
        self.trace()
        self.starts.flush()
        self.assertEqual(self.statements, [])
