# -*- test-case-name: tests.test_databaseurl -*-
"""
Where the task store lives: C{--database-url} (C{EXECGO_RUNTIME_DATABASE_URL})
read into a L{DatabaseUrl}.

Absent, C{sqlite:} or C{sqlite://}: the SQLite file in the data directory.
C{postgresql://} or C{postgres://}: a PostgreSQL database, with libpq's
conventions (C{PGPASSWORD}, C{~/.pgpass}, C{sslmode=} and the other query
parameters are left to the driver).  A password, in the user part or as a
C{password=} parameter, is taken out of the URL (L{DatabaseUrl.password}):
what other processes are given on their command line and what logs show
never holds it (L{DatabaseUrl.without_password}, L{DatabaseUrl.redacted}).

Pure: parsing only, no driver needed.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, quote, unquote, urlencode

import attrs

from execgo.core import errors

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

#: The schemes of a PostgreSQL URL (libpq accepts both).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: The URLs that name the SQLite file in the data directory.
SQLITE_URLS = ("sqlite:", "sqlite://")
#: Seconds a PostgreSQL connection attempt may take when the URL says
#: nothing (libpq would wait for as long as TCP does).
DEFAULT_CONNECT_TIMEOUT_S = 5

#: How long a process starting on a store (the server, the supervisor)
#: waits for a database server it cannot reach yet, and how often it
#: tries meanwhile.
STORE_WAIT_S = 60.0
STORE_RETRY_S = 1.0

_MASK = "***"


@attrs.frozen
class DatabaseUrl:
    """
    The store's location.

    @ivar engine: L{SQLITE} or L{POSTGRESQL}.
    @ivar without_password: the URL with no password in it (the SQLite
        file's path for L{SQLITE}, given the data directory by L{of});
        what another process may be told on its command line.
    @ivar password: the password the URL held, decoded (C{None}: none; the
        driver then looks in C{PGPASSWORD} and C{~/.pgpass}).
    @ivar redacted: the URL as logs and messages show it: the password, if
        any, as C{***}.
    """

    engine: str
    without_password: str
    password: Optional[str] = attrs.field(default=None, repr=False)
    redacted: str = ""

    @property
    def is_postgres(self) -> bool:
        """
        Whether the store is on PostgreSQL.
        """
        return self.engine == POSTGRESQL

    @property
    def connect_url(self) -> str:
        """
        The URL a connection is opened with: L{without_password}, plus a
        C{connect_timeout} when it names none (the SQLite file's path as
        it is).  The password is given to
        the driver apart (C{password=}), never in a string.
        """
        if not self.is_postgres:
            return self.without_password
        return with_connect_timeout(self.without_password)

    def secret_env(self) -> Dict[str, str]:
        """
        The environment a process opening the store needs beyond its
        command line: C{PGPASSWORD} when the URL held a password.
        """
        return {} if self.password is None else {"PGPASSWORD": self.password}


def parse(url: Optional[str], data_dir: str) -> DatabaseUrl:
    """
    Read C{--database-url}; C{data_dir} (absolute) holds the SQLite file.

    @raise errors.InvalidInput: for a URL of another scheme or one that
        cannot be read.
    """
    if url is None or url in SQLITE_URLS:
        path = os.path.join(data_dir, "runtime.db")
        return DatabaseUrl(engine=SQLITE, without_password=path, redacted=path)
    if "\0" in url or any(ord(c) < 32 for c in url):
        raise errors.InvalidInput("invalid database URL: control characters")
    if url.startswith("sqlite:"):
        raise errors.InvalidInput(
            "invalid database URL: the SQLite store is always <data-dir>/runtime.db; give 'sqlite:' or nothing"
        )
    scheme = next((s for s in POSTGRES_SCHEMES if url.startswith(s)), None)
    if scheme is None:
        shown = url.split("://", 1)[0] if "://" in url else url.split(":", 1)[0]
        raise errors.InvalidInput(
            f"invalid database URL: unsupported scheme '{shown[:32]}' (expected postgresql://, postgres:// or sqlite:)"
        )
    rest = url[len(scheme):]
    authority, tail = _split_authority(rest)
    userinfo, at, hosts = authority.rpartition("@")
    password: Optional[str] = None
    if at and ":" in userinfo:
        user, _, encoded = userinfo.partition(":")
        password = unquote(encoded)
        userinfo = user
    path, query = tail.split("?", 1) if "?" in tail else (tail, "")
    params, query_password = _without_password(query)
    if query_password is not None:
        password = query_password
    head = f"{scheme}{userinfo}{at}{hosts}{path}"
    clean = head + (f"?{params}" if params else "")
    shown_user = f"{userinfo}:{_MASK}@" if password is not None and at else f"{userinfo}{at}"
    shown = f"{scheme}{shown_user}{hosts}{path}" + (f"?{params}" if params else "")
    if password is not None and not at:
        shown += ("&" if params else "?") + f"password={_MASK}"
    return DatabaseUrl(engine=POSTGRESQL, without_password=clean, password=password, redacted=shown)


def is_postgres_url(database: str) -> bool:
    """
    Whether C{database} (a URL or the SQLite file's path) names a
    PostgreSQL database.
    """
    return database.startswith(POSTGRES_SCHEMES)


def with_connect_timeout(url: str) -> str:
    """
    The PostgreSQL C{url} with a C{connect_timeout} of
    L{DEFAULT_CONNECT_TIMEOUT_S} unless it names one.
    """
    if "connect_timeout=" in url:
        return url
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}connect_timeout={DEFAULT_CONNECT_TIMEOUT_S}"


def _split_authority(rest: str) -> Tuple[str, str]:
    """
    C{user:pass@host:port} and the rest (C{/db?query}) of what follows a
    URL's scheme.
    """
    for index, char in enumerate(rest):
        if char in "/?":
            return rest[:index], rest[index:]
    return rest, ""


def _without_password(query: str) -> Tuple[str, Optional[str]]:
    """
    The query without its C{password} parameter, and that parameter.
    """
    if not query:
        return "", None
    kept: List[Tuple[str, str]] = []
    password: Optional[str] = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "password":
            password = value
        else:
            kept.append((name, value))
    if password is None:
        return query, None
    return urlencode(kept, quote_via=quote), password
