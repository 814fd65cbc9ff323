# -*- test-case-name: tests.test_postgres -*-
"""
Statements sent to PostgreSQL straight through libpq (C{psycopg.pq}),
several in one round trip: L{exchange}.

The store's statements are few and small, and most of the store's time
on PostgreSQL went into the driver's own work around each one (a cursor,
its description, a flush and a poll per statement in pipeline mode) rather
than into the database.  Here a batch is written with one flush and read
back in order, in libpq's pipeline mode when it holds more than one
statement; parameters and rows still go through C{psycopg}'s adapters
(C{psycopg.adapt.Transformer}), so values convert exactly as through a
C{psycopg} cursor, and errors are C{psycopg}'s own classes.

Each connection is used through a L{Session}, which also keeps the
statements it has prepared on the server, and waits for the server with
C{poll}, outside the GIL (libpq's own blocking reads would hold it).
"""

from __future__ import annotations

import functools
import re
import select
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

#: One statement to send: its SQL (C{?} placeholders), its parameters and
#: whether it runs once per parameter sequence.
Statement = Tuple[str, Any, bool]

#: A prepared statement's key: its SQL and its parameters' types.
Key = Tuple[str, Tuple[int, ...]]


class PgRow(tuple):
    """
    A row addressable by index, like a tuple, and by column name, like a
    C{sqlite3.Row}.  The rows of one set of column names share one
    subclass holding them (L{_row_type}).
    """

    _index: Dict[str, int] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> List[str]:
        """
        The column names, in order.
        """
        return list(self._index)


@functools.lru_cache(maxsize=1024)
def _row_type(names: Tuple[bytes, ...]) -> Any:
    """
    The L{PgRow} class of rows with these column names (as the server
    sends them: bytes).
    """
    index = {name.decode("utf-8"): i for i, name in enumerate(names)}
    return type("PgRow", (PgRow,), {"_index": index})


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> bytes:
    """
    C{sql} with the store's C{?} placeholders numbered as PostgreSQL's
    (C{$1}, C{$2}, ...), encoded.
    """
    counter = iter(range(1, 1 << 16))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql).encode("utf-8")


class Result:
    """
    What one statement returned: its rows (L{PgRow}s; none for a
    statement that returns none) and how many rows it changed (C{-1}
    when it does not say).
    """

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: List[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount


#: The most statements a session keeps prepared; later new ones run
#: unprepared (the store's SQL is a small, fixed set, but some of it is
#: built for its parameters' count).
PREPARED_MAX = 512


class Session:
    """
    One C{psycopg} connection as L{exchange} uses it: integers always
    sent as C{bigint} (so a statement's parameter types do not vary with
    their values), its adapters, the statements it has prepared on the
    server (which then plans each of them once, not per run), and a poller
    on its socket: every wait for the server is a C{poll} outside the GIL,
    so other threads (the server's reactor) run meanwhile.

    @ivar conn: the C{psycopg} connection (in libpq's non-blocking mode,
        as C{psycopg} leaves it).
    @ivar wait_limit_s: the longest one wait for the server may take
        (C{None}: no limit): past it the connection is closed and the
        statement fails as if the server had cut it, so a database that
        stops answering (a network partition) cannot hold a caller forever.
    """

    def __init__(self, conn: Any, wait_limit_s: Optional[float] = None) -> None:
        from psycopg.adapt import Transformer
        from psycopg.types.numeric import Int8Dumper

        conn.adapters.register_dumper(int, Int8Dumper)
        self.conn = conn
        self.adapters = Transformer(conn)
        self.prepared: Dict[Key, bytes] = {}
        self.wait_limit_s = wait_limit_s
        self._poller = select.poll()

    def wait(self, events: int) -> None:
        """
        Wait until the connection's socket is ready for C{events}
        (C{select.POLLIN}, C{select.POLLOUT}).
        """
        fd = self.conn.pgconn.socket
        self._poller.register(fd, events)
        limit = self.wait_limit_s
        deadline = None if limit is None else time.monotonic() + limit
        try:
            while True:
                timeout = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000) + 1)
                if self._poller.poll(timeout):
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    break
        finally:
            self._poller.unregister(fd)
        from psycopg import errors

        self.conn.close()
        raise errors.ConnectionFailure(f"the database did not answer within {limit:g} s")

    def flush(self) -> None:
        """
        Send everything queued on the connection.
        """
        pg = self.conn.pgconn
        while pg.flush():
            self.wait(select.POLLOUT)

    def result(self) -> Any:
        """
        The connection's next result (C{None} where libpq has none), read
        once it has arrived.
        """
        pg = self.conn.pgconn
        while pg.is_busy():
            self.wait(select.POLLIN)
            pg.consume_input()
        return pg.get_result()


def exchange(session: Session, batch: Sequence[Statement]) -> List[Result]:
    """
    Send C{batch} on C{session}'s connection in one round trip and return
    each statement's L{Result}, in order (a statement run once per
    parameter sequence: its last run's rows, all its runs' changes).
    After a statement fails the server skips the rest of the batch; the
    first error is raised once the batch is read.

    @raise psycopg.Error: the first statement's error; when the
        connection is lost, the error the server sent before it closed it
        (why: shutting down, terminated), else a connection failure
        (sqlstate 08006).
    """
    import psycopg
    from psycopg import pq

    pg = session.conn.pgconn
    runs = [
        (index, sql, values)
        for index, (sql, params, many) in enumerate(batch)
        for values in (params if many else (params,))
    ]
    if not runs:
        return [Result([], -1) for _ in batch]
    piped = len(runs) > 1 or bool(runs[0][2])
    preparing: List[Tuple[Key, bytes]] = []
    sent: List[Optional[int]] = []  # per command: its run, or None for a prepare
    received: List[Any] = []
    try:
        if piped:
            pg.enter_pipeline_mode()
        for number, (_, sql, values) in enumerate(runs):
            if _send(session, sql, values, piped, preparing):
                sent.append(None)
            sent.append(number)
        if piped:
            pg.pipeline_sync()
        session.flush()
        for _ in sent:
            received.append(_receive(session))
        if piped:
            _synced(session)
            pg.exit_pipeline_mode()
    except psycopg.Error:
        if pg.status == pq.ConnStatus.BAD:
            raise _lost(pg, received) from None
        raise
    prepares = [res for number, res in zip(sent, received) if number is None]
    results = [res for number, res in zip(sent, received) if number is not None]
    for (key, name), res in zip(preparing, prepares):
        if res.status == pq.ExecStatus.COMMAND_OK:
            session.prepared[key] = name
    failed = next((res for res in received if res.status == pq.ExecStatus.FATAL_ERROR), None)
    if failed is not None:
        if pg.status == pq.ConnStatus.BAD and not failed.error_field(pq.DiagnosticField.SQLSTATE):
            raise _lost(pg, [])
        raise psycopg.errors.error_from_result(failed, session.conn.info.encoding)
    counts = [0] * len(batch)
    last: List[Any] = [None] * len(batch)
    for (index, _, _), res in zip(runs, results):
        count = res.command_tuples
        counts[index] = -1 if count is None or counts[index] < 0 else counts[index] + count
        last[index] = res
    return [Result(_rows(session.adapters, res), count) for res, count in zip(last, counts)]


def _send(session: Session, sql: str, values: Sequence[Any], piped: bool, preparing: List[Tuple[Key, bytes]]) -> bool:
    """
    Queue one statement: with parameters, as a prepared statement (sent
    to be prepared first the first time); without any and outside a
    pipeline, as a simple query (which may hold several statements).

    @param preparing: the statements this batch prepares, by key and
        name; one prepared here is added.
    @return: whether a prepare was queued before the statement.
    """
    pg = session.conn.pgconn
    if not values:
        if piped:
            pg.send_query_params(numbered(sql), None)
        else:
            pg.send_query(sql.encode("utf-8"))
        return False
    from psycopg.adapt import PyFormat

    adapters = session.adapters
    wire = adapters.dump_sequence(values, [PyFormat.AUTO] * len(values))
    key = (sql, tuple(adapters.types or ()))
    name = session.prepared.get(key) or next((n for k, n in preparing if k == key), None)
    if name is not None:
        pg.send_query_prepared(name, wire, param_formats=adapters.formats)
        return False
    if len(session.prepared) + len(preparing) >= PREPARED_MAX:
        pg.send_query_params(numbered(sql), wire, adapters.types, adapters.formats)
        return False
    name = b"execgo_%d" % (len(session.prepared) + len(preparing))
    preparing.append((key, name))
    pg.send_prepare(name, numbered(sql), param_types=adapters.types)
    pg.send_query_prepared(name, wire, param_formats=adapters.formats)
    return True


def _receive(session: Session) -> Any:
    """
    The next statement's result (read until libpq says it is complete).
    An error result the server sent before it closed the connection is
    returned, not lost to the error of reading past it.
    """
    import psycopg

    result = session.result()
    if result is None:
        raise _lost(session.conn.pgconn, [])
    try:
        more = session.result()
        while more is not None:
            if result.status != psycopg.pq.ExecStatus.FATAL_ERROR:
                result = more  # a simple query's statements: the last one's, or an error
            more = session.result()
    except psycopg.Error:
        if result.status != psycopg.pq.ExecStatus.FATAL_ERROR:
            raise
    return result


def _synced(session: Session) -> None:
    """
    Read the end of a pipeline.
    """
    import psycopg

    result = session.result()
    if result is None or result.status != psycopg.pq.ExecStatus.PIPELINE_SYNC:
        raise _lost(session.conn.pgconn, [])


def _lost(pg: Any, received: List[Any]) -> Exception:
    """
    The error for a connection that is gone (or no longer answers as it
    must): the error the server sent first among the C{received} results
    (why it ended the session: shutting down, terminated), else
    C{psycopg}'s connection failure (sqlstate 08006) with libpq's message.
    """
    import psycopg

    for result in received:
        if result.status == psycopg.pq.ExecStatus.FATAL_ERROR and result.error_field(
            psycopg.pq.DiagnosticField.SQLSTATE
        ):
            return psycopg.errors.error_from_result(result)
    message = pg.error_message.decode("utf-8", "replace").strip() or "the connection to the server was lost"
    return psycopg.errors.lookup("08006")(message)


def _rows(adapters: Any, result: Any) -> List[Any]:
    """
    The rows of C{result}, as L{PgRow}s.
    """
    if not result.nfields:
        return []
    adapters.set_pgresult(result)
    make: Callable[[List[Any]], Any] = _row_type(tuple(result.fname(i) for i in range(result.nfields)))
    rows: List[Any] = adapters.load_rows(0, result.ntuples, make)
    return rows
