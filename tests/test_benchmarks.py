"""
Smoke test of the benchmark harness, C{benchmarks/run.py}: one run with
C{--quick} sizes against the real server must exit 0 and print every
figure, valid, both in the table and in the C{--json} document.  A few
pure helpers of the harness are checked directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

RUN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "run.py")

# Written out here, not imported, so that a figure dropped from the harness
# fails this test.
FIGURE_KEYS = (
    "throughput.tasks_per_s",
    "throughput.store_tasks_per_s",
    "throughput.single_submit_tasks_per_s",
    "latency.p50_ms",
    "latency.p99_ms",
    "spawn.floor_per_s",
    "spawn.popen_per_s",
    "spawn.popen_4000fds_per_s",
    "spawn.launcher_per_s",
    "spawn.launcher_4000fds_per_s",
    "scale.startup_s",
    "scale.submit_p50_ms",
    "scale.status_p50_ms",
    "scale.metrics_p50_ms",
    "output.server_peak_rss_mib",
    "output.server_hwm_after_status_mib",
    "output.supervisor_peak_rss_mib",
    "output.mib_per_s",
    "cli.status_wall_s",
    "memory.server_peak_rss_mib",
    "memory.supervisor_peak_rss_mib",
    "listener.healthz_max_ms",
    "listener.submit_max_ms",
    "postgres.tasks_per_s",
    "postgres.submit_p50_ms",
    "postgres.statements_per_task",
    "postgres.commits_per_task",
    "cluster.one_node_tasks_per_s",
    "cluster.two_nodes_tasks_per_s",
    "cluster.three_nodes_tasks_per_s",
    "cluster.statements_per_task",
    "cluster.commits_per_task",
    "cluster.submit_to_start_p50_ms",
    "cluster.kill_to_answer_p50_ms",
)


def load_harness() -> ModuleType:
    """
    Import C{benchmarks/run.py} (not a package) as a module, once; it is
    registered in C{sys.modules} first, as its dataclasses need.
    """
    name = "execgo_benchmarks_run"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, RUN_PY)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


class QuickRunTests(SynchronousTestCase):
    """
    The whole harness, small sizes, real server.
    """

    def test_quick_run_prints_every_figure(self) -> None:
        """
        C{run.py --quick --json} exits 0, its JSON document has every figure
        with a measured number and no invalid figure, and the table on
        stderr has one line per figure starting with its key.
        """
        done = subprocess.run(
            [sys.executable, RUN_PY, "--quick", "--json"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
        )
        stderr = done.stderr.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, stderr[-3000:])
        document = json.loads(done.stdout)
        figures = {item["key"]: item for item in document["figures"]}
        self.assertEqual(sorted(figures), sorted(FIGURE_KEYS))
        for key, item in figures.items():
            self.assertTrue(item["valid"], f"{key}: {item['note']}")
            self.assertIsInstance(item["measured"], (int, float), key)
        table_keys = {line.split()[0] for line in stderr.splitlines() if line.strip()}
        for key in FIGURE_KEYS:
            self.assertIn(key, table_keys)


class HelperTests(SynchronousTestCase):
    """
    The pure helpers the figures depend on.
    """

    def setUp(self) -> None:
        self.harness = load_harness()

    def test_percentile_nearest_rank(self) -> None:
        """
        p50 and p99 are nearest-rank percentiles: of 1..100, the 50th and
        99th values; of one value, that value.
        """
        values = list(range(100, 0, -1))
        self.assertEqual(self.harness.percentile(values, 0.5), 50)
        self.assertEqual(self.harness.percentile(values, 0.99), 99)
        self.assertEqual(self.harness.percentile([7.0], 0.99), 7.0)

    def test_parse_timestamp(self) -> None:
        """
        Store timestamps with and without milliseconds parse to epoch
        milliseconds.
        """
        parse = self.harness.parse_timestamp_ms
        self.assertEqual(parse("1970-01-01T00:00:01Z"), 1000)
        self.assertEqual(parse("1970-01-01T00:00:01.250Z"), 1250)

    def test_invalid_figure_is_marked(self) -> None:
        """
        A figure from a run with a failed task shows C{INVALID} in the table
        whatever its goal says, and has no verdict on the goal.
        """
        item = self.harness.figure("latency.p50_ms", 1.0, 0.5, "ref", met=True, valid=False, note="x")
        self.assertIsNone(item.met)
        self.assertEqual(item.ratio, 2.0)
        self.assertEqual(self.harness.verdict(item), "INVALID")
        meta = {"python": "p", "cpus": 2, "kernel": "k", "git": "g", "mode": "m"}
        table = self.harness.render_table([item], meta)
        self.assertIn("INVALID", table.splitlines()[4])
