#!/usr/bin/env python
"""
Crash and restart under load.

Starts the real server (C{python -m execgo serve}) on a fresh data
directory, submits a mix of tasks whose outcome is known from their
definition, kills some of them through the API, C{kill -9}s the server (only
the server: its supervisor must survive) at random moments, restarts it on
the same data directory and port each time, waits until every task is
terminal and then checks, task by task:

 - the terminal state it should have (C{success}, C{failed/exit_nonzero},
   C{failed/timeout}, C{cancelled}, or -- for a task killed after it had
   finished -- the state it had reached);
 - its output (C{stdout.log} has exactly the expected lines of a
   successful task; a cancelled one has a prefix of them);
 - its event log: ordered by C{seq}, starting C{submitted, accepted,
   planned}, exactly one terminal event (the last one), every reservation
   released once, C{resource_released} right before the terminal event
   when a reservation was taken, and C{recovered} whenever the task was
   dispatched before a crash and ended after the restart;
 - C{result.json} equals the status endpoint's JSON;

and, for the whole run: the ledger (C{/api/v1/runtime/resources}) holds no
reservation and no waiting task, no workload process and no per-task cgroup
is left, and the supervisor survived every crash.

With C{--postgres} the store is on a PostgreSQL cluster started for the
run (from the host's binaries, C{tests/pgcluster.py}), and
C{--db-restarts N} adds N C{pg_ctl restart -m fast} of it at random
moments among the server's crashes: submissions and kills that meet the
outage (503) are sent again, and every check above must still hold.

It prints the counts and exits 1 on any violation (2 for a bad command
line).  Standard library only (and execgo's own C{/proc} helper, from the
interpreter that runs the server); the tasks are C{/bin/sh} commands.  See
C{docs/operations.md}.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import http.client
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from execgo.host.procinfo import supervisor_pids, workload_pids

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests import pgcluster  # noqa: E402 -- after the path set-up above

TERMINAL = ("success", "failed", "cancelled")
TERMINAL_EVENTS = {"finished": "success", "failed": "failed", "cancelled": "cancelled"}
FIRST_EVENTS = ["submitted", "accepted", "planned"]
PR_SET_CHILD_SUBREAPER = 36
CGROUP_FS = "/sys/fs/cgroup"
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup/execgo-runtime"

# What a task of each kind does, and the outcome its definition implies.
KIND_LINES = "lines"
KIND_EXIT = "exit_nonzero"
KIND_TIMEOUT = "timeout"
KIND_KILL_RUNNING = "kill_long"
KIND_KILL_QUEUED = "kill_queued"
KINDS = (KIND_LINES, KIND_EXIT, KIND_TIMEOUT, KIND_KILL_RUNNING, KIND_KILL_QUEUED)

# A late kill may find a task that finished on its own a moment earlier:
# its terminal write and the kill's record race.  A successful end this
# close after the first recorded kill is that race, not an ignored kill.
KILL_RACE_MS = 50


class HarnessError(Exception):
    """
    The harness itself could not go on (server does not start, a request
    keeps failing); distinct from a violation of the runtime's guarantees.
    """


# -- small helpers -------------------------------------------------------------

_T0 = time.monotonic()


def log(message: str) -> None:
    """
    A progress line on stderr, stamped with the seconds since start.
    """
    sys.stderr.write(f"[{time.monotonic() - _T0:7.2f}s] {message}\n")
    sys.stderr.flush()


def parse_timestamp_ms(text: str) -> int:
    """
    Milliseconds since the epoch of an RFC 3339 C{...Z} timestamp (0, 3, 6
    or 9 fraction digits).
    """
    base, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S")
    seconds = int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())
    return seconds * 1000 + (int((fraction + "000")[:3]) if fraction else 0)


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environ() -> Dict[str, str]:
    """
    This environment without C{EXECGO_RUNTIME_*} and C{RUST_LOG}, so the
    caller's shell cannot change the server's settings.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECGO_RUNTIME_")}
    env.pop("RUST_LOG", None)
    return env


def percentile(values: Sequence[float], fraction: float) -> float:
    """
    The nearest-rank percentile (C{fraction} in (0, 1]) of C{values}.
    """
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def filesystem_of(path: str) -> str:
    """
    C{"<type> on <device> (<mount point>)"} for the mount holding C{path},
    from C{/proc/self/mounts}, or C{"unknown"}.
    """
    path = os.path.realpath(path)
    best = ("", "unknown", "unknown")
    try:
        with open("/proc/self/mounts", "r", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                device, point, kind = fields[0], fields[1], fields[2]
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best[0]):
                    best = (point, kind, device)
    except OSError:
        return "unknown"
    return f"{best[1]} on {best[2]} ({best[0] or '?'})"


# -- processes ---------------------------------------------------------------------


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def process_cpu(pid: int) -> Optional[Tuple[float, float]]:
    """
    User + system CPU seconds of C{pid} so far, and of the children it has
    reaped, from C{/proc/<pid>/stat}; C{None} once it is gone.
    """
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    fields = raw.rsplit(b")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks


def all_pids() -> Iterator[int]:
    """
    Every pid in C{/proc}.
    """
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def task_cgroup_dirs(task_id: str, cgroup_root: str = DEFAULT_CGROUP_ROOT) -> List[str]:
    """
    The per-task cgroup directories of C{task_id} that exist: under the
    cgroup root itself (v2) and under the same relative path of every v1
    hierarchy (and the hybrid C{unified} tree).
    """
    candidates = [os.path.join(cgroup_root, task_id)]
    rel = os.path.relpath(cgroup_root, CGROUP_FS)
    if not rel.startswith(".."):
        try:
            hierarchies = sorted(os.listdir(CGROUP_FS))
        except OSError:
            hierarchies = []
        for hierarchy in hierarchies:
            candidates.append(os.path.join(CGROUP_FS, hierarchy, rel, task_id))
    return [path for path in candidates if os.path.isdir(path)]


def become_subreaper() -> None:
    """
    Make this process the child subreaper of its descendants: the
    supervisor a crashed server leaves behind becomes our child, so it can
    be reaped here at the end (PID 1 on some hosts never reaps).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kill_and_reap(pids: Sequence[int]) -> None:
    """
    SIGKILL each pid, then reap those that are our children.
    """
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass


def reap_zombies() -> None:
    """
    Reap every exited child without blocking (call only when no
    C{subprocess.Popen} of ours is still running).
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# -- HTTP ---------------------------------------------------------------------------

TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class Client:
    """
    A keep-alive HTTP/1.1 client for one server port, used by one thread.
    Transport errors are raised (as C{OSError} or
    C{http.client.HTTPException}) after the connection is dropped; nothing
    is retried here.
    """

    def __init__(self, port: int, timeout: float = 30.0, abort: Optional[threading.Event] = None) -> None:
        self.port = port
        self.timeout = timeout
        self.abort = abort
        self._conn: Optional[http.client.HTTPConnection] = None
        self.transport_errors = 0

    def close(self) -> None:
        """
        Drop the connection.
        """
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def connect(self) -> None:
        """
        Open the connection now rather than at the first request.
        """
        self.close()
        self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self._conn.connect()
        except TRANSPORT_ERRORS:
            self.close()
            raise

    def request(
        self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None
    ) -> Tuple[int, bytes]:
        """
        One request; the status and the whole body.
        """
        sent = dict(headers or {})
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self._conn.request(method, path, body=body, headers=sent)
            response = self._conn.getresponse()
            data = response.read()
        except TRANSPORT_ERRORS:
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, data

    def until_answered(
        self, method: str, path: str, body: Optional[bytes] = None, deadline: float = 0.0
    ) -> Tuple[int, bytes]:
        """
        L{request}, repeated on a fresh connection after every transport
        error (the server is down or being restarted) until it gets an
        answer, the monotonic C{deadline} passes or the C{abort} event is
        set.  L{transport_errors} counts the failed attempts.

        @raise HarnessError: past the deadline, or aborted.
        """
        while True:
            try:
                return self.request(method, path, body)
            except TRANSPORT_ERRORS as e:
                self.transport_errors += 1
                if time.monotonic() > deadline:
                    raise HarnessError(f"{method} {path}: no answer before the deadline: {e!r}") from e
                if self.abort is not None and self.abort.is_set():
                    raise HarnessError(f"{method} {path}: aborted") from e
                time.sleep(0.05)

    def get_json(self, path: str, deadline: float) -> Any:
        """
        C{GET path} (retried while the server is unreachable); the decoded
        body of a 200.

        @raise HarnessError: for any other status.
        """
        status, data = self.until_answered("GET", path, deadline=deadline)
        if status != 200:
            raise HarnessError(f"GET {path}: HTTP {status}: {data[:200]!r}")
        return json.loads(data)


# -- the server as a child process --------------------------------------------------


class Server:
    """
    One C{python -m execgo serve} on a fixed port and data directory that
    can be crashed and restarted; its output is appended to C{log_path}.
    """

    def __init__(self, data_dir: str, port: int, args: Sequence[str], log_path: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.args = list(args)
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: Optional[subprocess.Popen] = None
        self.starts = 0

    def argv(self) -> List[str]:
        """
        The server's command line.
        """
        return [
            sys.executable, "-m", "execgo", "serve",
            "--listen-addr", f"127.0.0.1:{self.port}",
            "--data-dir", self.data_dir,
            *self.args,
        ]

    def start(self, timeout: float = 60.0) -> float:
        """
        Start the server and wait until C{/healthz} answers 200 (the server
        listens only once recovery has finished).

        @return: the seconds from the spawn until then.
        @raise HarnessError: when it exits or does not answer in time.
        """
        with open(self.log_path, "ab") as output:
            started = time.monotonic()
            self.process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=clean_environ(),
                cwd=os.path.dirname(self.data_dir),
                start_new_session=True,
            )
        self.starts += 1
        deadline = started + timeout
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
                try:
                    connection.request("GET", "/healthz")
                    if connection.getresponse().status == 200:
                        return time.monotonic() - started
                finally:
                    connection.close()
            except TRANSPORT_ERRORS:
                pass
            if self.process.poll() is not None:
                raise HarnessError(f"server exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"server not healthy after {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        """
        The pid of the current server process.
        """
        assert self.process is not None
        return self.process.pid

    def crash(self) -> None:
        """
        C{kill -9} the server process (that pid only, not its group) and
        wait until it is gone.
        """
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """
        SIGTERM, SIGKILL after 15 s; wait.
        """
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self) -> str:
        """
        The last lines of the server's output.
        """
        data = _read(self.log_path) or b""
        return data[-1500:].decode("utf-8", "replace")


# -- the plan -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """
    The size and timing of one chaos run.
    """

    tasks: int = 150
    crashes: int = 3
    max_running: int = 8
    seed: int = 1
    line_ms: int = 20
    max_lines: int = 100
    long_lines: Tuple[int, int] = (150, 400)
    timeout_wall_ms: int = 1500
    grace_ms: int = 300
    max_downtime_ms: int = 500
    wait_timeout_s: float = 300.0
    postgres: bool = False
    db_restarts: int = 0


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """
    One planned task: its kind, how many lines it prints (kinds that
    print lines), and when the harness kills it (seconds after the start of
    the run; C{None} for tasks not killed, C{0.0} for right after the
    submissions).
    """

    task_id: str
    kind: str
    lines: int = 0
    kill_at: Optional[float] = None
    wall_time_ms: Optional[int] = None

    def script(self, line_ms: int) -> str:
        """
        The C{sh -c} script of the task.
        """
        if self.kind == KIND_EXIT:
            return "echo before; exit 3"
        if self.kind == KIND_TIMEOUT:
            return "echo start; sleep 30"
        pause = f"{line_ms / 1000:.3f}"
        return (
            f"i=0; while [ $i -lt {self.lines} ]; do echo line $i; i=$((i+1)); sleep {pause}; done"
        )

    def request(self, line_ms: int) -> Dict[str, Any]:
        """
        The submit body.
        """
        body: Dict[str, Any] = {
            "task_id": self.task_id,
            "execution": {"kind": "command", "program": "/bin/sh", "args": ["-c", self.script(line_ms)]},
            "metadata": {"chaos_kind": self.kind},
        }
        if self.wall_time_ms is not None:
            body["limits"] = {"wall_time_ms": self.wall_time_ms}
        return body

    def full_stdout(self) -> str:
        """
        Everything the task prints when it runs to its end.
        """
        if self.kind == KIND_EXIT:
            return "before\n"
        if self.kind == KIND_TIMEOUT:
            return "start\n"
        return "".join(f"line {i}\n" for i in range(self.lines))

    def slot_seconds(self, settings: Settings) -> float:
        """
        A rough guess of how long the task holds a running slot (for
        spreading crashes and kills over the run).
        """
        per_line = (settings.line_ms + 3) / 1000
        if self.kind == KIND_EXIT:
            return 0.01
        if self.kind == KIND_KILL_QUEUED:
            return 0.0
        if self.kind == KIND_TIMEOUT:
            return (settings.timeout_wall_ms + settings.grace_ms) / 1000
        if self.kind == KIND_KILL_RUNNING:
            return self.lines * per_line / 2
        return self.lines * per_line


def make_plan(settings: Settings, run_id: str) -> Tuple[List[TaskSpec], float]:
    """
    The tasks of a run, in submission order, and the estimated span of the
    run in seconds (slot time / running slots), both from the seeded RNG.

    About 10% of the tasks exit 3, 10% time out, 12% are long and killed
    at a random moment, 10% (the last ones submitted) are killed while
    still queued, and the rest print 1..C{max_lines} lines and succeed.
    At least one task of every kind when there are five or more tasks.
    """
    rng = random.Random(settings.seed)
    n = settings.tasks
    minimum = 1 if n >= len(KINDS) else 0
    exits = max(minimum, round(n * 0.10))
    timeouts = max(minimum, round(n * 0.10))
    long_kills = max(minimum, round(n * 0.12))
    queued_kills = max(minimum, round(n * 0.10))
    lines = max(0, n - exits - timeouts - long_kills - queued_kills)
    kinds = [KIND_EXIT] * exits + [KIND_TIMEOUT] * timeouts + [KIND_KILL_RUNNING] * long_kills
    kinds += [KIND_LINES] * lines
    rng.shuffle(kinds)
    kinds += [KIND_KILL_QUEUED] * queued_kills
    kinds = kinds[:n]
    drafts = []
    for index, kind in enumerate(kinds):
        task_id = f"chaos-{run_id}-{index:04d}-{kind}"
        if kind == KIND_LINES:
            drafts.append(TaskSpec(task_id, kind, lines=rng.randint(1, settings.max_lines)))
        elif kind in (KIND_KILL_RUNNING, KIND_KILL_QUEUED):
            drafts.append(TaskSpec(task_id, kind, lines=rng.randint(*settings.long_lines)))
        elif kind == KIND_TIMEOUT:
            drafts.append(TaskSpec(task_id, kind, wall_time_ms=settings.timeout_wall_ms))
        else:
            drafts.append(TaskSpec(task_id, kind))
    slot_time = sum(spec.slot_seconds(settings) for spec in drafts)
    span = max(2.0, slot_time / max(1, settings.max_running))
    plan = []
    for spec in drafts:
        if spec.kind == KIND_KILL_RUNNING:
            spec = dataclasses.replace(spec, kill_at=rng.uniform(0.2, 0.8 * span))
        elif spec.kind == KIND_KILL_QUEUED:
            spec = dataclasses.replace(spec, kill_at=0.0)
        plan.append(spec)
    return plan, span


def crash_offsets(settings: Settings, span: float) -> Tuple[List[float], List[float]]:
    """
    When to crash the server (seconds after the start of the run, sorted)
    and how long each downtime lasts (seconds), from the seeded RNG.
    """
    rng = random.Random(settings.seed * 7919 + 1)
    offsets = sorted(rng.uniform(0.3, max(1.0, 0.7 * span)) for _ in range(settings.crashes))
    downtimes = [rng.uniform(0.0, settings.max_downtime_ms / 1000) for _ in range(settings.crashes)]
    return offsets, downtimes


# -- what happened ---------------------------------------------------------------------


@dataclasses.dataclass
class Observed:
    """
    What the harness saw of one task while driving it.
    """

    submit_status: Optional[int] = None
    submit_attempts: int = 0
    stored: bool = True
    kill_sent_at: Optional[float] = None
    kill_status: Optional[str] = None
    kill_attempts: int = 0


@dataclasses.dataclass
class Crash:
    """
    One C{kill -9} and restart of the server.

    C{killed_ms}/C{ready_ms} are wall-clock epoch milliseconds (comparable
    with event timestamps): just before the signal, and once the restarted
    server answered C{/healthz} (recovery done).
    """

    index: int
    server_pid: int
    killed_ms: float
    ready_ms: float = 0.0
    downtime_s: float = 0.0
    restart_s: float = 0.0
    running_before: Optional[int] = None
    waiting_before: Optional[int] = None
    supervisors_before: List[int] = dataclasses.field(default_factory=list)
    supervisors_after: List[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """
    The checks of one task: its outcome label, whether it had (and needed)
    a C{recovered} event, and every violation found.
    """

    task_id: str
    kind: str
    outcome: str
    recovered: bool
    recovery_required: bool
    violations: Tuple[str, ...]


# -- checks (pure) ---------------------------------------------------------------------


def outcome_label(doc: Dict[str, Any]) -> str:
    """
    C{status} or C{status/error code} of a snapshot.
    """
    label = str(doc.get("status"))
    if isinstance(doc.get("error"), dict):
        label += "/" + str(doc["error"].get("code"))
    return label


def outcome_detail(spec: TaskSpec, doc: Dict[str, Any]) -> str:
    """
    L{outcome_label}, with where a cancelled task was when the kill took
    effect (queued, dispatched, running) and whether a killed task had
    finished before its kill: for the report only.
    """
    label = outcome_label(doc)
    message = str(doc.get("error", {}).get("message", ""))
    if label == "cancelled/cancelled":
        if message == "task cancelled before execution":
            return label + " (queued)"
        if message == "task cancelled before process launch":
            return label + " (dispatched)"
        return label + " (running)"
    if label == "success" and spec.kill_at is not None:
        return label + " (before the kill)"
    return label


def check_events(
    spec: TaskSpec,
    events: Sequence[Dict[str, Any]],
    status: str,
    crashes: Sequence[Crash],
) -> Tuple[List[str], bool, bool]:
    """
    Check one task's event log against its final C{status} and the crash
    windows.

    @return: C{(violations, has recovered, recovered required)}.  A
        C{recovered} event is required when the task was dispatched
        (C{resource_reserved}) before a crash and its terminal event came
        after the restarted server had finished recovery; it is allowed
        only inside a crash window (between the kill and the restarted
        server's readiness).
    """
    problems: List[str] = []
    types = [str(e.get("event_type")) for e in events]
    if not events:
        return ["no events"], False, False
    if any(e.get("task_id") != spec.task_id for e in events):
        problems.append("an event of another task")
    seqs = [e.get("seq") for e in events]
    numbers = [s for s in seqs if isinstance(s, int)]
    if len(numbers) != len(seqs) or any(b <= a for a, b in zip(numbers, numbers[1:])):
        problems.append(f"events not ordered by seq: {seqs}")
    if types[:3] != FIRST_EVENTS:
        problems.append(f"starts {types[:3]}, not {FIRST_EVENTS}")
    terminal_at = [i for i, t in enumerate(types) if t in TERMINAL_EVENTS]
    if len(terminal_at) != 1:
        problems.append(f"{len(terminal_at)} terminal events: {types}")
    elif terminal_at[0] != len(types) - 1:
        problems.append(f"events after the terminal one: {types}")
    elif TERMINAL_EVENTS[types[terminal_at[0]]] != status:
        problems.append(f"terminal event {types[terminal_at[0]]} but status {status}")
    # Reservations: each released once, after it was taken; the last
    # release right before the terminal event.
    held = 0
    for t in types:
        if t == "resource_reserved":
            if held:
                problems.append(f"a second reservation while one is held: {types}")
            held += 1
        elif t == "resource_released":
            if not held:
                problems.append(f"resource_released without a reservation: {types}")
            held = max(0, held - 1)
    if held:
        problems.append(f"a reservation never released: {types}")
    if "resource_reserved" in types and terminal_at and types[terminal_at[-1] - 1] != "resource_released":
        problems.append(f"resource_released is not right before the terminal event: {types}")
    started = [i for i, t in enumerate(types) if t == "started"]
    if len(started) > 1:
        problems.append(f"{len(started)} started events")
    if started and "resource_reserved" not in types[: started[0]]:
        problems.append(f"started without a reservation before it: {types}")
    must_start = spec.kind in (KIND_LINES, KIND_EXIT, KIND_TIMEOUT) or status == "success"
    if must_start and not started:
        problems.append(f"never started: {types}")
    timeouts = types.count("timeout_triggered")
    if spec.kind == KIND_TIMEOUT and timeouts != 1:
        problems.append(f"{timeouts} timeout_triggered events")
    if spec.kind != KIND_TIMEOUT and timeouts:
        problems.append(f"timeout_triggered for a {spec.kind} task")
    if spec.kill_at is None and "kill_requested" in types:
        problems.append("kill_requested for a task nobody killed")
    # recovered
    stamps = [parse_timestamp_ms(str(e.get("timestamp"))) for e in events]
    reserved_ms = [ms for t, ms in zip(types, stamps) if t == "resource_reserved"]
    terminal_ms = stamps[terminal_at[0]] if len(terminal_at) == 1 else None
    required = False
    for crash in crashes:
        dispatched_before = bool(reserved_ms) and reserved_ms[0] <= crash.killed_ms
        ended_after = terminal_ms is not None and terminal_ms > crash.ready_ms
        if dispatched_before and ended_after:
            required = True
    recovered = [ms for t, ms in zip(types, stamps) if t == "recovered"]
    if required and not recovered:
        problems.append(f"running across a crash but no recovered event: {types}")
    for ms in recovered:
        if not any(crash.killed_ms - 1 <= ms <= crash.ready_ms + 1 for crash in crashes):
            problems.append(f"a recovered event at {ms} outside every crash window")
    for crash in crashes:
        inside = [ms for ms in recovered if crash.killed_ms - 1 <= ms <= crash.ready_ms + 1]
        if len(inside) > 1:
            problems.append(f"{len(inside)} recovered events for crash {crash.index}")
    return problems, bool(recovered), required


def check_outcome(
    spec: TaskSpec,
    doc: Dict[str, Any],
    events: Sequence[Dict[str, Any]],
    stdout_log: Optional[str],
    observed: Observed,
) -> List[str]:
    """
    Check a task's final snapshot and C{stdout.log} against the outcome
    its definition (and, for a killed task, the kill) implies.
    """
    problems: List[str] = []
    label = outcome_label(doc)
    full = spec.full_stdout()
    if stdout_log is None:
        problems.append("stdout.log missing")
        stdout_log = ""
    if spec.kind == KIND_LINES:
        if label != "success":
            problems.append(f"ended {label}, expected success")
        elif doc.get("exit_code") != 0:
            problems.append(f"success with exit_code {doc.get('exit_code')}")
        if stdout_log != full:
            problems.append(f"stdout.log has {stdout_log.count(chr(10))} lines, expected {spec.lines}")
    elif spec.kind == KIND_EXIT:
        if label != "failed/exit_nonzero" or doc.get("exit_code") != 3:
            problems.append(f"ended {label} exit_code {doc.get('exit_code')}, expected failed/exit_nonzero 3")
        if stdout_log != full:
            problems.append(f"stdout.log {stdout_log!r}, expected {full!r}")
    elif spec.kind == KIND_TIMEOUT:
        if label != "failed/timeout":
            problems.append(f"ended {label}, expected failed/timeout")
        if stdout_log != full:
            problems.append(f"stdout.log {stdout_log!r}, expected {full!r}")
    else:
        problems.extend(_check_killed(spec, doc, events, stdout_log, observed))
    if doc.get("status") == "success" and "error" in doc:
        problems.append("success with an error")
    if doc.get("status") in ("failed", "cancelled") and "error" not in doc:
        problems.append(f"{doc.get('status')} without an error")
    return problems


def _check_killed(
    spec: TaskSpec,
    doc: Dict[str, Any],
    events: Sequence[Dict[str, Any]],
    stdout_log: str,
    observed: Observed,
) -> List[str]:
    problems: List[str] = []
    label = outcome_label(doc)
    full = spec.full_stdout()
    types = [e.get("event_type") for e in events]
    stamps = [parse_timestamp_ms(str(e.get("timestamp"))) for e in events]
    if observed.kill_status is None:
        return [f"the harness never got an answer to its kill (status now {label})"]
    kills = [ms for t, ms in zip(types, stamps) if t == "kill_requested"]
    terminal = [ms for t, ms in zip(types, stamps) if t in TERMINAL_EVENTS]
    if observed.kill_status in TERMINAL and not kills:
        # The task had ended before the kill, which changed nothing.
        if doc.get("status") != observed.kill_status:
            problems.append(f"the kill found it {observed.kill_status} but it is now {label}")
        if label != "success":
            problems.append(f"ended {label} on its own, expected success")
        elif stdout_log != full:
            problems.append(f"finished before the kill with {stdout_log.count(chr(10))}/{spec.lines} lines")
        return problems
    if not kills:
        problems.append(f"the kill answered {observed.kill_status} but no kill_requested event")
        return problems
    if label == "cancelled/cancelled":
        if not (full.startswith(stdout_log) and (stdout_log == "" or stdout_log.endswith("\n"))):
            problems.append(f"cancelled with stdout that is not a prefix of its lines: {stdout_log[-80:]!r}")
        started_first = "started" in types and types.index("started") < types.index("kill_requested")
        if observed.kill_status == "cancelled" and started_first:
            problems.append("the kill answered cancelled (queued) but the task had started")
        return problems
    if label == "success" and terminal and terminal[0] - kills[0] <= KILL_RACE_MS and stdout_log == full:
        # Finished on its own just as the kill was recorded.
        return problems
    problems.append(f"ended {label} after kill_requested, expected cancelled")
    return problems


def compare_result_file(doc: Dict[str, Any], result: Optional[Dict[str, Any]]) -> List[str]:
    """
    C{result.json} must equal the status endpoint's snapshot of a terminal
    task.
    """
    if result is None:
        return ["result.json missing or not JSON"]
    if result == doc:
        return []
    keys = sorted(k for k in set(doc) | set(result) if doc.get(k) != result.get(k))
    return [f"result.json differs from the status endpoint in {keys}"]


def check_ledger(resources: Dict[str, Any]) -> List[str]:
    """
    The ledger view once every task is terminal: no reservation, nothing
    reserved, nothing waiting.
    """
    problems = []
    if resources.get("active_reservations"):
        ids = [r.get("task_id") for r in resources["active_reservations"]]
        problems.append(f"ledger: active reservations left: {ids}")
    reserved = resources.get("reserved", {})
    for key, value in sorted(reserved.items()):
        if value:
            problems.append(f"ledger: reserved.{key} = {value}")
    if resources.get("accepted_waiting_tasks") != 0:
        problems.append(f"ledger: accepted_waiting_tasks = {resources.get('accepted_waiting_tasks')}")
    for tenant in resources.get("tenants", []):
        if tenant.get("reserved", {}).get("task_slots"):
            problems.append(f"ledger: tenant {tenant.get('tenant')} still reserves {tenant['reserved']}")
    return problems


# -- the run ---------------------------------------------------------------------------


class Run:
    """
    One chaos run: the server, the plan, what was observed, the crashes.
    """

    def __init__(self, settings: Settings, root: str) -> None:
        self.settings = settings
        self.root = root
        self.data_dir = os.path.join(root, "data")
        self.run_id = f"{settings.seed}-{os.getpid()}-{int(time.time()) % 100000}"
        self.plan, self.span = make_plan(settings, self.run_id)
        self.observed: Dict[str, Observed] = {spec.task_id: Observed() for spec in self.plan}
        self.crashes: List[Crash] = []
        self.abort = threading.Event()
        args = [
            "--max-running-tasks", str(settings.max_running),
            "--max-queued-tasks", str(max(128, settings.tasks * 2)),
            "--termination-grace-ms", str(settings.grace_ms),
        ]
        self.cluster: Optional[pgcluster.Cluster] = None
        if settings.postgres:
            binaries = pgcluster.find_binaries()
            assert binaries is not None, "parse_args checks that PostgreSQL is there"
            self.cluster = pgcluster.Cluster(binaries, durable=True)
            args += ["--database-url", self.cluster.url("execgo_chaos")]
        self.db_restarts: List[Dict[str, float]] = []
        self.server = Server(self.data_dir, free_port(), args, os.path.join(root, "server.log"))
        self.started = 0.0
        self.deadline = 0.0

    def start_database(self) -> None:
        """
        Start the run's PostgreSQL cluster and create its database (with
        C{--postgres}).
        """
        if self.cluster is not None:
            self.cluster.start()
            self.cluster.create_database("execgo_chaos")

    def database_chaos(self) -> None:
        """
        Restart the database (C{pg_ctl restart -m fast}) at the planned
        moments (with C{--postgres} and C{--db-restarts}).
        """
        if self.cluster is None:
            return
        rng = random.Random(self.settings.seed * 104729 + 3)
        offsets = sorted(rng.uniform(0.2, max(0.8, 0.7 * self.span)) for _ in range(self.settings.db_restarts))
        for index, offset in enumerate(offsets, start=1):
            delay = self.started + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if self.abort.is_set():
                return
            began = time.monotonic()
            self.cluster.restart()
            took = time.monotonic() - began
            self.db_restarts.append({"index": index, "at_s": round(began - self.started, 2), "took_s": round(took, 2)})
            log(f"database restart {index} at +{began - self.started:.2f}s took {took:.2f}s")

    # driving

    def _submit_all(self, client: Client) -> None:
        for spec in self.plan:
            body = json.dumps(spec.request(self.settings.line_ms)).encode()
            seen = self.observed[spec.task_id]
            while True:
                before = client.transport_errors
                status, data = client.until_answered("POST", "/api/v1/tasks", body, self.deadline)
                seen.submit_attempts += 1 + client.transport_errors - before
                if status == 200:
                    seen.submit_status = status
                    break
                if status == 409 and seen.submit_attempts > 1:
                    # The failed attempt got far enough before the crash
                    # cut its answer off: the task must exist now.
                    seen.submit_status = status
                    found, _ = client.until_answered(
                        "GET", f"/api/v1/tasks/{spec.task_id}", deadline=self.deadline
                    )
                    if found == 404:
                        seen.stored = False
                        log(f"{spec.task_id}: resubmit after a crash got 409, yet the task is unknown")
                    break
                if status in (429, 503) and time.monotonic() < self.deadline:
                    # Queue full, or the store away for a moment (a
                    # database restart): sent again.
                    time.sleep(0.05)
                    continue
                raise HarnessError(f"submit {spec.task_id}: HTTP {status}: {data[:200]!r}")

    def _kill(self, client: Client, spec: TaskSpec) -> None:
        seen = self.observed[spec.task_id]
        seen.kill_sent_at = time.monotonic() - self.started
        while True:
            seen.kill_attempts += 1
            status, data = client.until_answered(
                "POST", f"/api/v1/tasks/{spec.task_id}/kill", b"", self.deadline
            )
            if status != 503 or time.monotonic() >= self.deadline:
                break
            time.sleep(0.05)
        if status != 200:
            raise HarnessError(f"kill {spec.task_id}: HTTP {status}: {data[:200]!r}")
        seen.kill_status = str(json.loads(data)["status"])

    def drive(self) -> None:
        """
        Submit every task, kill the queued-kill ones at once and the long
        ones at their planned moments (retrying through crashes).
        """
        client = Client(self.server.port, abort=self.abort)
        try:
            self._submit_all(client)
            log(f"submitted {len(self.plan)} tasks in {time.monotonic() - self.started:.2f}s")
            kills = sorted((s for s in self.plan if s.kill_at is not None), key=lambda s: s.kill_at or 0.0)
            for spec in kills:
                if not self.observed[spec.task_id].stored:
                    continue
                delay = self.started + (spec.kill_at or 0.0) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self._kill(client, spec)
        finally:
            client.close()

    def chaos(self) -> None:
        """
        Crash the server at the planned moments and restart it on the same
        data directory and port after the planned downtime.
        """
        offsets, downtimes = crash_offsets(self.settings, self.span)
        rng = random.Random(self.settings.seed * 31 + 7)
        probe = Client(self.server.port, timeout=5.0)
        try:
            for index, (offset, downtime) in enumerate(zip(offsets, downtimes), start=1):
                delay = self.started + offset - time.monotonic()
                if delay <= 0:
                    # Still restarting from the previous crash when this
                    # one was due: a short random pause instead.
                    delay = rng.uniform(0.1, 0.5)
                time.sleep(delay)
                running = waiting = None
                try:
                    status, data = probe.request("GET", "/api/v1/runtime/resources")
                    if status == 200:
                        view = json.loads(data)
                        running = len(view.get("active_reservations", []))
                        waiting = int(view.get("accepted_waiting_tasks", 0))
                except TRANSPORT_ERRORS:
                    pass
                probe.close()
                crash = Crash(
                    index=index,
                    server_pid=self.server.pid,
                    killed_ms=0.0,
                    running_before=running,
                    waiting_before=waiting,
                    supervisors_before=supervisor_pids(self.data_dir),
                )
                crash.killed_ms = time.time() * 1000
                self.server.crash()
                log(
                    f"crash {index}: kill -9 {crash.server_pid} at +{time.monotonic() - self.started:.2f}s"
                    f" ({running} running, {waiting} queued)"
                )
                time.sleep(downtime)
                crash.downtime_s = downtime
                crash.restart_s = self.server.start()
                crash.ready_ms = time.time() * 1000
                crash.supervisors_after = supervisor_pids(self.data_dir)
                self.crashes.append(crash)
                log(f"crash {index}: restarted as {self.server.pid} in {crash.restart_s:.2f}s")
        finally:
            probe.close()

    def wait_all_terminal(self) -> Dict[str, Dict[str, Any]]:
        """
        Long-poll every task until it is terminal; the final snapshots.
        """
        client = Client(self.server.port, timeout=60.0)
        docs: Dict[str, Dict[str, Any]] = {}
        deadline = time.monotonic() + self.settings.wait_timeout_s
        try:
            for spec in self.plan:
                while self.observed[spec.task_id].stored:
                    status, data = client.until_answered(
                        "GET", f"/api/v1/tasks/{spec.task_id}?wait_ms=2000", deadline=deadline
                    )
                    if status != 200:
                        raise HarnessError(f"status of {spec.task_id}: HTTP {status}: {data[:200]!r}")
                    doc = json.loads(data)
                    if doc["status"] in TERMINAL:
                        docs[spec.task_id] = doc
                        break
                    if time.monotonic() > deadline:
                        raise HarnessError(f"{spec.task_id} still {doc['status']} after the wait timeout")
        finally:
            client.close()
        return docs

    # checking

    def verify(self) -> Tuple[List[Verdict], List[str]]:
        """
        Every per-task check, and the run-wide ones (ledger, leftovers,
        supervisor survival).
        """
        client = Client(self.server.port)
        deadline = time.monotonic() + 60
        verdicts = []
        global_problems = []
        try:
            for spec in self.plan:
                if not self.observed[spec.task_id].stored:
                    # Submitted while the server was killed; the retry got
                    # 409 conflict, yet the task does not exist: the id is
                    # blocked by what the crash left on disk.
                    global_problems.append(
                        f"{spec.task_id}: resubmitted after a crash cut off its first submit: 409"
                        " conflict, but GET says 404 (the crashed submit left its task directory,"
                        " no row)"
                    )
                    continue
                doc = client.get_json(f"/api/v1/tasks/{spec.task_id}", deadline)
                events = client.get_json(f"/api/v1/tasks/{spec.task_id}/events", deadline)
                task_dir = doc.get("artifacts", {}).get("task_dir", "")
                result = None
                raw = _read(os.path.join(task_dir, "result.json"))
                if raw is not None:
                    try:
                        result = json.loads(raw)
                    except ValueError:
                        result = None
                stdout_raw = _read(os.path.join(task_dir, "stdout.log"))
                stdout_log = None if stdout_raw is None else stdout_raw.decode("utf-8", "replace")
                problems = check_outcome(spec, doc, events, stdout_log, self.observed[spec.task_id])
                event_problems, recovered, required = check_events(spec, events, doc["status"], self.crashes)
                problems += event_problems
                problems += compare_result_file(doc, result)
                if doc.get("status") == "success" and doc.get("stdout") != spec.full_stdout():
                    problems.append("the status endpoint's stdout is not the full output")
                verdicts.append(
                    Verdict(
                        spec.task_id, spec.kind, outcome_detail(spec, doc), recovered, required, tuple(problems)
                    )
                )
            resources = client.get_json("/api/v1/runtime/resources", deadline)
        finally:
            client.close()
        global_problems += check_ledger(resources)
        leftovers = workload_pids(self.data_dir)
        if leftovers:
            global_problems.append(f"workload processes left: {leftovers}")
        cgroups = [path for spec in self.plan for path in task_cgroup_dirs(spec.task_id)]
        if cgroups:
            global_problems.append(f"per-task cgroups left: {cgroups[:5]} ({len(cgroups)} in all)")
        for crash in self.crashes:
            lost = [pid for pid in crash.supervisors_before if pid not in crash.supervisors_after]
            if lost:
                global_problems.append(f"crash {crash.index}: supervisor {lost} did not survive")
        return verdicts, global_problems

    def close(self) -> None:
        """
        Stop the server, kill the supervisor and anything of the data
        directory, reap.
        """
        try:
            self.server.stop()
        finally:
            kill_and_reap(supervisor_pids(self.data_dir) + workload_pids(self.data_dir))
            reap_zombies()
            if self.cluster is not None:
                self.cluster.destroy()


def execute(settings: Settings, workdir: str, keep: bool) -> Dict[str, Any]:
    """
    One whole chaos run; its report as a JSON-able document.
    """
    become_subreaper()
    root = tempfile.mkdtemp(prefix="execgo-chaos-", dir=workdir)
    run = Run(settings, root)
    log(
        f"{settings.tasks} tasks, {settings.crashes} crashes, --max-running-tasks {settings.max_running},"
        f" seed {settings.seed}; data dir {run.data_dir} ({filesystem_of(root)}); estimated span"
        f" {run.span:.1f}s"
    )
    verdicts: List[Verdict] = []
    global_problems: List[str] = []
    began = time.monotonic()
    try:
        run.start_database()
        run.server.start()
        run.started = time.monotonic()
        run.deadline = run.started + settings.wait_timeout_s
        failure: List[BaseException] = []

        def in_thread(step: Any) -> threading.Thread:
            def body() -> None:
                try:
                    step()
                except BaseException as e:  # noqa: BLE001 -- reported by the main thread
                    failure.append(e)
                    run.abort.set()

            thread = threading.Thread(target=body, name=step.__name__)
            thread.start()
            return thread

        faults = [in_thread(run.chaos), in_thread(run.database_chaos)]
        try:
            run.drive()
        except HarnessError:
            if not failure:
                raise
        finally:
            for thread in faults:
                thread.join()
        if failure:
            raise failure[0]
        log("all submits and kills done, all crashes done; waiting for every task to be terminal")
        run.wait_all_terminal()
        log("every task is terminal; checking")
        verdicts, global_problems = run.verify()
    except HarnessError as e:
        global_problems.append(f"harness: {e}")
    finally:
        run.close()
    elapsed = time.monotonic() - began
    violations = [f"{v.task_id}: {p}" for v in verdicts for p in v.violations] + global_problems
    by_kind: Dict[str, Dict[str, int]] = {}
    for verdict in verdicts:
        outcomes = by_kind.setdefault(verdict.kind, {})
        outcomes[verdict.outcome] = outcomes.get(verdict.outcome, 0) + 1
    document = {
        "settings": dataclasses.asdict(settings),
        "data_dir": run.data_dir,
        "filesystem": filesystem_of(root),
        "estimated_span_s": round(run.span, 2),
        "elapsed_s": round(elapsed, 2),
        "tasks": len(run.plan),
        "checked": len(verdicts),
        "expected": {kind: sum(1 for s in run.plan if s.kind == kind) for kind in KINDS},
        "outcomes": by_kind,
        "recovered": sum(1 for v in verdicts if v.recovered),
        "recovered_required": sum(1 for v in verdicts if v.recovery_required),
        "task_kills": sum(1 for o in run.observed.values() if o.kill_status is not None),
        "submit_retries": sum(o.submit_attempts - 1 for o in run.observed.values() if o.submit_attempts),
        "crashes": [dataclasses.asdict(crash) for crash in run.crashes],
        "database_restarts": run.db_restarts,
        "server_starts": run.server.starts,
        "violations": violations,
    }
    if violations or keep:
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
        f"execgo chaos: {document['tasks']} tasks, {s['crashes']} crashes,"
        f" store {'postgresql' if s.get('postgres') else 'sqlite'}, --max-running-tasks"
        f" {s['max_running']}, seed {s['seed']}, {document['elapsed_s']:.1f}s;"
        f" data on {document['filesystem']}",
        "",
        f"{'kind':<13} {'n':>4}  expected                                              outcomes",
    ]
    plan_examples = {
        KIND_LINES: "success, stdout exactly N lines",
        KIND_EXIT: "failed/exit_nonzero, exit_code 3",
        KIND_TIMEOUT: "failed/timeout",
        KIND_KILL_RUNNING: "cancelled (success if it ended before the kill)",
        KIND_KILL_QUEUED: "cancelled",
    }
    for kind in KINDS:
        outcomes = document["outcomes"].get(kind, {})
        shown = ", ".join(f"{n} {label}" for label, n in sorted(outcomes.items())) or "-"
        lines.append(f"{kind:<13} {document['expected'][kind]:>4}  {plan_examples[kind]:<52}  {shown}")
    lines.append("")
    for crash in document["crashes"]:
        survived = all(pid in crash["supervisors_after"] for pid in crash["supervisors_before"])
        lines.append(
            f"crash {crash['index']}: kill -9 server {crash['server_pid']} with"
            f" {crash['running_before']} running / {crash['waiting_before']} queued;"
            f" down {crash['downtime_s']:.2f}s, restart {crash['restart_s']:.2f}s;"
            f" supervisor {crash['supervisors_before'] or '-'} {'survived' if survived else 'LOST'}"
        )
    for restart in document.get("database_restarts", []):
        lines.append(
            f"database restart {restart['index']}: pg_ctl restart -m fast at +{restart['at_s']:.2f}s,"
            f" took {restart['took_s']:.2f}s"
        )
    lines += [
        "",
        f"server kills:          {len(document['crashes'])}",
        f"tasks checked:         {document['checked']}/{document['tasks']}",
        f"recovered:             {document['recovered']} tasks"
        f" ({document['recovered_required']} were running across a restart)",
        f"kills through the API: {document['task_kills']}",
        f"submit retries:        {document['submit_retries']}",
        f"violations:            {len(document['violations'])}",
    ]
    for violation in document["violations"][:50]:
        lines.append(f"  - {violation}")
    if len(document["violations"]) > 50:
        lines.append(f"  ... and {len(document['violations']) - 50} more")
    if "kept" in document:
        lines.append(f"data kept in {document['kept']}")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(
        description="Crash the execgo server with kill -9 under load, restart it, and check every task."
    )
    defaults = Settings()
    parser.add_argument("--tasks", type=int, default=defaults.tasks, help="tasks to submit [%(default)s]")
    parser.add_argument("--crashes", type=int, default=defaults.crashes, help="kill -9 + restart cycles [%(default)s]")
    parser.add_argument(
        "--max-running-tasks", type=int, default=defaults.max_running, dest="max_running",
        help="the server's --max-running-tasks [%(default)s]",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="RNG seed of the plan and the crash moments [%(default)s]"
    )
    parser.add_argument(
        "--line-ms", type=int, default=defaults.line_ms, help="pause between output lines [%(default)s]"
    )
    parser.add_argument(
        "--max-lines", type=int, default=defaults.max_lines, help="most lines of a succeeding task [%(default)s]"
    )
    parser.add_argument(
        "--grace-ms", type=int, default=defaults.grace_ms, help="the server's --termination-grace-ms [%(default)s]"
    )
    parser.add_argument(
        "--max-downtime-ms", type=int, default=defaults.max_downtime_ms,
        help="longest pause between a kill and the restart [%(default)s]",
    )
    parser.add_argument(
        "--wait-timeout", type=float, default=defaults.wait_timeout_s, dest="wait_timeout_s",
        help="seconds allowed for the whole run to finish [%(default)s]",
    )
    parser.add_argument(
        "--workdir", default="/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir(),
        help="where the temporary data directory is made [%(default)s]",
    )
    parser.add_argument(
        "--postgres", action="store_true",
        help="put the store on a PostgreSQL cluster started for the run (the host's binaries)",
    )
    parser.add_argument(
        "--db-restarts", type=int, default=defaults.db_restarts, dest="db_restarts",
        help="pg_ctl restart -m fast of that cluster during the run (with --postgres) [%(default)s]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory (always kept on a violation)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (text report on stderr)")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    if args.crashes < 0 or args.db_restarts < 0:
        parser.error("--crashes and --db-restarts must not be negative")
    if args.db_restarts and not args.postgres:
        parser.error("--db-restarts needs --postgres")
    if args.postgres and pgcluster.unavailable():
        parser.error(f"--postgres: {pgcluster.unavailable()}")
    if args.max_running < 1:
        parser.error("--max-running-tasks must be at least 1")
    if args.max_lines < 1 or args.line_ms < 0 or args.grace_ms < 0 or args.max_downtime_ms < 0:
        parser.error("--max-lines must be positive; --line-ms, --grace-ms, --max-downtime-ms not negative")
    return args


def main(argv: Sequence[str]) -> int:
    """
    Run the chaos test; 0 when nothing was violated, 1 otherwise.
    """
    args = parse_args(argv)
    settings = Settings(
        tasks=args.tasks,
        crashes=args.crashes,
        max_running=args.max_running,
        seed=args.seed,
        line_ms=args.line_ms,
        max_lines=args.max_lines,
        grace_ms=args.grace_ms,
        max_downtime_ms=args.max_downtime_ms,
        wait_timeout_s=args.wait_timeout_s,
        postgres=args.postgres,
        db_restarts=args.db_restarts,
    )

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    document = execute(settings, args.workdir, args.keep)
    report = render(document)
    if args.json:
        sys.stderr.write(report)
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(report)
    return 1 if document["violations"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
