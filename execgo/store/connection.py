# -*- test-case-name: tests.test_store -*-
"""
One C{sqlite3} connection to the task store, as every user of the store
opens and uses it.

The server (through C{adbapi}, L{execgo.server.database}) and the
supervisor (directly) share one database in WAL mode, so every write is a
short C{BEGIN IMMEDIATE} transaction (L{transaction}).  Timestamps are
integer milliseconds since the epoch; JSON columns hold compact UTF-8
text (L{dumps}, L{dumps_sorted} for event data).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Iterator, List, Sequence

BUSY_TIMEOUT_MS = 5000


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
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    configure(conn)
    return conn


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """
    Take the write lock, retrying every few hundred microseconds.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ms between
    tries: with the server and the supervisor writing short transactions
    into one store, that turns sub-millisecond waits into tens of
    milliseconds.  The busy timeout is switched off only for this statement.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000.0
        delay = 0.0001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """
    Run the body in one C{BEGIN IMMEDIATE} transaction: committed on
    success, rolled back on any exception.  Inside an open transaction the
    body simply joins it (so transitions compose into one commit).
    """
    if conn.in_transaction:
        yield conn
        return
    _begin_immediate(conn)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> List[sqlite3.Row]:
    """
    The rows of one query, each addressable by column name.
    """
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    return cursor.execute(sql, params).fetchall()
