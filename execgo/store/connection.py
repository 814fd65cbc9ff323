# -*- test-case-name: tests.test_store -*-
"""
One connection to the task store, as every user of the store opens and
uses it.

The server (through C{adbapi}, L{execgo.server.database}) and the
supervisor (directly) share one database, so every write is a short
transaction holding the write lock (L{transaction}; on SQLite, in WAL
mode, C{BEGIN IMMEDIATE}).  What differs per engine is asked of the
connection's backend (L{execgo.store.backend}).  Timestamps are
integer milliseconds since the epoch; JSON columns hold compact UTF-8
text (L{dumps}, L{dumps_sorted} for event data).
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from typing import Any, Iterator, List, Sequence

from execgo.store.backend import BUSY_TIMEOUT_MS, Query, SqliteConnection, backend_of


def dumps(value: Any) -> str:
    """
    Compact JSON with raw UTF-8, as stored in JSON columns.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_sorted(value: Any) -> str:
    """
    Compact JSON with keys sorted at every level, as event data is stored.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def configure(conn: sqlite3.Connection) -> None:
    """
    Apply the connection settings every user of the store needs: WAL,
    C{synchronous=NORMAL}, foreign keys and a busy timeout.
    """
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def connect(path: str) -> sqlite3.Connection:
    """
    Open and configure a connection to the store at C{path}.
    """
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, factory=SqliteConnection)
    configure(conn)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """
    Run the body in one write transaction (the backend's
    L{begin_write<execgo.store.backend.Backend.begin_write>}): committed on
    success, rolled back on any exception, the commit's own included
    (SQLite keeps a transaction whose C{COMMIT} failed open, and every
    later transaction would join it and never commit).  Inside an open
    transaction the body simply joins it (so transitions compose into one
    commit).
    """
    if conn.in_transaction:
        yield conn
        return
    backend_of(conn).begin_write(conn)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> List[sqlite3.Row]:
    """
    The rows of one query, each addressable by column name.
    """
    cursor = conn.cursor()
    cursor.row_factory = backend_of(conn).row_factory
    return cursor.execute(sql, params).fetchall()


def fetch_all(conn: sqlite3.Connection, queries: Sequence[Query]) -> List[List[Any]]:
    """
    The rows of several queries that do not depend on each other (each
    row addressable by column name): in one round trip where the engine
    has round trips to save (L{execgo.store.backend.Backend.fetch_all}),
    else one query after the other.
    """
    together = backend_of(conn).fetch_all
    if together is not None:
        return together(conn, queries)
    return [rows(conn, sql, params) for sql, params in queries]
