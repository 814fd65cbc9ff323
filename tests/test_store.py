"""
Tests for the store's plain functions (L{execgo.store.connection},
L{execgo.store.schema}, L{execgo.store.reads}, L{execgo.store.eventlog},
L{execgo.store.transitions}, L{execgo.store.terminal}, L{execgo.store.gc},
L{execgo.store.tallies}, L{execgo.store.backend}), against a real store:
the classes decorated with L{backends.each} on every backend the tests
know, the others (SQLite's pragmas and file migrations) on SQLite.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import types
from typing import Any, List, Optional

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core import errors, records
from execgo.core.models import ControlContext, ResourceLimits, SandboxPolicy
from execgo.core.reservation import Reservation
from execgo.core.results import ErrorInfo, Usage
from execgo.host import privileges
from execgo.store import (
    connection,
    eventlog,
    gc,
    reads,
    schema,
    tallies,
    terminal,
    transitions,
)
from execgo.store.backend import SQLITE, SqliteConnection, backend_of
from tests import backends
from tests.fakes import new_task, old_store, plan_for, shell

NOW = 1_700_000_000_000


def event_types(conn: sqlite3.Connection, task_id: str) -> List[str]:
    """
    The task's event types, in order.
    """
    return [event.event_type for event in eventlog.load_events(conn, task_id)]


def assert_sorted_everywhere(testcase: SynchronousTestCase, text: str) -> None:
    """
    Every JSON object in C{text} has its keys in sorted order.
    """

    def hook(pairs: List[Any]) -> dict:
        keys = [key for key, _ in pairs]
        testcase.assertEqual(keys, sorted(keys), text)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)


def connect_with(test: SynchronousTestCase, path: str, backend: Any) -> sqlite3.Connection:
    """
    A configured SQLite connection on C{path} that names C{backend} (a
    variant of L{SQLITE}) as its own, closed when C{test} ends.
    """
    factory = type("VariantConnection", (SqliteConnection,), {"backend": backend})
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, factory=factory)
    test.addCleanup(conn.close)
    connection.configure(conn)
    return conn


class StoreTestCase(SynchronousTestCase):
    """
    A fresh store for every test, on the class's backend (SQLite unless
    L{backends.each} says otherwise).
    """

    backend = backends.SQLITE_BACKEND

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.conn = self.backend.connect(self, self.data_dir)
        schema.init_schema(self.conn)

    def insert(
        self, task_id: str = "t1", now_ms: int = NOW, request_json: Any = None, **kwargs: Any
    ) -> records.NewTask:
        """
        Insert an C{accepted} task (with the copy of its request a node
        that claims it writes, when given) and return what was inserted.
        """
        task = new_task(self.data_dir, task_id, **kwargs)
        transitions.insert_task(self.conn, task, now_ms, None, request_json)
        return task

    def load(self, task_id: str = "t1") -> records.TaskRecord:
        """
        Load a task that must exist.
        """
        record = reads.load_task(self.conn, task_id)
        assert record is not None
        return record

    def running(self, task_id: str = "t1", now_ms: int = NOW + 10, **kwargs: Any) -> None:
        """
        Insert a task and let a supervisor take it (status C{running},
        reservation active).
        """
        self.insert(task_id, **kwargs)
        self.assertIsNotNone(transitions.claim(self.conn, task_id, 99, now_ms))

    def raw_event_data(self, task_id: str, event_type: str) -> Optional[str]:
        """
        The stored C{data_json} text of the task's first event of a type.
        """
        row = self.conn.execute(
            "SELECT data_json FROM task_events WHERE task_id = ? AND event_type = ? ORDER BY seq",
            (task_id, event_type),
        ).fetchone()
        return None if row is None else row[0]


class ConnectionTests(StoreTestCase):
    """
    L{connection.connect} and L{schema.init_schema}.
    """

    def test_pragmas(self) -> None:
        """
        The connection runs in WAL mode with foreign keys on and a 5 s busy
        timeout.
        """
        self.assertEqual(self.conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(self.conn.execute("PRAGMA foreign_keys").fetchone()[0], 1)
        self.assertEqual(self.conn.execute("PRAGMA busy_timeout").fetchone()[0], 5000)

    def test_schema_tables_and_indexes(self) -> None:
        """
        The tables, every contract column and the three contract indexes
        exist.
        """
        columns = [row[1] for row in self.conn.execute("PRAGMA table_info(tasks)")]
        for name in (
            "task_id", "handle_id", "status", "execution_json", "limits_json", "sandbox_json",
            "metadata_json", "created_at_ms", "updated_at_ms", "started_at_ms", "finished_at_ms",
            "duration_ms", "shim_pid", "pid", "pgid", "exit_code", "exit_signal", "error_code",
            "error_json", "usage_json", "task_dir", "workspace_dir", "request_path", "result_path",
            "stdout_path", "stderr_path", "script_path", "stdout_max_bytes", "stderr_max_bytes",
            "kill_requested", "kill_requested_at_ms", "timeout_triggered", "result_json",
            "execution_plan_json", "control_context_json", "reservation_json", "reserved_at_ms",
            "released_at_ms",
        ):
            self.assertIn(name, columns)
        event_columns = [row[1] for row in self.conn.execute("PRAGMA table_info(task_events)")]
        self.assertEqual(
            event_columns, ["seq", "task_id", "event_type", "timestamp_ms", "message", "data_json"]
        )
        indexes = {
            tuple(row[2] for row in self.conn.execute(f"PRAGMA index_info({name})"))
            for (name,) in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
        self.assertIn(("status", "created_at_ms"), indexes)
        self.assertIn(("finished_at_ms",), indexes)
        self.assertIn(("task_id", "seq"), indexes)

    def test_init_idempotent(self) -> None:
        """
        Initialising again changes nothing and keeps the stored rows.
        """
        self.insert()
        schema.init_schema(self.conn)
        schema.init_schema(self.conn)
        self.assertEqual(self.load().status, "accepted")
        self.assertEqual(len(eventlog.load_events(self.conn, "t1")), 3)

    def test_adds_missing_columns(self) -> None:
        """
        An old C{tasks} table lacking newer columns gets them added; its rows
        load with the defaults (flags 0, no plan, empty metadata).
        """
        conn = old_store(self, os.path.join(self.data_dir, "old.db"))
        conn.execute(
            "INSERT INTO tasks VALUES ('old', 'old', 'running', ?, ?, ?, 5, 6, '/d/tasks/old',"
            " '/d/tasks/old/workspace', '/d/tasks/old/request.json', '/d/tasks/old/result.json',"
            " '/d/tasks/old/stdout.log', '/d/tasks/old/stderr.log', 10, 20)",
            (
                '{"kind":"command","program":"true","args":[],"env":{}}',
                '{"wall_time_ms":1000,"memory_bytes":64,"stdout_max_bytes":10,"stderr_max_bytes":20}',
                '{"profile":"process","chroot":false}',
            ),
        )
        connection.configure(conn)
        schema.init_schema(conn)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        self.assertTrue(
            {"kill_requested", "timeout_triggered", "execution_plan_json", "reservation_json",
             "metadata_json", "released_at_ms", "shim_pid"} <= columns
        )
        self.assertIsNotNone(
            conn.execute("SELECT name FROM sqlite_master WHERE name = 'task_events'").fetchone()
        )
        record = reads.load_task(conn, "old")
        assert record is not None
        self.assertEqual(record.status, "running")
        self.assertFalse(record.kill_requested)
        self.assertFalse(record.timeout_triggered)
        self.assertIsNone(record.plan)
        self.assertEqual(record.metadata, {})
        self.assertEqual(record.limits.memory_bytes, 64)
        # A second initialisation of the migrated table is a no-op.
        schema.init_schema(conn)
        self.assertEqual(reads.load_task(conn, "old"), record)

    def test_connections_name_their_backend(self) -> None:
        """
        A connection the store opens carries L{SQLITE}; a plain C{sqlite3}
        connection counts as SQLite too.
        """
        self.assertIsInstance(self.conn, SqliteConnection)
        self.assertIs(getattr(self.conn, "backend", None), SQLITE)
        self.assertIs(backend_of(self.conn), SQLITE)
        plain = sqlite3.connect(":memory:")
        self.addCleanup(plain.close)
        self.assertIs(backend_of(plain), SQLITE)

    def test_transaction_and_rows_ask_the_backend(self) -> None:
        """
        L{connection.transaction} opens its transaction with the backend's
        C{begin_write} (once, not again for a nested one), and
        L{connection.rows} makes rows with the backend's row factory.
        """
        began: List[Any] = []

        def begin(conn: Any) -> None:
            began.append(conn)
            SQLITE.begin_write(conn)

        def tagged(cursor: Any, row: Any) -> Any:
            return ("row",) + tuple(row)

        variant = attrs.evolve(SQLITE, begin_write=begin, row_factory=tagged)
        conn = connect_with(self, os.path.join(self.data_dir, "variant.db"), variant)
        with connection.transaction(conn):
            with connection.transaction(conn):
                conn.execute("CREATE TABLE x (a)")
        self.assertEqual(began, [conn])
        self.assertEqual(connection.rows(conn, "SELECT 1, 2"), [("row", 1, 2)])

    def test_transaction_rolls_back(self) -> None:
        """
        An exception inside L{connection.transaction} undoes its writes.
        """
        self.insert()

        def fail() -> None:
            with connection.transaction(self.conn):
                self.conn.execute("UPDATE tasks SET status = 'failed'")
                raise ValueError("boom")

        self.assertRaises(ValueError, fail)
        self.assertEqual(self.load().status, "accepted")

    def test_failed_commit_rolls_back(self) -> None:
        """
        A C{COMMIT} that fails (here a deferred constraint) undoes the
        transaction and leaves none open: the next transaction commits.
        """
        self.conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        self.conn.execute(
            "CREATE TABLE child (id INTEGER, parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )

        def orphan() -> None:
            with connection.transaction(self.conn):
                self.conn.execute("INSERT INTO child VALUES (1, 42)")

        self.assertRaises(backend_of(self.conn).IntegrityError, orphan)
        self.assertFalse(self.conn.in_transaction)
        with connection.transaction(self.conn):
            self.conn.execute("INSERT INTO parent VALUES (7)")
        self.assertFalse(self.conn.in_transaction)
        self.assertEqual([tuple(r) for r in connection.rows(self.conn, "SELECT id FROM parent")], [(7,)])
        self.assertEqual(connection.rows(self.conn, "SELECT id FROM child"), [])


@backends.each
class InsertTests(StoreTestCase):
    """
    L{transitions.insert_task} and reading a task back.
    """

    def test_round_trip(self) -> None:
        """
        Every stored part of a new task reads back as inserted.
        """
        context = ControlContext(tenant="alice", owner="bob", labels={"b": "2", "a": "1"})
        task = self.insert(
            "t1",
            execution=shell("echo hi", ["python3"]),
            limits=ResourceLimits(wall_time_ms=5, memory_bytes=7, stdout_max_bytes=11),
            metadata={"k": "v"},
            control_context=context,
        )
        record = self.load()
        self.assertEqual(record.status, "accepted")
        self.assertEqual(record.created_at_ms, NOW)
        self.assertEqual(record.updated_at_ms, NOW)
        self.assertEqual(record.execution, task.execution)
        self.assertEqual(record.limits, task.limits)
        self.assertEqual(record.sandbox, task.sandbox)
        self.assertEqual(record.metadata, {"k": "v"})
        self.assertEqual(record.plan, task.plan)
        self.assertEqual(record.control_context, context)
        self.assertEqual(record.paths, task.paths)
        self.assertTrue(record.paths.script_path.endswith("/tasks/t1/script.py"))
        self.assertEqual((record.tenant, record.owner), ("alice", "bob"))
        self.assertFalse(record.terminal)
        self.assertFalse(record.reservation_active)
        self.assertIsNone(record.reservation)
        row = self.conn.execute(
            "SELECT handle_id, stdout_max_bytes, stderr_max_bytes FROM tasks"
        ).fetchone()
        self.assertEqual(tuple(row), ("t1", 11, task.limits.stderr_max_bytes))
        self.assertTrue(reads.task_exists(self.conn, "t1"))
        self.assertFalse(reads.task_exists(self.conn, "t2"))
        self.assertEqual(reads.count_accepted(self.conn), 1)

    def test_insert_events(self) -> None:
        """
        Inserting appends C{submitted}, C{accepted}, C{planned} (the plan as
        data) with the insert time.
        """
        task = self.insert()
        events = eventlog.load_events(self.conn, "t1")
        self.assertEqual(
            [(e.event_type, e.message, e.timestamp_ms) for e in events],
            [
                ("submitted", "task submitted", NOW),
                ("accepted", "task accepted", NOW),
                ("planned", "execution plan resolved", NOW),
            ],
        )
        self.assertIsNone(events[0].data)
        self.assertEqual(events[2].data, task.plan.to_json())

    def test_degraded_event(self) -> None:
        """
        A degraded plan adds a C{degraded} event with the reasons and the
        effective sandbox.
        """
        sandbox = SandboxPolicy(workspace_subdir="w")
        plan = plan_for(sandbox=sandbox, degraded=True, fallback_reasons=("r1", "r2"))
        self.insert(plan=plan, sandbox=sandbox)
        events = eventlog.load_events(self.conn, "t1")
        self.assertEqual(
            [e.event_type for e in events], ["submitted", "accepted", "planned", "degraded"]
        )
        self.assertEqual(events[3].message, "execution plan degraded")
        self.assertEqual(
            events[3].data,
            {"effective_sandbox": sandbox.to_json(), "fallback_reasons": ["r1", "r2"]},
        )

    def test_event_data_sorted(self) -> None:
        """
        Event data is stored as compact JSON with keys sorted at every
        nesting level (unlike the plan column, stored in wire order).
        """
        sandbox = SandboxPolicy(workspace_subdir="w")
        self.insert(
            plan=plan_for(
                ResourceLimits(memory_bytes=5), sandbox, degraded=True, fallback_reasons=("r",)
            ),
            limits=ResourceLimits(memory_bytes=5),
            sandbox=sandbox,
        )
        for event_type in ("planned", "degraded"):
            text = self.raw_event_data("t1", event_type)
            assert text is not None
            assert_sorted_everywhere(self, text)
            self.assertNotIn(" ", text)
        plan_text = self.conn.execute("SELECT execution_plan_json FROM tasks").fetchone()[0]
        self.assertTrue(plan_text.startswith('{"capability_mode":"adaptive","requested_sandbox"'))

    def test_duplicate(self) -> None:
        """
        A second insert with the same id raises L{errors.Conflict} and
        writes nothing (no extra events, the first row intact).
        """
        self.insert("t1", metadata={"first": "1"})
        error = self.assertRaises(
            errors.Conflict, self.insert, "t1", now_ms=NOW + 5, metadata={"second": "2"}
        )
        self.assertEqual(error.code, "conflict")
        self.assertIn("t1", error.message)
        self.assertEqual(self.load().metadata, {"first": "1"})
        self.assertEqual(len(eventlog.load_events(self.conn, "t1")), 3)

    def test_labels_carry_the_rowid(self) -> None:
        """
        The label rows of a task carry its row id (the listing's position),
        as the insert itself returns it.
        """
        self.insert("a")
        self.insert("b", control_context=ControlContext(labels={"k": "v", "j": "w"}))
        pairs = self.conn.execute(
            "SELECT l.task_rowid, t.rowid FROM task_labels l, tasks t WHERE t.task_id = l.task_id"
        ).fetchall()
        self.assertEqual([tuple(pair) for pair in pairs], [(2, 2), (2, 2)])

    def test_unknown(self) -> None:
        """
        Unknown ids load as C{None}; their events as C{[]} or C{None}.
        """
        self.assertIsNone(reads.load_task(self.conn, "nope"))
        self.assertEqual(eventlog.load_events(self.conn, "nope"), [])
        self.assertIsNone(eventlog.events_if_exists(self.conn, "nope"))
        self.insert()
        self.assertEqual(len(eventlog.events_if_exists(self.conn, "t1") or []), 3)

    def test_submitted_counter(self) -> None:
        """
        Each insert bumps the persistent C{submitted} counter of its tenant.
        """
        self.insert("a")
        self.insert("b", control_context=ControlContext(tenant="x"))
        self.insert("c", control_context=ControlContext(tenant="x"))
        self.assertEqual(tallies.snapshot(self.conn).submitted, (("", 1), ("x", 2)))


@backends.each
class EventTests(StoreTestCase):
    """
    Event ordering and L{eventlog.append_event}.
    """

    def test_store_wide_sequence(self) -> None:
        """
        C{seq} increases across tasks; each task's events come ascending.
        """
        self.insert("a")
        self.insert("b")
        eventlog.append_event(self.conn, "a", "kill_requested", "kill requested", NOW + 1)
        seqs_a = [e.seq for e in eventlog.load_events(self.conn, "a")]
        seqs_b = [e.seq for e in eventlog.load_events(self.conn, "b")]
        self.assertEqual(seqs_a, sorted(seqs_a))
        self.assertEqual(seqs_a[:3], [1, 2, 3])
        self.assertEqual(seqs_b, [4, 5, 6])
        self.assertEqual(seqs_a[3], 7)

    def test_after_seq(self) -> None:
        """
        C{after_seq} returns only later events.
        """
        self.insert("a")
        events = eventlog.load_events(self.conn, "a", after_seq=2)
        self.assertEqual([e.seq for e in events], [3])
        self.assertEqual(eventlog.load_events(self.conn, "a", after_seq=3), [])
        self.assertEqual(
            [e.seq for e in eventlog.events_if_exists(self.conn, "a", 1) or []], [2, 3]
        )

    def test_nested_data_sorted(self) -> None:
        """
        Appended data is stored with sorted keys at every level, non-ASCII
        kept raw.
        """
        self.insert("a")
        eventlog.append_event(
            self.conn, "a", "x", None, NOW, {"z": {"b": 1, "a": [{"d": 1, "c": "é"}]}, "y": None}
        )
        text = self.raw_event_data("a", "x")
        self.assertEqual(text, '{"y":null,"z":{"a":[{"c":"é","d":1}],"b":1}}')
        event = eventlog.load_events(self.conn, "a")[-1]
        self.assertIsNone(event.message)

    def test_foreign_key(self) -> None:
        """
        An event for an unknown task is refused.
        """
        self.assertRaises(
            self.backend.backend.IntegrityError, eventlog.append_event, self.conn, "ghost", "x", None, NOW
        )


@backends.each
class TransitionTests(StoreTestCase):
    """
    The conditional state transitions.
    """

    def test_claim(self) -> None:
        """
        An C{accepted} task becomes C{running} under the supervisor pid with
        the reservation its limits make and a C{resource_reserved} event;
        the claim returns the task as it now stands.
        """
        self.insert(limits=ResourceLimits(memory_bytes=64))
        claimed = transitions.claim(self.conn, "t1", 77, NOW + 3)
        record = self.load()
        self.assertEqual(claimed, record)
        self.assertEqual(record.status, "running")
        self.assertEqual(record.shim_pid, 77)
        self.assertEqual(record.reservation, Reservation(memory_bytes=64))
        self.assertEqual(record.reserved_at_ms, NOW + 3)
        self.assertIsNone(record.released_at_ms)
        self.assertEqual(record.updated_at_ms, NOW + 3)
        self.assertTrue(record.reservation_active)
        last = eventlog.load_events(self.conn, "t1")[-1]
        self.assertEqual(
            (last.event_type, last.message, last.data),
            ("resource_reserved", "task resources reserved", {"memory_bytes": 64, "task_slots": 1}),
        )
        # A second claim (a duplicate launch order) changes nothing.
        self.assertIsNone(transitions.claim(self.conn, "t1", 78, NOW + 4))
        self.assertEqual(self.load(), record)
        self.assertEqual(event_types(self.conn, "t1").count("resource_reserved"), 1)

    def test_claim_all(self) -> None:
        """
        Several tasks claimed in one transaction each get a uid of their
        own, none held by a task already running; one for which no uid is
        left gets L{transitions.NoIdentity} and changes nothing, while the
        others are claimed; an unknown one gets C{None}.
        """
        identity = privileges.TaskIdentity(
            kind=privileges.RANGE, owner_uid=0, owner_gid=0, first=5000, last=5002, excluded=(5001,)
        )
        for task_id in ("a", "b", "c"):
            self.insert(task_id)
        first = transitions.claim(self.conn, "a", 1, NOW + 1, identity)
        assert first is not None and first.run_as is not None
        self.assertEqual(first.run_as.uid, 5000)
        claimed = transitions.claim_all(self.conn, ["b", "nobody", "c"], 1, NOW + 2, identity)
        b, nobody, c = claimed
        assert isinstance(b, records.TaskRecord) and b.run_as is not None
        self.assertEqual((b.status, b.run_as.uid, self.load("b").run_as), ("running", 5002, b.run_as))
        self.assertIsNone(nobody)
        self.assertIsInstance(c, transitions.NoIdentity)
        self.assertEqual(self.load("c").status, "accepted")
        self.assertNotIn("resource_reserved", event_types(self.conn, "c"))

    def test_refresh(self) -> None:
        """
        Refreshing the record read at the claim after every transition a
        running task can go through gives what a full read gives.
        """
        self.insert(limits=ResourceLimits(memory_bytes=64))
        claimed = transitions.claim(self.conn, "t1", 77, NOW + 1)
        assert claimed is not None
        self.assertEqual(reads.refresh(self.conn, claimed), self.load())
        transitions.record_start(self.conn, "t1", 4321, NOW + 2, "/x/script.sh")
        self.assertEqual(reads.refresh(self.conn, claimed), self.load())
        transitions.request_kill(self.conn, "t1", NOW + 3)
        transitions.record_timeout(self.conn, "t1", NOW + 4)
        transitions.release_orphan_reservation(self.conn, "t1", NOW + 5)
        transitions.mark_recovered(self.conn, "t1", Reservation(memory_bytes=64), NOW + 6)
        refreshed = reads.refresh(self.conn, claimed)
        self.assertEqual(refreshed, self.load())
        assert refreshed is not None
        self.assertEqual((refreshed.pid, refreshed.kill_requested, refreshed.timeout_triggered), (4321, True, True))
        self.assertIsNone(reads.refresh(self.conn, attrs.evolve(claimed, task_id="gone")))

    def test_claim_unknown_or_ended(self) -> None:
        """
        An unknown task, or one that is terminal, is not claimed.
        """
        self.assertIsNone(transitions.claim(self.conn, "nobody", 1, NOW))
        self.insert()
        terminal.finish(self.conn, "t1", records.Outcome(status="cancelled"), NOW + 1)
        self.assertIsNone(transitions.claim(self.conn, "t1", 1, NOW + 2))
        self.assertEqual(self.load().status, "cancelled")

    def test_claim_refuses_killed(self) -> None:
        """
        A queued task flagged for kill is returned as it is, still
        C{accepted} and without a reservation, for the caller to cancel.
        """
        self.insert()
        self.assertTrue(transitions.request_kill(self.conn, "t1", NOW + 1))
        claimed = transitions.claim(self.conn, "t1", 1, NOW + 2)
        assert claimed is not None
        self.assertEqual((claimed.status, claimed.kill_requested), ("accepted", True))
        self.assertEqual(self.load().status, "accepted")
        self.assertNotIn("resource_reserved", event_types(self.conn, "t1"))

    def test_record_start(self) -> None:
        """
        The start records pid, pgid (= pid), started_at and the script path,
        with a C{started} event; only for a C{running} task.
        """
        self.insert()
        transitions.record_start(self.conn, "t1", 5, NOW, None)
        self.assertEqual((self.load().pid, event_types(self.conn, "t1")[-1]), (None, "planned"))
        transitions.claim(self.conn, "t1", 1, NOW + 1)
        transitions.record_start(self.conn, "t1", 1234, NOW + 2, "/x/script.sh")
        record = self.load()
        self.assertEqual((record.pid, record.pgid), (1234, 1234))
        self.assertEqual(record.started_at_ms, NOW + 2)
        self.assertEqual(record.paths.script_path, "/x/script.sh")
        self.assertEqual(event_types(self.conn, "t1")[-1], "started")

    def test_record_timeout_once(self) -> None:
        """
        The timeout flag and event are written once per task.
        """
        self.running()
        self.assertTrue(transitions.record_timeout(self.conn, "t1", NOW + 20))
        self.assertFalse(transitions.record_timeout(self.conn, "t1", NOW + 30))
        record = self.load()
        self.assertTrue(record.timeout_triggered)
        self.assertEqual(record.updated_at_ms, NOW + 20)
        self.assertEqual(event_types(self.conn, "t1").count("timeout_triggered"), 1)

    def test_record_timeout_not_running(self) -> None:
        """
        No timeout is recorded for a queued or terminal task.
        """
        self.insert()
        self.assertFalse(transitions.record_timeout(self.conn, "t1", NOW))
        self.assertFalse(self.load().timeout_triggered)

    def test_request_kill(self) -> None:
        """
        A kill on a non-terminal task sets the flag and its time, bumps
        C{updated_at} and appends C{kill_requested}, every time.
        """
        self.running()
        self.assertTrue(transitions.request_kill(self.conn, "t1", NOW + 50))
        self.assertTrue(transitions.request_kill(self.conn, "t1", NOW + 60))
        record = self.load()
        self.assertTrue(record.kill_requested)
        self.assertEqual(record.kill_requested_at_ms, NOW + 60)
        self.assertEqual(record.updated_at_ms, NOW + 60)
        self.assertEqual(event_types(self.conn, "t1").count("kill_requested"), 2)
        self.assertEqual(
            eventlog.load_events(self.conn, "t1")[-1].message, "kill requested"
        )

    def test_request_kill_terminal(self) -> None:
        """
        A kill on a terminal or unknown task changes nothing.
        """
        self.insert()
        terminal.finish(self.conn, "t1", records.Outcome(status="success"), NOW + 1)
        before = self.load()
        self.assertFalse(transitions.request_kill(self.conn, "t1", NOW + 2))
        self.assertEqual(self.load(), before)
        self.assertNotIn("kill_requested", event_types(self.conn, "t1"))
        self.assertFalse(transitions.request_kill(self.conn, "ghost", NOW))


@backends.each
class FinishTests(StoreTestCase):
    """
    L{terminal.finish}: the terminal write.
    """

    outcome = records.Outcome(
        status="failed",
        error=ErrorInfo("exit_nonzero", "task exited with code 3"),
        duration_ms=12,
        exit_code=3,
        usage=Usage(duration_ms=12, user_cpu_ms=1, system_cpu_ms=2, max_rss_bytes=4096),
    )

    def test_finish_running(self) -> None:
        """
        The terminal write records every field, releases the reservation
        and appends C{resource_released} then the terminal event.
        """
        self.running(limits=ResourceLimits(pids_max=3))
        self.assertTrue(terminal.finish(self.conn, "t1", self.outcome, NOW + 100))
        record = self.load()
        self.assertEqual(record.status, "failed")
        self.assertTrue(record.terminal)
        self.assertEqual(record.finished_at_ms, NOW + 100)
        self.assertEqual(record.updated_at_ms, NOW + 100)
        self.assertEqual(record.duration_ms, 12)
        self.assertEqual((record.exit_code, record.exit_signal), (3, None))
        self.assertEqual(record.error, self.outcome.error)
        self.assertEqual(record.usage, self.outcome.usage)
        self.assertEqual(record.released_at_ms, NOW + 100)
        self.assertFalse(record.reservation_active)
        self.assertEqual(record.reservation, Reservation(pids=3))
        self.assertEqual(
            self.conn.execute("SELECT error_code FROM tasks").fetchone()[0], "exit_nonzero"
        )
        events = eventlog.load_events(self.conn, "t1")
        self.assertEqual(
            [(e.event_type, e.message, e.timestamp_ms) for e in events[-2:]],
            [
                ("resource_released", "task resources released", NOW + 100),
                ("failed", "task failed", NOW + 100),
            ],
        )
        self.assertEqual(events[-2].data, {"pids": 3, "task_slots": 1})
        self.assertEqual(events[-2].seq + 1, events[-1].seq)

    def test_finish_only_once(self) -> None:
        """
        A second terminal write returns C{False} and changes nothing: no
        field, no event.
        """
        self.running()
        self.assertTrue(terminal.finish(self.conn, "t1", self.outcome, NOW + 100))
        before = self.load()
        events = eventlog.load_events(self.conn, "t1")
        late = records.Outcome(status="success", duration_ms=99, exit_code=0)
        self.assertFalse(terminal.finish(self.conn, "t1", late, NOW + 200))
        self.assertEqual(self.load(), before)
        self.assertEqual(eventlog.load_events(self.conn, "t1"), events)

    def test_terminal_events(self) -> None:
        """
        Each terminal status has its own event type and message.
        """
        for task_id, status, event in (
            ("s", "success", ("finished", "task finished")),
            ("f", "failed", ("failed", "task failed")),
            ("c", "cancelled", ("cancelled", "task cancelled")),
        ):
            self.insert(task_id)
            error = None if status == "success" else ErrorInfo("internal", "x")
            terminal.finish(self.conn, task_id, records.Outcome(status=status, error=error), NOW + 1)
            last = eventlog.load_events(self.conn, task_id)[-1]
            self.assertEqual((last.event_type, last.message), event)

    def test_finish_queued_without_reservation(self) -> None:
        """
        Cancelling a queued task without a reservation appends no
        C{resource_released}.
        """
        self.insert()
        cancelled = records.Outcome(
            status="cancelled", error=ErrorInfo("cancelled", "task cancelled before execution")
        )
        self.assertTrue(terminal.finish(self.conn, "t1", cancelled, NOW + 1, ("accepted",)))
        self.assertEqual(
            event_types(self.conn, "t1"), ["submitted", "accepted", "planned", "cancelled"]
        )
        record = self.load()
        self.assertEqual(record.duration_ms, 0)
        self.assertIsNone(record.released_at_ms)

    def test_from_statuses(self) -> None:
        """
        A write restricted to C{accepted} leaves a C{running} task alone.
        """
        self.running()
        before = self.load()
        self.assertFalse(
            terminal.finish(self.conn, "t1", records.Outcome(status="cancelled"), NOW, ("accepted",))
        )
        self.assertEqual(self.load(), before)

    def test_finished_counter(self) -> None:
        """
        The terminal write bumps the C{finished} counter by status, code and
        tenant, once.
        """
        self.insert("t1", control_context=ControlContext(tenant="x"))
        terminal.finish(self.conn, "t1", self.outcome, NOW)
        terminal.finish(self.conn, "t1", self.outcome, NOW)
        self.assertEqual(
            tallies.snapshot(self.conn).finished, (("failed", "exit_nonzero", "x", 1),)
        )


@backends.each
class RecoveryWriteTests(StoreTestCase):
    """
    L{transitions.release_orphan_reservation} and L{transitions.mark_recovered}.
    """

    def hold_reservation(self, task_id: str, reservation: Reservation, at_ms: int) -> None:
        """
        Give a queued task an active reservation, as a crash mid-dispatch
        would leave it.
        """
        self.conn.execute(
            "UPDATE tasks SET reservation_json = ?, reserved_at_ms = ? WHERE task_id = ?",
            (connection.dumps(reservation.to_json()), at_ms, task_id),
        )

    def test_release_orphan(self) -> None:
        """
        A queued task's active reservation is released with the recovery
        message; it stays queued; a second call does nothing.
        """
        self.insert()
        self.hold_reservation("t1", Reservation(memory_bytes=8), NOW + 1)
        transitions.release_orphan_reservation(self.conn, "t1", NOW + 5)
        record = self.load()
        self.assertEqual(record.status, "accepted")
        self.assertEqual(record.released_at_ms, NOW + 5)
        self.assertFalse(record.reservation_active)
        last = eventlog.load_events(self.conn, "t1")[-1]
        self.assertEqual(
            (last.event_type, last.message, last.data),
            (
                "resource_released",
                "orphan accepted-task reservation released during recovery",
                {"memory_bytes": 8, "task_slots": 1},
            ),
        )
        transitions.release_orphan_reservation(self.conn, "t1", NOW + 6)
        self.assertEqual(event_types(self.conn, "t1").count("resource_released"), 1)

    def test_recovered_rebuilds_reservation(self) -> None:
        """
        A running task without an active reservation gets one rebuilt
        (C{resource_reserved} with the recovery message), then C{recovered}.
        """
        self.running()
        self.conn.execute("UPDATE tasks SET released_at_ms = ?", (NOW + 11,))
        rebuilt = Reservation(memory_bytes=1, pids=2)
        self.assertTrue(transitions.mark_recovered(self.conn, "t1", rebuilt, NOW + 50))
        record = self.load()
        self.assertTrue(record.reservation_active)
        self.assertEqual(record.reservation, rebuilt)
        self.assertEqual(record.reserved_at_ms, NOW + 50)
        self.assertEqual(record.updated_at_ms, NOW + 50)
        events = eventlog.load_events(self.conn, "t1")
        self.assertEqual(
            [(e.event_type, e.message) for e in events[-2:]],
            [
                ("resource_reserved", "resource reservation reconstructed during recovery"),
                ("recovered", "task recovered"),
            ],
        )
        self.assertEqual(events[-2].data, {"memory_bytes": 1, "pids": 2, "task_slots": 1})

    def test_recovered_keeps_active(self) -> None:
        """
        A running task still holding its reservation only gets C{recovered}.
        """
        self.running(limits=ResourceLimits(pids_max=4))
        self.assertTrue(transitions.mark_recovered(self.conn, "t1", Reservation(pids=9), NOW + 50))
        record = self.load()
        self.assertEqual(record.reservation, Reservation(pids=4))
        self.assertEqual(record.reserved_at_ms, NOW + 10)
        self.assertEqual(event_types(self.conn, "t1")[-2:], ["resource_reserved", "recovered"])
        self.assertEqual(event_types(self.conn, "t1").count("resource_reserved"), 1)

    def test_recovered_without_rebuild(self) -> None:
        """
        With no reservation to rebuild nothing is reserved.
        """
        self.running()
        self.conn.execute("UPDATE tasks SET released_at_ms = ?", (NOW + 11,))
        self.assertTrue(transitions.mark_recovered(self.conn, "t1", None, NOW + 50))
        self.assertFalse(self.load().reservation_active)
        self.assertEqual(event_types(self.conn, "t1")[-1], "recovered")

    def test_recovered_not_running(self) -> None:
        """
        Only a C{running} task is marked recovered.
        """
        self.insert()
        self.assertFalse(transitions.mark_recovered(self.conn, "t1", Reservation(), NOW))
        self.assertNotIn("recovered", event_types(self.conn, "t1"))


@backends.each
class QueryTests(StoreTestCase):
    """
    The queries the dispatcher, resources endpoint, metrics and GC use.
    """

    def test_load_by_status(self) -> None:
        """
        Tasks come oldest first, restricted to the statuses, up to C{limit}.
        """
        self.insert("late", now_ms=NOW + 2)
        self.insert("early", now_ms=NOW)
        self.insert("mid", now_ms=NOW + 1)
        self.insert("run", now_ms=NOW + 5)
        transitions.claim(self.conn, "run", 1, NOW + 6)
        ids = [r.task_id for r in reads.load_by_status(self.conn, ("accepted",))]
        self.assertEqual(ids, ["early", "mid", "late"])
        limited = reads.load_by_status(self.conn, ("accepted",), 2)
        self.assertEqual([r.task_id for r in limited], ["early", "mid"])
        both = reads.load_by_status(self.conn, ("accepted", "running"))
        self.assertEqual([r.task_id for r in both], ["early", "mid", "late", "run"])

    def test_load_active(self) -> None:
        """
        Active reservations come by reservation time, then creation time;
        released ones are left out.
        """
        self.insert("a", now_ms=NOW + 3)
        self.insert("b", now_ms=NOW + 1)
        self.insert("c", now_ms=NOW + 2)
        transitions.claim(self.conn, "a", 1, NOW + 10)
        transitions.claim(self.conn, "b", 1, NOW + 20)
        transitions.claim(self.conn, "c", 1, NOW + 10)
        self.assertEqual([r.task_id for r in reads.load_active(self.conn)], ["c", "a", "b"])
        terminal.finish(self.conn, "a", records.Outcome(status="success"), NOW + 30)
        self.assertEqual([r.task_id for r in reads.load_active(self.conn)], ["c", "b"])

    def test_resources_rows(self) -> None:
        """
        The active tasks and the count of queued tasks without a reservation.
        """
        self.insert("q1")
        self.insert("q2")
        self.running("r")
        active, waiting = reads.resources_rows(self.conn)
        self.assertEqual([r.task_id for r in active], ["r"])
        self.assertEqual(waiting, 2)

    def test_gc_candidates(self) -> None:
        """
        Terminal tasks finished at or before the cutoff, oldest first, up to
        the limit; non-terminal tasks never.
        """
        for task_id, finished in (("x", NOW + 30), ("y", NOW + 10), ("z", NOW + 20), ("new", NOW + 99)):
            self.insert(task_id)
            terminal.finish(self.conn, task_id, records.Outcome(status="success"), finished)
        self.running("run")
        candidates = gc.gc_candidates(self.conn, NOW + 30, 10)
        self.assertEqual([c[0] for c in candidates], ["y", "z", "x"])
        self.assertEqual(candidates[0][1], os.path.join(self.data_dir, "tasks", "y"))
        self.assertEqual(
            [c[0] for c in gc.gc_candidates(self.conn, NOW + 30, 2)], ["y", "z"]
        )

    def test_delete_cascades(self) -> None:
        """
        Deleting a terminal task removes its events; a running task is not
        deleted.
        """
        self.insert("done")
        terminal.finish(self.conn, "done", records.Outcome(status="success"), NOW)
        self.running("run")
        gc.delete_task(self.conn, "done")
        gc.delete_task(self.conn, "run")
        self.assertIsNone(reads.load_task(self.conn, "done"))
        self.assertEqual(
            self.conn.execute(
                "SELECT COUNT(*) FROM task_events WHERE task_id = 'done'"
            ).fetchone()[0],
            0,
        )
        self.assertIsNotNone(reads.load_task(self.conn, "run"))
        self.assertEqual(len(eventlog.load_events(self.conn, "run")), 4)


@backends.each
class MetricsSnapshotTests(StoreTestCase):
    """
    L{tallies.snapshot}: the C{/metrics} figures from trigger-kept tallies.
    """

    def test_empty(self) -> None:
        """
        An empty store has no samples, zero buckets, sum and count.
        """
        snapshot = tallies.snapshot(self.conn)
        self.assertEqual(snapshot.by_status, ())
        self.assertEqual(snapshot.by_error, ())
        self.assertEqual(snapshot.running, 0)
        self.assertEqual(snapshot.duration.cumulative(), [0] * 10)
        self.assertEqual((snapshot.duration.total, snapshot.duration.count), (0, 0))

    def test_counts_and_buckets(self) -> None:
        """
        Counts by status and error code are sorted; durations land in
        cumulative buckets with inclusive bounds; running tasks are left out
        of the histogram.
        """
        durations = {"a": 50, "b": 100, "c": 101, "d": 250, "e": 1000, "f": 400000, "g": 0}
        for task_id, duration in durations.items():
            self.insert(task_id)
            error = ErrorInfo("timeout", "t") if task_id in "cf" else None
            status = "failed" if error else "success"
            if task_id == "g":
                status, error = "cancelled", ErrorInfo("cancelled", "c")
            terminal.finish(
                self.conn,
                task_id,
                records.Outcome(status=status, error=error, duration_ms=duration),
                NOW,
            )
        self.running("r1")
        self.running("r2")
        self.insert("q")
        snapshot = tallies.snapshot(self.conn)
        self.assertEqual(
            snapshot.by_status,
            (("accepted", 1), ("cancelled", 1), ("failed", 2), ("running", 2), ("success", 4)),
        )
        self.assertEqual(snapshot.by_error, (("cancelled", 1), ("timeout", 2)))
        self.assertEqual(snapshot.running, 2)
        self.assertEqual(snapshot.duration.cumulative(), [3, 5, 5, 6, 6, 6, 6, 6, 6, 7])
        self.assertEqual(snapshot.duration.count, 7)
        self.assertEqual(snapshot.duration.total, sum(durations.values()))
        self.assertEqual(tallies.DURATION_BUCKETS_MS[-1], 300000)
        # The tallies say what a scan of the rows says.
        self.assertEqual(
            snapshot.by_status,
            tuple(self.conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status ORDER BY status")),
        )

    def test_gc_lowers_tallies_not_counters(self) -> None:
        """
        Deleting a terminal task takes it out of the figures of the stored
        rows but leaves the counters that never go down.
        """
        self.insert("a")
        terminal.finish(self.conn, "a", records.Outcome(status="success", duration_ms=5), NOW)
        gc.delete_task(self.conn, "a")
        snapshot = tallies.snapshot(self.conn)
        self.assertEqual((snapshot.by_status, snapshot.duration.count), ((), 0))
        self.assertEqual(snapshot.submitted, (("", 1),))
        self.assertEqual(snapshot.finished, (("success", "", "", 1),))
        self.assertEqual(snapshot.run_time.count, 1)

    def test_inside_a_transaction(self) -> None:
        """
        The snapshot is one read: it runs inside an open transaction too,
        and sees that transaction's changes.
        """
        with connection.transaction(self.conn):
            self.insert("a")
            self.assertEqual(tallies.snapshot(self.conn).by_status, (("accepted", 1),))


class TallyMigrationTests(StoreTestCase):
    """
    The tallies of a SQLite store written before they existed (a
    PostgreSQL store has had them from its first version).
    """

    def test_recount_of_an_older_store(self) -> None:
        """
        A store whose rows predate the tallies gets them counted once when
        the schema is initialised again.
        """
        self.insert("a")
        self.insert("b")
        self.conn.execute("DROP TABLE task_tallies")
        schema.init_schema(self.conn)
        self.assertEqual(tallies.snapshot(self.conn).by_status, (("accepted", 2),))


#: What L{StatementTests} puts in place of the row lock: a comment, so
#: SQLite runs the statements and its trace shows where the lock went.
MARK = " /* for update */"


class StatementTests(StoreTestCase):
    """
    The statements the store sends, as SQLite traces them: the selects
    whose rows the same transaction then changes end with the backend's
    row lock (L{execgo.store.backend.Backend.for_update}), and no query
    needs SQLite's C{LIMIT -1}.
    """

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        path = os.path.join(self.data_dir, "runtime.db")
        self.conn = connect_with(self, path, attrs.evolve(SQLITE, for_update=MARK))
        schema.init_schema(self.conn)
        self.statements: List[str] = []
        self.conn.set_trace_callback(self.statements.append)

    def locking(self) -> List[str]:
        """
        The statements traced since the last call that carry the lock.
        """
        found = [statement for statement in self.statements if MARK in statement]
        del self.statements[:]
        return found

    def assertLocks(self, found: List[str], start: str) -> None:
        """
        C{found} is one select of C{tasks} that starts with C{start} and
        ends with the lock.
        """
        self.assertEqual(len(found), 1, found)
        self.assertTrue(found[0].startswith(start), found)
        self.assertTrue(found[0].endswith(MARK), found)

    def test_claim(self) -> None:
        """
        The claim's read of the task takes the lock.
        """
        self.insert()
        self.locking()
        self.assertIsNotNone(transitions.claim(self.conn, "t1", 99, NOW + 10))
        self.assertLocks(self.locking(), "SELECT * FROM tasks WHERE task_id = 't1'")

    def test_terminal_write(self) -> None:
        """
        The terminal write's read of the reservation takes the lock.
        """
        self.running()
        self.locking()
        self.assertTrue(terminal.write_terminal(self.conn, "t1", records.Outcome(status="success"), NOW + 20))
        self.assertLocks(self.locking(), "SELECT reservation_json, reserved_at_ms IS NOT NULL")

    def test_recovery_writes(self) -> None:
        """
        The reads of the reservation that recovery releases or rebuilds
        take the lock.
        """
        self.insert("queued")
        self.running("run")
        self.locking()
        transitions.release_orphan_reservation(self.conn, "queued", NOW + 20)
        self.assertLocks(self.locking(), "SELECT reservation_json FROM tasks WHERE task_id = 'queued'")
        self.assertTrue(transitions.mark_recovered(self.conn, "run", Reservation(), NOW + 20))
        self.assertLocks(self.locking(), "SELECT reserved_at_ms, released_at_ms FROM tasks")

    def test_reads_take_no_lock(self) -> None:
        """
        Plain reads leave the lock out.
        """
        self.running()
        self.locking()
        reads.load_task(self.conn, "t1")
        reads.load_by_status(self.conn, ("running",))
        tallies.snapshot(self.conn)
        self.assertEqual(self.locking(), [])

    def test_no_negative_limit(self) -> None:
        """
        All the tasks of some statuses are read with no C{LIMIT} at all;
        a limit is still one.
        """
        self.insert("a")
        self.insert("b", now_ms=NOW + 1)
        del self.statements[:]
        self.assertEqual([r.task_id for r in reads.load_by_status(self.conn, ("accepted",))], ["a", "b"])
        self.assertEqual(len(self.statements), 1)
        self.assertNotIn("LIMIT", self.statements[0])
        self.assertEqual([r.task_id for r in reads.load_by_status(self.conn, ("accepted",), 1)], ["a"])
        self.assertIn("LIMIT 1", self.statements[-1])


class BackendsTests(SynchronousTestCase):
    """
    L{backends.each}, which runs a test class on every backend.
    """

    def test_each_adds_a_class_per_backend(self) -> None:
        """
        The decorated class runs on the first backend; each other one gets
        a subclass named after it in the class's module, which skips with
        the backend's reason.
        """
        module = types.ModuleType("tests.probe_of_each")
        sys.modules[module.__name__] = module
        self.addCleanup(sys.modules.pop, module.__name__)
        other = backends.StoreBackend(
            name="other",
            backend=SQLITE,
            connect=lambda test, path: None,
            reopen=lambda test, conn: None,
            database_url=lambda test, keep=False: None,
            skip="not here",
        )
        probe = type("Probe", (SynchronousTestCase,), {"__module__": module.__name__})
        self.assertIs(backends.each(probe, (backends.SQLITE_BACKEND, other)), probe)
        self.assertIs(probe.backend, backends.SQLITE_BACKEND)  # type: ignore[attr-defined]
        variant = module.Probe_other
        self.assertTrue(issubclass(variant, probe))
        self.assertEqual((variant.__name__, variant.backend, variant.skip), ("Probe_other", other, "not here"))

    def test_sqlite_and_postgres(self) -> None:
        """
        The backends are SQLite and PostgreSQL, so each decorated class of
        this module runs as itself on SQLite and as its C{_postgres}
        variant on PostgreSQL.
        """
        self.assertEqual([backend.name for backend in backends.BACKENDS], ["sqlite", "postgres"])
        self.assertIs(InsertTests.backend, backends.SQLITE_BACKEND)
        self.assertIs(globals()["InsertTests_postgres"].backend, backends.POSTGRES_BACKEND)
        self.assertFalse([name for name in globals() if name.endswith("_sqlite")])
