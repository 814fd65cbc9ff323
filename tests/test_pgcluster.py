"""
Tests for L{tests.pgcluster}, the throwaway PostgreSQL cluster the
PostgreSQL tests run against: it starts from the host's binaries, keeps
its data and its port across C{pg_ctl restart -m fast}, makes and drops
databases, and is gone without a trace when destroyed.
"""

from __future__ import annotations

import os
import uuid

from twisted.trial.unittest import SynchronousTestCase

from tests import pgcluster

REASON = pgcluster.unavailable()


class AvailabilityTests(SynchronousTestCase):
    """
    What decides whether PostgreSQL tests run.
    """

    def test_explicit_binaries(self) -> None:
        """
        C{EXECGO_TEST_PG_BIN} naming a directory without the programs
        means no binaries, whatever is installed.
        """
        empty = self.mktemp()
        os.makedirs(empty)
        self.patch(os, "environ", {**os.environ, "EXECGO_TEST_PG_BIN": empty})
        self.assertIsNone(pgcluster.find_binaries())
        self.assertIn("PostgreSQL binaries not found", pgcluster.unavailable() or "")

    def test_version_order(self) -> None:
        """
        The highest version directory wins.
        """
        self.assertEqual(pgcluster._version("/usr/lib/postgresql/15/bin"), 15)
        self.assertEqual(pgcluster._version("/opt/pg/bin"), 0)


class ClusterTests(SynchronousTestCase):
    """
    A real cluster (one of its own, not the shared one, since it is
    restarted and destroyed here).
    """

    skip = REASON

    def setUp(self) -> None:
        binaries = pgcluster.find_binaries()
        assert binaries is not None
        self.cluster = pgcluster.Cluster(binaries).start()
        self.addCleanup(self.cluster.destroy)

    def test_data_survives_a_fast_restart(self) -> None:
        """
        What was committed before C{restart -m fast} is there after it, on
        the same port.
        """
        url = self.cluster.create_database("kept")
        self.assertTrue(url.endswith(f":{self.cluster.port}/kept"))
        self.cluster.psql("CREATE TABLE t (v int); INSERT INTO t VALUES (42)", "kept")
        self.cluster.restart()
        self.assertEqual(self.cluster.psql("SELECT v FROM t", "kept").strip(), "42")

    def test_databases(self) -> None:
        """
        A database made from a template has the template's tables; a
        dropped one is gone.
        """
        self.cluster.create_database("template_x")
        self.cluster.psql("CREATE TABLE t (v int)", "template_x")
        name = f"copy_{uuid.uuid4().hex[:8]}"
        self.cluster.create_database(name, template="template_x")
        self.assertEqual(self.cluster.psql("SELECT count(*) FROM t", name).strip(), "0")
        self.cluster.drop_database(name)
        listed = self.cluster.psql("SELECT datname FROM pg_database").split()
        self.assertNotIn(name, listed)
        self.assertIn("template_x", listed)

    def test_destroy_removes_everything(self) -> None:
        """
        A destroyed cluster no longer answers and its directory is gone.
        """
        self.cluster.destroy()
        self.assertFalse(os.path.exists(self.cluster.directory))
        self.assertRaises(RuntimeError, self.cluster.psql, "SELECT 1")
