# -*- test-case-name: tests.test_supervisor_link -*-
"""
The server's end of the supervisor: starting it, talking to it, noticing
when it is gone.

The supervisor is started as a child process through C{spawnProcess} with a
L{BoundedOutputProtocol}, which reads its start-up line and keeps a bounded
tail of whatever it prints; it then detaches into its own session.  Orders
(C{launch}, C{kill}, C{ping}) and reports (C{finished}, C{declined},
C{pong}) travel as JSON lines over the supervisor's Unix socket in the data
directory's private C{run/} directory (L{execgo.control}), read by a line
receiver with a line-length cap, so no peer can make the server buffer
without bound.  The server talks only to the process the kernel says is at
the other end (C{SO_PEERCRED}) when that is a supervisor of its own uid
whose pid matches its greeting.

The link also watches the supervisor: it pings it every second; after a
few seconds without an answer it reports itself unhealthy (C{/readyz}
says why), and after longer it kills the supervisor (a stopped or wedged
one would never end its tasks), which the server then treats like any
lost supervisor.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from execgo import control
from execgo.control import MAX_LINE
from execgo.host.procinfo import is_supervisor

#: How often the supervisor is pinged.
PING_INTERVAL_S = 1.0
#: Silence after which the server says it is not ready.
UNHEALTHY_AFTER_S = 3.0
#: Silence after which the supervisor is killed and replaced.
REPLACE_AFTER_S = 10.0

log = Logger()


class SupervisorStartError(Exception):
    """
    The supervisor process could not be started.
    """


class BoundedOutputProtocol(protocol.ProcessProtocol):
    """
    Capture a child's stdout and stderr with a byte cap per stream, count
    what was dropped, and fire L{ready} with the first stdout line.

    @ivar cap: the most bytes kept per stream.
    """

    def __init__(self, cap: int = 64 * 1024) -> None:
        self.cap = cap
        self.kept: Dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.dropped: Dict[int, int] = {1: 0, 2: 0}
        self.ready: Optional[defer.Deferred[str]] = defer.Deferred()
        self.ended: defer.Deferred[Failure] = defer.Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self.kept.setdefault(childFD, bytearray())
        room = self.cap - len(buffer)
        buffer += data[:room]
        self.dropped[childFD] = self.dropped.get(childFD, 0) + max(0, len(data) - room)
        if childFD == 1 and b"\n" in buffer and self.ready is not None:
            ready, self.ready = self.ready, None
            ready.callback(bytes(buffer).split(b"\n", 1)[0].decode("utf-8", "replace"))

    def stderr_text(self) -> str:
        """
        What the child wrote on stderr (the kept part), as text.
        """
        return bytes(self.kept[2]).decode("utf-8", "replace").strip()

    def processEnded(self, reason: Failure) -> None:
        if self.ready is not None:
            ready, self.ready = self.ready, None
            detail = self.stderr_text() or str(reason.value)
            ready.errback(SupervisorStartError(detail))
        self.ended.callback(reason)


class _ControlProtocol(LineOnlyReceiver):
    """
    JSON lines to and from the supervisor.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, link: "SupervisorLink") -> None:
        self.link = link
        self.hello: defer.Deferred[control.Hello] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        report = control.decode_report(line)
        if report is None:
            return
        if isinstance(report, control.Hello):
            if not self.hello.called:
                self.hello.callback(report)
            return
        self.link.received(report)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.lose_connection()

    def lose_connection(self) -> None:
        """
        Close the connection to the supervisor.
        """
        # Only a connected protocol gets here (lines arrive, and the link
        # keeps a protocol, only after makeConnection has set the
        # transport, which Twisted never clears).
        assert self.transport is not None
        self.transport.loseConnection()

    def send(self, order: control.Order) -> None:
        self.sendLine(control.encode(order))
        # Hand the line to the kernel now, not when the reactor next polls:
        # an order would wait behind every other event of this iteration
        # (HTTP requests, each a fraction of a millisecond) while the
        # supervisor, which every task passes through, may sit idle.  What
        # cannot be written now stays buffered for the reactor, and an
        # error is left for the reactor to find on its own write.
        transport = self.transport
        if getattr(transport, "connected", False) and not getattr(transport, "disconnecting", True):
            flush = getattr(transport, "doWrite", None)
            if flush is not None:
                flush()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.hello.called:
            self.hello.errback(reason)
        self.link.disconnected(self)


class SupervisorListener(Protocol):
    """
    What the link tells about the supervisor (the runtime listens).
    """

    def on_supervisor_message(self, message: control.Report) -> None:
        """
        A report: C{finished} or C{declined}.
        """

    def on_supervisor_lost(self, pid: int) -> None:
        """
        The connection to supervisor C{pid} closed.
        """


class SupervisorLink:
    """
    A connection to the supervisor of one data directory, started on demand.

    Reports go to the L{SupervisorListener} given to L{listen} (the runtime,
    which is built after the link, as it orders through it).

    @param reactor: provides C{IReactorProcess}, C{IReactorUNIX}, C{IReactorTime}.
    @param data_dir: the data directory (its C{run/} holds the socket).
    @param command: the argv that starts a supervisor (C{internal-supervisor ...}).
    @param secret_env: what the supervisor's environment holds beyond the
        server's own and nobody may see on its command line (the store's
        C{PGPASSWORD}).
    @param store: this server's store as a supervisor names it (the SQLite
        file's path or the URL without its password): a supervisor that
        runs its tasks on another store is refused.
    @param kill: C{os.kill}, injected.
    @param supervisor_alive: whether a pid is a live execgo supervisor.
    """

    def __init__(
        self,
        reactor: Any,
        data_dir: str,
        command: Sequence[str],
        kill: Callable[[int, int], None] = os.kill,
        supervisor_alive: Callable[[int], bool] = is_supervisor,
        secret_env: Optional[Dict[str, str]] = None,
        store: Optional[str] = None,
    ) -> None:
        self.reactor = reactor
        self.data_dir = data_dir
        self.command = list(command)
        self.secret_env = dict(secret_env or {})
        self.store = store
        self.listener: Optional[SupervisorListener] = None
        self.kill_process = kill
        self.supervisor_alive = supervisor_alive
        self.protocol: Optional[_ControlProtocol] = None
        self.pid: Optional[int] = None
        #: The task slots the connected supervisor holds launch orders to
        #: (its greeting's; C{None}: it starts every order at once).
        self.slots: Optional[int] = None
        self.children: List[BoundedOutputProtocol] = []
        self.closing = False
        self._ping_call: Any = None
        self._seq = 0
        self._last_heard = 0.0

    def listen(self, listener: SupervisorListener) -> None:
        """
        Send the reports and losses to C{listener} from now on.
        """
        self.listener = listener

    @property
    def connected(self) -> bool:
        """
        Whether orders can be sent now.
        """
        return self.protocol is not None

    async def ensure(self) -> int:
        """
        Connect to the running supervisor, starting one if there is none.

        @return: the supervisor's pid.
        """
        if self.protocol is not None and self.pid is not None:
            return self.pid
        try:
            return await self._connect()
        except (error.ConnectError, OSError):
            pass
        await self._start()
        return await self._connect()

    async def _connect(self) -> int:
        with control.reachable(control.socket_path(self.data_dir)) as address:
            endpoint = UNIXClientEndpoint(self.reactor, address, timeout=5)
            factory = protocol.Factory.forProtocol(lambda: _ControlProtocol(self))
            factory.noisy = False
            control_protocol = await endpoint.connect(factory)
        try:
            hello = await control_protocol.hello
            pid = self._check_peer(control_protocol, hello)
        except BaseException:
            if control_protocol.transport is not None:
                control_protocol.transport.loseConnection()
            raise
        self.protocol = control_protocol
        self.pid = pid
        self.slots = hello.slots
        self._last_heard = self.reactor.seconds()
        self._schedule_ping()
        log.info("connected to supervisor {pid}", pid=self.pid)
        return self.pid

    def _check_peer(self, control_protocol: "_ControlProtocol", hello: control.Hello) -> int:
        """
        The supervisor's pid, once the kernel's word on the peer agrees
        with its greeting: our uid, the pid it claims, an execgo
        supervisor; and once its store is ours.

        @raise SupervisorStartError: when it does not.
        """
        handle = getattr(control_protocol.transport, "getHandle", lambda: None)()
        if handle is None:
            raise SupervisorStartError("the control connection has no socket")
        peer = control.peer_credentials(handle)
        claimed = hello.pid
        if peer.uid != os.geteuid() or peer.pid != claimed or not self.supervisor_alive(peer.pid):
            log.error(
                "refused the control peer pid {pid} uid {uid} (claims pid {claimed})",
                pid=peer.pid,
                uid=peer.uid,
                claimed=claimed,
            )
            raise SupervisorStartError(f"control peer pid {peer.pid} uid {peer.uid} is not our supervisor")
        if hello.store is not None and self.store is not None and hello.store != self.store:
            raise SupervisorStartError(
                f"the supervisor {claimed} of {self.data_dir} runs its tasks on another store ({hello.store}):"
                " start this server with that store, or stop that supervisor (it exits once its tasks end)"
            )
        return peer.pid

    async def _start(self) -> None:
        child = BoundedOutputProtocol()
        self.children.append(child)
        child.ended.addBoth(lambda _: self.children.remove(child))
        # Taken before the spawn: the protocol lets go of it once it fires.
        ready = child.ready
        assert ready is not None, "a new BoundedOutputProtocol has not fired yet"
        self.reactor.spawnProcess(
            child,
            self.command[0],
            self.command,
            env={**os.environ, **self.secret_env},
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        line = await ready
        if line.startswith("ready") or line.startswith("busy"):
            return
        raise SupervisorStartError(child.stderr_text() or line)

    def received(self, message: control.Report) -> None:
        """
        A report from the supervisor (any line is a sign of life).
        """
        self._last_heard = self.reactor.seconds()
        if not isinstance(message, control.Pong):
            if self.listener is not None:
                self.listener.on_supervisor_message(message)

    def disconnected(self, control_protocol: _ControlProtocol) -> None:
        """
        The control connection closed: forget it and report the loss.
        """
        if control_protocol is not self.protocol:
            return
        pid = self.pid
        self.protocol = None
        self.pid = None
        self.slots = None
        self._cancel_ping()
        if pid is not None and not self.closing:
            if self.listener is not None:
                self.listener.on_supervisor_lost(pid)

    # Watching

    def silence(self) -> float:
        """
        Seconds since the supervisor was last heard from (0 while no
        supervisor is connected).
        """
        if self.protocol is None:
            return 0.0
        return max(0.0, self.reactor.seconds() - self._last_heard)

    def health(self) -> Optional[str]:
        """
        Why the supervisor is not healthy, or C{None} when it is: it
        answered within L{UNHEALTHY_AFTER_S}.
        """
        silent = self.silence()
        if silent >= UNHEALTHY_AFTER_S:
            return f"supervisor {self.pid} has not answered for {int(silent * 1000)} ms"
        return None

    def _schedule_ping(self) -> None:
        self._cancel_ping()
        self._ping_call = self.reactor.callLater(PING_INTERVAL_S, self._ping)

    def _cancel_ping(self) -> None:
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None

    def _ping(self) -> None:
        self._ping_call = None
        if self.protocol is None:
            return
        silent = self.silence()
        if silent >= REPLACE_AFTER_S and self.pid is not None:
            log.error(
                "supervisor {pid} has not answered for {ms} ms: killing it",
                pid=self.pid,
                ms=int(silent * 1000),
            )
            self._kill_stuck(self.pid)
        elif silent >= UNHEALTHY_AFTER_S:
            log.warn("supervisor {pid} has not answered for {ms} ms", pid=self.pid, ms=int(silent * 1000))
        self._seq += 1
        self.protocol.send(control.Ping(self._seq))
        self._schedule_ping()

    def _kill_stuck(self, pid: int) -> None:
        """
        End a supervisor that stopped answering; its connection then
        closes and the listener fails its tasks and starts a new one.
        """
        try:
            self.kill_process(pid, signal.SIGKILL)
        except OSError:
            pass
        if self.protocol is not None:
            self.protocol.lose_connection()

    # Orders

    def launch(self, task_ids: Sequence[str]) -> bool:
        """
        Order the supervisor to start these dispatched tasks (ids only).
        """
        if self.protocol is None:
            return False
        self.protocol.send(control.Launch(tuple(task_ids)))
        return True

    def kill(self, task_id: str) -> bool:
        """
        Order the supervisor to terminate a task.
        """
        if self.protocol is None:
            return False
        self.protocol.send(control.Kill(task_id))
        return True

    def close(self, leave: bool = False) -> "defer.Deferred[None]":
        """
        Drop the connection (the supervisor keeps running its tasks).

        @param leave: ask the supervisor first to exit once it runs nothing
            (at once when idle): the node is C{left} then, rather than when
            the supervisor's idle wait is over.  A server that connects
            again before then keeps it.
        """
        self.closing = True
        self._cancel_ping()
        if self.protocol is None:
            return defer.succeed(None)
        if leave:
            self.protocol.send(control.Shutdown())
        done: defer.Deferred[None] = defer.Deferred()
        control_protocol, self.protocol = self.protocol, None
        self.reactor.callLater(0, done.callback, None)
        control_protocol.lose_connection()
        return done


def supervisor_command(database: str, data_dir: str, executable: str = sys.executable) -> List[str]:
    """
    The argv that starts a supervisor for this data directory (its
    settings are in the data directory, not on its command line);
    C{database} is the SQLite file's path or a PostgreSQL URL without its
    password (every local user can read a command line).  C{-P}:
    the package comes from where it is installed, not from a checkout
    that happens to be the working directory (which lacks the built
    C{_spawn} extension after a plain C{pip install .}).
    """
    return [executable, "-P", "-m", "execgo", "internal-supervisor", "--database", database, "--data-dir", data_dir]
