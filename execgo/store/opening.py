# -*- test-case-name: tests.test_postgres -*-
"""
Opening the task store wherever it lives: L{connect} takes what the
supervisor is told on its command line (the SQLite file's path, or a
PostgreSQL URL without its password, which then comes from
C{PGPASSWORD} or C{~/.pgpass}).
"""

from __future__ import annotations

from typing import Any

from execgo.core.databaseurl import is_postgres_url, with_connect_timeout
from execgo.store import connection, postgres


def connect(database: str) -> Any:
    """
    One connection to the store at C{database}: a
    L{execgo.store.postgres.PgConnection} for a C{postgresql://} URL, else
    a C{sqlite3} connection to the file at that path.
    """
    if is_postgres_url(database):
        return postgres.connect(with_connect_timeout(database))
    return connection.connect(database)
