"""
Tests for L{execgo.server.link}'s line protocol.
"""

from __future__ import annotations

import json
import socket
from typing import Any, List

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from execgo import control
from execgo.server.link import _ControlProtocol


class FakeTransport:
    """
    Records writes and flushes.
    """

    def __init__(self, connected: bool = True, disconnecting: bool = False) -> None:
        self.connected = connected
        self.disconnecting = disconnecting
        self.calls: List[str] = []

    def write(self, data: bytes) -> None:
        self.calls.append("write " + data.decode("utf-8"))

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    def doWrite(self) -> None:
        self.calls.append("flush")


class SendTests(SynchronousTestCase):
    """
    L{_ControlProtocol.send} writes one compact JSON line and hands it to
    the kernel at once, on a live connection only.
    """

    def sent(self, transport: Any) -> List[str]:
        proto = _ControlProtocol(link=None)  # type: ignore[arg-type]
        proto.makeConnection(transport)
        proto.send(control.Launch(("t",)))
        return transport.calls

    def test_flushed(self) -> None:
        """
        On a live connection the line is written, then flushed.
        """
        self.assertEqual(
            self.sent(FakeTransport()), ['write {"op":"launch","task_ids":["t"]}\n', "flush"]
        )

    def test_not_flushed_when_closing(self) -> None:
        """
        A connection that is closing or closed is left to the reactor.
        """
        for transport in (FakeTransport(disconnecting=True), FakeTransport(connected=False)):
            self.assertNotIn("flush", self.sent(transport))


class RealSocketTests(TestCase):
    """
    Over a real socket, the peer can read a sent line before the reactor
    runs again.
    """

    @defer.inlineCallbacks
    def test_readable_before_the_reactor_polls(self) -> Any:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(theirs.close)
        proto = _ControlProtocol(link=None)  # type: ignore[arg-type]
        factory = protocol.Factory.forProtocol(lambda: proto)
        reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, factory)  # type: ignore[attr-defined]
        ours.close()
        proto.send(control.Ping(1))
        theirs.setblocking(False)
        self.assertEqual(json.loads(theirs.recv(4096)), {"op": "ping", "seq": 1})
        proto.connectionLost = lambda reason=None: None  # type: ignore[method-assign]
        proto.transport.loseConnection()
        yield deferLater(reactor, 0, lambda: None)
