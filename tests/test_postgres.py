"""
Tests for L{execgo.store.postgres}: what the store on PostgreSQL adds to
the functions every backend runs (those are tested on both engines by the
classes decorated with L{backends.each}): placeholders, rows, the schema
and its version, and the one-writer lock.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import errors
from execgo.store import connection, pgwire, postgres, schema, tallies
from tests import backends


class TranslateTests(SynchronousTestCase):
    """
    The store's SQL in PostgreSQL's spelling.
    """

    def test_placeholders_numbered(self) -> None:
        """
        Each C{?} becomes PostgreSQL's numbered placeholder, in order; a
        literal C{%} stays as it is.
        """
        self.assertEqual(
            pgwire.numbered("SELECT * FROM t WHERE a = ? AND b LIKE 'x%' AND c = ?"),
            b"SELECT * FROM t WHERE a = $1 AND b LIKE 'x%' AND c = $2",
        )

    def test_triggers_are_translated(self) -> None:
        """
        The tally triggers become PL/pgSQL functions in PostgreSQL's
        spelling (no C{char()} or two-argument C{MAX}), one per trigger.
        """
        statements = postgres.MIGRATIONS[1]()
        functions = [s for s in statements if s.startswith("CREATE FUNCTION")]
        self.assertEqual(len(functions), len(tallies.TRIGGERS))
        for text in functions:
            self.assertNotIn("char(31)", text)
            self.assertNotIn("MAX(0,", text)


class SkipTests(SynchronousTestCase):
    """
    The reason the PostgreSQL variants skip.
    """

    def test_without_psycopg(self) -> None:
        """
        Without C{psycopg} the variants skip, saying so.
        """
        self.patch(importlib.util, "find_spec", lambda name: None)
        self.assertEqual(backends._postgres_skip(), "psycopg not installed")


class PgTestCase(SynchronousTestCase):
    """
    A fresh PostgreSQL store per test.
    """

    skip = backends.POSTGRES_BACKEND.skip

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.conn: Any = backends.POSTGRES_BACKEND.connect(self, self.data_dir)
        schema.init_schema(self.conn)


class PgConnectionTests(PgTestCase):
    """
    L{postgres.PgConnection}: the surface of a C{sqlite3} connection.
    """

    def test_rows_by_name_and_index(self) -> None:
        """
        Rows are tuples that also answer by column name.
        """
        row = self.conn.execute("SELECT ? AS a, ? AS b", (1, "x")).fetchone()
        self.assertEqual((row[0], row["b"], row), (1, "x", (1, "x")))
        self.assertEqual(row.keys(), ["a", "b"])
        self.assertEqual(connection.rows(self.conn, "SELECT 2 AS c")[0]["c"], 2)

    def test_transactions(self) -> None:
        """
        Outside a transaction each statement commits by itself; inside
        one, a rollback undoes the body.
        """
        self.assertFalse(self.conn.in_transaction)
        with self.assertRaises(KeyError):
            with connection.transaction(self.conn):
                self.assertTrue(self.conn.in_transaction)
                self.conn.execute("INSERT INTO runtime_counters VALUES ('n', '', 1)")
                raise KeyError("abandoned")
        self.assertFalse(self.conn.in_transaction)
        self.assertEqual(self.conn.execute("SELECT COUNT(*) FROM runtime_counters").fetchone()[0], 0)

    def test_writers_take_turns(self) -> None:
        """
        A write transaction holds the store's write lock from its first
        statement: another connection cannot write until it ends.
        """
        other = backends.POSTGRES_BACKEND.reopen(self, self.conn)
        other.execute("SET lock_timeout = '100ms'")
        with connection.transaction(self.conn):
            self.conn.execute("SELECT 1")
            with self.assertRaises(postgres.POSTGRES.OperationalError):
                with connection.transaction(other):
                    other.execute("SELECT 1")
        with connection.transaction(other):
            other.execute("SELECT 1")

    def test_begin_goes_with_the_first_statement(self) -> None:
        """
        A write transaction costs no round trip of its own: nothing is sent
        before its first statement, and one that sends nothing sends no
        C{COMMIT} either.
        """
        sent: List[str] = []
        real = self.conn._round_trip

        def counting(batch: Any, verb: str, fresh: bool) -> Any:
            sent.append(" | ".join(sql.split()[0] for sql, _, _ in batch))
            return real(batch, verb, fresh)

        self.conn._round_trip = counting
        with connection.transaction(self.conn):
            pass
        with connection.transaction(self.conn):
            self.conn.execute("INSERT INTO runtime_counters VALUES ('a', '', 1)")
        self.assertEqual(sent, ["BEGIN | SELECT | INSERT", "COMMIT"])
        self.assertFalse(self.conn.in_transaction)
        self.assertEqual(self.conn.execute("SELECT COUNT(*) FROM runtime_counters").fetchone()[0], 1)

    def test_fetch_all(self) -> None:
        """
        Several queries' rows in one round trip, each addressable by name;
        a query without rows has none.
        """
        found = self.conn.fetch_all([("SELECT ? AS a", (1,)), ("SELECT 2 AS b WHERE false", ()), ("SELECT 3 AS c", ())])
        self.assertEqual([[tuple(row) for row in rows] for rows in found], [[(1,)], [], [(3,)]])
        self.assertEqual(found[2][0]["c"], 3)

    def test_waits_leave_other_threads_running(self) -> None:
        """
        While a statement waits for the server, other threads of the
        process run (the server's reactor thread beside its store
        threads): the wait does not hold the GIL.
        """
        import threading
        import time

        other = backends.POSTGRES_BACKEND.reopen(self, self.conn)
        waiting = threading.Thread(target=lambda: other.execute("SELECT pg_sleep(0.4)"))
        gaps: List[float] = []
        waiting.start()
        last = time.monotonic()
        while waiting.is_alive():
            sum(range(200))
            now = time.monotonic()
            gaps.append(now - last)
            last = now
        waiting.join()
        self.assertLess(max(gaps), 0.2)

    def test_fetch_all_on_sqlite(self) -> None:
        """
        The SQLite backend answers the same, one query after the other.
        """
        import sqlite3

        found = connection.fetch_all(sqlite3.connect(":memory:"), [("SELECT ? AS a", (1,)), ("SELECT 3 AS c", ())])
        self.assertEqual([[row[0] for row in rows] for rows in found], [[1], [3]])
        self.assertEqual(found[1][0]["c"], 3)


class PgSchemaTests(PgTestCase):
    """
    L{postgres.init_schema}: versioned, applied once.
    """

    def test_applied_once(self) -> None:
        """
        Running it again on a store at the newest version changes nothing:
        each version is recorded once.
        """
        schema.init_schema(self.conn)
        versions = [row[0] for row in self.conn.execute("SELECT version FROM execgo_schema_version")]
        self.assertEqual(versions, sorted(postgres.MIGRATIONS))

    def test_wide_integers(self) -> None:
        """
        Integer columns hold millisecond timestamps (beyond 32 bits).
        """
        types = dict(
            self.conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = 'tasks' AND column_name IN ('created_at_ms', 'rowid')"
            )
        )
        self.assertEqual(types, {"created_at_ms": "bigint", "rowid": "bigint"})


class PgReconnectTests(PgTestCase):
    """
    L{postgres.PgConnection} after the server cut it (as a restart or
    C{pg_terminate_backend} does): opened again where that is safe, never
    in the middle of a transaction.
    """

    def cut(self) -> None:
        """
        End the server side of C{self.conn}.
        """
        other = backends.POSTGRES_BACKEND.reopen(self, self.conn)
        pid = self.conn.raw.info.backend_pid
        self.assertTrue(other.execute("SELECT pg_terminate_backend(?::int)", (pid,)).fetchone()[0])

    def test_read_after_cut(self) -> None:
        """
        A read outside a transaction meets the cut, opens a new connection
        and is answered on it.
        """
        self.cut()
        self.assertEqual(self.conn.execute("SELECT 7").fetchone()[0], 7)
        self.assertEqual(self.conn.reconnects, 1)

    def test_transaction_after_cut(self) -> None:
        """
        A write transaction whose first round trip meets the cut (it
        changed nothing) begins again on a new connection and commits.
        """
        self.cut()
        with connection.transaction(self.conn):
            self.conn.execute_later("INSERT INTO runtime_counters VALUES ('a', '', 1)", ())
            self.conn.execute("INSERT INTO runtime_counters VALUES ('b', '', 1)")
        names = [row[0] for row in self.conn.execute("SELECT name FROM runtime_counters ORDER BY name")]
        self.assertEqual(names, ["a", "b"])
        self.assertEqual(self.conn.reconnects, 1)

    def test_reopening_fails_then_serves(self) -> None:
        """
        A transaction whose connection cannot be opened again yet (the
        server is still starting) fails whole, even when it is sent whole
        with its C{COMMIT}, and leaves no transaction open: the next one
        opens a new connection and commits.
        """
        self.cut()
        self.conn.raw.close()  # as after a statement met the cut
        opener = self.conn._opener
        attempts: List[int] = []

        def refusing() -> Any:
            attempts.append(1)
            if len(attempts) == 1:
                raise postgres.POSTGRES.OperationalError("the database system is starting up")
            return opener()

        self.conn._opener = refusing
        with self.assertRaises(postgres.POSTGRES.OperationalError):
            with connection.transaction(self.conn):
                self.conn.execute_later("INSERT INTO runtime_counters VALUES ('a', '', 1)", ())
        self.assertFalse(self.conn.in_transaction)
        with connection.transaction(self.conn):
            self.conn.execute_later("INSERT INTO runtime_counters VALUES ('b', '', 1)", ())
        names = [row[0] for row in self.conn.execute("SELECT name FROM runtime_counters")]
        self.assertEqual((names, len(attempts)), (["b"], 2))

    def test_commit_after_cut_not_repeated(self) -> None:
        """
        A transaction sent whole with its C{COMMIT} that meets the cut
        fails: it may or may not have committed, so it is not sent twice.
        """
        self.cut()
        with self.assertRaises(postgres.POSTGRES.OperationalError):
            with connection.transaction(self.conn):
                self.conn.execute_later("INSERT INTO runtime_counters VALUES ('a', '', 1)", ())
        self.assertFalse(self.conn.in_transaction)
        self.assertEqual(self.conn.execute("SELECT COUNT(*) FROM runtime_counters").fetchone()[0], 0)

    def test_cut_inside_transaction(self) -> None:
        """
        A cut inside a transaction fails the statement that met it and
        every later one until the rollback: none of them runs, committed by
        itself, on a new connection.  After the rollback the connection
        serves again.
        """
        self.conn.execute("BEGIN")
        self.conn.execute("INSERT INTO runtime_counters VALUES ('a', '', 1)")
        self.cut()
        with self.assertRaises(postgres.POSTGRES.OperationalError) as cut:
            self.conn.execute("INSERT INTO runtime_counters VALUES ('b', '', 1)")
        # The server said why (terminated): the store is unavailable, not broken.
        self.assertIsInstance(errors.from_storage(cut.exception), errors.Unavailable)
        with self.assertRaises(postgres.POSTGRES.OperationalError):
            self.conn.execute("INSERT INTO runtime_counters VALUES ('c', '', 1)")
        self.assertTrue(self.conn.in_transaction)
        self.conn.execute("ROLLBACK")
        self.assertFalse(self.conn.in_transaction)
        names = [row[0] for row in self.conn.execute("SELECT name FROM runtime_counters")]
        self.assertEqual(names, [])
        self.assertEqual(self.conn.reconnects, 1)

    def test_write_outside_transaction_not_repeated(self) -> None:
        """
        A write statement by itself that meets the cut fails (it may or
        may not have been applied: it is not sent twice); the next
        statement opens a new connection.
        """
        self.cut()
        with self.assertRaises(postgres.POSTGRES.OperationalError):
            self.conn.execute("INSERT INTO runtime_counters VALUES ('a', '', 1)")
        self.assertEqual(self.conn.execute("SELECT COUNT(*) FROM runtime_counters").fetchone()[0], 0)


class ExecuteLaterTests(PgTestCase):
    """
    L{postgres.PgConnection.execute_later}: a statement whose result
    nobody reads goes with the next one.
    """

    insert = "INSERT INTO runtime_counters VALUES (?, '', 1)"

    def names(self, conn: Any) -> List[str]:
        return [row[0] for row in conn.execute("SELECT name FROM runtime_counters ORDER BY name")]

    def test_outside_a_transaction_at_once(self) -> None:
        """
        Outside a transaction it runs (and commits) at once.
        """
        self.conn.execute_later(self.insert, ("a",))
        self.assertEqual(self.names(backends.POSTGRES_BACKEND.reopen(self, self.conn)), ["a"])

    def test_goes_with_the_next_statement(self) -> None:
        """
        Inside a transaction it is not sent until the next statement,
        which sees it; the commit makes it last.
        """
        other = backends.POSTGRES_BACKEND.reopen(self, self.conn)
        with connection.transaction(self.conn):
            self.conn.execute_later(self.insert, ("a",))
            self.conn.execute_later(self.insert, ("b",))
            self.assertEqual(self.conn._later, [(self.insert, ("a",)), (self.insert, ("b",))])
            self.assertEqual(self.names(self.conn), ["a", "b"])
            self.conn.execute_later(self.insert, ("c",))
        self.assertEqual(self.conn._later, [])
        self.assertEqual(self.names(other), ["a", "b", "c"])

    def test_its_error_is_the_next_statements(self) -> None:
        """
        A waiting statement that fails fails the statement it went with,
        and the transaction rolls back whole.
        """
        with self.assertRaises(postgres.POSTGRES.IntegrityError):
            with connection.transaction(self.conn):
                self.conn.execute(self.insert, ("a",))
                self.conn.execute_later(self.insert, ("a",))
        self.assertFalse(self.conn.in_transaction)
        self.assertEqual(self.names(self.conn), [])

    def test_rolled_back_unsent(self) -> None:
        """
        A rollback to a savepoint drops what waits (it came after it); the
        rest of the transaction commits.
        """
        with connection.transaction(self.conn):
            self.conn.execute_later(self.insert, ("a",))
            self.conn.execute("SAVEPOINT s")
            self.conn.execute_later(self.insert, ("b",))
            self.conn.execute("ROLLBACK TO s")
            self.conn.execute("RELEASE s")
        self.assertEqual(self.names(self.conn), ["a"])

    def test_savepoint_rolled_back_unsent(self) -> None:
        """
        A savepoint still waiting to be sent, rolled back to and released,
        is never sent, nor is what followed it; what came before it is.
        """
        with connection.transaction(self.conn):
            self.conn.execute_later(self.insert, ("a",))
            self.conn.execute_later("SAVEPOINT s", ())
            self.conn.execute_later(self.insert, ("b",))
            self.conn.execute("ROLLBACK TO s")
            self.conn.execute("RELEASE s")
            self.assertEqual(self.conn._later, [(self.insert, ("a",))])
            self.conn.execute_later("SAVEPOINT s", ())
            self.conn.execute_later(self.insert, ("c",))
            self.conn.execute("RELEASE s")
        self.assertEqual(self.names(self.conn), ["a", "c"])

    def test_nul_refused_before_sending(self) -> None:
        """
        Text PostgreSQL cannot hold is the client's error at once.
        """
        with connection.transaction(self.conn):
            with self.assertRaises(errors.InvalidInput):
                self.conn.execute_later(self.insert, ("a\0b",))
        self.assertEqual(self.names(self.conn), [])

    def test_grouped_writes_fail_alone(self) -> None:
        """
        Writes grouped in one transaction (the server's batches): one
        whose late statement fails fails alone, the others commit.
        """
        from execgo.server.batching import run_jobs

        def write(name: str) -> Any:
            return lambda conn, value: conn.execute_later(self.insert, (name,))

        jobs = [(lambda conn, pending: None, (), write(name)) for name in ("a", "a", "b")]
        results = run_jobs(self.conn, jobs, connection.transaction)
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        self.assertIsInstance(results[1][1].value, postgres.POSTGRES.IntegrityError)
        self.assertEqual(self.names(self.conn), ["a", "b"])

    def test_send_waiting(self) -> None:
        """
        What waits can be sent at once, its error then raised there.
        """
        with self.assertRaises(postgres.POSTGRES.IntegrityError):
            with connection.transaction(self.conn):
                self.conn.execute(self.insert, ("a",))
                self.conn.execute_later(self.insert, ("a",))
                self.assertEqual(len(self.conn._later), 1)
                try:
                    self.conn.send_waiting()
                finally:
                    self.assertEqual(self.conn._later, [])
        self.assertEqual(self.names(self.conn), [])
