# -*- test-case-name: tests.test_postgres -*-
"""
Opening the task store wherever it lives: L{connect} takes what the
supervisor is told on its command line (the SQLite file's path, or a
PostgreSQL URL without its password, which then comes from
C{PGPASSWORD} or C{~/.pgpass}).
"""

from __future__ import annotations

from typing import Any, Optional

from execgo.core.databaseurl import is_postgres_url, with_connect_timeout
from execgo.store import connection, postgres


def connect(database: str, wait_limit_s: Optional[float] = None) -> Any:
    """
    One connection to the store at C{database}: a
    L{execgo.store.postgres.PgConnection} for a C{postgresql://} URL (each
    of its waits for the server at most C{wait_limit_s}), else a
    C{sqlite3} connection to the file at that path.
    """
    if is_postgres_url(database):
        return postgres.connect(with_connect_timeout(database), wait_limit_s=wait_limit_s)
    return connection.connect(database)
