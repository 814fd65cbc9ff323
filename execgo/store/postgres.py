# -*- test-case-name: tests.test_postgres,tests.test_store,tests.test_database_outage -*-
"""
The task store on PostgreSQL: the L{POSTGRES} backend, L{PgConnection}
(a connection offering the surface of a C{sqlite3} one that the store's
functions use, which survives a server restart and saves round trips; its
statements go through L{pgwire}) and the store's schema on PostgreSQL, by
versions (L{MIGRATIONS}, L{init_schema}).

Writers are serialised as on SQLite: every write transaction takes one
transaction-scoped advisory lock (L{WRITE_LOCK}), so the order of event
C{seq} numbers is the order of commits and a row read inside a write
transaction stays as read.  The selects whose rows the same transaction
then changes also lock them (C{FOR UPDATE}).

Only opening a connection needs C{psycopg}: without it this module still
imports (its error classes are then stand-ins nothing raises), so nothing
else needs it installed.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

from execgo.core import errors
from execgo.store import pgwire, schema, tallies, transitions
from execgo.store.backend import Backend
from execgo.store.pgwire import Statement

#: The advisory lock key every write transaction holds ("exec").
WRITE_LOCK = 0x65786563

#: The advisory lock key schema creation holds, so concurrent first starts
#: create it once.
SCHEMA_LOCK = WRITE_LOCK + 1


class PgCursor:
    """
    A cursor as the store's functions use a C{sqlite3} one: each
    statement runs through its L{PgConnection} (which may open a new
    connection first); its rows are L{pgwire.PgRow}s.

    @ivar row_factory: accepted and ignored: rows are always
        L{pgwire.PgRow}s.
    """

    row_factory: Any = None

    def __init__(self, connection: "PgConnection") -> None:
        self._connection = connection
        self._rows: List[Any] = []
        self._rowcount = -1

    def execute(self, sql: str, params: Sequence[Any] = ()) -> "PgCursor":
        """
        Run one statement with C{?} placeholders.
        """
        return self._took(self._connection.run(sql, params))

    def executemany(self, sql: str, params: Any) -> "PgCursor":
        """
        Run one statement once per parameter sequence.
        """
        return self._took(self._connection.run(sql, [tuple(p) for p in params], many=True))

    def _took(self, result: Optional[pgwire.Result]) -> "PgCursor":
        self._rows, self._rowcount = ([], -1) if result is None else (result.rows, result.rowcount)
        return self

    @property
    def rowcount(self) -> int:
        """
        The rows the last statement changed.
        """
        return self._rowcount

    def fetchone(self) -> Any:
        """
        The next row, or C{None}.
        """
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> List[Any]:
        """
        The remaining rows.
        """
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    def close(self) -> None:
        """
        Close the cursor.
        """
        self._rows = []


def _check_text(params: Any) -> None:
    """
    Text holding U+0000, which PostgreSQL's text cannot hold, is the
    client's error, refused before anything is sent.

    @raise errors.InvalidInput: for such text among C{params}.
    """
    if any(isinstance(value, str) and "\0" in value for value in params):
        raise errors.InvalidInput("text must not contain U+0000")


#: The sqlstates of a session the server ended (class 08: connection
#: exceptions; 57P01-57P03: shut down, crashed, not yet accepting).
_CUT_SQLSTATES = ("08", "57P01", "57P02", "57P03")

#: What a write transaction's first round trip begins with.
_BEGIN = ("BEGIN", (), False)
_LOCK = (f"SELECT pg_advisory_xact_lock({WRITE_LOCK})", (), False)
_ROLLBACK = ("ROLLBACK", (), False)


class PgConnection:
    """
    A connection to PostgreSQL (opened with C{psycopg} in autocommit mode,
    transactions opened explicitly as on SQLite) with the surface of a C{sqlite3} connection
    that L{execgo.store} uses, sending as few round trips as it can.

    A write transaction (L{begin_write}) is not sent when it begins: its
    C{BEGIN} and lock go with its first statement.  Inside a transaction, a
    statement whose result nobody reads waits and goes with the next
    statement (L{execute_later}); reads that do not depend on each other
    go together (L{fetch_all}).

    It outlives the server's session: when the server ended it (a
    restart, a failover), the statement that met the cut fails as usual,
    and the next statement outside a transaction opens a new connection.
    What met the cut having changed nothing for sure (a C{BEGIN} or a
    C{SELECT} outside a transaction, or a transaction's first round trip
    without its C{COMMIT}) is sent once more, on the new connection.  A
    statement of a transaction the cut ended fails, and so does every
    later one until its C{ROLLBACK}: no part of a transaction ever runs on
    the new connection.

    @ivar reconnects: how many times it opened a new one.
    """

    def __init__(self, opener: Callable[[], Any], wait_limit_s: Optional[float] = None) -> None:
        self._opener = opener
        self._wait_limit_s = wait_limit_s
        self._session = pgwire.Session(opener(), wait_limit_s)
        self.reconnects = 0
        self._in_transaction = False
        self._begin_pending = False
        self._later: List[Tuple[str, Tuple[Any, ...]]] = []
        self._unsent_savepoints: List[str] = []

    @property
    def backend(self) -> Backend:
        """
        L{POSTGRES}.
        """
        return POSTGRES

    @property
    def raw(self) -> Any:
        """
        The C{psycopg} connection.
        """
        return self._session.conn

    @property
    def in_transaction(self) -> bool:
        """
        Whether a transaction is open (or was cut and not yet rolled back).
        """
        return self._in_transaction

    def cursor(self) -> PgCursor:
        """
        A new cursor.
        """
        return PgCursor(self)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        """
        Run one statement on a new cursor and return it.
        """
        return self.cursor().execute(sql, params)

    def begin_write(self) -> None:
        """
        Open a write transaction holding L{WRITE_LOCK} until it ends; its
        C{BEGIN} and lock go with its first statement.
        """
        self._in_transaction = True
        self._begin_pending = True

    def run(self, sql: str, params: Any, many: bool = False) -> Any:
        """
        Run one statement (C{many}: once per parameter sequence) and
        return its L{pgwire.Result} (C{None} for one with nothing to
        send).  C{BEGIN}, C{COMMIT} and C{ROLLBACK} open and end
        the transaction.
        """
        verb = sql.lstrip()[:8].upper()
        if verb.startswith("ROLLBACK"):
            if " TO " not in sql.upper():
                self.rollback()
                return None
            if self._drop_unsent(sql.split()[-1]):
                return None
            # What waits was queued after the last statement sent, so
            # after the savepoint: rolled back, it need not be sent at all.
            self._later = []
        elif verb.startswith("RELEASE") and sql.split()[-1] in self._unsent_savepoints:
            self._unsent_savepoints.remove(sql.split()[-1])
            return None
        elif verb.startswith("COMMIT") and self._begin_pending and not self._later:
            self._end_transaction()
            return None
        if not many:
            _check_text(params)
        return self._send([(sql, params, many)], verb)[-1]

    def fetch_all(self, queries: Sequence[Tuple[str, Sequence[Any]]]) -> List[List[Any]]:
        """
        The rows of several queries that do not depend on each other, sent
        together (one round trip, with what waits to be sent).
        """
        for _, params in queries:
            _check_text(params)
        results = self._send([(sql, params, False) for sql, params in queries], "SELECT")
        return [result.rows for result in results[len(results) - len(queries) :]]

    def _drop_unsent(self, name: str) -> bool:
        """
        A rollback to savepoint C{name}, when the savepoint itself still
        waits to be sent: it and what followed are dropped unsent (and its
        C{RELEASE} will be too).
        """
        savepoint = f"SAVEPOINT {name}"
        for index in range(len(self._later) - 1, -1, -1):
            if self._later[index][0] == savepoint:
                del self._later[index:]
                self._unsent_savepoints.append(name)
                return True
        return False

    def _cut(self, error: Exception) -> bool:
        """
        Whether C{error} says the server ended the session.
        """
        state = getattr(error, "sqlstate", None) or ""
        return bool(self.raw.closed) or state.startswith(_CUT_SQLSTATES)

    def _send(self, statements: List[Statement], verb: str) -> List[pgwire.Result]:
        """
        Send C{statements} after what waits to be sent (a pending C{BEGIN}
        and lock first, then L{execute_later}'s statements), in one round
        trip, once more on a new connection when the cut met something
        that changed nothing; their results, in order.
        """
        fresh = self._begin_pending
        batch: List[Statement] = [_BEGIN, _LOCK] if fresh else []
        batch += [(sql, params, False) for sql, params in self._later]
        batch += statements
        self._begin_pending = False
        self._later = []
        again = (fresh and not verb.startswith("COMMIT")) or (
            not self._in_transaction and verb.startswith(("BEGIN", "SELECT"))
        )
        try:
            return self._round_trip(batch, verb, fresh)
        except POSTGRES.OperationalError as e:
            if not (again and self._cut(e)):
                raise
        return self._round_trip(batch, verb, fresh)

    def _round_trip(self, batch: List[Statement], verb: str, fresh: bool) -> List[pgwire.Result]:
        """
        Send C{batch} (L{pgwire.exchange}), on a new connection when the
        last one was cut and nothing of an open transaction reached it
        (C{fresh}: the transaction begins in this batch); keep
        L{in_transaction} as the server sees it.
        """
        reopen = self.raw.closed and (fresh or not self._in_transaction)
        if verb.startswith("BEGIN"):
            self._in_transaction = True
        try:
            if reopen:
                # Failing here (the server is still away) fails the batch
                # as a cut would.
                self._session = pgwire.Session(self._opener(), self._wait_limit_s)
                self.reconnects += 1
            results = pgwire.exchange(self._session, batch)
        except BaseException as e:
            # A transaction the cut ended stays open here until its
            # ROLLBACK: no later statement of it runs on a new connection.
            if verb.startswith(("BEGIN", "COMMIT")):
                self._end_transaction()
                if not self.raw.closed:
                    # A BEGIN that went through before the lock failed, a
                    # COMMIT never reached after a statement sent with it
                    # failed: the transaction ends here.
                    self._end_aborted()
            if isinstance(e, POSTGRES.OperationalError) and self._cut(e):
                self.raw.close()
            raise
        if verb.startswith("COMMIT"):
            self._end_transaction()
        return results

    def execute_later(self, sql: str, params: Sequence[Any]) -> None:
        """
        Run a statement whose result nobody reads: inside a transaction it
        waits and goes with the next statement, in the same round trip
        (L{pgwire.exchange}); its error, if any, is that statement's.  Outside one it runs now.
        """
        if not self._in_transaction:
            self.execute(sql, params)
            return
        _check_text(params)
        self._later.append((sql, tuple(params)))

    def send_waiting(self) -> None:
        """
        Send what L{execute_later} left waiting, now (one round trip), so
        that its errors are known before what follows.
        """
        if self._later:
            self._send([], "SEND")

    def _end_aborted(self) -> None:
        """
        Roll back a transaction the server holds open that this
        connection does not consider begun.
        """
        from psycopg.pq import TransactionStatus

        if self.raw.info.transaction_status != TransactionStatus.IDLE:
            try:
                self._rollback_now()
            except POSTGRES.Error:
                pass  # cut meanwhile: the server ended it, the next statement reconnects

    def _rollback_now(self) -> None:
        pgwire.exchange(self._session, [_ROLLBACK])

    def _end_transaction(self) -> None:
        """
        Forget the transaction that ended (and what it left unsent).
        """
        self._in_transaction = False
        self._begin_pending = False
        self._later = []
        self._unsent_savepoints = []

    def commit(self) -> None:
        """
        Commit the open transaction, if any.
        """
        if self._in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        """
        Roll back the open transaction, if any (nothing to send when none
        of it was sent, or the connection was cut: the server ended the
        transaction).
        """
        if not self._in_transaction:
            return
        sent = not self._begin_pending
        self._end_transaction()
        if sent and not self.raw.closed:
            self._rollback_now()

    def close(self) -> None:
        """
        Close the connection.
        """
        self.raw.close()


#: What C{adbapi} reads of a DB-API module (this one stands in for it).
apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"


def connect(url: str, password: Optional[str] = None, wait_limit_s: Optional[float] = None) -> PgConnection:
    """
    Open a connection to the store at the C{postgresql://} C{url}, with
    C{password} given apart from it (C{None}: libpq's C{PGPASSWORD} or
    C{~/.pgpass}); it opens itself again after a cut (L{PgConnection}).

    @param wait_limit_s: the longest one wait for the server may take
        (L{pgwire.Session.wait_limit_s}).
    """
    import psycopg

    extra: Dict[str, Any] = {} if password is None else {"password": password}
    return PgConnection(lambda: psycopg.connect(url, autocommit=True, **extra), wait_limit_s)


def listen(url: str, password: Optional[str], channel: str) -> Any:
    """
    A new connection listening on C{channel} (blocking): the C{psycopg}
    connection, whose notifications its owner reads off
    C{pgconn.notifies()} after C{pgconn.consume_input()} whenever its
    socket (C{pgconn.socket}) is readable.
    """
    import psycopg
    from psycopg import sql

    extra: Dict[str, Any] = {} if password is None else {"password": password}
    conn = psycopg.connect(url, autocommit=True, **extra)
    try:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except BaseException:
        conn.close()
        raise
    return conn


def _begin_locked(conn: Any) -> None:
    """
    Open a write transaction holding L{WRITE_LOCK} until it ends; nothing
    is sent before its first statement (L{PgConnection.begin_write}).
    """
    conn.begin_write()


def _errors() -> Tuple[Type[Exception], Type[Exception], Type[Exception]]:
    """
    C{psycopg}'s base, integrity and operational error classes, or
    stand-ins no driver raises when it is not installed.
    """
    try:
        import psycopg
    except ImportError:

        class Missing(Exception):
            """
            Never raised: C{psycopg} is not installed.
            """

        return Missing, Missing, Missing
    return psycopg.Error, psycopg.IntegrityError, psycopg.OperationalError


def _trigger(trigger: tallies.Trigger) -> List[str]:
    """
    One tally trigger as a PL/pgSQL function and a row trigger calling it.
    """
    body = _pg(trigger.body)
    function = f"execgo_{trigger.name}"
    when = f" WHEN ({trigger.when})" if trigger.when else ""
    return [
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN\n{body}\nRETURN NULL; END $$",
        f"CREATE TRIGGER {trigger.name} AFTER {trigger.event} ON tasks FOR EACH ROW{when}"
        f" EXECUTE FUNCTION {function}()",
    ]


def _version_1() -> List[str]:
    """
    The statements creating the store's first version: the tables,
    indexes and tally triggers of L{execgo.store.schema} and
    L{execgo.store.tallies}, with 64-bit integers and an explicit C{rowid}
    column (the listing cursor's tie-breaker, implicit on SQLite).
    """
    columns = ", ".join(
        f"{name} {decl.replace('INTEGER', 'BIGINT')}" for name, decl in schema.TASK_COLUMNS[: schema.TASK_COLUMNS_V1]
    )
    statements = [
        f"CREATE TABLE tasks ({columns}, rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE)",
        """CREATE TABLE task_events (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
            event_type TEXT NOT NULL,
            timestamp_ms BIGINT NOT NULL,
            message TEXT,
            data_json TEXT
        )""",
        "CREATE TABLE runtime_counters (name TEXT NOT NULL, labels TEXT NOT NULL, value BIGINT NOT NULL,"
        " PRIMARY KEY (name, labels))",
        "CREATE TABLE task_tallies (kind TEXT NOT NULL, key TEXT NOT NULL, value BIGINT NOT NULL,"
        " PRIMARY KEY (kind, key))",
        """CREATE TABLE task_labels (
            task_id TEXT NOT NULL REFERENCES tasks(task_id) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            created_at_ms BIGINT NOT NULL,
            task_rowid BIGINT NOT NULL,
            PRIMARY KEY (task_id, key)
        )""",
        "CREATE INDEX idx_tasks_status_created ON tasks(status, created_at_ms, rowid)",
        "CREATE INDEX idx_tasks_finished ON tasks(finished_at_ms)",
        "CREATE INDEX idx_task_events_task_seq ON task_events(task_id, seq)",
        "CREATE INDEX idx_tasks_reserved ON tasks(released_at_ms, reserved_at_ms)"
        " WHERE reserved_at_ms IS NOT NULL AND released_at_ms IS NULL",
        "CREATE INDEX idx_tasks_created ON tasks(created_at_ms, rowid)",
        "CREATE INDEX idx_tasks_tenant_created ON tasks(tenant, created_at_ms, rowid)",
        "CREATE INDEX idx_tasks_owner_created ON tasks(owner, created_at_ms, rowid)",
        "CREATE INDEX idx_task_labels_kv ON task_labels(key, value, created_at_ms, task_rowid)",
        "CREATE UNIQUE INDEX idx_tasks_idempotency_scope ON tasks(idempotency_key, idempotency_scope)"
        " WHERE idempotency_key IS NOT NULL",
        "CREATE INDEX idx_tasks_result_missing ON tasks(result_missing) WHERE result_missing = 1",
    ]
    for trigger in tallies.TRIGGERS:
        statements += _trigger(trigger)
    return statements


def _pg(expression: str) -> str:
    """
    A tally expression in PostgreSQL's spelling.
    """
    return expression.replace("char(31)", "chr(31)").replace("MAX(0,", "GREATEST(0,")


def _values(upserts: Sequence[tallies.Upsert]) -> str:
    """
    Upserts on one table as one statement, a row each (their keys must
    differ: each row is hit once), their conditions left out.
    """
    rows = ", ".join(f"({u.kind}, {_pg(u.key)}, {_pg(u.amount)})" for u in upserts)
    return f"INSERT INTO {upserts[0].table} ({upserts[0].columns[1]}) VALUES {rows}{upserts[0].on_conflict}"


def _upsert(upsert: tallies.Upsert) -> str:
    """
    One upsert as a PL/pgSQL statement that runs only when its condition
    holds (a false C{WHERE} would still run the statement).
    """
    statement = _values([upsert])
    if upsert.when == "TRUE":
        return statement
    return f"IF {_pg(upsert.when)} THEN {statement} END IF;"


def _merged(upserts: Sequence[tallies.Upsert]) -> List[str]:
    """
    The statements of C{upserts}, consecutive unconditional ones on one
    table as one multi-row upsert (their keys differ: each row is hit
    once).
    """
    statements: List[str] = []
    run: List[tallies.Upsert] = []

    def flush() -> None:
        if run:
            statements.append(_values(run))
            run.clear()

    for upsert in upserts:
        if upsert.when != "TRUE":
            flush()
            statements.append(_upsert(upsert))
        else:
            if run and run[0].table != upsert.table:
                flush()
            run.append(upsert)
    flush()
    return statements


def _function_body(trigger: tallies.Trigger) -> str:
    """
    The body of a trigger's function from version 2 on: each upsert only
    when its condition holds, consecutive unconditional ones as one
    statement, and in a paired trigger each pair only when a column it
    reads changed (otherwise the two cancel out).
    """
    if not trigger.paired:
        return "\n".join(_merged(trigger.upserts))
    half = len(trigger.upserts) // 2
    lines = []
    for taken, added in zip(trigger.upserts[:half], trigger.upserts[half:]):
        text = " ".join((taken.key, taken.amount, taken.when, added.key, added.amount, added.when))
        columns = sorted(set(re.findall(r"\b(?:OLD|NEW)\.(\w+)", text)))
        changed = " OR ".join(f"OLD.{column} IS DISTINCT FROM NEW.{column}" for column in columns)
        lines.append(f"IF {changed} THEN\n{_upsert(taken)}\n{_upsert(added)}\nEND IF;")
    return "\n".join(lines)


def _version_2() -> List[str]:
    """
    Version 2: the tally functions do only the upserts that change
    something (L{_function_body}); about half the statements per task
    transition.
    """
    return [
        f"CREATE OR REPLACE FUNCTION execgo_{trigger.name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN\n"
        f"{_function_body(trigger)}\nRETURN NULL; END $$"
        for trigger in tallies.TRIGGERS
    ]


def _version_3() -> List[str]:
    """
    Version 3: the cluster's nodes (L{schema.NODES_TABLE}) and the node
    each task was claimed by.
    """
    added = ", ".join(f"ADD COLUMN {name} {decl}" for name, decl in schema.TASK_COLUMNS[schema.TASK_COLUMNS_V1 :])
    return [
        f"ALTER TABLE tasks {added}",
        schema.NODES_TABLE.replace("INTEGER", "BIGINT"),
        schema.NODE_RUNNING_INDEX,
    ]


def _version_4() -> List[str]:
    """
    Version 4: the lease guard of a node's writes
    (L{execgo.store.transitions.guard_lease}): it fails the transaction
    with SQLSTATE L{transitions.STALE_LEASE} unless the lease is held.
    """
    return [
        "CREATE FUNCTION execgo_lease_held(p_node TEXT, p_epoch BIGINT, p_now BIGINT) RETURNS void"
        " LANGUAGE plpgsql AS $$ BEGIN\n"
        "IF NOT EXISTS (SELECT 1 FROM nodes WHERE node_id = p_node AND lease_epoch = p_epoch"
        " AND state = 'alive' AND lease_expires_at_ms > p_now) THEN\n"
        f"RAISE EXCEPTION 'the lease of node % (epoch %) is not held', p_node, p_epoch"
        f" USING ERRCODE = '{transitions.STALE_LEASE}';\n"
        "END IF; END $$"
    ]


#: Each schema version's statements, applied in order to a store behind it.
#: A version once released never changes: a change is a new version.
MIGRATIONS: Dict[int, Callable[[], List[str]]] = {1: _version_1, 2: _version_2, 3: _version_3, 4: _version_4}


def init_schema(conn: Any, now_ms: Optional[int] = None) -> None:
    """
    Bring the store up to the newest version in L{MIGRATIONS}, in one
    transaction holding L{SCHEMA_LOCK} (so concurrent starts apply each
    version once); safe to run at any time.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    conn.execute("BEGIN")
    try:
        conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS execgo_schema_version"
            " (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)"
        )
        have = conn.execute("SELECT COALESCE(MAX(version), 0) FROM execgo_schema_version").fetchone()[0]
        for version in sorted(MIGRATIONS):
            if version > have:
                for statement in MIGRATIONS[version]():
                    conn.execute(statement)
                conn.execute("INSERT INTO execgo_schema_version VALUES (?, ?)", (version, now_ms))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_Error, _IntegrityError, _OperationalError = _errors()

#: PostgreSQL: one writer at a time (L{WRITE_LOCK}), and rows read to be
#: changed are locked too.
POSTGRES = Backend(
    name="postgresql",
    begin_write=_begin_locked,
    for_update=" FOR UPDATE",
    Error=_Error,
    IntegrityError=_IntegrityError,
    OperationalError=_OperationalError,
    row_factory=None,
    init_schema=init_schema,
    execute_later=lambda conn, sql, params: conn.execute_later(sql, params),
    send_waiting=lambda conn: conn.send_waiting(),
    fetch_all=lambda conn, queries: conn.fetch_all(queries),
    notify=lambda conn, channel, payload: conn.execute_later("SELECT pg_notify(?, ?)", (channel, payload)),
)
