"""
Tests for L{execgo.core.databaseurl}: C{--database-url} read, its
password kept apart.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import errors
from execgo.core.databaseurl import (
    POSTGRESQL,
    SQLITE,
    is_postgres_url,
    parse,
    with_connect_timeout,
)


class ParseTests(SynchronousTestCase):
    """
    L{parse}.
    """

    def test_sqlite(self) -> None:
        """
        Nothing, C{sqlite:} and C{sqlite://} name the file in the data
        directory.
        """
        for url in (None, "sqlite:", "sqlite://"):
            database = parse(url, "/d")
            self.assertEqual((database.engine, database.without_password), (SQLITE, "/d/runtime.db"))
            self.assertFalse(database.is_postgres)
            self.assertEqual(database.secret_env(), {})

    def test_postgres_without_password(self) -> None:
        """
        Both schemes; a URL without a password is kept as it is, query
        parameters included.
        """
        for url in ("postgresql://u@h:5432/db", "postgres://u@h/db?sslmode=require&application_name=x"):
            database = parse(url, "/d")
            self.assertEqual(database.engine, POSTGRESQL)
            self.assertEqual((database.without_password, database.redacted, database.password), (url, url, None))

    def test_password_in_user_part(self) -> None:
        """
        A password in the user part is taken out (decoded); logs show it
        as C{***}; the supervisor gets it as C{PGPASSWORD}.
        """
        database = parse("postgresql://u:p%40ss:w@h:1/db?sslmode=disable", "/d")
        self.assertEqual(database.password, "p@ss:w")
        self.assertEqual(database.without_password, "postgresql://u@h:1/db?sslmode=disable")
        self.assertEqual(database.redacted, "postgresql://u:***@h:1/db?sslmode=disable")
        self.assertEqual(database.secret_env(), {"PGPASSWORD": "p@ss:w"})
        self.assertNotIn("p@ss", repr(database))

    def test_password_parameter(self) -> None:
        """
        A C{password=} query parameter is taken out the same way.
        """
        database = parse("postgresql://h/db?password=s%26cret&sslmode=disable", "/d")
        self.assertEqual(database.password, "s&cret")
        self.assertEqual(database.without_password, "postgresql://h/db?sslmode=disable")
        self.assertNotIn("cret", database.redacted)
        self.assertIn("password=***", database.redacted)

    def test_refused(self) -> None:
        """
        Other schemes, an SQLite path and control characters are refused
        with a message that does not repeat the URL's secret.
        """
        for url in ("mysql://u:secret@h/db", "sqlite:/tmp/x.db", "postgresql://u:secret@h/db\n", "u:secret@h"):
            with self.assertRaises(errors.InvalidInput) as caught:
                parse(url, "/d")
            self.assertNotIn("secret", caught.exception.message)

    def test_connect_timeout(self) -> None:
        """
        A connection attempt is bounded unless the URL bounds it itself.
        """
        self.assertEqual(with_connect_timeout("postgresql://h/db"), "postgresql://h/db?connect_timeout=5")
        self.assertEqual(with_connect_timeout("postgresql://h/db?a=b"), "postgresql://h/db?a=b&connect_timeout=5")
        self.assertEqual(with_connect_timeout("postgresql://h/db?connect_timeout=1"), "postgresql://h/db?connect_timeout=1")
        self.assertTrue(is_postgres_url("postgres://h/db"))
        self.assertFalse(is_postgres_url("/d/runtime.db"))
