# -*- test-case-name: tests.test_store -*-
"""
What differs between the database engines the store can run on, in one
value: L{Backend}.

The functions of L{execgo.store} are written once, against the
connection interface of C{sqlite3} (C{execute}, cursors with C{fetchone},
C{fetchall} and C{rowcount}, C{in_transaction}) and in SQL that every
engine accepts.  What cannot be written once they ask of the connection's
backend (L{backend_of}): how a write transaction begins, the row lock of
a select whose rows the same transaction then changes, the driver's error
classes and the row factory.

The engines are SQLite (L{SQLITE}, which every connection opened
through L{SqliteConnection} carries as C{conn.backend}) and PostgreSQL
(L{execgo.store.postgres.POSTGRES}).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, ClassVar, List, Optional, Sequence, Tuple, Type

import attrs

#: One query: its SQL (C{?} placeholders) and parameters.
Query = Tuple[str, Sequence[Any]]

#: How long a connection waits for another one's lock, in milliseconds.
BUSY_TIMEOUT_MS = 5000


@attrs.frozen
class Backend:
    """
    One database engine, as the store's functions see it.

    @ivar name: the engine's name, for messages.
    @ivar begin_write: opens a write transaction on a connection, holding
        the engine's write lock (so that a row read in it stays as read
        until the commit).
    @ivar for_update: the suffix a C{SELECT} takes when the same
        transaction then changes the rows it read; empty where
        L{begin_write} locks the whole store already.
    @ivar Error: the base class of the driver's errors: what a caller that
        retries a refused write catches.
    @ivar IntegrityError: the driver's error for a broken constraint.
    @ivar OperationalError: the driver's error for a store that cannot be
        used now (locked, full, gone).
    @ivar row_factory: makes rows addressable by column name
        (L{execgo.store.connection.rows}).
    @ivar init_schema: creates or migrates the store's schema on this
        engine; C{None}: the SQLite schema of L{execgo.store.schema}.
    @ivar execute_later: C{(conn, sql, params)}: runs a statement whose
        result nobody reads, at once or (inside a transaction, on an
        engine with round trips to save) with the next statement.
    @ivar send_waiting: C{(conn)}: sends what L{execute_later} left
        waiting now, so that its errors are known before what follows.
    @ivar fetch_all: C{(conn, [(sql, params), ...])}: the rows of several
        queries that do not depend on each other, together in one round
        trip, on an engine with round trips to save (C{None}: one query
        after the other, L{execgo.store.connection.fetch_all}).
    @ivar notify: C{(conn, channel, payload)}: sends a notice to the other
        nodes of a cluster when the open transaction commits
        (L{execgo.store.notices}); C{None}: an engine whose store has one
        node.
    """

    name: str
    begin_write: Callable[[Any], None]
    for_update: str
    Error: Type[Exception]
    IntegrityError: Type[Exception]
    OperationalError: Type[Exception]
    row_factory: Any
    init_schema: Optional[Callable[[Any], None]] = None
    execute_later: Callable[[Any, str, Sequence[Any]], None] = lambda conn, sql, params: conn.execute(sql, params)
    send_waiting: Callable[[Any], None] = lambda conn: None
    fetch_all: Optional[Callable[[Any, Sequence[Query]], List[List[Any]]]] = None
    notify: Optional[Callable[[Any, str, str], None]] = None


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """
    Take SQLite's write lock (C{BEGIN IMMEDIATE}), retrying every few
    hundred microseconds.

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


#: SQLite: one writer at a time for the whole file, so a select needs no
#: row lock of its own.
SQLITE = Backend(
    name="sqlite",
    begin_write=_begin_immediate,
    for_update="",
    Error=sqlite3.Error,
    IntegrityError=sqlite3.IntegrityError,
    OperationalError=sqlite3.OperationalError,
    row_factory=sqlite3.Row,
)


class SqliteConnection(sqlite3.Connection):
    """
    A C{sqlite3} connection that names its backend (L{SQLITE}): pass it
    as C{factory=} to C{sqlite3.connect} (C{adbapi} passes it through).
    """

    backend: ClassVar[Backend] = SQLITE


def backend_of(conn: Any) -> Backend:
    """
    The backend of a connection: its C{backend} attribute, or L{SQLITE}
    for a plain C{sqlite3} connection that has none.
    """
    backend: Backend = getattr(conn, "backend", SQLITE)
    return backend
