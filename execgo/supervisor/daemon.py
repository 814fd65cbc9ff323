# -*- test-case-name: tests.test_supervisor,tests.test_integration -*-
"""
The supervisor processes' entry points: C{internal-supervisor} (one
long-lived supervisor per data directory, serving the server over an
abstract Unix socket) and C{internal-shim} (the same engine for one task).

Both become child subreapers.  The daemon leaves the server's session so a
Ctrl-C or crash of the server does not reach it or its workloads, and exits
by itself once it has had no workload and no server for a while.
Standard library only (plus C{attrs}).
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import Callable, Dict, Optional

from execgo import control
from execgo.control import MAX_LINE
from execgo.host import privileges
from execgo.store import taskdb, wire
from execgo.supervisor.engine import Supervisor

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """
    Make this process a child subreaper; C{False} where the OS refuses.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class _Connection:
    """
    One server connected to the control socket: JSON lines both ways.
    """

    def __init__(self, sock: socket.socket, loop: "Loop") -> None:
        self.sock = sock
        self.loop = loop
        self.buffer = b""
        self.out = b""
        self.waiting_to_write = False

    def send(self, message: control.Report) -> None:
        self.out += control.encode(message) + b"\n"
        self.flush()

    def flush(self) -> None:
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                if not self.waiting_to_write:
                    self.waiting_to_write = True
                    self.loop.want_write(self)
                return
            except OSError:
                self.loop.drop(self)
                return
            self.out = self.out[sent:]
        if self.waiting_to_write:
            self.waiting_to_write = False
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


def _decline(connection: _Connection, task_id: str) -> Callable[[], None]:
    """
    What tells C{connection} that the launch order for C{task_id} was
    declined.
    """
    return lambda: connection.send(control.Declined(task_id))


class Loop:
    """
    The supervisor daemon's event loop: control socket, C{SIGCHLD} wake-ups
    and timers around one L{Supervisor}.

    Only a process of this process's own uid may talk to it (checked with
    C{SO_PEERCRED} on every connection, beside the socket's private
    directory); any other is refused and the attempt logged.  Each
    admitted connection makes the supervisor read the settings file again
    (L{control.read_settings}): a server started with other settings
    than the one before takes effect for the tasks launched from then on.

    @param data_dir: the data directory served.
    @param idle_exit_s: exit after this long with no workload and no server.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        data_dir: str,
        idle_exit_s: float,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.supervisor = supervisor
        self.data_dir = data_dir
        self.idle_exit_s = idle_exit_s
        self.log = log
        self.selector = selectors.DefaultSelector()
        self.connections: Dict[int, _Connection] = {}
        self.listener: Optional[socket.socket] = None
        self.stopping = False
        self._idle_since: Optional[float] = None
        supervisor.listeners.append(self.broadcast)

    def bind(self, listener: Optional[socket.socket] = None) -> None:
        """
        Serve the control socket (L{control.bind_listener}, with the
        supervisor lock held, unless a bound C{listener} is given).
        """
        if listener is None:
            listener = control.bind_listener(self.data_dir)
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        try:
            peer = control.peer_credentials(sock)
        except OSError:
            sock.close()
            return
        if peer.uid != os.geteuid():
            self.log(f"refused a control connection from pid {peer.pid} uid {peer.uid} gid {peer.gid}")
            sock.close()
            return
        settings = control.read_settings(self.data_dir)
        if settings is not None:
            self.supervisor.configure(settings)
        sock.setblocking(False)
        connection = _Connection(sock, self)
        self.connections[sock.fileno()] = connection
        self.selector.register(sock, selectors.EVENT_READ, connection.readable)
        connection.send(control.Hello(os.getpid(), tuple(sorted(self.supervisor.by_task))))

    def want_read(self, connection: _Connection) -> None:
        if connection.sock.fileno() in self.connections:
            self.selector.modify(connection.sock, selectors.EVENT_READ, connection.readable)

    def want_write(self, connection: _Connection) -> None:
        if connection.sock.fileno() in self.connections:

            def flush_then_read() -> None:
                connection.flush()
                connection.readable()

            self.selector.modify(
                connection.sock,
                selectors.EVENT_READ | selectors.EVENT_WRITE,
                flush_then_read,
            )

    def drop(self, connection: _Connection) -> None:
        fileno = connection.sock.fileno()
        if self.connections.pop(fileno, None) is not None:
            self.selector.unregister(connection.sock)
            connection.sock.close()

    def broadcast(self, message: control.Report) -> None:
        for connection in list(self.connections.values()):
            connection.send(message)

    def handle(self, connection: _Connection, line: bytes) -> None:
        """
        One order (L{control.decode_order}): launch, kill, ping, shutdown;
        anything else is ignored.  Nothing but ids is read from an order:
        how a task runs comes from the store and the settings.
        """
        order = control.decode_order(line)
        if isinstance(order, control.Launch):
            for task_id in order.task_ids:
                # Only the server that sent the order holds a slot for it.
                self.supervisor.launch(task_id, on_declined=_decline(connection, task_id))
        elif isinstance(order, control.Kill):
            self.supervisor.kill(order.task_id)
        elif isinstance(order, control.Ping):
            connection.send(control.Pong(order.seq))
        elif isinstance(order, control.Shutdown):
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
            for key, _ in self.selector.select(_bounded(delay)):
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


#: The longest single wait of a supervisor loop: C{epoll_wait} takes its
#: timeout in milliseconds as a C int, and a timer further away (a task
#: stored with a huge wall time) must not overflow it.
MAX_WAIT_S = 3600.0


def _bounded(delay: Optional[float]) -> float:
    """
    The wait for the next timer, at most L{MAX_WAIT_S} (also with none).
    """
    return MAX_WAIT_S if delay is None else min(delay, MAX_WAIT_S)


def _to_devnull() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _file_log(path: str) -> Callable[[str], None]:
    """
    A logger appending JSON lines to C{path} (errors ignored: the
    supervisor keeps running without its log).
    """

    def log(line: str) -> None:
        stamp = wire.format_ms(time.time_ns() // 1_000_000)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, (json.dumps({"timestamp": stamp, "level": "ERROR", "message": line}) + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    return log


def _supervisor(database: str, settings: control.SupervisorSettings, log: Callable[[str], None]) -> Supervisor:
    supervisor = Supervisor(database, settings.grace_ms / 1000.0, log=log)
    supervisor.configure(settings)
    return supervisor


def run_daemon(database: str, data_dir: str, idle_exit_s: float = 10.0) -> int:
    """
    The C{internal-supervisor} subcommand: restrict itself
    (L{privileges.restrict_self}), become a session leader and subreaper,
    take the data directory's supervisor lock, bind the control socket,
    print C{ready <pid>} on stdout, put stdio on the null device and serve
    with the settings the server wrote.

    @return: the exit code (0 normal, 1 already running or failed to start).
    """
    privileges.restrict_self()
    try:
        os.setsid()
    except OSError:
        pass
    become_subreaper()
    log = _file_log(os.path.join(data_dir, "supervisor.log"))
    try:
        control.prepare_run_dir(data_dir)
        lock = control.lock_supervisor(data_dir)
        if lock is None:
            sys.stdout.write("busy\n")
            sys.stdout.flush()
            return 1
        settings = control.read_settings(data_dir)
        if settings is None:
            raise control.ChannelError(f"no supervisor settings in {control.run_dir(data_dir)}")
        supervisor = _supervisor(database, settings, log)
        loop = Loop(supervisor, data_dir, idle_exit_s, log)
        loop.bind()
    except (OSError, control.ChannelError) as e:
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


def run_shim(database: str, data_dir: str, task_id: str, grace_ms: int, cgroup_root: str) -> int:
    """
    The C{internal-shim} subcommand: supervise one task to completion,
    with the identity and rootfs roots of the server's settings file
    (the default identity when there is none).

    @return: 0 when the task was finalised or needed nothing; 1 on an
        internal error.
    """
    privileges.restrict_self()
    become_subreaper()
    written = control.read_settings(data_dir)
    try:
        identity = written.identity if written is not None else privileges.resolve_identity(
            None, None, os.geteuid(), os.getegid()
        )
        settings = control.SupervisorSettings(
            grace_ms=grace_ms,
            env=control.inherited_env(os.environ),
            cgroup_root=cgroup_root,
            identity=identity,
            rootfs_roots=() if written is None else written.rootfs_roots,
        )
        supervisor = _supervisor(database, settings, _file_log(os.path.join(data_dir, "supervisor.log")))
    except Exception:
        return 1
    try:
        if taskdb.load_task(supervisor.conn, task_id) is None:
            return 1
        supervisor.launch(task_id)
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
            if selector.select(_bounded(supervisor.next_delay())):
                os.read(wake_r, 4096)
        supervisor.reap()
        return 0
    except Exception:
        return 1
    finally:
        supervisor.close()
