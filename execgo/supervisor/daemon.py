# -*- test-case-name: tests.test_daemon,tests.test_supervisor,tests.test_integration -*-
"""
The supervisor daemon, C{internal-supervisor}: one long-lived supervisor
per data directory, serving the servers over the control socket
(L{control.bind_listener}).  Orders come in (launch, kill, ping,
shutdown: ids only), reports go out to every connected server, and the
engine is driven between them.

It becomes a child subreaper and leaves the server's session so a Ctrl-C
or crash of the server does not reach it or its workloads, and exits by
itself once it has had no workload and no server for a while.  Standard
library only (plus C{attrs}).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from execgo import control
from execgo.control import MAX_LINE
from execgo.core import errors
from execgo.core.cluster import NodeLease
from execgo.core.databaseurl import STORE_RETRY_S, STORE_WAIT_S
from execgo.host import privileges
from execgo.store.backend import SQLITE, backend_of
from execgo.supervisor.engine import Supervisor
from execgo.supervisor.membership import Membership
from execgo.supervisor.plumbing import (
    Wakeups,
    become_subreaper,
    bounded,
    build_engine,
    supervisor_log,
)


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
        *lines, self.buffer = self.buffer.split(b"\n")
        self.loop.handle_all(self, lines)
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
        self.adopt(sock)

    def adopt(self, sock: socket.socket) -> None:
        """
        Serve an admitted server's connection: take the settings file's
        values, then say hello (this process's pid and the tasks it
        supervises).
        """
        settings = control.read_settings(self.data_dir)
        if settings is not None:
            self.supervisor.configure(settings)
            hold_lease(self.supervisor, settings.node, self.log)
        # A server that stopped asked this one to go once idle; this one wants it.
        self.stopping = False
        sock.setblocking(False)
        connection = _Connection(sock, self)
        self.connections[sock.fileno()] = connection
        self.selector.register(sock, selectors.EVENT_READ, connection.readable)
        supervisor = self.supervisor
        connection.send(
            control.Hello(os.getpid(), tuple(sorted(supervisor.by_task)), supervisor.store, supervisor.slots.limit)
        )

    def want_read(self, connection: _Connection) -> None:
        """
        Everything queued for C{connection} is sent: watch it for orders
        only.
        """
        if connection.sock.fileno() in self.connections:
            self.selector.modify(connection.sock, selectors.EVENT_READ, connection.readable)

    def want_write(self, connection: _Connection) -> None:
        """
        C{connection}'s peer is slow to read: watch for room to send the
        rest, and for orders as before.
        """
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
        """
        Forget and close a connection (closed by its peer, broken, or
        sending a line longer than L{MAX_LINE}).
        """
        fileno = connection.sock.fileno()
        if self.connections.pop(fileno, None) is not None:
            self.selector.unregister(connection.sock)
            connection.sock.close()
            self.supervisor.slots.forget(connection)

    def broadcast(self, message: control.Report) -> None:
        """
        Send a report of the engine to every connected server.
        """
        for connection in list(self.connections.values()):
            connection.send(message)

    def handle_all(self, connection: _Connection, lines: List[bytes]) -> None:
        """
        The orders read at once, in order (L{handle}), the tasks of
        consecutive launch orders launched together (one claim
        transaction).
        """
        launches: List[str] = []
        for line in lines:
            order = control.decode_order(line)
            if isinstance(order, control.Launch):
                launches += order.task_ids
                continue
            self._launch(connection, launches)
            launches = []
            self._obey(connection, order)
        self._launch(connection, launches)

    def _launch(self, connection: _Connection, task_ids: List[str]) -> None:
        if task_ids:
            # Only the server that sent the order holds a slot for it.
            self.supervisor.order([(task_id, _decline(connection, task_id)) for task_id in task_ids], connection)

    def handle(self, connection: _Connection, line: bytes) -> None:
        """
        One order (L{control.decode_order}): launch, kill, ping, shutdown;
        anything else is ignored.  Nothing but ids is read from an order:
        how a task runs comes from the store and the settings.
        """
        self._obey(connection, control.decode_order(line))

    def _obey(self, connection: _Connection, order: Any) -> None:
        if isinstance(order, control.Launch):
            self._launch(connection, list(order.task_ids))
        elif isinstance(order, control.Kill):
            self.supervisor.kill(order.task_id)
        elif isinstance(order, control.Ping):
            connection.send(control.Pong(order.seq))
        elif isinstance(order, control.Shutdown):
            self.stopping = True

    def run(self) -> None:
        """
        Take this process's signals (C{SIGCHLD} wakes the loop, C{SIGTERM}
        asks it to stop, C{SIGHUP} and C{SIGINT} are ignored) and serve
        until L{turn} says to exit.
        """
        wakeups = Wakeups()
        wakeups.install()
        for ignored in (signal.SIGHUP, signal.SIGINT):
            signal.signal(ignored, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "stopping", True))
        self.selector.register(wakeups.fileno(), selectors.EVENT_READ, wakeups.drain)
        while not self.turn():
            pass

    def turn(self, block: bool = True) -> bool:
        """
        One turn of the loop: reap, run the due timers, then wait (at most
        until the next timer; not at all unless C{block}) and handle what
        is ready: connections, orders, wake-ups.

        @return: whether to exit now: idle for C{idle_exit_s} with no server
            connected, or asked to shut down while no workload runs.
        """
        supervisor = self.supervisor
        supervisor.reap()
        supervisor.run_due_timers()
        if self._should_exit():
            return True
        delay = supervisor.next_delay()
        if not supervisor.busy and not self.connections:
            delay = 0.5 if delay is None else min(delay, 0.5)
        for key, _ in self.selector.select(bounded(delay) if block else 0):
            supervisor.guard(key.data)
        return False

    def _should_exit(self) -> bool:
        if self.supervisor.busy:
            self._idle_since = None
            return False
        if self.stopping:
            return True
        if self.connections:
            self._idle_since = None
            return False
        now = self.supervisor.clock.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since >= self.idle_exit_s


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
    log = supervisor_log(data_dir)
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
        supervisor = open_engine(database, settings, log)
        supervisor.data_dir = os.path.abspath(data_dir)
        hold_lease(supervisor, settings.node, log)
        loop = Loop(supervisor, data_dir, idle_exit_s, log)
        loop.bind()
    except (OSError, control.ChannelError) as e:
        sys.stderr.write(f"io error: {e}\n")
        sys.stdout.flush()
        return 1
    sys.stdout.write(f"ready {os.getpid()}\n")
    sys.stdout.flush()
    _to_devnull()
    serve(loop, supervisor, log)
    return 0


def hold_lease(supervisor: Supervisor, lease: Optional[NodeLease], log: Callable[[str], None]) -> None:
    """
    Hold the lease of the node the settings name (L{Membership}); settings
    that name another node than the one held give the old lease up first.
    """
    held = supervisor.membership
    if held is not None and held.lease == lease:
        return
    if held is not None:
        held.leave()
    supervisor.membership = None
    if lease is not None:
        # Only a store other nodes share can have them count this one lost.
        shared = backend_of(supervisor.conn) is not SQLITE
        supervisor.node_id = lease.node_id
        supervisor.membership = Membership(
            supervisor.conn, lease, supervisor.clock, supervisor.wall_ms, supervisor.fence, log, fencing=shared
        )
        supervisor.membership.start()


def open_engine(
    database: str,
    settings: control.SupervisorSettings,
    log: Callable[[str], None],
    build: Callable[..., Supervisor] = build_engine,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Supervisor:
    """
    The engine over the store C{database}; a database server that cannot
    be reached yet (restarting, not started) is tried again every
    L{STORE_RETRY_S} for up to L{STORE_WAIT_S}, as the server does at its
    start, so that a supervisor started during an outage waits it out.

    @raise Exception: what opening the store raised last, or at once when
        it refused for good.
    """
    deadline = clock() + STORE_WAIT_S
    while True:
        try:
            return build(database, settings, log)
        except Exception as e:
            if errors.from_storage(e).http_status != 503 or clock() >= deadline:
                raise
            log(f"store not reachable yet, trying again in {STORE_RETRY_S:g} s: {e}")
        sleep(STORE_RETRY_S)


def serve(loop: Any, supervisor: Any, log: Callable[[str], None]) -> None:
    """
    Run the loop until it ends, give the node's lease up when nothing runs
    any more (the node is C{left}), then close the engine.  An error that
    ends it is written to the supervisor's log first: once serving, the
    supervisor's standard streams lead nowhere.
    """
    try:
        loop.run()
        if supervisor.membership is not None and not supervisor.busy:
            supervisor.membership.leave()
    except BaseException:
        log("supervisor stopped by an error: " + traceback.format_exc())
        raise
    finally:
        supervisor.close()


def _to_devnull() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
