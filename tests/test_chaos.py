"""
Crash and restart under load: C{benchmarks/chaos.py} run small
against the real server must find no violation; its checkers must flag
what they are there to flag; and a runtime hole the full-size runs found
(a submit cut off by a crash must not block its task id).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import ModuleType
from typing import Any, Dict, List, Tuple

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests import pgcluster
from tests.serverfixture import ServerProcess, supervisor_pids, workload_pids

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
CHAOS_PY = os.path.join(BENCHMARKS, "chaos.py")

# Seed of the small run: its first crash is due 2.65 s into the run, well
# after the 30 submissions (about 0.1 s), so the run does not also hit the
# orphan-directory hole pinned by OrphanTaskDirectoryTests.
SMALL_SEED = 5
SMALL_ARGS = ["--tasks", "30", "--crashes", "2", "--max-running-tasks", "4", "--seed", str(SMALL_SEED)]


def load_script(name: str) -> ModuleType:
    """
    Import C{benchmarks/<name>.py} (not a package) as a module, once,
    under the name C{execgo_benchmarks_<name>}.
    """
    module_name = f"execgo_benchmarks_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(BENCHMARKS, f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return sys.modules[module_name]


def event(seq: int, event_type: str, ms: int, task_id: str = "t") -> Dict[str, Any]:
    """
    One event record with a timestamp C{ms} milliseconds after
    2026-01-01T00:00:00Z.
    """
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    return {
        "seq": seq,
        "task_id": task_id,
        "event_type": event_type,
        "timestamp": f"2026-01-01T00:{minutes:02d}:{seconds:02d}.{millis:03d}Z",
    }


EPOCH_2026_MS = 1767225600000


def events(*spec: Any) -> List[Dict[str, Any]]:
    """
    Events from C{(event_type, ms)} pairs, seq 1, 2, ... in that order.
    """
    return [event(i, kind, ms) for i, (kind, ms) in enumerate(spec, start=1)]


SUCCESS = [
    ("submitted", 0),
    ("accepted", 0),
    ("planned", 0),
    ("resource_reserved", 10),
    ("started", 12),
    ("resource_released", 500),
    ("finished", 500),
]


class SmallChaosRunTests(SynchronousTestCase):
    """
    The whole script, small: 30 tasks, two crashes, four running slots.
    """

    def test_first_crash_after_the_submissions(self) -> None:
        """
        The seed of the small run puts its first crash more than a second
        into the run (so the run is about recovery of running and queued
        tasks, not about cut-off submits).
        """
        chaos = load_script("chaos")
        settings = chaos.Settings(tasks=30, crashes=2, max_running=4, seed=SMALL_SEED)
        plan, span = chaos.make_plan(settings, "x")
        offsets, downtimes = chaos.crash_offsets(settings, span)
        self.assertEqual(len(offsets), 2)
        self.assertGreater(offsets[0], 1.0)
        self.assertLess(offsets[1], span)

    def clean_run(self, *extra: str) -> Tuple[Dict[str, Any], str]:
        """
        Run C{chaos.py} small (with C{extra} arguments), require exit 0,
        no violation and all 30 tasks checked; its report and its stderr.
        """
        done = subprocess.run(
            [sys.executable, CHAOS_PY, *SMALL_ARGS, *extra, "--json"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=170,
            check=False,
        )
        stderr = done.stderr.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, stderr[-4000:])
        report: Dict[str, Any] = json.loads(done.stdout)
        self.assertEqual(report["violations"], [])
        self.assertEqual((report["tasks"], report["checked"]), (30, 30))
        return report, stderr

    def test_small_run_has_no_violation(self) -> None:
        """
        C{chaos.py} with 30 tasks and two C{kill -9}s of the server exits 0:
        every task checked, each in the state its definition implies, the
        supervisor survived both crashes, and the data directory was
        removed with nothing of it left running.
        """
        report, stderr = self.clean_run()
        self.assertEqual(len(report["crashes"]), 2)
        self.assertEqual(report["server_starts"], 3)
        outcomes = report["outcomes"]
        self.assertEqual(outcomes["lines"], {"success": report["expected"]["lines"]})
        self.assertEqual(outcomes["exit_nonzero"], {"failed/exit_nonzero": report["expected"]["exit_nonzero"]})
        self.assertEqual(outcomes["timeout"], {"failed/timeout": report["expected"]["timeout"]})
        for crash in report["crashes"]:
            self.assertTrue(crash["supervisors_before"])
            self.assertEqual(crash["supervisors_before"], crash["supervisors_after"])
        self.assertGreaterEqual(report["recovered"], report["recovered_required"])
        self.assertNotIn("kept", report)
        self.assertFalse(os.path.exists(report["data_dir"]))
        self.assertEqual(supervisor_pids(report["data_dir"]), [])
        self.assertEqual(workload_pids(os.path.dirname(report["data_dir"])), [])
        for kind in ("lines", "exit_nonzero", "timeout", "kill_long", "kill_queued"):
            self.assertIn(kind, stderr)

    def test_postgres_with_database_restarts(self) -> None:
        """
        The same run on a PostgreSQL store with two C{pg_ctl restart -m
        fast} among the server's crashes exits 0: every task checked and
        in its state, both restarts made.
        """
        if pgcluster.unavailable() is not None:
            raise SkipTest(pgcluster.unavailable())
        report, stderr = self.clean_run("--postgres", "--db-restarts", "2")
        self.assertEqual(len(report["database_restarts"]), 2)
        self.assertTrue(report["settings"]["postgres"])
        self.assertIn("store postgresql", stderr)

    def test_help(self) -> None:
        """
        C{chaos.py --help} runs by hand and names the main flags.
        """
        done = subprocess.run(
            [sys.executable, CHAOS_PY, "--help"], capture_output=True, timeout=30, check=False
        )
        self.assertEqual(done.returncode, 0)
        for flag in (b"--tasks", b"--crashes", b"--max-running-tasks", b"--seed", b"--json"):
            self.assertIn(flag, done.stdout)
        for flag in (b"--postgres", b"--db-restarts"):
            self.assertIn(flag, done.stdout)


class PlanTests(SynchronousTestCase):
    """
    The plan is a function of the seed.
    """

    def setUp(self) -> None:
        self.chaos = load_script("chaos")

    def test_full_size_mix(self) -> None:
        """
        150 tasks: 15 exit 3, 15 time out, 18 long killed, 15 killed while
        queued (the last ones submitted), 87 print lines; the same seed
        gives the same plan and another seed another one.
        """
        chaos = self.chaos
        plan, span = chaos.make_plan(chaos.Settings(), "r")
        kinds = [spec.kind for spec in plan]
        self.assertEqual(len(plan), 150)
        self.assertEqual(
            {kind: kinds.count(kind) for kind in chaos.KINDS},
            {"lines": 87, "exit_nonzero": 15, "timeout": 15, "kill_long": 18, "kill_queued": 15},
        )
        self.assertEqual(set(kinds[-15:]), {"kill_queued"})
        self.assertEqual(len({spec.task_id for spec in plan}), 150)
        for spec in plan:
            if spec.kind == "kill_long":
                self.assertTrue(0 < spec.kill_at < span)
            elif spec.kind == "timeout":
                self.assertEqual(spec.request(20)["limits"], {"wall_time_ms": 1500})
        again, _ = chaos.make_plan(chaos.Settings(), "r")
        self.assertEqual(plan, again)
        other, _ = chaos.make_plan(chaos.Settings(seed=2), "r")
        self.assertNotEqual(plan, other)

    def test_small_plan_has_every_kind(self) -> None:
        """
        Even five tasks have one of each kind.
        """
        plan, _ = self.chaos.make_plan(self.chaos.Settings(tasks=5), "r")
        self.assertEqual(sorted(spec.kind for spec in plan), sorted(self.chaos.KINDS))

    def test_lines_task_output(self) -> None:
        """
        A lines task is a C{sh -c} loop whose complete output is known.
        """
        spec = self.chaos.TaskSpec("t", "lines", lines=3)
        self.assertEqual(spec.full_stdout(), "line 0\nline 1\nline 2\n")
        request = spec.request(20)
        self.assertEqual(request["execution"]["program"], "/bin/sh")
        self.assertIn("-lt 3 ]", request["execution"]["args"][1])
        self.assertIn("sleep 0.020", request["execution"]["args"][1])
        done = subprocess.run(["/bin/sh", *request["execution"]["args"]], capture_output=True, check=True)
        self.assertEqual(done.stdout.decode(), spec.full_stdout())


class EventCheckTests(SynchronousTestCase):
    """
    L{check_events} flags broken event logs and a missing or misplaced
    C{recovered}.
    """

    def setUp(self) -> None:
        self.chaos = load_script("chaos")
        self.spec = self.chaos.TaskSpec("t", "lines", lines=3)

    def crash(self, killed: int, ready: int) -> Any:
        """
        A crash window in the test's time base.
        """
        return self.chaos.Crash(1, 1, killed_ms=EPOCH_2026_MS + killed, ready_ms=EPOCH_2026_MS + ready)

    def test_clean_success(self) -> None:
        """
        The contract's success sequence with no crash passes.
        """
        problems, recovered, required = self.chaos.check_events(self.spec, events(*SUCCESS), "success", [])
        self.assertEqual((problems, recovered, required), ([], False, False))

    def test_recovered_required(self) -> None:
        """
        Dispatched before a crash and finished after the restart: a log
        without C{recovered} is flagged; with it inside the window it passes.
        """
        crash = self.crash(100, 300)
        problems, recovered, required = self.chaos.check_events(self.spec, events(*SUCCESS), "success", [crash])
        self.assertTrue(required)
        self.assertFalse(recovered)
        self.assertEqual(len(problems), 1)
        self.assertIn("no recovered event", problems[0])
        with_recovered = SUCCESS[:5] + [("recovered", 250)] + SUCCESS[5:]
        problems, recovered, required = self.chaos.check_events(
            self.spec, events(*with_recovered), "success", [crash]
        )
        self.assertEqual((problems, recovered, required), ([], True, True))

    def test_recovered_not_required_when_done_before_restart(self) -> None:
        """
        A task that ended while the server was down needs no C{recovered}.
        """
        crash = self.crash(100, 600)
        problems, _, required = self.chaos.check_events(self.spec, events(*SUCCESS), "success", [crash])
        self.assertEqual((problems, required), ([], False))

    def test_recovered_outside_a_crash(self) -> None:
        """
        A C{recovered} event with no crash around it is flagged.
        """
        with_recovered = SUCCESS[:5] + [("recovered", 250)] + SUCCESS[5:]
        problems, _, _ = self.chaos.check_events(
            self.spec, events(*with_recovered), "success", [self.crash(400, 450)]
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("outside every crash window", problems[0])

    def test_two_terminal_events(self) -> None:
        """
        A second terminal event is flagged.
        """
        problems, _, _ = self.chaos.check_events(
            self.spec, events(*SUCCESS, ("failed", 600)), "success", []
        )
        self.assertTrue(any("2 terminal events" in p for p in problems), problems)

    def test_release_not_before_terminal(self) -> None:
        """
        C{resource_released} must come right before the terminal event
        when a reservation was taken.
        """
        moved = SUCCESS[:4] + [("resource_released", 11), ("started", 12), ("finished", 500)]
        problems, _, _ = self.chaos.check_events(self.spec, events(*moved), "success", [])
        self.assertTrue(any("right before the terminal event" in p for p in problems), problems)

    def test_unreleased_reservation(self) -> None:
        """
        A reservation never released is flagged.
        """
        unreleased = SUCCESS[:5] + [("finished", 500)]
        problems, _, _ = self.chaos.check_events(self.spec, events(*unreleased), "success", [])
        self.assertTrue(any("never released" in p for p in problems), problems)

    def test_seq_order_and_first_events(self) -> None:
        """
        Events out of C{seq} order, or not starting C{submitted, accepted,
        planned}, are flagged.
        """
        log = events(*SUCCESS)
        log[1]["seq"], log[2]["seq"] = log[2]["seq"], log[1]["seq"]
        problems, _, _ = self.chaos.check_events(self.spec, log, "success", [])
        self.assertTrue(any("not ordered by seq" in p for p in problems), problems)
        swapped = [SUCCESS[1], SUCCESS[0]] + SUCCESS[2:]
        problems, _, _ = self.chaos.check_events(self.spec, events(*swapped), "success", [])
        self.assertTrue(any("starts" in p for p in problems), problems)

    def test_status_mismatch_and_timeout_event(self) -> None:
        """
        A terminal event that disagrees with the status, and a timeout
        task without C{timeout_triggered}, are flagged.
        """
        problems, _, _ = self.chaos.check_events(self.spec, events(*SUCCESS), "failed", [])
        self.assertTrue(any("terminal event finished but status failed" in p for p in problems), problems)
        timeout = self.chaos.TaskSpec("t", "timeout", wall_time_ms=1500)
        failed = SUCCESS[:6] + [("failed", 1800)]
        problems, _, _ = self.chaos.check_events(timeout, events(*failed), "failed", [])
        self.assertEqual(problems, ["0 timeout_triggered events"])

    def test_queued_cancel(self) -> None:
        """
        A task cancelled while queued never reserved nor started: no
        release is expected.
        """
        spec = self.chaos.TaskSpec("t", "kill_queued", lines=200, kill_at=0.0)
        log = events(("submitted", 0), ("accepted", 0), ("planned", 0), ("kill_requested", 5), ("cancelled", 5))
        problems, _, _ = self.chaos.check_events(spec, log, "cancelled", [])
        self.assertEqual(problems, [])


class OutcomeCheckTests(SynchronousTestCase):
    """
    L{check_outcome}, L{compare_result_file} and L{check_ledger}.
    """

    def setUp(self) -> None:
        self.chaos = load_script("chaos")

    def test_lines_output_must_be_complete(self) -> None:
        """
        A successful lines task must have every line; one missing is
        flagged.
        """
        spec = self.chaos.TaskSpec("t", "lines", lines=3)
        doc = {"status": "success", "exit_code": 0}
        observed = self.chaos.Observed()
        self.assertEqual(self.chaos.check_outcome(spec, doc, [], spec.full_stdout(), observed), [])
        problems = self.chaos.check_outcome(spec, doc, [], "line 0\nline 1\n", observed)
        self.assertEqual(problems, ["stdout.log has 2 lines, expected 3"])

    def test_killed_task(self) -> None:
        """
        A long task killed while running is C{cancelled} with a prefix of
        its lines; one that ended C{success} long after its kill was
        recorded is flagged; one that had finished before the kill (no
        C{kill_requested}, the kill answered C{success}) passes.
        """
        chaos = self.chaos
        spec = chaos.TaskSpec("t", "kill_long", lines=3, kill_at=1.0)
        killed = events(*SUCCESS[:5], ("kill_requested", 200), ("resource_released", 210), ("cancelled", 210))
        observed = chaos.Observed(kill_status="running")
        cancelled = {"status": "cancelled", "error": {"code": "cancelled", "message": "task cancelled"}}
        self.assertEqual(chaos.check_outcome(spec, cancelled, killed, "line 0\n", observed), [])
        problems = chaos.check_outcome(spec, cancelled, killed, "line 0\nline 7\n", observed)
        self.assertEqual(len(problems), 1)
        self.assertIn("not a prefix", problems[0])
        late = events(*SUCCESS[:5], ("kill_requested", 200), ("resource_released", 900), ("finished", 900))
        success = {"status": "success", "exit_code": 0}
        problems = chaos.check_outcome(spec, success, late, spec.full_stdout(), observed)
        self.assertEqual(problems, ["ended success after kill_requested, expected cancelled"])
        before = chaos.Observed(kill_status="success")
        self.assertEqual(chaos.check_outcome(spec, success, events(*SUCCESS), spec.full_stdout(), before), [])

    def test_kill_never_answered(self) -> None:
        """
        A killed task whose kill the harness never got an answer to is a
        violation (the harness cannot know what to expect).
        """
        spec = self.chaos.TaskSpec("t", "kill_long", lines=3, kill_at=1.0)
        problems = self.chaos.check_outcome(spec, {"status": "success"}, [], "", self.chaos.Observed())
        self.assertEqual(len(problems), 1)

    def test_result_file(self) -> None:
        """
        C{result.json} equal to the snapshot passes; a missing one or a
        differing key is flagged with the key's name.
        """
        doc = {"status": "success", "duration_ms": 5}
        self.assertEqual(self.chaos.compare_result_file(doc, dict(doc)), [])
        self.assertEqual(self.chaos.compare_result_file(doc, None), ["result.json missing or not JSON"])
        problems = self.chaos.compare_result_file(doc, {"status": "success", "duration_ms": 6})
        self.assertEqual(problems, ["result.json differs from the status endpoint in ['duration_ms']"])

    def test_ledger(self) -> None:
        """
        An empty ledger passes; an active reservation, reserved capacity
        or a waiting task is flagged.
        """
        clean = {
            "capacity": {"task_slots": 8},
            "reserved": {"task_slots": 0, "memory_bytes": 0},
            "active_reservations": [],
            "accepted_waiting_tasks": 0,
            "tenants": [],
        }
        self.assertEqual(self.chaos.check_ledger(clean), [])
        leaked = dict(
            clean,
            reserved={"task_slots": 1},
            active_reservations=[{"task_id": "x", "status": "running", "reservation": {"task_slots": 1}}],
            accepted_waiting_tasks=2,
        )
        self.assertEqual(len(self.chaos.check_ledger(leaked)), 3)

    def test_timestamps(self) -> None:
        """
        Event timestamps with 0, 3, 6 or 9 fraction digits parse to epoch
        milliseconds.
        """
        parse = self.chaos.parse_timestamp_ms
        self.assertEqual(parse("2026-01-01T00:00:00Z"), EPOCH_2026_MS)
        self.assertEqual(parse("2026-01-01T00:00:01.250Z"), EPOCH_2026_MS + 1250)
        self.assertEqual(parse("2026-01-01T00:00:01.250999Z"), EPOCH_2026_MS + 1250)


class OrphanTaskDirectoryTests(TestCase):
    """
    What the full-size chaos runs found: a submit cut off by C{kill -9}
    after its task directory was made but before its row was committed
    leaves the directory; resubmitting the same id (the normal retry of a
    request whose answer was lost) then gets C{409 conflict} for a task
    that C{GET} says does not exist, for 60 s (L{execgo.store.submission.CLAIM_STALE_S}).
    """

    timeout = 60

    async def test_resubmit_after_crash_during_submit(self) -> None:
        """
        After a restart, an id whose only trace is the directory of a
        crashed submit (request.json, empty logs, workspace; no row) is
        unknown to C{GET} and can be submitted: C{200}, and the task runs.
        """
        from twisted.internet import reactor

        server = ServerProcess(reactor, self.mktemp(), ["--termination-grace-ms", "300"])
        self.addCleanup(server.shutdown)
        await server.start()
        await server.crash()
        task_id = "chaos-orphan-1"
        request = {"task_id": task_id, "execution": {"kind": "command", "program": "/bin/true"}}
        task_dir = os.path.join(server.data_dir, "tasks", task_id)
        os.makedirs(os.path.join(task_dir, "workspace"))
        with open(os.path.join(task_dir, "request.json"), "w") as out:
            json.dump(request, out)
        for name in ("stdout.log", "stderr.log"):
            open(os.path.join(task_dir, name), "w").close()
        await server.start(keep_port=True)
        api = server.client(self)
        self.assertEqual((await api.get(f"/api/v1/tasks/{task_id}")).code, 404)
        reply = await api.post("/api/v1/tasks", request)
        self.assertEqual(reply.code, 200, reply.body)
