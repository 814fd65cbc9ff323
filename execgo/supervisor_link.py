# -*- test-case-name: tests.test_supervisor_link -*-
"""
The server's end of the supervisor: starting it, talking to it, noticing
when it is gone.

The supervisor is started as a child process through C{spawnProcess} with a
L{BoundedOutputProtocol}, which reads its start-up line and keeps a bounded
tail of whatever it prints; it then detaches into its own session.  Orders
(C{launch}, C{kill}) and reports (C{started}, C{finished}) travel as JSON
lines over the supervisor's abstract Unix socket, read by a line receiver
with a line-length cap, so no peer can make the server buffer without bound.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from execgo.shim import MAX_LINE, control_address

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
        self.hello: defer.Deferred[Dict[str, Any]] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if message.get("ev") == "hello" and not self.hello.called:
            self.hello.callback(message)
            return
        self.link.received(message)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def send(self, message: Dict[str, Any]) -> None:
        self.sendLine(json.dumps(message, separators=(",", ":")).encode("utf-8"))
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


class SupervisorLink:
    """
    A connection to the supervisor of one data directory, started on demand.

    @param reactor: provides C{IReactorProcess}, C{IReactorUNIX}, C{IReactorTime}.
    @param command: the argv that starts a supervisor (C{internal-supervisor ...}).
    @param on_message: called with each report (C{started}, C{finished}).
    @param on_lost: called with the pid of a supervisor whose connection closed.
    @param grace_ms: the SIGTERM to SIGKILL grace sent with every launch,
        and C{env} (what workloads inherit: C{PATH}, C{HOME}, C{LANG},
        C{TMPDIR}, C{USER}) and C{cgroup_root} likewise: a supervisor
        started by an earlier server must follow this server's settings.
    """

    def __init__(
        self,
        reactor: Any,
        database: str,
        command: Sequence[str],
        on_message: Callable[[Dict[str, Any]], None],
        on_lost: Callable[[int], None],
        grace_ms: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
        cgroup_root: Optional[str] = None,
    ) -> None:
        self.reactor = reactor
        self.grace_ms = grace_ms
        self.env = env
        self.cgroup_root = cgroup_root
        self.database = database
        self.command = list(command)
        self.on_message = on_message
        self.on_lost = on_lost
        self.protocol: Optional[_ControlProtocol] = None
        self.pid: Optional[int] = None
        self.children: List[BoundedOutputProtocol] = []
        self.closing = False

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
        endpoint = UNIXClientEndpoint(self.reactor, control_address(self.database), timeout=5)
        factory = protocol.Factory.forProtocol(lambda: _ControlProtocol(self))
        factory.noisy = False
        control = await endpoint.connect(factory)
        hello = await control.hello
        self.protocol = control
        self.pid = int(hello["pid"])
        log.info("connected to supervisor {pid}", pid=self.pid)
        return self.pid

    async def _start(self) -> None:
        child = BoundedOutputProtocol()
        self.children.append(child)
        child.ended.addBoth(lambda _: self.children.remove(child))
        self.reactor.spawnProcess(
            child, self.command[0], self.command, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
        )
        line = await child.ready
        if line.startswith("ready") or line.startswith("busy"):
            return
        raise SupervisorStartError(child.stderr_text() or line)

    def received(self, message: Dict[str, Any]) -> None:
        """
        A report from the supervisor.
        """
        self.on_message(message)

    def disconnected(self, control: _ControlProtocol) -> None:
        """
        The control connection closed: forget it and report the loss.
        """
        if control is not self.protocol:
            return
        pid = self.pid
        self.protocol = None
        self.pid = None
        if pid is not None and not self.closing:
            self.on_lost(pid)

    def launch(self, task_ids: Sequence[str]) -> bool:
        """
        Order the supervisor to start these dispatched tasks.
        """
        if self.protocol is None:
            return False
        order: Dict[str, Any] = {"op": "launch", "task_ids": list(task_ids)}
        if self.grace_ms is not None:
            order["grace_ms"] = self.grace_ms
        if self.env is not None:
            order["env"] = self.env
        if self.cgroup_root is not None:
            order["cgroup_root"] = self.cgroup_root
        self.protocol.send(order)
        return True

    def kill(self, task_id: str) -> bool:
        """
        Order the supervisor to terminate a task.
        """
        if self.protocol is None:
            return False
        self.protocol.send({"op": "kill", "task_id": task_id})
        return True

    def close(self) -> "defer.Deferred[None]":
        """
        Drop the connection (the supervisor keeps running its tasks).
        """
        self.closing = True
        if self.protocol is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        transport = self.protocol.transport
        self.protocol = None
        self.reactor.callLater(0, done.callback, None)
        transport.loseConnection()
        return done


def supervisor_command(
    database: str, data_dir: str, grace_ms: int, cgroup_root: str, executable: str = sys.executable
) -> List[str]:
    """
    The argv that starts a supervisor for this data directory.
    """
    return [
        executable,
        "-m",
        "execgo",
        "internal-supervisor",
        "--database",
        database,
        "--data-dir",
        data_dir,
        "--termination-grace-ms",
        str(grace_ms),
        "--cgroup-root",
        cgroup_root,
    ]
