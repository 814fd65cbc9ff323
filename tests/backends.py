"""
The database backends store tests run against, and L{each}, the class
decorator that runs a test class once per backend.

A test class decorated with L{each} opens its stores through
C{self.backend} (a L{StoreBackend}) instead of naming an engine.  The
first backend of L{BACKENDS} is the decorated class itself; every other
one becomes a subclass named C{<Class>_<backend>} in the same module,
which trial finds like any other test class, and which skips with the
backend's L{StoreBackend.skip} reason on a host that cannot run it.

L{BACKENDS} holds SQLite and PostgreSQL.  Each test on PostgreSQL gets
a database of its own, copied from a template database that holds the
migrated schema (made once per test process on the process's cluster,
L{tests.pgcluster.shared}), and dropped when the test ends; the variant
classes skip when the host has no PostgreSQL binaries or no C{psycopg}.
The tests that exercise engine-specific behaviour (SQLite's pragmas and
file migrations, locked-file faults) stay on undecorated classes.
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import os
import sys
from typing import Any, Callable, List, Optional, Sequence, Type, TypeVar

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.store import connection, postgres, schema
from execgo.store.backend import SQLITE, Backend
from tests import pgcluster

T = TypeVar("T", bound=Type[SynchronousTestCase])


@attrs.frozen
class StoreBackend:
    """
    One backend as the tests use it.

    @ivar name: the suffix of the test classes that run on it.
    @ivar backend: the store's backend (L{execgo.store.backend}).
    @ivar connect: opens a connection on a fresh, empty store for a test
        (given the test and a data directory it made), closed when the
        test ends.
    @ivar reopen: opens another connection to the store of a connection
        L{connect} made (given the test and that connection), closed when
        the test ends.
    @ivar database_url: the C{--database-url} of a new, empty store for a
        test (given the test; dropped when it ends unless told to keep it,
        as a server shared by a class needs): C{None} for the SQLite file
        in the data directory.
    @ivar skip: why the backend cannot run on this host (C{None}: it can).
    """

    name: str
    backend: Backend
    connect: Callable[[Any, str], Any]
    reopen: Callable[[Any, Any], Any]
    database_url: Callable[..., Optional[str]]
    skip: Optional[str] = None

    def server_args(self, test: Any, keep: bool = False) -> List[str]:
        """
        The C{serve} arguments that put a server's store on this backend,
        in a new store (L{database_url}).
        """
        url = self.database_url(test, keep)
        return [] if url is None else ["--database-url", url]


def _sqlite_connect(test: Any, data_dir: str) -> Any:
    """
    A connection on a new SQLite file in C{data_dir}.
    """
    conn = connection.connect(os.path.join(data_dir, "runtime.db"))
    test.addCleanup(conn.close)
    return conn


def _sqlite_reopen(test: Any, conn: Any) -> Any:
    """
    Another connection to the SQLite file of C{conn}.
    """
    other = connection.connect(conn.execute("PRAGMA database_list").fetchone()[2])
    test.addCleanup(other.close)
    return other


def _sqlite_url(test: Any, keep: bool = False) -> None:
    """
    No URL: the SQLite file in the data directory.
    """
    return None


SQLITE_BACKEND = StoreBackend(
    name="sqlite", backend=SQLITE, connect=_sqlite_connect, reopen=_sqlite_reopen, database_url=_sqlite_url
)

#: The template database each test's PostgreSQL database is copied from.
TEMPLATE = "execgo_template"


@attrs.define
class _Databases:
    """
    The test process's PostgreSQL databases: a connection to the cluster's
    maintenance database, made (with the template) on first use.

    @ivar admin: the C{psycopg} connection creating and dropping databases.
    @ivar names: numbers the databases of this process.
    """

    admin: Any = None
    names: Any = attrs.field(factory=itertools.count)

    def create(self, empty: bool = False) -> str:
        """
        A new database holding the migrated schema (none when C{empty});
        its name.
        """
        cluster = pgcluster.shared()
        if self.admin is None:
            import psycopg

            self.admin = psycopg.connect(cluster.url(), autocommit=True)
            atexit.register(self.admin.close)
            self.admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            self.admin.execute(f"CREATE DATABASE {TEMPLATE}")
            conn = postgres.connect(cluster.url(TEMPLATE))
            try:
                schema.init_schema(conn)
            finally:
                conn.close()
        name = f"execgo_test_{os.getpid()}_{next(self.names)}"
        self.admin.execute(f"CREATE DATABASE {name}" + ("" if empty else f" TEMPLATE {TEMPLATE}"))
        return name

    def drop(self, name: str) -> None:
        """
        Drop a database L{create} made.
        """
        self.admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_databases = _Databases()


def _postgres_connect(test: Any, data_dir: str) -> Any:
    """
    A connection on a new database of the process's cluster, dropped when
    the test ends.
    """
    name = _databases.create()
    test.addCleanup(_databases.drop, name)
    conn = postgres.connect(pgcluster.shared().url(name))
    test.addCleanup(conn.close)
    return conn


def _postgres_url(test: Any, keep: bool = False) -> str:
    """
    The URL of a new, empty database of the process's cluster (the
    runtime creates its schema), dropped when the test ends unless
    C{keep} (the cluster goes when the process ends).
    """
    name = _databases.create(empty=True)
    if not keep:
        test.addCleanup(_databases.drop, name)
    return pgcluster.shared().url(name)


def _postgres_reopen(test: Any, conn: Any) -> Any:
    """
    Another connection to the database of C{conn}.
    """
    other = postgres.connect(pgcluster.shared().url(conn.raw.info.dbname))
    test.addCleanup(other.close)
    return other


def _postgres_skip() -> Optional[str]:
    """
    Why the PostgreSQL variants cannot run here, or C{None}.
    """
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg not installed"
    return pgcluster.unavailable()


POSTGRES_BACKEND = StoreBackend(
    name="postgres",
    backend=postgres.POSTGRES,
    connect=_postgres_connect,
    reopen=_postgres_reopen,
    database_url=_postgres_url,
    skip=_postgres_skip(),
)

#: Every backend, the default (the one undecorated classes use) first.
BACKENDS: Sequence[StoreBackend] = (SQLITE_BACKEND, POSTGRES_BACKEND)


def each(cls: T, backends: Optional[Sequence[StoreBackend]] = None) -> T:
    """
    Run the test class C{cls} once per backend: C{cls} itself on the first
    of C{backends} (L{BACKENDS} by default), and a subclass per other
    backend, C{<Class>_<name>}, put beside it in its module.
    """
    backends = BACKENDS if backends is None else backends
    cls.backend = backends[0]  # type: ignore[attr-defined]
    if backends[0].skip is not None:
        cls.skip = backends[0].skip  # type: ignore[attr-defined]
    module = sys.modules[cls.__module__]
    for backend in backends[1:]:
        name = f"{cls.__name__}_{backend.name}"
        variant = type(cls)(
            name, (cls,), {"backend": backend, "skip": backend.skip, "__module__": cls.__module__, "__qualname__": name}
        )
        setattr(module, name, variant)
    return cls
