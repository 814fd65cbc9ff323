# -*- test-case-name: tests.test_supervisor -*-
"""
The supervisor: the process that owns, limits, signals and reaps workloads
and writes their outcomes to the store.

One supervisor runs beside the server for a data directory (started with
the hidden C{internal-supervisor} subcommand) and supervises many tasks; the
hidden C{internal-shim} subcommand runs the same engine for a single task.
It is a separate process in its own session, so a crash or restart of the
server does not touch it: it keeps enforcing timeouts and records every
outcome in the store, and a restarted server reconnects to it.

It is a child subreaper, so every descendant of a workload that is orphaned
is reparented to it and reaped here (this host's PID 1 never reaps).

Its event loop is a C{selectors} loop over a wake-up pipe (C{SIGCHLD}), the
control socket and its connections, with a heap of timers.  Standard library
only (plus C{attrs}): no reactor to import, so it starts in tens of
milliseconds.
"""

from __future__ import annotations

import ctypes
import errno
import heapq
import itertools
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import attrs

from execgo import launcher, outcome, taskdb, wire
from execgo.procinfo import kill_group
from execgo.models import STATUS_ACCEPTED, STATUS_RUNNING, Reservation, Usage

PR_SET_CHILD_SUBREAPER = 36
MAX_LINE = 64 * 1024
KILL_FLAG_POLL_S = 0.025
GROUP_DRAIN_STEP_S = 0.002
GROUP_DRAIN_LIMIT_S = 2.0


def control_address(data_dir: str) -> str:
    """
    The abstract Unix socket name of the supervisor of a data directory
    (abstract names have no path-length limit and leave no stale file).
    """
    import hashlib

    digest = hashlib.sha256(os.path.realpath(data_dir).encode("utf-8")).hexdigest()[:32]
    return f"\0execgo-runtime/{digest}"


def become_subreaper() -> bool:
    """
    Make this process a child subreaper; C{False} where the OS refuses.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def process_alive(pid: int) -> bool:
    """
    Whether a process (or process group, for a negative C{pid}) exists.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@attrs.define
class Running:
    """
    The supervisor's state for one launched workload: one entity, one place.
    """

    task_id: str
    pid: int
    started_mono: float
    record: taskdb.TaskRecord
    timed_out: bool = False
    cancel_requested: bool = False
    term_sent: bool = False
    kill_timer: Optional["Timer"] = None
    wall_timer: Optional["Timer"] = None
    poll_timer: Optional["Timer"] = None
    exit_status: Optional[int] = None
    usage: Optional[Usage] = None
    drain_deadline: float = 0.0


@attrs.define(eq=False)
class Timer:
    """
    A scheduled call; C{cancel()} makes it a no-op.
    """

    deadline: float
    call: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """
        Do not run this call.
        """
        self.cancelled = True


class Supervisor:
    """
    Launches tasks read from the store, enforces wall time and kills,
    reaps, classifies and records outcomes.

    @param db_path: the store file.
    @param grace_s: seconds between SIGTERM and SIGKILL.
    @param notify: called with each message for connected servers.
    """

    def __init__(
        self,
        db_path: str,
        grace_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        base_env: Optional[Dict[str, str]] = None,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.conn = taskdb.connect(db_path)
        taskdb.init_schema(self.conn)
        self.grace_s = grace_s
        self.monotonic = monotonic
        self.wall_ms = wall_ms
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.log = log
        self.by_pid: Dict[int, Running] = {}
        self.by_task: Dict[str, Running] = {}
        self._timers: List[Tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.listeners: List[Callable[[Dict[str, Any]], None]] = []
        self.finished_count = 0

    # Timers

    def call_later(self, delay: float, call: Callable[[], None]) -> Timer:
        """
        Schedule C{call} after C{delay} seconds.
        """
        timer = Timer(self.monotonic() + delay, call)
        heapq.heappush(self._timers, (timer.deadline, next(self._order), timer))
        return timer

    def next_delay(self) -> Optional[float]:
        """
        Seconds until the next live timer, or C{None} when there is none.
        """
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - self.monotonic())

    def run_due_timers(self) -> None:
        """
        Run every timer whose deadline has passed.
        """
        now = self.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                self._guard(timer.call)

    def _guard(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:
            self.log("supervisor error: " + traceback.format_exc())

    # Notifications

    def emit(self, message: Dict[str, Any]) -> None:
        """
        Tell every connected server about a change.
        """
        for listener in list(self.listeners):
            listener(message)

    # Launching

    def launch(self, task_id: str, take_accepted: bool = False) -> None:
        """
        Start the task C{task_id}, which the server has moved to C{running}
        under this supervisor; with C{take_accepted}, take an C{accepted}
        task over (the single-task shim run by hand).
        """
        if task_id in self.by_task:
            return
        record = taskdb.load_task(self.conn, task_id)
        if record is None or record.terminal:
            return
        if record.status == STATUS_ACCEPTED:
            if not take_accepted:
                return
            reservation = Reservation.for_limits(record.limits)
            if not taskdb.reserve_and_dispatch(
                self.conn, task_id, reservation, os.getpid(), self.wall_ms()
            ):
                record = taskdb.load_task(self.conn, task_id)
                if record is not None and record.status == STATUS_ACCEPTED:
                    self._finish(task_id, outcome.cancelled("task cancelled before execution"))
                return
            record = taskdb.load_task(self.conn, task_id)
            assert record is not None
        if record.status != STATUS_RUNNING:
            return
        if record.kill_requested and record.pid is None:
            self._finish(task_id, outcome.cancelled("task cancelled before process launch"))
            return
        try:
            self._start(record)
        except Exception as e:
            self.log("supervisor error: " + traceback.format_exc())
            self._finish(task_id, outcome.failed("internal", f"supervisor error: {e}"))

    def _start(self, record: taskdb.TaskRecord) -> None:
        plan = wire.plan_of(record)
        spec = launcher.build_launch(record, plan, self.base_env)
        try:
            pid = launcher.spawn(spec)
        except launcher.LaunchError as e:
            self._finish(record.task_id, outcome.failed("launch_failed", f"spawn process: {e}"))
            return
        started_mono = self.monotonic()
        run = Running(task_id=record.task_id, pid=pid, started_mono=started_mono, record=record)
        self.by_pid[pid] = run
        self.by_task[record.task_id] = run
        taskdb.record_start(self.conn, record.task_id, pid, self.wall_ms(), spec.script_path)
        run.wall_timer = self.call_later(
            record.limits.wall_time_ms / 1000.0, lambda: self._on_timeout(run)
        )
        self.emit({"ev": "started", "task_id": record.task_id, "pid": pid})

    # Timeout and kill

    def _on_timeout(self, run: Running) -> None:
        if run.exit_status is not None or run.timed_out:
            return
        run.timed_out = True
        taskdb.record_timeout(self.conn, run.task_id, self.wall_ms())
        self._terminate(run)

    def kill(self, task_id: str) -> None:
        """
        A kill was requested: SIGTERM the task's process group now, SIGKILL
        after the grace period.  Repeated kills re-send SIGTERM.
        """
        run = self.by_task.get(task_id)
        if run is None:
            # Not launched here (yet): the launch path sees the kill flag.
            return
        run.cancel_requested = True
        self._terminate(run)

    def _terminate(self, run: Running) -> None:
        if run.exit_status is not None:
            return
        kill_group(run.pid, signal.SIGTERM)
        run.term_sent = True
        if run.kill_timer is None:
            run.kill_timer = self.call_later(self.grace_s, lambda: self._kill_now(run))

    def _kill_now(self, run: Running) -> None:
        kill_group(run.pid, signal.SIGKILL)

    def watch_kill_flag(self, task_id: str) -> None:
        """
        Poll the store's kill flag of a task (for the single-task shim,
        which has no server connection to be told through).
        """
        run = self.by_task.get(task_id)
        if run is None or run.exit_status is not None:
            return
        if not run.cancel_requested:
            record = taskdb.load_task(self.conn, task_id)
            if record is not None and record.kill_requested:
                self.kill(task_id)
        run.poll_timer = self.call_later(KILL_FLAG_POLL_S, lambda: self.watch_kill_flag(task_id))

    # Reaping

    def reap(self) -> None:
        """
        Reap every exited child.  A workload leader's process group is
        killed before the leader is reaped (while its zombie still holds
        the group id), so nothing of a finished task lingers.
        """
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            run = self.by_pid.get(pid)
            if run is not None:
                kill_group(pid, signal.SIGKILL)
            try:
                _, status, rusage = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            if run is not None:
                self._on_exit(run, status, rusage)

    def _on_exit(self, run: Running, status: int, rusage: Any) -> None:
        del self.by_pid[run.pid]
        run.exit_status = status
        run.usage = Usage(
            duration_ms=max(0, int((self.monotonic() - run.started_mono) * 1000)),
            user_cpu_ms=int(rusage.ru_utime * 1000),
            system_cpu_ms=int(rusage.ru_stime * 1000),
            max_rss_bytes=rusage.ru_maxrss * 1024,
        )
        for timer in (run.wall_timer, run.kill_timer, run.poll_timer):
            if timer is not None:
                timer.cancel()
        run.drain_deadline = self.monotonic() + GROUP_DRAIN_LIMIT_S
        self._drain(run)

    def _drain(self, run: Running) -> None:
        """
        Finish the task once its process group is empty (bounded wait).
        """
        if process_alive(-run.pid) and self.monotonic() < run.drain_deadline:
            kill_group(run.pid, signal.SIGKILL)
            self.call_later(GROUP_DRAIN_STEP_S, lambda: self._drain(run))
            return
        self._complete(run)

    def _complete(self, run: Running) -> None:
        self.by_task.pop(run.task_id, None)
        assert run.exit_status is not None and run.usage is not None
        record = taskdb.load_task(self.conn, run.task_id)
        kill_flag = record is not None and record.kill_requested
        enforcement = wire.plan_of(run.record).resource_enforcement
        verdict = outcome.classify(
            outcome.Exit(
                status=run.exit_status,
                usage=run.usage,
                timed_out=run.timed_out,
                cancelled=run.cancel_requested or kill_flag,
                cpu_time_sec=enforcement.cpu_time_sec if enforcement.cpu_time_enforced else None,
            )
        )
        self._finish(run.task_id, verdict)

    def _finish(self, task_id: str, verdict: taskdb.Outcome) -> None:
        """
        Write the terminal record and C{result.json}, then tell the servers.
        """
        now = self.wall_ms()
        if taskdb.finish(self.conn, task_id, verdict, now):
            record = taskdb.load_task(self.conn, task_id)
            if record is not None:
                try:
                    wire.write_result(record, now)
                except OSError:
                    self.log("cannot write result.json: " + traceback.format_exc())
        self.finished_count += 1
        self.emit({"ev": "finished", "task_id": task_id})

    @property
    def busy(self) -> bool:
        """
        Whether any workload is still supervised here.
        """
        return bool(self.by_task)

    def close(self) -> None:
        """
        Close the store connection.
        """
        self.conn.close()


class _Connection:
    """
    One server connected to the control socket: JSON lines both ways.
    """

    def __init__(self, sock: socket.socket, loop: "Loop") -> None:
        self.sock = sock
        self.loop = loop
        self.buffer = b""
        self.out = b""

    def send(self, message: Dict[str, Any]) -> None:
        self.out += json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                self.loop.want_write(self)
                return
            except OSError:
                self.loop.drop(self)
                return
            self.out = self.out[sent:]
        self.loop.want_read(self)

    def readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.drop(self)
            return
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.loop.handle(self, line)
        if len(self.buffer) > MAX_LINE:
            self.loop.drop(self)


class Loop:
    """
    The supervisor daemon's event loop: control socket, C{SIGCHLD} wake-ups
    and timers around one L{Supervisor}.

    @param idle_exit_s: exit after this long with no workload and no server.
    """

    def __init__(self, supervisor: Supervisor, address: str, idle_exit_s: float) -> None:
        self.supervisor = supervisor
        self.address = address
        self.idle_exit_s = idle_exit_s
        self.selector = selectors.DefaultSelector()
        self.connections: Dict[int, _Connection] = {}
        self.listener: Optional[socket.socket] = None
        self.stopping = False
        self._idle_since: Optional[float] = None
        supervisor.listeners.append(self.broadcast)

    def bind(self) -> None:
        """
        Bind the control socket; C{OSError} (C{EADDRINUSE}) when another
        supervisor already serves this data directory.
        """
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.address)
        listener.listen(64)
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        connection = _Connection(sock, self)
        self.connections[sock.fileno()] = connection
        self.selector.register(sock, selectors.EVENT_READ, connection.readable)
        connection.send({"ev": "hello", "pid": os.getpid(), "running": sorted(self.supervisor.by_task)})

    def want_read(self, connection: _Connection) -> None:
        if connection.sock.fileno() in self.connections:
            self.selector.modify(connection.sock, selectors.EVENT_READ, connection.readable)

    def want_write(self, connection: _Connection) -> None:
        if connection.sock.fileno() in self.connections:
            self.selector.modify(
                connection.sock,
                selectors.EVENT_READ | selectors.EVENT_WRITE,
                lambda: (connection.flush(), connection.readable()),
            )

    def drop(self, connection: _Connection) -> None:
        fileno = connection.sock.fileno()
        if self.connections.pop(fileno, None) is not None:
            self.selector.unregister(connection.sock)
            connection.sock.close()

    def broadcast(self, message: Dict[str, Any]) -> None:
        for connection in list(self.connections.values()):
            connection.send(message)

    def handle(self, connection: _Connection, line: bytes) -> None:
        try:
            message = json.loads(line)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            return
        if op == "launch":
            for task_id in message.get("task_ids", ()):
                self.supervisor.launch(str(task_id))
        elif op == "kill":
            self.supervisor.kill(str(message.get("task_id")))
        elif op == "ping":
            connection.send({"ev": "pong", "seq": message.get("seq")})
        elif op == "shutdown":
            self.stopping = True

    def run(self) -> None:
        """
        Serve until idle for C{idle_exit_s} with no server connected, or
        until asked to shut down while no workload runs.
        """
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        for ignored in (signal.SIGHUP, signal.SIGINT):
            signal.signal(ignored, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "stopping", True))

        def drain_wakeups() -> None:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

        self.selector.register(wake_r, selectors.EVENT_READ, drain_wakeups)
        supervisor = self.supervisor
        while True:
            supervisor.reap()
            supervisor.run_due_timers()
            if self._should_exit():
                return
            delay = supervisor.next_delay()
            if not supervisor.busy and not self.connections:
                delay = 0.5 if delay is None else min(delay, 0.5)
            for key, _ in self.selector.select(delay):
                supervisor._guard(key.data)

    def _should_exit(self) -> bool:
        if self.supervisor.busy:
            self._idle_since = None
            return False
        if self.stopping:
            return True
        if self.connections:
            self._idle_since = None
            return False
        now = self.supervisor.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since >= self.idle_exit_s


def _to_devnull() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def run_daemon(
    database: str, data_dir: str, grace_ms: int, idle_exit_s: float = 10.0
) -> int:
    """
    The C{internal-supervisor} subcommand: become a session leader and
    subreaper, bind the control socket, print C{ready <pid>} on stdout, put
    stdio on the null device and serve.

    @return: the exit code (0 normal, 1 already running or failed to start).
    """
    try:
        os.setsid()
    except OSError:
        pass
    become_subreaper()
    log_path = os.path.join(data_dir, "supervisor.log")

    def log(line: str) -> None:
        stamp = wire.format_ms(time.time_ns() // 1_000_000)
        try:
            with open(log_path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"timestamp": stamp, "level": "ERROR", "message": line}) + "\n")
        except OSError:
            pass

    try:
        supervisor = Supervisor(database, grace_ms / 1000.0, log=log)
        loop = Loop(supervisor, control_address(data_dir), idle_exit_s)
        loop.bind()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            sys.stdout.write("busy\n")
        else:
            sys.stderr.write(f"io error: {e}\n")
        sys.stdout.flush()
        return 1
    sys.stdout.write(f"ready {os.getpid()}\n")
    sys.stdout.flush()
    _to_devnull()
    try:
        loop.run()
    finally:
        supervisor.close()
    return 0


def run_shim(database: str, task_id: str, grace_ms: int) -> int:
    """
    The C{internal-shim} subcommand: supervise one task to completion.

    @return: 0 when the task was finalised or needed nothing; 1 on an
        internal error.
    """
    become_subreaper()
    try:
        supervisor = Supervisor(database, grace_ms / 1000.0)
    except Exception:
        return 1
    try:
        if taskdb.load_task(supervisor.conn, task_id) is None:
            return 1
        supervisor.launch(task_id, take_accepted=True)
        if task_id in supervisor.by_task:
            supervisor.watch_kill_flag(task_id)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        selector = selectors.DefaultSelector()
        selector.register(wake_r, selectors.EVENT_READ)
        while supervisor.busy:
            supervisor.reap()
            supervisor.run_due_timers()
            if not supervisor.busy:
                break
            if selector.select(supervisor.next_delay()):
                os.read(wake_r, 4096)
        supervisor.reap()
        return 0
    except Exception:
        return 1
    finally:
        supervisor.close()
