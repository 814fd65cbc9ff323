"""
The database backends store tests run against, and L{each}, the class
decorator that runs a test class once per backend.

A test class decorated with L{each} opens its stores through
C{self.backend} (a L{StoreBackend}) instead of naming an engine.  The
first backend of L{BACKENDS} is the decorated class itself; every other
one becomes a subclass named C{<Class>_<backend>} in the same module,
which trial finds like any other test class, and which skips with the
backend's L{StoreBackend.skip} reason on a host that cannot run it.

Today L{BACKENDS} holds SQLite only.  A new engine is added by appending
its L{StoreBackend} (a C{connect} that opens a fresh, empty store for one
test, and the reason to skip when the engine is not there); the tests
that exercise engine-specific behaviour (SQLite's pragmas and file
migrations, locked-file faults) stay on undecorated classes.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional, Sequence, Type, TypeVar

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.store import connection
from execgo.store.backend import SQLITE, Backend

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
    @ivar skip: why the backend cannot run on this host (C{None}: it can).
    """

    name: str
    backend: Backend
    connect: Callable[[Any, str], Any]
    skip: Optional[str] = None


def _sqlite_connect(test: Any, data_dir: str) -> Any:
    """
    A connection on a new SQLite file in C{data_dir}.
    """
    conn = connection.connect(os.path.join(data_dir, "runtime.db"))
    test.addCleanup(conn.close)
    return conn


SQLITE_BACKEND = StoreBackend(name="sqlite", backend=SQLITE, connect=_sqlite_connect)

#: Every backend, the default (the one undecorated classes use) first.
BACKENDS: Sequence[StoreBackend] = (SQLITE_BACKEND,)


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
