"""
Tests for L{execgo.server.batching}.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from typing import Any, Iterator, List, Tuple

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from execgo.server.batching import Batcher, run_jobs
from execgo.store.connection import transaction


def connection() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    return conn


def insert(key: str) -> Any:
    def write(conn: sqlite3.Connection, prepared: Any) -> str:
        with transaction(conn):
            conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        return f"{key}:{prepared}"

    return write


def keys(conn: sqlite3.Connection) -> List[str]:
    return [row[0] for row in conn.execute("SELECT k FROM t ORDER BY k")]


def grouped(key: str) -> Tuple[Any, Tuple[Any, ...], Any]:
    return (lambda conn, pending: "prepared", (), insert(key))


class RunJobsTests(SynchronousTestCase):
    """
    L{run_jobs}: plain jobs alone, grouped writes in one transaction.
    """

    def setUp(self) -> None:
        self.conn = connection()
        self.statements: List[str] = []
        self.conn.set_trace_callback(self.statements.append)

    def test_grouped_writes_commit_once(self) -> None:
        """
        Consecutive grouped writes run after their first steps, in one
        C{BEGIN IMMEDIATE} ... C{COMMIT}, each getting its step's value.
        """
        results = run_jobs(self.conn, [grouped("a"), grouped("b")], transaction)
        self.assertEqual(results, [(True, "a:prepared"), (True, "b:prepared")])
        self.assertEqual(keys(self.conn), ["a", "b"])
        self.assertEqual(self.statements.count("BEGIN IMMEDIATE"), 1)
        self.assertEqual(self.statements.count("COMMIT"), 1)

    def test_failing_write_undone_alone(self) -> None:
        """
        A grouped write that fails (here a duplicate key, after another
        write of its own) is rolled back to its savepoint: its neighbours
        commit.
        """

        def twice(conn: sqlite3.Connection, prepared: Any) -> None:
            conn.execute("INSERT INTO t (k) VALUES ('c')")
            conn.execute("INSERT INTO t (k) VALUES ('a')")

        results = run_jobs(
            self.conn, [grouped("a"), (lambda conn, pending: None, (), twice), grouped("b")], transaction
        )
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        self.assertIsInstance(results[1][1], Failure)
        results[1][1].trap(sqlite3.IntegrityError)
        self.assertEqual(keys(self.conn), ["a", "b"])
        self.assertFalse(self.conn.in_transaction)

    def test_write_alone_needs_no_savepoint(self) -> None:
        """
        A grouped write with no other in its group runs in a transaction
        of its own, without a savepoint; when it fails, nothing of it
        stays.
        """

        def twice(conn: sqlite3.Connection, prepared: Any) -> None:
            conn.execute("INSERT INTO t (k) VALUES ('c')")
            conn.execute("INSERT INTO t (k) VALUES ('c')")

        self.assertEqual(run_jobs(self.conn, [grouped("a")], transaction), [(True, "a:prepared")])
        [(ok, failure)] = run_jobs(self.conn, [(lambda conn, pending: None, (), twice)], transaction)
        self.assertFalse(ok)
        failure.trap(sqlite3.IntegrityError)
        self.assertEqual(keys(self.conn), ["a"])
        self.assertEqual([s for s in self.statements if "SAVEPOINT" in s or "RELEASE" in s], [])
        self.assertEqual(self.statements.count("COMMIT"), 1)
        self.assertFalse(self.conn.in_transaction)

    def test_failing_first_step_skips_write(self) -> None:
        """
        When a grouped job's first step fails, its write never runs.
        """

        def refuse(conn: sqlite3.Connection, pending: int) -> None:
            raise ValueError("queue full")

        results = run_jobs(self.conn, [(refuse, (), insert("x")), grouped("y")], transaction)
        self.assertFalse(results[0][0])
        results[0][1].trap(ValueError)
        self.assertEqual(keys(self.conn), ["y"])

    def test_first_steps_told_what_is_pending(self) -> None:
        """
        Each grouped job's first step is told how many writes of its
        group were prepared before it and have not run yet: not those
        whose first step failed, and none after a plain job, which ends
        the group before it.
        """
        told: List[int] = []

        def step(conn: sqlite3.Connection, pending: int) -> None:
            told.append(pending)

        def refuse(conn: sqlite3.Connection, pending: int) -> None:
            told.append(pending)
            raise ValueError("refused")

        jobs = [
            (step, (), insert("a")),
            (refuse, (), insert("x")),
            (step, (), insert("b")),
            (lambda conn: None, (), None),
            (step, (), insert("c")),
        ]
        results = run_jobs(self.conn, jobs, transaction)
        self.assertEqual(told, [0, 1, 1, 0])
        self.assertEqual([ok for ok, _ in results], [True, False, True, True, True])
        results[1][1].trap(ValueError)
        self.assertEqual(keys(self.conn), ["a", "b", "c"])

    def test_plain_job_keeps_order(self) -> None:
        """
        A plain job after grouped ones sees their writes committed: the
        group ends before it runs.  Plain jobs take their arguments.
        """

        def count(conn: sqlite3.Connection, table: str) -> Tuple[int, bool]:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0], conn.in_transaction

        results = run_jobs(
            self.conn, [grouped("a"), (count, ("t",), None), grouped("b")], transaction
        )
        self.assertEqual(results[1], (True, (1, False)))
        self.assertEqual(keys(self.conn), ["a", "b"])
        self.assertEqual(self.statements.count("COMMIT"), 2)

    def test_failed_commit_fails_group(self) -> None:
        """
        When the shared commit fails, every write of the group fails with
        that error.
        """

        @contextmanager
        def failing(conn: sqlite3.Connection) -> Iterator[None]:
            with transaction(conn):
                yield
                raise sqlite3.OperationalError("disk I/O error")

        results = run_jobs(self.conn, [grouped("a"), grouped("b")], failing)
        for ok, failure in results:
            self.assertFalse(ok)
            failure.trap(sqlite3.OperationalError)
        self.assertEqual(keys(self.conn), [])


class FakePool:
    """
    A pool whose hops wait until the test lets them run.
    """

    def __init__(self) -> None:
        self.conn = connection()
        self.hops: List[Tuple[Any, Tuple[Any, ...], "defer.Deferred[Any]"]] = []

    def runWithConnection(self, func: Any, *args: Any) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred()
        self.hops.append((func, args, d))
        return d

    def finish_hop(self) -> None:
        func, args, d = self.hops.pop(0)
        d.callback(func(self.conn, *args))


class BatcherTests(SynchronousTestCase):
    """
    L{Batcher}: one hop in flight, the rest batched behind it.
    """

    def test_batches_behind_hop(self) -> None:
        """
        Jobs arriving while a hop is in flight go together in the next
        hop, where grouped writes share one commit; each Deferred fires
        with its own result.
        """
        pool = FakePool()
        batcher = Batcher(pool, group=transaction)  # type: ignore[arg-type]
        first = batcher.run(lambda conn: "plain")
        second = batcher.run_grouped(lambda conn, pending: 1, insert("a"))
        third = batcher.run_grouped(lambda conn, pending: 2, insert("a"))
        self.assertEqual(len(pool.hops), 1)
        pool.finish_hop()
        self.assertEqual(self.successResultOf(first), "plain")
        self.assertEqual(len(pool.hops), 1)
        pool.finish_hop()
        self.assertEqual(self.successResultOf(second), "a:1")
        self.failureResultOf(third, sqlite3.IntegrityError)
        self.assertEqual(keys(pool.conn), ["a"])

    def test_grouped_needs_group(self) -> None:
        """
        A batcher made without a group transaction refuses grouped writes.
        """
        batcher = Batcher(FakePool())  # type: ignore[arg-type]
        self.assertRaises(TypeError, batcher.run_grouped, lambda conn, pending: None, insert("a"))
