#!/usr/bin/env python
"""
The execgo benchmark harness.

Starts the real server (C{python -m execgo serve}) as a child process and
prints, from one run on one machine, every figure next to a
reference measured in that same run, the ratio between them, the goal and
whether it was met:

 1. throughput: trivial tasks submitted over HTTP by 8 concurrent clients
    against C{--max-running-tasks 4}, first submit to last terminal state,
    against the C{posix_spawn} floor;
 2. latency: sequential single tasks, submit to terminal, p50 and p99,
    against an HTTP round trip to C{/healthz};
 3. spawn path: spawns per second with a cwd, a new session and pipes, with
    0 and with 4,000 open fds, against the C{posix_spawn} floor;
 4. scale: submit, status and C{/metrics} times and start-up time with
    100,000 stored tasks against an empty store;
 5. output: server peak RSS and MB/s while a task writes 1 GiB to stdout,
    against the idle server and a plain C{head} writing to the same disk;
 6. CLI: wall time of C{execgo-runtime status} against C{curl};
 7. memory: server and supervisor peak RSS while six concurrent status
    requests read a task with 300 MB of stdout (C{benchmarks/limits.py});
 8. listener: C{/healthz} and submit times with 300 slow clients and
    1,100 idle connections under C{ulimit -n 1024} (same module);
 9. postgres: throughput and submit p50 on a local PostgreSQL against the
    same on SQLite, and the statements and commits per task
    (C{benchmarks/postgres.py});
10. cluster: 1, 2 and 3 nodes on one PostgreSQL: throughput, statements
    per task, submit -> start across nodes, kill -> long-poll answer
    across nodes (C{benchmarks/cluster.py}).

A figure is only honest if every task of it succeeded and nothing was
skipped: a figure whose run had a failure is printed as C{INVALID} and the
harness exits 1.  Goals that are not met do not change the exit status
(unless C{--fail-on-unmet}).

The load generator uses the standard library only (C{http.client},
C{threading}, C{subprocess}); it imports C{execgo.store.connection} and C{execgo.store.schema} to fill a store and
C{execgo.supervisor.launcher} to time the runtime's own spawn function, and shares the
chaos harness's process helpers (C{benchmarks/chaos.py}).  See
C{benchmarks/README.md} for what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from benchmarks import cluster, limits, loadgen, postgres  # noqa: E402 -- after the path set-up above
from benchmarks.chaos import (  # noqa: E402
    all_pids,
    become_subreaper,
    clean_environ,
    free_port,
    kill_and_reap,
    parse_timestamp_ms,
    percentile,
    process_cpu,
    reap_zombies,
)
from execgo.host.procinfo import supervisor_pids  # noqa: E402

SECTIONS = (
    "throughput", "latency", "spawn", "scale", "output", "cli", "memory", "listener", "postgres", "cluster"
)
TERMINAL = ("success", "failed", "cancelled")
TRUE_TASK = {"execution": {"kind": "command", "program": "/bin/true"}}
MIB = 1 << 20
LONG_POLL_MS = 2000
PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    """
    A measurement could not be made; its figures are reported as invalid.
    """


# -- sizes and figures ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    """
    How much work each section does (the default sizes unless --quick).
    """

    tasks: int = 1000
    warmup_tasks: int = 200
    clients: int = 8
    max_running: int = 4
    latency_tasks: int = 200
    spawns: int = 1500
    extra_fds: int = 4000
    stored_tasks: int = 100_000
    scale_samples: int = 200
    metrics_samples: int = 20
    output_bytes: int = 1 << 30
    cli_runs: int = 10
    memory_output_bytes: int = 300 * 1000 * 1000
    slow_clients: int = 300
    idle_clients: int = 1100
    nofile: int = 1024
    listener_probes: int = 20


QUICK = Sizes(
    tasks=20,
    warmup_tasks=8,
    latency_tasks=10,
    spawns=30,
    stored_tasks=500,
    scale_samples=10,
    metrics_samples=5,
    output_bytes=8 * MIB,
    cli_runs=2,
    memory_output_bytes=24 * MIB,
    slow_clients=40,
    idle_clients=200,
    nofile=256,
    listener_probes=5,
)


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """
    What one figure is: its section, its label, its unit and its goal.
    """

    key: str
    section: str
    label: str
    unit: str
    goal: str


FIGURE_SPECS: Tuple[FigureSpec, ...] = (
    FigureSpec("throughput.tasks_per_s", "throughput", "tasks/s, client clock", "tasks/s", "ratio >= 0.35"),
    FigureSpec("throughput.store_tasks_per_s", "throughput", "tasks/s, store clock", "tasks/s", "-"),
    FigureSpec(
        "throughput.single_submit_tasks_per_s", "throughput", "tasks/s, one task per submit", "tasks/s", "-"
    ),
    FigureSpec("latency.p50_ms", "latency", "submit -> terminal p50", "ms", "<= 5 ms"),
    FigureSpec("latency.p99_ms", "latency", "submit -> terminal p99", "ms", "<= 20 ms"),
    FigureSpec("spawn.floor_per_s", "spawn", "posix_spawn /bin/true + waitpid", "/s", "-"),
    FigureSpec("spawn.popen_per_s", "spawn", "Popen cwd+session+pipes", "/s", ">= 900/s"),
    FigureSpec("spawn.popen_4000fds_per_s", "spawn", "same, 4,000 open fds", "/s", ">= 500/s"),
    FigureSpec("spawn.launcher_per_s", "spawn", "execgo.supervisor.launcher.spawn", "/s", ">= 900/s"),
    FigureSpec("spawn.launcher_4000fds_per_s", "spawn", "same, 4,000 open fds", "/s", ">= 500/s"),
    FigureSpec("scale.startup_s", "scale", "start-up to /healthz, big store", "s", "<= 3 s"),
    FigureSpec("scale.submit_p50_ms", "scale", "submit p50, big store", "ms", "ratio <= 1.2"),
    FigureSpec("scale.status_p50_ms", "scale", "status p50, big store", "ms", "ratio <= 1.2"),
    FigureSpec("scale.metrics_p50_ms", "scale", "/metrics p50, big store", "ms", "<= 50 ms, ratio <= 2"),
    FigureSpec("output.server_peak_rss_mib", "output", "server peak RSS (VmHWM)", "MiB", "<= 100 MiB"),
    FigureSpec(
        "output.server_hwm_after_status_mib", "output", "server VmHWM after a status read", "MiB", "-"
    ),
    FigureSpec("output.supervisor_peak_rss_mib", "output", "supervisor peak RSS (VmHWM)", "MiB", "-"),
    FigureSpec("output.mib_per_s", "output", "stdout to disk", "MiB/s", "-"),
    FigureSpec("cli.status_wall_s", "cli", "execgo-runtime status, median", "s", "<= 0.3 s"),
    FigureSpec(
        "memory.server_peak_rss_mib", "memory", "server VmHWM, 6 status GETs of 300 MB output", "MiB", "<= 200 MiB"
    ),
    FigureSpec(
        "memory.supervisor_peak_rss_mib", "memory", "supervisor VmRSS rendering result.json", "MiB", "<= 100 MiB"
    ),
    FigureSpec("listener.healthz_max_ms", "listener", "/healthz, slow + idle clients, max", "ms", "<= 100 ms"),
    FigureSpec("listener.submit_max_ms", "listener", "submit, slow + idle clients, max", "ms", "<= 100 ms"),
    FigureSpec("postgres.tasks_per_s", "postgres", "throughput on PostgreSQL", "tasks/s", "ratio >= 0.8"),
    FigureSpec("postgres.submit_p50_ms", "postgres", "submit p50 on PostgreSQL", "ms", "<= 10 ms"),
    FigureSpec("postgres.statements_per_task", "postgres", "statements per task on PostgreSQL", "", "-"),
    FigureSpec("postgres.commits_per_task", "postgres", "commits per task on PostgreSQL", "", "-"),
    FigureSpec("cluster.one_node_tasks_per_s", "cluster", "throughput, 1 node on PostgreSQL", "tasks/s", "-"),
    FigureSpec("cluster.two_nodes_tasks_per_s", "cluster", "throughput, 2 nodes, same machine", "tasks/s", "-"),
    FigureSpec("cluster.three_nodes_tasks_per_s", "cluster", "throughput, 3 nodes, same machine", "tasks/s", "-"),
    FigureSpec("cluster.statements_per_task", "cluster", "statements per task, 3 nodes", "", "-"),
    FigureSpec("cluster.commits_per_task", "cluster", "commits per task, 3 nodes", "", "-"),
    FigureSpec("cluster.submit_to_start_p50_ms", "cluster", "submit on one node -> start on another, p50", "ms",
               "<= 20 ms"),
    FigureSpec("cluster.kill_to_answer_p50_ms", "cluster", "kill on one node -> long-poll answer on another, p50",
               "ms", "<= 150 ms"),
)
FIGURE_KEYS = tuple(spec.key for spec in FIGURE_SPECS)
_SPEC_BY_KEY = {spec.key: spec for spec in FIGURE_SPECS}


@dataclasses.dataclass
class Figure:
    """
    One measured figure with its reference from the same run.

    C{met} is C{None} for a figure without a goal; C{valid} is false when
    a task of the run failed, something was skipped, or the measurement
    broke (C{note} says which).
    """

    key: str
    label: str
    unit: str
    goal: str
    measured: Optional[float]
    reference: Optional[float] = None
    reference_label: str = ""
    ratio: Optional[float] = None
    met: Optional[bool] = None
    valid: bool = True
    note: str = ""


def figure(
    key: str,
    measured: Optional[float],
    reference: Optional[float] = None,
    reference_label: str = "",
    met: Optional[bool] = None,
    valid: bool = True,
    note: str = "",
) -> Figure:
    """
    Build the figure C{key}; the ratio is C{measured / reference} when
    both are known and the reference is not zero.
    """
    spec = _SPEC_BY_KEY[key]
    ratio = None
    if measured is not None and reference:
        ratio = measured / reference
    return Figure(
        key=key,
        label=spec.label,
        unit=spec.unit,
        goal=spec.goal,
        measured=measured,
        reference=reference,
        reference_label=reference_label,
        ratio=ratio,
        met=met if valid else None,
        valid=valid,
        note=note,
    )


def invalid_figures(section: str, note: str) -> List[Figure]:
    """
    Every figure of C{section}, unmeasured and invalid, with C{note}.
    """
    return [
        figure(spec.key, None, valid=False, note=note)
        for spec in FIGURE_SPECS
        if spec.section == section
    ]


# -- small helpers -------------------------------------------------------------

_T0 = time.perf_counter()


def log(message: str) -> None:
    """
    A progress line on stderr, stamped with the seconds since start.
    """
    sys.stderr.write(f"[{time.perf_counter() - _T0:7.2f}s] {message}\n")
    sys.stderr.flush()


def proc_status_kib(pid: int, field: str) -> Optional[int]:
    """
    A C{kB} field (C{VmRSS}, C{VmHWM}) of C{/proc/<pid>/status}, or
    C{None} when the process is gone.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cmdline(pid: int) -> List[str]:
    """
    The arguments of C{pid}, or C{[]}.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def processes_under(root: str) -> List[int]:
    """
    Processes whose working directory is inside C{root} (workloads of our
    temporary data directories), this process excluded.
    """
    found = []
    prefix = root.rstrip("/") + "/"
    for pid in all_pids():
        if pid == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(prefix):
            found.append(pid)
    return found


# -- HTTP ------------------------------------------------------------------------


class Client:
    """
    A keep-alive HTTP/1.1 client for one server, used by one thread.
    """

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: Optional[http.client.HTTPConnection] = None
        self._used = 0

    def close(self) -> None:
        """
        Drop the connection.
        """
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._used = 0

    def request(self, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, bytes]:
        """
        One request; returns the status and the whole body.  A request
        that fails on a reused connection (the server closed it while idle)
        is retried once on a fresh one.
        """
        headers = {"Content-Type": "application/json"} if body is not None else {}
        while True:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            reused = self._used > 0
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if not reused:
                    raise
                continue
            self._used += 1
            if response.will_close:
                self.close()
            return response.status, data

    def get_json(self, path: str) -> Any:
        """
        GET C{path}; the decoded body of a 200.

        @raise BenchError: for any other status.
        """
        status, data = self.request("GET", path)
        if status != 200:
            raise BenchError(f"GET {path}: HTTP {status}: {data[:200]!r}")
        return json.loads(data)

    def submit(self, request: Dict[str, Any]) -> str:
        """
        Submit a task; its id.

        @raise BenchError: unless the server answered 200.
        """
        status, data = self.request("POST", "/api/v1/tasks", json.dumps(request).encode())
        if status != 200:
            raise BenchError(f"submit: HTTP {status}: {data[:200]!r}")
        return str(json.loads(data)["task_id"])

    def status(self, task_id: str, wait_ms: int = 0) -> Dict[str, Any]:
        """
        The status snapshot of a task, long-polled for C{wait_ms} if not 0.
        """
        suffix = f"?wait_ms={wait_ms}" if wait_ms else ""
        return dict(self.get_json(f"/api/v1/tasks/{task_id}{suffix}"))


def wait_terminal(
    client: Client, task_id: str, long_poll: bool, interval: float, timeout: float = 600.0
) -> Dict[str, Any]:
    """
    Wait until the task is terminal and return its snapshot: long-polling
    with C{wait_ms} when the server supports it, else polling every
    C{interval} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        doc = client.status(task_id, LONG_POLL_MS if long_poll else 0)
        if doc["status"] in TERMINAL:
            return doc
        if time.monotonic() > deadline:
            raise BenchError(f"task {task_id} not terminal after {timeout:.0f}s")
        if not long_poll:
            time.sleep(interval)


def describe_failures(docs: Sequence[Dict[str, Any]]) -> str:
    """
    C{"<n> success, <m> failed/exit_nonzero, ..."} for a set of snapshots.
    """
    counts: Dict[str, int] = {}
    for doc in docs:
        name = doc["status"]
        if "error" in doc:
            name += "/" + doc["error"].get("code", "?")
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))


# -- the server as a child process ---------------------------------------------


class Server:
    """
    One C{python -m execgo serve} on a free port and its own data dir,
    its output in C{<data_dir>.log}.
    """

    def __init__(self, data_dir: str, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        #: The server's descriptor limit (soft and hard), when not inherited.
        self.nofile: Optional[int] = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.rstrip("/") + ".log"
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 60.0) -> float:
        """
        Start the server and wait until C{/healthz} answers 200; the
        seconds from just before the process was created until then.
        """
        command = [
            sys.executable, "-m", "execgo", "serve",
            "--listen-addr", f"127.0.0.1:{self.port}",
            "--data-dir", self.data_dir,
            *self.args,
        ]
        with open(self.log_path, "ab") as output:
            started = time.perf_counter()
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=clean_environ(),
                cwd=os.path.dirname(self.data_dir),
                start_new_session=True,
                preexec_fn=None if self.nofile is None else self._limit_descriptors,
            )
        deadline = started + timeout
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
                try:
                    connection.request("GET", "/healthz")
                    if connection.getresponse().status == 200:
                        return time.perf_counter() - started
                finally:
                    connection.close()
            except OSError:
                pass
            if self.process.poll() is not None:
                raise BenchError(f"server exited with {self.process.returncode}: {self.log_tail()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"server not healthy after {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.002)

    def _limit_descriptors(self) -> None:
        # In the child, before exec: what `ulimit -n N` does.
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def log_tail(self) -> str:
        """
        The last lines of the server's output.
        """
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-800:].decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        """
        The server's pid.
        """
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """
        SIGTERM (SIGKILL after 15 s), then kill the supervisors of the
        data dir and the workloads still running in it.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_and_reap(supervisor_pids(self.data_dir) + processes_under(self.data_dir))


class Context:
    """
    What the sections share: sizes, the temporary root, the servers (the
    main one started on first use), whether completion is long-polled, and
    notes for the report.
    """

    def __init__(self, sizes: Sizes, root: str, allow_long_poll: bool = True) -> None:
        self.sizes = sizes
        self.root = root
        self.allow_long_poll = allow_long_poll
        self.servers: List[Server] = []
        self._main: Optional[Server] = None
        self.long_poll: Optional[bool] = None
        self.notes: List[str] = []

    def new_server(self, name: str, args: Sequence[str] = ()) -> Server:
        """
        A server (not started yet) on the data dir C{<root>/<name>}.
        """
        server = Server(os.path.join(self.root, name), args)
        self.servers.append(server)
        return server

    def main_server(self) -> Server:
        """
        The shared server of the throughput, latency and CLI sections:
        C{--max-running-tasks} from the sizes, a queue bound that admits the
        whole throughput run, long-poll support detected once.
        """
        if self._main is None:
            queued = max(128, self.sizes.tasks + 64)
            server = self.new_server(
                "main",
                ["--max-running-tasks", str(self.sizes.max_running), "--max-queued-tasks", str(queued)],
            )
            log(f"starting the main server on {server.url}")
            server.start()
            self._main = server
            probe = Client(server.port)
            try:
                supported = detect_long_poll(probe)
            finally:
                probe.close()
            self.long_poll = supported and self.allow_long_poll
            how = f"long-poll (?wait_ms={LONG_POLL_MS})" if self.long_poll else "polling"
            how += "" if supported else " (the server does not long-poll)"
            self.notes.append(f"completion observed by {how}")
            log(f"completion observed by {how}")
        return self._main

    def stop_main(self) -> None:
        """
        Stop the shared server if it runs.
        """
        if self._main is not None:
            self._main.stop()
            self._main = None

    def floor(self) -> float:
        """
        The C{posix_spawn} floor in spawns per second, measured now in a
        separate process.
        """
        return float(spawn_measurements(self.sizes, floor_only=True)["floor"])

    def close(self, keep: bool = False) -> None:
        """
        Stop every server, kill what our data dirs left, remove the root
        (unless told to keep it).
        """
        for server in self.servers:
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 -- cleanup goes on whatever one stop did
                log(f"stopping {server.url}: {e}")
        kill_and_reap(processes_under(self.root))
        reap_zombies()
        if keep:
            log(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def detect_long_poll(client: Client) -> bool:
    """
    Whether the status endpoint long-polls: a C{GET ?wait_ms=2000} on a
    running C{sleep 0.3} task must come back terminal.
    """
    task_id = client.submit(
        {"execution": {"kind": "command", "program": "/bin/sleep", "args": ["0.3"]}}
    )
    status, data = client.request("GET", f"/api/v1/tasks/{task_id}?wait_ms={LONG_POLL_MS}")
    supported = status == 200 and json.loads(data)["status"] in TERMINAL
    doc = wait_terminal(client, task_id, long_poll=False, interval=0.02)
    if doc["status"] != "success":
        raise BenchError(f"the sleep 0.3 probe task ended {describe_failures([doc])}")
    return supported


# -- 1. throughput ---------------------------------------------------------------


class CpuShares:
    """
    The CPU the throughput run costs each process, from a reading taken
    when it is made: the server, the supervisor, the workloads (the
    children the supervisor reaped) and the load generator (this process,
    whose only work then is the clients).
    """

    def __init__(self, server: "Server") -> None:
        assert server.process is not None
        self.server_pid = server.process.pid
        self.supervisor_pid = (supervisor_pids(server.data_dir) or [0])[0]
        self.before = self._read()

    def _read(self) -> Optional[Tuple[float, float, float, float]]:
        server = process_cpu(self.server_pid)
        supervisor = process_cpu(self.supervisor_pid) if self.supervisor_pid else None
        if server is None or supervisor is None:
            return None
        own = resource.getrusage(resource.RUSAGE_SELF)
        return server[0], supervisor[0], supervisor[1], own.ru_utime + own.ru_stime

    def per_task_note(self, tasks: int) -> str:
        """
        C{"; CPU per task: server ... ms, ..."}, or nothing when a process
        could not be read.
        """
        after = self._read()
        if self.before is None or after is None or not tasks:
            return ""
        names = ("server", "supervisor", "workloads", "client")
        shares = [(b - a) * 1000.0 / tasks for a, b in zip(self.before, after)]
        text = ", ".join(f"{name} {share:.2f} ms" for name, share in zip(names, shares))
        return f"; CPU per task: {text} (total {sum(shares):.2f} ms)"


#: Tasks per submit request in the throughput figure: the clients fan out,
#: so they submit through C{POST /api/v1/tasks/batch}.
SUBMIT_BATCH = 25


def run_throughput(ctx: Context) -> List[Figure]:
    """
    N trivial tasks from C{clients} concurrent keep-alive clients, which
    submit their tasks in batches of L{SUBMIT_BATCH}; first submit to last
    terminal state observed, on the client's clock and (cross-check) on
    the store's (C{created_at} .. C{finished_at}), against the mean of the
    C{posix_spawn} floor measured right before and right after.  Then the
    same with one task per submit request, for comparison (no goal).
    """
    sizes = ctx.sizes
    server = ctx.main_server()
    body = json.dumps(TRUE_TASK).encode()
    if ctx.long_poll and sizes.warmup_tasks:
        # Not timed: brings the server, the supervisor, SQLite's and the
        # kernel's caches and the CPUs' clocks to the steady state the
        # figure is about (a cold first run measures several percent low).
        log(f"throughput: warm-up, {sizes.warmup_tasks} tasks")
        warm = [sizes.warmup_tasks // sizes.clients] * sizes.clients
        _, _, warmed, trouble = loadgen.run_clients(server.port, warm, body, LONG_POLL_MS, batch=SUBMIT_BATCH)
        if trouble or any(doc["status"] != "success" for _, doc in warmed.values()):
            raise BenchError(f"warm-up failed: {trouble[:1] or describe_failures([d for _, d in warmed.values()])}")
    floor_before = ctx.floor()
    batched = _throughput_run(ctx, server, body, SUBMIT_BATCH)
    single = _throughput_run(ctx, server, body, 1)
    floor_after = ctx.floor()
    floor = (floor_before + floor_after) / 2
    floor_note = f"; floor before/after the runs {floor_before:.0f}/{floor_after:.0f} spawns/s"
    floor_label = "posix_spawn floor /s"
    if batched is None or single is None:
        return invalid_figures("throughput", "nothing completed")
    return [
        figure(
            "throughput.tasks_per_s", batched.client_rate, floor, floor_label,
            met=batched.client_rate >= 0.35 * floor, valid=batched.valid,
            note=batched.note + floor_note,
        ),
        figure(
            "throughput.store_tasks_per_s", batched.store_rate, floor, floor_label, valid=batched.valid,
            note=batched.store_note,
        ),
        figure(
            "throughput.single_submit_tasks_per_s", single.client_rate, floor, floor_label, valid=single.valid,
            note=single.note,
        ),
    ]


@dataclasses.dataclass
class ThroughputRun:
    """
    What one timed throughput run measured: tasks per second on the
    client's clock and on the store's, whether every task succeeded, and
    the notes for its figures.
    """

    client_rate: float
    store_rate: float
    valid: bool
    note: str
    store_note: str


def _throughput_run(ctx: Context, server: "Server", body: bytes, batch: int) -> Optional[ThroughputRun]:
    """
    One timed run of C{ctx.sizes.tasks} tasks (L{run_throughput}), C{batch}
    tasks per submit request; C{None} when nothing completed.
    """
    sizes = ctx.sizes
    long_poll = bool(ctx.long_poll)
    n, clients = sizes.tasks, sizes.clients
    shares = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    how = f"batches of {batch}" if batch > 1 and long_poll else "one task per request"
    log(f"throughput: {n} tasks, {clients} clients, --max-running-tasks {sizes.max_running}, {how}")
    cpu = CpuShares(server)
    if long_poll:
        # The clients share one selectors loop (benchmarks/loadgen.py): a
        # thread and http.client per client would take several times more
        # of the two cores away from the runtime under test.
        order, sent, done, problems = loadgen.run_clients(server.port, shares, body, LONG_POLL_MS, batch=batch)
    else:
        order, sent, done, problems = _polled_run(server, shares, body)
    cpu_note = cpu.per_task_note(len(done))
    docs = [doc for _, doc in done.values()]
    ok = [doc for doc in docs if doc["status"] == "success"]
    valid = not problems and len(order) == n and len(done) == n and len(ok) == n
    note = ""
    if not valid:
        note = (
            f"INVALID: {len(order)}/{n} accepted, {len(done)} terminal ({describe_failures(docs)})"
            + (f"; {problems[0]}" if problems else "")
        )
    if not sent or not done:
        return None
    client_span = max(t for t, _ in done.values()) - min(sent)
    client_rate = len(done) / client_span
    created = min(parse_timestamp_ms(doc["created_at"]) for doc in docs)
    finished = max(parse_timestamp_ms(doc["finished_at"]) for doc in docs if "finished_at" in doc)
    store_rate = len(done) / max((finished - created) / 1000.0, 0.001)
    log(f"throughput: {client_rate:.1f} tasks/s (client), {store_rate:.1f} (store), {how}")
    return ThroughputRun(
        client_rate=client_rate,
        store_rate=store_rate,
        valid=valid,
        note=(note or f"{n} tasks in {client_span:.2f}s, {how}") + cpu_note,
        store_note=note or f"min(created_at) -> max(finished_at) = {(finished - created) / 1000:.3f}s",
    )


def _polled_run(
    server: "Server", shares: List[int], body: bytes
) -> Tuple[List[str], List[float], Dict[str, Tuple[float, Dict[str, Any]]], List[str]]:
    """
    A throughput run without long-poll: a thread per client submits its
    share, and one poller walks all tasks in submission order (as
    L{loadgen.run_clients} returns them).
    """
    lock = threading.Lock()
    order: List[str] = []
    sent: List[float] = []
    done: Dict[str, Tuple[float, Dict[str, Any]]] = {}
    problems: List[str] = []
    barrier = threading.Barrier(len(shares))
    submitters_done = threading.Event()

    def submitter(index: int) -> None:
        client = Client(server.port)
        try:
            barrier.wait()
            for _ in range(shares[index]):
                before = time.perf_counter()
                status, data = client.request("POST", "/api/v1/tasks", body)
                if status != 200:
                    with lock:
                        problems.append(f"submit HTTP {status}: {data[:120]!r}")
                    continue
                task_id = json.loads(data)["task_id"]
                with lock:
                    order.append(task_id)
                    sent.append(before)
        except Exception as e:  # noqa: BLE001 -- reported, makes the figure invalid
            with lock:
                problems.append(f"client {index}: {e}")
        finally:
            client.close()

    def poller() -> None:
        # One poller walks the tasks in submission order (the order they
        # are dispatched in), so a pending head costs one GET per 5 ms and
        # everything behind it one GET each.
        client = Client(server.port)
        index = 0
        try:
            while True:
                with lock:
                    pending = index < len(order)
                    task_id = order[index] if pending else ""
                if not pending:
                    if submitters_done.is_set() and index >= len(order):
                        return
                    time.sleep(0.001)
                    continue
                doc = client.status(task_id)
                if doc["status"] in TERMINAL:
                    with lock:
                        done[task_id] = (time.perf_counter(), doc)
                    index += 1
                else:
                    time.sleep(0.005)
        except Exception as e:  # noqa: BLE001 -- reported, makes the figure invalid
            with lock:
                problems.append(f"poller: {e}")
        finally:
            client.close()

    threads = [threading.Thread(target=submitter, args=(i,)) for i in range(len(shares))]
    watcher = threading.Thread(target=poller)
    for thread in threads:
        thread.start()
    watcher.start()
    for thread in threads:
        thread.join()
    submitters_done.set()
    watcher.join()
    return order, sent, done, problems


# -- 2. latency ------------------------------------------------------------------


def run_latency(ctx: Context) -> List[Figure]:
    """
    Sequential single tasks: submit, then wait for the terminal state
    (long-poll, or a poll every millisecond); p50 and p99 against the p50
    of an HTTP round trip to C{/healthz} on the same connection.
    """
    count = ctx.sizes.latency_tasks
    server = ctx.main_server()
    client = Client(server.port)
    long_poll = bool(ctx.long_poll)
    log(f"latency: {count} sequential tasks")
    round_trips = []
    for _ in range(max(count, 20)):
        before = time.perf_counter()
        status, _ = client.request("GET", "/healthz")
        round_trips.append(time.perf_counter() - before)
        if status != 200:
            raise BenchError(f"/healthz: HTTP {status}")
    samples, docs = [], []
    for _ in range(count):
        before = time.perf_counter()
        task_id = client.submit(TRUE_TASK)
        doc = wait_terminal(client, task_id, long_poll, 0.001)
        samples.append(time.perf_counter() - before)
        docs.append(doc)
    client.close()
    failed = [doc for doc in docs if doc["status"] != "success"]
    valid = not failed
    note = "" if valid else f"INVALID: {describe_failures(docs)}"
    p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
    rtt = percentile(round_trips, 0.5) * 1000
    log(f"latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms (/healthz p50 {rtt:.2f} ms)")
    label = "GET /healthz p50 ms"
    return [
        figure("latency.p50_ms", p50, rtt, label, met=p50 <= 5, valid=valid, note=note or f"n={count}"),
        figure("latency.p99_ms", p99, rtt, label, met=p99 <= 20, valid=valid, note=note or f"n={count}"),
    ]


# -- 3. spawn path ---------------------------------------------------------------


SPAWN_ROUNDS = 5


def spawn_worker(spawns: int, extra_fds: int, floor_only: bool) -> Dict[str, Any]:
    """
    Runs in its own process: spawns per second of C{posix_spawn} +
    C{waitpid} (the floor), of C{Popen} with a cwd, a new session and
    pipes, and of C{execgo.supervisor.launcher.spawn}; the last two again with
    C{extra_fds} more open file descriptors.

    Each rate is the median of L{SPAWN_ROUNDS} rounds of C{spawns /
    SPAWN_ROUNDS} spawns, and the rounds of the different kinds alternate
    (floor, Popen, launcher, then the same two with the fds open), so a
    change in the machine's load hits every kind alike.
    """
    work = tempfile.mkdtemp(prefix="execgo-bench-spawn-")
    results: Dict[str, Any] = {"notes": []}
    try:
        per_round = max(1, spawns // SPAWN_ROUNDS)

        def timed_round(one: Callable[[], None]) -> float:
            before = time.perf_counter()
            for _ in range(per_round):
                one()
            return per_round / (time.perf_counter() - before)

        def posix_spawn() -> None:
            pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
            os.waitpid(pid, 0)

        def popen() -> None:
            process = subprocess.Popen(
                ["/bin/true"], cwd=work, start_new_session=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
            )
            process.wait()
            assert process.stdout is not None and process.stderr is not None
            process.stdout.close()
            process.stderr.close()
            if process.returncode != 0:
                raise RuntimeError(f"/bin/true exited {process.returncode}")

        launch: Optional[Callable[[], None]] = None
        try:
            from execgo.supervisor import launcher

            spec = launcher.LaunchSpec(
                argv=("/bin/true",),
                env=launcher.child_environment(os.environ, {}),
                cwd=os.path.join(work, "workspace"),
                stdout_path=os.path.join(work, "stdout.log"),
                stderr_path=os.path.join(work, "stderr.log"),
            )

            def launch_once() -> None:
                spawned = launcher.spawn(spec)
                _, status = os.waitpid(spawned.pid, 0)
                if status != 0:
                    raise RuntimeError(f"/bin/true via launcher: wait status {status}")

            launch = launch_once
        except ImportError as e:  # optional figure
            results["notes"].append(f"launcher.spawn not measured: {e}")

        kinds: Dict[str, Optional[Callable[[], None]]] = {"floor": posix_spawn}
        with_fds: Dict[str, Optional[Callable[[], None]]] = {}
        if not floor_only:
            kinds.update({"popen": popen, "launcher": launch})
            with_fds.update({"popen_fds": popen, "launcher_fds": launch})
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            need = extra_fds + 256
            if soft != resource.RLIM_INFINITY and soft < need:
                new_hard = hard if hard == resource.RLIM_INFINITY or hard >= need else need
                resource.setrlimit(resource.RLIMIT_NOFILE, (need, new_hard))
        rounds: Dict[str, List[float]] = {name: [] for name in (*kinds, *with_fds)}
        for one in (*kinds.values(), *with_fds.values()):
            if one is not None:
                one()  # warm-up
        for _ in range(SPAWN_ROUNDS):
            for name, one in kinds.items():
                if one is not None:
                    rounds[name].append(timed_round(one))
            if with_fds:
                fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(extra_fds)]
                try:
                    for name, one in with_fds.items():
                        if one is not None:
                            rounds[name].append(timed_round(one))
                finally:
                    for fd in fds:
                        os.close(fd)
        for name, values in rounds.items():
            results[name] = statistics.median(values) if values else None
        results["floor_rounds"] = rounds["floor"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def spawn_measurements(sizes: Sizes, floor_only: bool) -> Dict[str, Any]:
    """
    Run L{spawn_worker} in a fresh interpreter (C{sys.executable}) and
    return what it measured.
    """
    request = json.dumps({"spawns": sizes.spawns, "extra_fds": sizes.extra_fds, "floor_only": floor_only})
    log("spawn: measuring in a separate process" + (" (floor only)" if floor_only else ""))
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--spawn-worker", request],
        capture_output=True, timeout=600, check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"spawn worker exited {done.returncode}: {done.stderr[-500:]!r}")
    return dict(json.loads(done.stdout))


def run_spawn(ctx: Context) -> List[Figure]:
    """
    The spawn path: rates with a cwd, a new session and pipes (and the
    runtime's own launcher), without and with C{extra_fds} open fds, each
    against the C{posix_spawn} floor.
    """
    results = spawn_measurements(ctx.sizes, floor_only=False)
    floor = float(results["floor"])
    notes = "; ".join(results.get("notes", []))
    label = "posix_spawn floor /s"
    fds = ctx.sizes.extra_fds
    log(
        "spawn: floor {:.0f}/s, popen {:.0f}/s, popen+{}fds {:.0f}/s".format(
            floor, results["popen"], fds, results["popen_fds"]
        )
    )

    def optional(key: str, value: Optional[float], goal: float) -> Figure:
        if value is None:
            return figure(key, None, floor, label, valid=True, note=notes or "not measured")
        return figure(key, value, floor, label, met=value >= goal, note=f"n={ctx.sizes.spawns}")

    return [
        figure("spawn.floor_per_s", floor,
               note="rounds: " + ", ".join(f"{r:.0f}" for r in results["floor_rounds"])),
        figure("spawn.popen_per_s", results["popen"], floor, label, met=results["popen"] >= 900,
               note=f"n={ctx.sizes.spawns}"),
        figure("spawn.popen_4000fds_per_s", results["popen_fds"], floor, label,
               met=results["popen_fds"] >= 500, note=f"{fds} extra fds"),
        optional("spawn.launcher_per_s", results.get("launcher"), 900),
        optional("spawn.launcher_4000fds_per_s", results.get("launcher_fds"), 500),
    ]


# -- 4. scale ----------------------------------------------------------------------


class StoreSide:
    """
    One of the two servers of the scale section and the times taken on
    it.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = Client(server.port)
        self.startup = 0.0
        self.submit_times: List[float] = []
        self.status_times: List[float] = []
        self.metrics_times: List[float] = []
        self.last_metrics = ""
        self.task_ids: List[str] = []
        self.docs: List[Dict[str, Any]] = []

    def start(self) -> None:
        """
        Start the server (timed to C{/healthz}) and run one warm-up task.
        """
        self.startup = self.server.start()
        self.docs.append(wait_terminal(self.client, self.client.submit(TRUE_TASK), False, 0.005))

    def submit(self) -> None:
        """
        Time one submit.
        """
        before = time.perf_counter()
        self.task_ids.append(self.client.submit(TRUE_TASK))
        self.submit_times.append(time.perf_counter() - before)

    def settle(self) -> None:
        """
        Wait until every submitted task is terminal.
        """
        self.docs.extend(wait_terminal(self.client, t, False, 0.005) for t in self.task_ids)

    def status(self, index: int) -> None:
        """
        Time one status read of the C{index}th submitted task.
        """
        before = time.perf_counter()
        self.client.status(self.task_ids[index])
        self.status_times.append(time.perf_counter() - before)

    def metrics(self) -> None:
        """
        Time one C{/metrics} scrape.
        """
        before = time.perf_counter()
        status, body = self.client.request("GET", "/metrics")
        self.metrics_times.append(time.perf_counter() - before)
        if status != 200:
            raise BenchError(f"/metrics: HTTP {status}")
        self.last_metrics = body.decode("utf-8", "replace")

    def tasks_in_metrics(self) -> int:
        """
        The sum of the C{execgo_runtime_tasks_total} samples of the last
        scrape: the number of stored task rows, by the contract.
        """
        total = 0
        for line in self.last_metrics.splitlines():
            if line.startswith("execgo_runtime_tasks_total{"):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def failures(self) -> str:
        """
        The outcome counts when a task did not succeed, else C{""}.
        """
        if all(doc["status"] == "success" for doc in self.docs):
            return ""
        return describe_failures(self.docs)

    def p50_ms(self, samples: Sequence[float]) -> float:
        """
        The median of C{samples} in milliseconds.
        """
        return statistics.median(samples) * 1000


def interleaved(sides: Sequence[StoreSide], count: int, step: Callable[[StoreSide, int], None]) -> None:
    """
    Run C{step} C{count} times on each side, alternating sides and which
    side goes first, so drift in the machine's load hits both alike.
    """
    for index in range(count):
        for side in sides if index % 2 == 0 else list(reversed(sides)):
            step(side, index)


def empty_store(data_dir: str) -> None:
    """
    Create a data dir with an initialised, empty store.
    """
    from execgo.store import connection, schema

    os.makedirs(data_dir)
    conn = connection.connect(os.path.join(data_dir, "runtime.db"))
    try:
        schema.init_schema(conn)
    finally:
        conn.close()


def fill_store(template_db: str, data_dir: str, count: int) -> float:
    """
    Create a store in C{data_dir} holding C{count} terminal tasks copied
    from the first successful task of C{template_db} (its columns, its
    events, paths moved to the new data dir, times spread over the last
    hour); one transaction, no task directories.  Returns the seconds it
    took.

    Only C{connection.connect} and C{schema.init_schema} are used, so whatever
    the schema keeps in step with the rows by itself (triggers) is kept;
    counters that the runtime bumps from Python when a task changes state
    do not count these rows.
    """
    import sqlite3

    from execgo.store import connection, schema

    before = time.perf_counter()
    source = sqlite3.connect(template_db)
    source.row_factory = sqlite3.Row
    try:
        row = source.execute(
            "SELECT * FROM tasks WHERE status = 'success' ORDER BY created_at_ms LIMIT 1"
        ).fetchone()
        if row is None:
            raise BenchError("no successful task to copy in the empty-store run")
        template = dict(row)
        events = [
            dict(e)
            for e in source.execute(
                "SELECT event_type, timestamp_ms, message, data_json FROM task_events"
                " WHERE task_id = ? ORDER BY seq",
                (template["task_id"],),
            )
        ]
    finally:
        source.close()

    os.makedirs(os.path.join(data_dir, "tasks"))
    conn = connection.connect(os.path.join(data_dir, "runtime.db"))
    try:
        schema.init_schema(conn)
        columns = list(template)
        time_columns = [c for c in columns if c.endswith("_at_ms") and template[c] is not None]
        path_columns = [c for c in columns if c.endswith(("_path", "_dir"))]
        old_dir = template["task_dir"]
        now_ms = int(time.time() * 1000)
        first_ms = now_ms - 3_600_000
        step = max(1, 3_600_000 // max(count, 1))

        def rows() -> Iterator[Tuple[Any, ...]]:
            for i in range(count):
                task_id = f"bulk-{i:06d}"
                shift = first_ms + i * step - template["created_at_ms"]
                values = dict(template)
                values["task_id"] = values["handle_id"] = task_id
                new_dir = os.path.join(data_dir, "tasks", task_id)
                for column in path_columns:
                    if values[column] is not None:
                        values[column] = str(values[column]).replace(old_dir, new_dir, 1)
                for column in time_columns:
                    values[column] = template[column] + shift
                yield tuple(values[c] for c in columns)

        def event_rows() -> Iterator[Tuple[Any, ...]]:
            for i in range(count):
                task_id = f"bulk-{i:06d}"
                shift = first_ms + i * step - template["created_at_ms"]
                for e in events:
                    yield (task_id, e["event_type"], e["timestamp_ms"] + shift, e["message"], e["data_json"])

        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                rows(),
            )
            conn.executemany(
                "INSERT INTO task_events (task_id, event_type, timestamp_ms, message, data_json)"
                " VALUES (?, ?, ?, ?, ?)",
                event_rows(),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - before


def run_scale(ctx: Context) -> List[Figure]:
    """
    Two servers side by side: one on an empty store, one on a store holding
    C{stored_tasks} terminal tasks (copied from the empty store's warm-up
    task).  Start-up is timed for each; submits, status reads and
    C{/metrics} scrapes alternate between them.
    """
    sizes = ctx.sizes
    args = ["--max-queued-tasks", str(max(128, sizes.scale_samples + 64))]
    small = StoreSide(ctx.new_server("scale-empty", args))
    large = StoreSide(ctx.new_server("scale-big", args))
    try:
        empty_store(small.server.data_dir)
        log("scale: starting a server on an empty store")
        small.start()
        log(f"scale: writing {sizes.stored_tasks} stored tasks")
        fill = fill_store(
            os.path.join(small.server.data_dir, "runtime.db"), large.server.data_dir, sizes.stored_tasks
        )
        log(f"scale: filled in {fill:.1f}s; starting a server on it")
        large.start()
        sides = (small, large)
        interleaved(sides, sizes.scale_samples, lambda side, i: side.submit())
        for side in sides:
            side.settle()
        interleaved(sides, sizes.scale_samples, lambda side, i: side.status(i))
        interleaved(sides, sizes.metrics_samples, lambda side, i: side.metrics())
    finally:
        for side in (small, large):
            side.client.close()
            side.server.stop()
    valid = not small.failures() and not large.failures()
    note = "" if valid else f"INVALID: empty {small.failures() or 'ok'}; big {large.failures() or 'ok'}"
    submit = (large.p50_ms(large.submit_times), small.p50_ms(small.submit_times))
    status = (large.p50_ms(large.status_times), small.p50_ms(small.status_times))
    metrics = (large.p50_ms(large.metrics_times), small.p50_ms(small.metrics_times))
    log(
        f"scale: start-up {small.startup:.2f}s -> {large.startup:.2f}s, submit {submit[1]:.2f} -> "
        f"{submit[0]:.2f} ms, status {status[1]:.2f} -> {status[0]:.2f} ms, "
        f"/metrics {metrics[1]:.2f} -> {metrics[0]:.2f} ms"
    )
    stored = f"{sizes.stored_tasks} stored"
    # /metrics is only fast honestly if it still counts every stored row.
    counted = (small.tasks_in_metrics(), large.tasks_in_metrics())
    expected = (len(small.docs), sizes.stored_tasks + len(large.docs))
    metrics_valid = valid and counted == expected
    metrics_note = note or f"{stored}, n={sizes.metrics_samples}"
    if valid and not metrics_valid:
        metrics_note = (
            f"INVALID: execgo_runtime_tasks_total sums to {counted[0]} (empty) and {counted[1]} (big),"
            f" the stores hold {expected[0]} and {expected[1]} tasks"
        )
    metrics_ratio = metrics[0] / metrics[1] if metrics[1] else math.inf
    label = "empty store ms"
    return [
        figure("scale.startup_s", large.startup, small.startup, "empty store s",
               met=large.startup <= 3.0, valid=valid, note=note or stored),
        figure("scale.submit_p50_ms", *submit, label, met=submit[0] <= 1.2 * submit[1], valid=valid,
               note=note or f"{stored}, n={sizes.scale_samples}"),
        figure("scale.status_p50_ms", *status, label, met=status[0] <= 1.2 * status[1], valid=valid,
               note=note or f"{stored}, n={sizes.scale_samples}"),
        figure("scale.metrics_p50_ms", *metrics, label,
               met=metrics[0] <= 50 and metrics_ratio <= 2.0, valid=metrics_valid, note=metrics_note),
    ]


# -- 5. output ---------------------------------------------------------------------


class RssSampler(threading.Thread):
    """
    Samples C{VmRSS} of some pids every 50 ms, keeping the maximum.
    """

    def __init__(self, pids: Dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = dict(pids)
        self.peak_kib: Dict[str, int] = {name: 0 for name in pids}
        self.stopping = threading.Event()

    def add(self, name: str, pid: int) -> None:
        """
        Start sampling another pid.
        """
        self.peak_kib.setdefault(name, 0)
        self.pids[name] = pid

    def run(self) -> None:
        """
        Sample until L{stop}.
        """
        while not self.stopping.is_set():
            for name, pid in list(self.pids.items()):
                value = proc_status_kib(pid, "VmRSS")
                if value is not None and value > self.peak_kib.get(name, 0):
                    self.peak_kib[name] = value
            self.stopping.wait(0.05)

    def stop(self) -> None:
        """
        Stop sampling and wait for the thread.
        """
        self.stopping.set()
        self.join()


def raw_write_rate(path: str, size: int) -> float:
    """
    MiB/s of C{head -c <size> /dev/zero > path} (the file is removed).
    """
    with open(path, "wb") as raw:
        before = time.perf_counter()
        subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=raw, check=True)
        seconds = time.perf_counter() - before
    os.unlink(path)
    return size / MIB / seconds


def run_output(ctx: Context) -> List[Figure]:
    """
    A task writing C{output_bytes} zero bytes to stdout (default limits) on
    a fresh server: the server's and the supervisor's peak RSS, and the
    write rate against C{head} writing the same bytes to a file in the same
    directory.  Completion is watched on the events endpoint (which carries
    no output), then the status is read once.
    """
    size = ctx.sizes.output_bytes
    server = ctx.new_server("output")
    server.start()
    client = Client(server.port)
    try:
        warm = wait_terminal(client, client.submit(TRUE_TASK), False, 0.005)
        if warm["status"] != "success":
            raise BenchError(f"warm-up task ended {describe_failures([warm])}")
        idle_kib = proc_status_kib(server.pid, "VmRSS") or 0
        raw_path = os.path.join(server.data_dir, "raw.bin")
        log(f"output: reference: head -c {size} /dev/zero > file")
        raw_rates = [raw_write_rate(raw_path, size)]
        sampler = RssSampler({"server": server.pid})
        if warm.get("shim_pid"):
            sampler.add("supervisor", int(warm["shim_pid"]))
        sampler.start()
        log(f"output: task writing {size} bytes to stdout")
        task_id = client.submit(
            {"execution": {"kind": "command", "program": "head", "args": ["-c", str(size), "/dev/zero"]}}
        )
        try:
            deadline = time.monotonic() + 600
            while True:
                events = client.get_json(f"/api/v1/tasks/{task_id}/events")
                if any(e["event_type"] in ("finished", "failed", "cancelled") for e in events):
                    break
                if time.monotonic() > deadline:
                    raise BenchError("output task not terminal after 600s")
                time.sleep(0.1)
        finally:
            sampler.stop()
        # The peaks of the whole write, read before anything asks for the
        # task's output; then the status read, whose inline preview
        # (stdout_max_bytes of the log) is a cost of its own.
        server_hwm = proc_status_kib(server.pid, "VmHWM") or 0
        supervisor_pid = int(warm.get("shim_pid") or 0)
        supervisor_hwm = proc_status_kib(supervisor_pid, "VmHWM") if supervisor_pid else None
        supervisor_rss = proc_status_kib(supervisor_pid, "VmRSS") if supervisor_pid else None
        status, body = client.request("GET", f"/api/v1/tasks/{task_id}")
        if status != 200:
            raise BenchError(f"status of the output task: HTTP {status}")
        doc = json.loads(body)
        after_status_hwm = proc_status_kib(server.pid, "VmHWM") or 0
        stdout_path = doc["artifacts"]["stdout_path"]
        written = os.path.getsize(stdout_path) if os.path.exists(stdout_path) else -1
        if os.path.exists(stdout_path):
            os.unlink(stdout_path)
        log("output: reference again, after the task")
        raw_rates.append(raw_write_rate(raw_path, size))
        raw_rate = max(raw_rates)
    finally:
        client.close()
        server.stop()
    valid = doc["status"] == "success" and written == size
    note = "" if valid else f"INVALID: {describe_failures([doc])}, {written}/{size} bytes on disk"
    if doc.get("shim_pid") != warm.get("shim_pid"):
        note = (note + "; " if note else "") + "the task ran under another supervisor than the warm-up"
    seconds = (parse_timestamp_ms(doc["finished_at"]) - parse_timestamp_ms(doc["started_at"])) / 1000
    seconds = max(seconds, 0.001)
    rate = size / MIB / seconds
    server_peak = max(server_hwm, sampler.peak_kib["server"]) / 1024
    sampled = sampler.peak_kib["server"] / 1024
    idle = idle_kib / 1024
    after_status = after_status_hwm / 1024
    supervisor_peak = None if supervisor_hwm is None else supervisor_hwm / 1024
    supervisor_now = "?" if supervisor_rss is None else f"{supervisor_rss / 1024:.1f}"
    log(f"output: {rate:.0f} MiB/s (head alone {raw_rate:.0f}), server peak {server_peak:.1f} MiB")
    return [
        figure("output.server_peak_rss_mib", server_peak, idle, "idle server VmRSS MiB",
               met=server_peak <= 100, valid=valid,
               note=note or f"VmHWM when the task ended; max sampled VmRSS {sampled:.1f} MiB"),
        figure("output.server_hwm_after_status_mib", after_status, idle, "idle server VmRSS MiB",
               valid=valid,
               note=note or f"one GET of the task's status, {len(body) / MIB:.1f} MiB of JSON"),
        figure("output.supervisor_peak_rss_mib", supervisor_peak, None, "", valid=valid,
               note=note or f"VmRSS when the task ended {supervisor_now} MiB"),
        figure("output.mib_per_s", rate, raw_rate, "head -c to a file MiB/s", valid=valid,
               note=note or f"{size / MIB:.0f} MiB in {seconds:.2f}s (started_at -> finished_at);"
               f" head -c before/after {raw_rates[0]:.0f}/{raw_rates[1]:.0f} MiB/s,"
               " the faster is the reference"),
    ]


# -- 6. CLI --------------------------------------------------------------------------


def run_cli(ctx: Context) -> List[Figure]:
    """
    Median wall time of C{execgo-runtime status --server URL <id>} (the
    console script next to C{sys.executable}) against C{curl} of the
    same URL, after one unmeasured run of each.
    """
    runs = ctx.sizes.cli_runs
    server = ctx.main_server()
    client = Client(server.port)
    try:
        task_id = client.submit(TRUE_TASK)
        doc = wait_terminal(client, task_id, bool(ctx.long_poll), 0.005)
    finally:
        client.close()
    if doc["status"] != "success":
        return invalid_figures("cli", f"INVALID: the task ended {describe_failures([doc])}")
    script = os.path.join(os.path.dirname(sys.executable), "execgo-runtime")
    if os.path.exists(script):
        cli = [script]
    else:
        cli = [sys.executable, "-m", "execgo"]
        ctx.notes.append("execgo-runtime not found next to sys.executable: timed python -m execgo")
    cli_command = [*cli, "status", "--server", server.url, task_id]
    url = f"{server.url}/api/v1/tasks/{task_id}"
    curl = shutil.which("curl")

    def timed(command: Sequence[str]) -> Tuple[float, List[int]]:
        codes, samples = [], []
        subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_environ(), check=False
        )
        for _ in range(runs):
            before = time.perf_counter()
            done = subprocess.run(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_environ(),
                check=False,
            )
            samples.append(time.perf_counter() - before)
            codes.append(done.returncode)
        return statistics.median(samples), codes

    log(f"cli: {runs} runs of execgo-runtime status" + (" and curl" if curl else ""))
    cli_time, cli_codes = timed(cli_command)
    curl_time = None
    note = f"n={runs}"
    if curl:
        curl_time, curl_codes = timed([curl, "-sS", "-o", "/dev/null", "-f", url])
        if any(curl_codes):
            curl_time = None
            note += f"; curl failed ({curl_codes})"
    else:
        note += "; curl not found, no reference"
    valid = not any(cli_codes)
    if not valid:
        note = f"INVALID: exit codes {cli_codes}"
    return [
        figure("cli.status_wall_s", cli_time, curl_time, "curl s" if curl_time else "",
               met=cli_time <= 0.3, valid=valid, note=note),
    ]


RUNNERS: Dict[str, Callable[[Context], List[Figure]]] = {
    "throughput": run_throughput,
    "latency": run_latency,
    "spawn": run_spawn,
    "scale": run_scale,
    "output": run_output,
    "cli": run_cli,
    "memory": lambda ctx: limits.run_memory(ctx, sys.modules[__name__]),
    "listener": lambda ctx: limits.run_listener(ctx, sys.modules[__name__]),
    "postgres": lambda ctx: postgres.run_postgres(ctx, sys.modules[__name__]),
    "cluster": lambda ctx: cluster.run_cluster(ctx, sys.modules[__name__]),
}

# Run order: the spawn figures on a quiet machine first, then what shares
# the main server, then the sections that start servers of their own.
RUN_ORDER = (
    "spawn", "throughput", "latency", "cli", "output", "memory", "listener", "scale", "postgres", "cluster"
)


# -- report ----------------------------------------------------------------------------


def fmt(value: Optional[float]) -> str:
    """
    A number with about three significant digits, or C{-}.
    """
    if value is None:
        return "-"
    if value == math.inf:
        return "inf"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def verdict(item: Figure) -> str:
    """
    C{yes}, C{no}, C{-} (no goal) or C{INVALID}.
    """
    if not item.valid:
        return "INVALID"
    if item.met is None:
        return "-"
    return "yes" if item.met else "no"


def render_table(figures: Sequence[Figure], meta: Dict[str, Any]) -> str:
    """
    The final table: figure, measured, reference, ratio, goal, met; then
    one line of notes per figure.
    """
    header = ("figure", "measured", "reference", "ratio", "goal", "met")
    rows = [header]
    for item in figures:
        measured = "-" if item.measured is None else f"{fmt(item.measured)} {item.unit}"
        reference = "-" if item.reference is None else f"{fmt(item.reference)} ({item.reference_label})"
        ratio = "-" if item.ratio is None else f"{item.ratio:.2f}"
        rows.append((item.key, measured, reference, ratio, item.goal, verdict(item)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "execgo benchmark: {python} on {cpus} CPUs, {kernel}; git {git}; {mode}".format(**meta),
        "",
    ]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("")
    lines.append("notes:")
    for item in figures:
        if item.note:
            lines.append(f"  {item.key}: {item.label}; {item.note}")
    for note in meta.get("notes", []):
        lines.append(f"  {note}")
    return "\n".join(lines) + "\n"


def git_revision() -> str:
    """
    The short commit of the repository (C{+dirty} when the tree has
    changes), or C{unknown}.
    """
    try:
        head = subprocess.run(
            ["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO_ROOT, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def run(
    sections: Sequence[str], sizes: Sizes, quick: bool, allow_long_poll: bool = True, keep: bool = False
) -> Tuple[List[Figure], Dict[str, Any]]:
    """
    Run the chosen sections and return their figures in the order above
    and the run's description.
    """
    become_subreaper()
    root = tempfile.mkdtemp(prefix="execgo-bench-")
    ctx = Context(sizes, root, allow_long_poll)
    results: Dict[str, List[Figure]] = {}
    load_before = os.getloadavg()
    try:
        for section in RUN_ORDER:
            if section not in sections:
                continue
            try:
                results[section] = RUNNERS[section](ctx)
            except Exception as e:  # noqa: BLE001 -- one broken section must not lose the others
                log(f"{section}: failed: {e}")
                results[section] = invalid_figures(section, f"INVALID: {type(e).__name__}: {e}")
            if section == "cli":
                ctx.stop_main()
    finally:
        ctx.close(keep)
    figures = [item for section in SECTIONS if section in results for item in results[section]]
    meta = {
        "python": f"Python {platform.python_version()} ({sys.executable})",
        "cpus": os.cpu_count(),
        "kernel": f"Linux {platform.release()}",
        "git": git_revision(),
        "mode": "quick sizes" if quick else "full sizes",
        "sizes": dataclasses.asdict(sizes),
        "long_poll": ctx.long_poll,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "notes": ctx.notes
        + [f"load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}"],
    }
    return figures, meta


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(
        description="Benchmark the execgo runtime against references measured in the same run."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (for the smoke test)")
    parser.add_argument(
        "--only", metavar="SECTIONS",
        help="comma-separated subset of: " + ",".join(SECTIONS),
    )
    parser.add_argument("--tasks", type=int, metavar="N", help="tasks in the throughput run")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (table on stderr)")
    parser.add_argument(
        "--no-long-poll", action="store_true",
        help="observe completion by polling even if the server supports ?wait_ms",
    )
    parser.add_argument(
        "--fail-on-unmet", action="store_true", help="exit 1 when a goal is not met, too"
    )
    parser.add_argument(
        "--keep", action="store_true",
        help="leave the temporary directory (back-to-back runs then do not pay for its deletion, see the README)",
    )
    parser.add_argument("--spawn-worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        chosen = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in SECTIONS]
        if unknown or not chosen:
            parser.error(
                f"--only: unknown section(s) {', '.join(unknown) or '(none)'};"
                f" choose from {', '.join(SECTIONS)}"
            )
        args.sections = chosen
    else:
        args.sections = list(SECTIONS)
    if args.tasks is not None and args.tasks < 1:
        parser.error("--tasks must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    """
    Run the benchmark; exit status 0 when every figure is valid, 1 when
    one is not (or, with C{--fail-on-unmet}, when a goal is missed).
    """
    args = parse_args(argv)
    if args.spawn_worker is not None:
        request = json.loads(args.spawn_worker)
        result = spawn_worker(int(request["spawns"]), int(request["extra_fds"]), bool(request["floor_only"]))
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    sizes = QUICK if args.quick else Sizes()
    if args.tasks is not None:
        sizes = dataclasses.replace(sizes, tasks=args.tasks)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    figures, meta = run(args.sections, sizes, args.quick, not args.no_long_poll, args.keep)
    table = render_table(figures, meta)
    if args.json:
        sys.stderr.write(table)
        document = {"meta": meta, "figures": [dataclasses.asdict(item) for item in figures]}
        sys.stdout.write(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    else:
        sys.stdout.write(table)
    if any(not item.valid for item in figures):
        return 1
    if args.fail_on_unmet and any(item.met is False for item in figures):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
