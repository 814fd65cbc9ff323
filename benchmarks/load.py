#!/usr/bin/env python
"""
A bounded load test of the execgo server on loopback.

Starts the real server (C{python -m execgo serve}, C{--max-running-tasks
4} and a queue bound big enough that no submit is refused), submits a few
seed tasks, then runs C{--clients} concurrent clients (threads, each with
its own keep-alive C{http.client} connection, opened before the clock
starts) for C{--seconds}.  Each client loops, with no pause by default:

 - mostly C{GET /api/v1/tasks/{id}} of a random known task;
 - sometimes (C{--events-fraction}) C{GET /api/v1/tasks/{id}/events};
 - sometimes (C{--submit-fraction}) C{POST /api/v1/tasks} of a short task
   (C{/bin/true} or C{sleep 0.05}), whose id joins the known tasks.

Every request's latency and status is recorded.  A failure is a transport
error (refused, reset, timed out, malformed) or any non-2xx answer other
than C{429} (a full queue, which is legitimate and counted apart).  After
the load, every submitted task is waited for and must end C{success}.

Prints the total, the rate, the failures, and p50/p90/p99/max latency per
kind of request; exits 1 when a request failed, a task did not succeed, or
(with C{--max-p99-ms}) a p99 is above the bound; 2 for a bad command line.
Standard library only; the server helpers are shared with
C{benchmarks/chaos.py}.  See C{docs/operations.md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import chaos as harness  # noqa: E402 -- after the path set-up above

KIND_STATUS = "status"
KIND_EVENTS = "events"
KIND_SUBMIT = "submit"
KINDS = (KIND_STATUS, KIND_EVENTS, KIND_SUBMIT)
TASKS = (
    {"execution": {"kind": "command", "program": "/bin/true"}},
    {"execution": {"kind": "command", "program": "/bin/sleep", "args": ["0.05"]}},
)
TRANSPORT_ERROR = -1


@dataclasses.dataclass(frozen=True)
class Settings:
    """
    The size of one load run.
    """

    clients: int = 200
    seconds: float = 20.0
    max_running: int = 4
    max_queued: int = 100_000
    submit_fraction: float = 0.05
    events_fraction: float = 0.10
    think_ms: float = 0.0
    seed_tasks: int = 20
    seed: int = 1
    request_timeout_s: float = 30.0
    drain_timeout_s: float = 300.0


@dataclasses.dataclass
class Samples:
    """
    What one client thread recorded: per request its kind, latency in
    seconds and HTTP status (L{TRANSPORT_ERROR} for a transport error), the
    first few error descriptions, the tasks it submitted, and how long its
    connection took to open.
    """

    kinds: List[str] = dataclasses.field(default_factory=list)
    latencies: List[float] = dataclasses.field(default_factory=list)
    statuses: List[int] = dataclasses.field(default_factory=list)
    errors: List[str] = dataclasses.field(default_factory=list)
    submitted: List[str] = dataclasses.field(default_factory=list)
    connect_s: float = 0.0


def choose(rng: random.Random, settings: Settings) -> str:
    """
    The kind of a client's next request.
    """
    r = rng.random()
    if r < settings.submit_fraction:
        return KIND_SUBMIT
    if r < settings.submit_fraction + settings.events_fraction:
        return KIND_EVENTS
    return KIND_STATUS


def is_failure(status: int) -> bool:
    """
    Whether a recorded status counts as a failed request: a transport
    error, or any non-2xx status but 429.
    """
    return status == TRANSPORT_ERROR or (not 200 <= status < 300 and status != 429)


def summarize(kinds: Sequence[str], latencies: Sequence[float], statuses: Sequence[int]) -> Dict[str, Any]:
    """
    Per kind of request and for all of them: count, failures, 429s and the
    p50/p90/p99/max latency in milliseconds (nearest rank).
    """
    table: Dict[str, Any] = {}
    for kind in (*KINDS, "all"):
        picked = [
            (latency, status)
            for k, latency, status in zip(kinds, latencies, statuses)
            if kind == "all" or k == kind
        ]
        values = [latency * 1000 for latency, _ in picked]
        row: Dict[str, Any] = {
            "requests": len(picked),
            "failures": sum(1 for _, status in picked if is_failure(status)),
            "http_429": sum(1 for _, status in picked if status == 429),
        }
        for name, fraction in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            row[name] = round(harness.percentile(values, fraction), 2) if values else None
        row["max_ms"] = round(max(values), 2) if values else None
        table[kind] = row
    return table


def process_cpu_s(pid: int) -> Optional[float]:
    """
    User + system CPU seconds of C{pid} so far, from C{/proc/<pid>/stat}.
    """
    cpu = harness.process_cpu(pid)
    return None if cpu is None else cpu[0]


class Load:
    """
    One load run against one server.
    """

    def __init__(self, settings: Settings, root: str) -> None:
        self.settings = settings
        self.root = root
        self.data_dir = os.path.join(root, "data")
        args = [
            "--max-running-tasks", str(settings.max_running),
            "--max-queued-tasks", str(settings.max_queued),
        ]
        self.server = harness.Server(
            self.data_dir, harness.free_port(), args, os.path.join(root, "server.log")
        )
        self.known: List[str] = []
        self.lock = threading.Lock()

    def seed(self) -> None:
        """
        Submit the seed tasks so status polling has targets from the start.
        """
        client = harness.Client(self.server.port)
        try:
            for index in range(self.settings.seed_tasks):
                body = json.dumps(TASKS[index % 2]).encode()
                status, data = client.request("POST", "/api/v1/tasks", body)
                if status != 200:
                    raise harness.HarnessError(f"seed submit: HTTP {status}: {data[:200]!r}")
                self.known.append(str(json.loads(data)["task_id"]))
        finally:
            client.close()

    def client_loop(
        self, index: int, barrier: threading.Barrier, stop_at: List[float], samples: Samples
    ) -> None:
        """
        One client: connect, wait for the others, then request until the
        stop time.
        """
        settings = self.settings
        rng = random.Random(settings.seed * 100_003 + index)
        client = harness.Client(self.server.port, timeout=settings.request_timeout_s)
        bodies = [json.dumps(task).encode() for task in TASKS]
        before = time.perf_counter()
        try:
            client.connect()
        except harness.TRANSPORT_ERRORS as e:
            samples.errors.append(f"connect: {e!r}")
        samples.connect_s = time.perf_counter() - before
        barrier.wait()
        try:
            while time.perf_counter() < stop_at[0]:
                kind = choose(rng, settings)
                if kind == KIND_SUBMIT:
                    method, path, body = "POST", "/api/v1/tasks", bodies[rng.randrange(2)]
                else:
                    task_id = self.known[rng.randrange(len(self.known))]
                    suffix = "/events" if kind == KIND_EVENTS else ""
                    method, path, body = "GET", f"/api/v1/tasks/{task_id}{suffix}", None
                started = time.perf_counter()
                try:
                    status, data = client.request(method, path, body)
                except harness.TRANSPORT_ERRORS as e:
                    status, data = TRANSPORT_ERROR, b""
                    if len(samples.errors) < 5:
                        samples.errors.append(f"{method} {path}: {e!r}")
                latency = time.perf_counter() - started
                samples.kinds.append(kind)
                samples.latencies.append(latency)
                samples.statuses.append(status)
                if is_failure(status) and status != TRANSPORT_ERROR and len(samples.errors) < 5:
                    samples.errors.append(f"{method} {path}: HTTP {status}: {data[:120]!r}")
                if kind == KIND_SUBMIT and status == 200:
                    task_id = str(json.loads(data)["task_id"])
                    samples.submitted.append(task_id)
                    with self.lock:
                        self.known.append(task_id)
                if settings.think_ms:
                    time.sleep(rng.uniform(0, 2 * settings.think_ms) / 1000)
        finally:
            client.close()

    def drain(self, task_ids: Sequence[str]) -> Dict[str, int]:
        """
        Wait (long-poll, 8 threads) until every task is terminal; the
        count of each final outcome.
        """
        outcomes: Dict[str, int] = {}
        problems: List[str] = []
        deadline = time.monotonic() + self.settings.drain_timeout_s
        shares = [list(task_ids[i::8]) for i in range(8)]

        def waiter(mine: List[str]) -> None:
            client = harness.Client(self.server.port, timeout=60.0)
            try:
                for task_id in mine:
                    while True:
                        doc = client.get_json(f"/api/v1/tasks/{task_id}?wait_ms=2000", deadline)
                        if doc["status"] in harness.TERMINAL:
                            label = harness.outcome_label(doc)
                            with self.lock:
                                outcomes[label] = outcomes.get(label, 0) + 1
                            break
                        if time.monotonic() > deadline:
                            raise harness.HarnessError(f"{task_id} still {doc['status']} after the drain timeout")
            except harness.HarnessError as e:
                with self.lock:
                    problems.append(str(e))
            finally:
                client.close()

        threads = [threading.Thread(target=waiter, args=(share,)) for share in shares]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if problems:
            raise harness.HarnessError(problems[0])
        return outcomes

    def run(self) -> Dict[str, Any]:
        """
        The whole load phase and the drain; the report's measurements.
        """
        settings = self.settings
        self.seed()
        barrier = threading.Barrier(settings.clients + 1)
        stop_at = [float("inf")]
        samples = [Samples() for _ in range(settings.clients)]
        threads = [
            threading.Thread(target=self.client_loop, args=(i, barrier, stop_at, samples[i]), daemon=True)
            for i in range(settings.clients)
        ]
        for thread in threads:
            thread.start()
        barrier.wait()
        began = time.perf_counter()
        stop_at[0] = began + settings.seconds
        server_cpu_before = process_cpu_s(self.server.pid)
        own_before = os.times()
        harness.log(f"{settings.clients} clients connected; load for {settings.seconds:.0f}s")
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        own_after = os.times()
        server_cpu_after = process_cpu_s(self.server.pid)
        kinds = [k for s in samples for k in s.kinds]
        latencies = [x for s in samples for x in s.latencies]
        statuses = [x for s in samples for x in s.statuses]
        submitted = [t for s in samples for t in s.submitted]
        harness.log(f"{len(kinds)} requests in {elapsed:.1f}s; waiting for {len(submitted)} tasks")
        drain_began = time.perf_counter()
        outcomes = self.drain(list(self.known))
        drain_s = time.perf_counter() - drain_began
        errors = [e for s in samples for e in s.errors]
        connects = [s.connect_s * 1000 for s in samples]
        server_cpu = None
        if server_cpu_before is not None and server_cpu_after is not None:
            server_cpu = round(server_cpu_after - server_cpu_before, 2)
        return {
            "elapsed_s": round(elapsed, 2),
            "requests": len(kinds),
            "requests_per_s": round(len(kinds) / elapsed, 1) if elapsed else None,
            "failures": sum(1 for status in statuses if is_failure(status)),
            "http_429": sum(1 for status in statuses if status == 429),
            "latency": summarize(kinds, latencies, statuses),
            "connect_ms": {
                "p50": round(harness.percentile(connects, 0.5), 2),
                "max": round(max(connects), 2),
            },
            "errors": errors[:20],
            "tasks_submitted_under_load": len(submitted),
            "tasks_checked": len(self.known),
            "task_outcomes": outcomes,
            "drain_s": round(drain_s, 2),
            "server_cpu_s": server_cpu,
            "client_cpu_s": round(
                (own_after.user - own_before.user) + (own_after.system - own_before.system), 2
            ),
        }

    def close(self) -> None:
        """
        Stop the server and kill what its data directory left.
        """
        try:
            self.server.stop()
        finally:
            harness.kill_and_reap(
                harness.supervisor_pids(self.data_dir) + harness.workload_pids(self.data_dir)
            )
            harness.reap_zombies()


def execute(settings: Settings, workdir: str, keep: bool) -> Dict[str, Any]:
    """
    One load run; its report as a JSON-able document (C{problems} lists
    what makes it fail).
    """
    harness.become_subreaper()
    root = tempfile.mkdtemp(prefix="execgo-load-", dir=workdir)
    load = Load(settings, root)
    document: Dict[str, Any] = {
        "settings": dataclasses.asdict(settings),
        "data_dir": load.data_dir,
        "filesystem": harness.filesystem_of(root),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    problems: List[str] = []
    try:
        harness.log(
            f"starting the server (--max-running-tasks {settings.max_running}); data in {root}"
            f" ({document['filesystem']})"
        )
        load.server.start()
        document.update(load.run())
    except harness.HarnessError as e:
        problems.append(f"harness: {e}")
    finally:
        load.close()
    if "requests" in document:
        if document["failures"]:
            problems.append(f"{document['failures']} requests failed: {document['errors'][:3]}")
        bad = {k: v for k, v in document["task_outcomes"].items() if k != "success"}
        if bad:
            problems.append(f"tasks that did not succeed: {bad}")
        checked = sum(document["task_outcomes"].values())
        if checked != document["tasks_checked"]:
            problems.append(f"{checked} of {document['tasks_checked']} tasks reached a terminal state")
    document["problems"] = problems
    if problems or keep:
        document["kept"] = root
    else:
        shutil.rmtree(root, ignore_errors=True)
    return document


def render(document: Dict[str, Any]) -> str:
    """
    The human-readable report.
    """
    s = document["settings"]
    lines = [
        f"execgo load: {s['clients']} clients for {s['seconds']:.0f}s, --max-running-tasks"
        f" {s['max_running']}, think {s['think_ms']:.0f} ms, mix {s['submit_fraction']:.0%} submit /"
        f" {s['events_fraction']:.0%} events / rest status; {document['cpus']} CPUs, Python"
        f" {document['python']}, data on {document['filesystem']}",
        "",
    ]
    if "requests" in document:
        lines += [
            f"requests:    {document['requests']} in {document['elapsed_s']:.1f}s"
            f" = {document['requests_per_s']:.0f}/s",
            f"failures:    {document['failures']}   (429: {document['http_429']})",
            f"connect:     p50 {document['connect_ms']['p50']:.1f} ms, max {document['connect_ms']['max']:.1f} ms"
            " (before the clock starts)",
            f"CPU:         server {document['server_cpu_s']} s, load generator {document['client_cpu_s']} s",
            "",
            f"{'kind':<8} {'requests':>9} {'fail':>5} {'429':>5}"
            + "".join(f" {name:>8}" for name in ("p50 ms", "p90 ms", "p99 ms", "max ms")),
        ]
        for kind, row in document["latency"].items():
            cells = [
                "-" if row[name] is None else f"{row[name]:.1f}"
                for name in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
            ]
            lines.append(
                f"{kind:<8} {row['requests']:>9} {row['failures']:>5} {row['http_429']:>5}"
                + "".join(f" {cell:>8}" for cell in cells)
            )
        outcomes = ", ".join(f"{n} {label}" for label, n in sorted(document["task_outcomes"].items()))
        lines += [
            "",
            f"tasks:       {document['tasks_checked']} ({document['tasks_submitted_under_load']} submitted"
            f" under load): {outcomes}; drained in {document['drain_s']:.1f}s",
        ]
    lines.append(f"problems:    {len(document['problems'])}")
    for problem in document["problems"]:
        lines.append(f"  - {problem}")
    if "kept" in document:
        lines.append(f"data kept in {document['kept']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """
    The command line.
    """
    defaults = Settings()
    parser = argparse.ArgumentParser(
        description="Bounded load test of the execgo server on loopback: concurrent clients polling and submitting."
    )
    parser.add_argument("--clients", type=int, default=defaults.clients, help="concurrent clients [%(default)s]")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="load duration [%(default)s]")
    parser.add_argument(
        "--max-running-tasks", type=int, default=defaults.max_running, dest="max_running",
        help="the server's --max-running-tasks [%(default)s]",
    )
    parser.add_argument(
        "--max-queued-tasks", type=int, default=defaults.max_queued, dest="max_queued",
        help="the server's --max-queued-tasks [%(default)s]",
    )
    parser.add_argument(
        "--submit-fraction", type=float, default=defaults.submit_fraction,
        help="share of requests that submit a task [%(default)s]",
    )
    parser.add_argument(
        "--events-fraction", type=float, default=defaults.events_fraction,
        help="share of requests that read an event log [%(default)s]",
    )
    parser.add_argument(
        "--think-ms", type=float, default=defaults.think_ms,
        help="mean pause of a client between requests (uniform in [0, 2x]) [%(default)s]",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="RNG seed [%(default)s]")
    parser.add_argument(
        "--max-p99-ms", type=float, default=None,
        help="also fail when the p99 of any kind of request is above this",
    )
    parser.add_argument(
        "--workdir", default="/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir(),
        help="where the temporary data directory is made [%(default)s]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory (always kept on a failure)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (text report on stderr)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.max_running < 1 or args.max_queued < 1:
        parser.error("--clients, --seconds, --max-running-tasks and --max-queued-tasks must be positive")
    fractions = (args.submit_fraction, args.events_fraction)
    if any(not 0 <= f <= 1 for f in fractions) or sum(fractions) > 1:
        parser.error("--submit-fraction and --events-fraction must be in [0, 1] and add up to at most 1")
    if args.think_ms < 0:
        parser.error("--think-ms must not be negative")
    return args


def main(argv: Sequence[str]) -> int:
    """
    Run the load test; 0 when no request failed and every task succeeded
    (and, with C{--max-p99-ms}, every p99 is within the bound), else 1.
    """
    args = parse_args(argv)
    settings = Settings(
        clients=args.clients,
        seconds=args.seconds,
        max_running=args.max_running,
        max_queued=args.max_queued,
        submit_fraction=args.submit_fraction,
        events_fraction=args.events_fraction,
        think_ms=args.think_ms,
        seed=args.seed,
    )

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    document = execute(settings, args.workdir, args.keep)
    if args.max_p99_ms is not None and "latency" in document:
        for kind, row in document["latency"].items():
            if row["p99_ms"] is not None and row["p99_ms"] > args.max_p99_ms:
                document["problems"].append(f"{kind} p99 {row['p99_ms']} ms > {args.max_p99_ms} ms")
    report = render(document)
    if args.json:
        sys.stderr.write(report)
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(report)
    return 1 if document["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
