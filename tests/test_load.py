"""
Load: C{benchmarks/load.py} run small against the real server --
50 concurrent keep-alive clients polling status, reading events and
submitting for 3 s -- must see no failed request, a bounded p99 and every
submitted task succeed; its accounting helpers are checked directly.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.serverfixture import supervisor_pids, workload_pids
from tests.test_chaos import BENCHMARKS, load_script

LOAD_PY = os.path.join(BENCHMARKS, "load.py")

# Generous: the p99 of the small run is about 0.3 s on two cores.
P99_BOUND_MS = 2000.0


class SmallLoadRunTests(SynchronousTestCase):
    """
    The whole script, small: 50 clients for 3 seconds.
    """

    def test_small_run(self) -> None:
        """
        No request fails (no transport error, no non-2xx but 429), the p99
        of every kind of request is below L{P99_BOUND_MS}, every task
        (seeded and submitted under load) ends C{success}, and nothing of
        the server's data directory is left.
        """
        done = subprocess.run(
            [sys.executable, LOAD_PY, "--clients", "50", "--seconds", "3", "--json"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=170,
            check=False,
        )
        stderr = done.stderr.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, stderr[-4000:])
        report = json.loads(done.stdout)
        self.assertEqual(report["problems"], [])
        self.assertEqual(report["failures"], 0)
        self.assertGreater(report["requests"], 100)
        for kind in ("status", "events", "submit", "all"):
            row = report["latency"][kind]
            self.assertGreater(row["requests"], 0, kind)
            self.assertEqual(row["failures"], 0, kind)
            self.assertLess(row["p99_ms"], P99_BOUND_MS, kind)
            self.assertLessEqual(row["p50_ms"], row["p90_ms"])
            self.assertLessEqual(row["p90_ms"], row["p99_ms"])
            self.assertLessEqual(row["p99_ms"], row["max_ms"])
        self.assertEqual(
            report["latency"]["all"]["requests"],
            sum(report["latency"][kind]["requests"] for kind in ("status", "events", "submit")),
        )
        self.assertEqual(report["tasks_checked"], report["tasks_submitted_under_load"] + 20)
        self.assertEqual(report["task_outcomes"], {"success": report["tasks_checked"]})
        self.assertNotIn("kept", report)
        self.assertFalse(os.path.exists(report["data_dir"]))
        self.assertEqual(supervisor_pids(report["data_dir"]), [])
        self.assertEqual(workload_pids(os.path.dirname(report["data_dir"])), [])
        self.assertIn("p99 ms", stderr)

    def test_help(self) -> None:
        """
        C{load.py --help} runs by hand and names the main flags.
        """
        done = subprocess.run([sys.executable, LOAD_PY, "--help"], capture_output=True, timeout=30, check=False)
        self.assertEqual(done.returncode, 0)
        for flag in (b"--clients", b"--seconds", b"--max-running-tasks", b"--think-ms", b"--json"):
            self.assertIn(flag, done.stdout)

    def test_bad_fractions_rejected(self) -> None:
        """
        Request shares that add up to more than 1 are a usage error (exit 2).
        """
        done = subprocess.run(
            [sys.executable, LOAD_PY, "--submit-fraction", "0.6", "--events-fraction", "0.6"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        self.assertEqual(done.returncode, 2)


class AccountingTests(SynchronousTestCase):
    """
    What counts as a failure, and the latency table.
    """

    def setUp(self) -> None:
        self.load = load_script("load")

    def test_failures(self) -> None:
        """
        A transport error and any non-2xx status but 429 are failures; 2xx
        and 429 are not.
        """
        is_failure = self.load.is_failure
        self.assertTrue(is_failure(self.load.TRANSPORT_ERROR))
        self.assertTrue(is_failure(500))
        self.assertTrue(is_failure(404))
        self.assertTrue(is_failure(409))
        self.assertFalse(is_failure(200))
        self.assertFalse(is_failure(204))
        self.assertFalse(is_failure(429))

    def test_summary(self) -> None:
        """
        The table has one row per kind and one for all requests, with
        counts, failures, 429s and nearest-rank percentiles in ms.
        """
        kinds = ["status"] * 100 + ["submit"] * 2
        latencies = [i / 1000 for i in range(1, 101)] + [0.5, 0.7]
        statuses = [200] * 99 + [-1] + [200, 429]
        table = self.load.summarize(kinds, latencies, statuses)
        self.assertEqual(
            table["status"],
            {"requests": 100, "failures": 1, "http_429": 0, "p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0,
             "max_ms": 100.0},
        )
        self.assertEqual(table["submit"]["http_429"], 1)
        self.assertEqual(table["submit"]["failures"], 0)
        self.assertEqual(table["events"]["requests"], 0)
        self.assertIsNone(table["events"]["p99_ms"])
        self.assertEqual(table["all"]["requests"], 102)
        self.assertEqual(table["all"]["max_ms"], 700.0)

    def test_mix(self) -> None:
        """
        The request mix follows the configured shares.
        """
        settings = self.load.Settings(submit_fraction=0.05, events_fraction=0.10)
        rng = random.Random(3)
        picks = [self.load.choose(rng, settings) for _ in range(20000)]
        shares = {kind: picks.count(kind) / len(picks) for kind in ("submit", "events", "status")}
        for kind, expected in (("submit", 0.05), ("events", 0.10), ("status", 0.85)):
            self.assertLess(abs(shares[kind] - expected), 0.01, shares)
