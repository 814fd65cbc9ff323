"""
A TCP proxy a test controls, on the test's reactor: what passes through
it can be cut off without closing anything (a network partition: bytes
are dropped, connections hang), then healed (the connections that lived
through the cut are closed, as a real partition's would be reset).
"""

from __future__ import annotations

from typing import Any, List, Optional, Set

from twisted.internet import endpoints, protocol


class _Side(protocol.Protocol):
    """
    One end of a proxied connection; the other end is C{peer}.
    """

    def __init__(self, proxy: "TcpProxy") -> None:
        self.proxy = proxy
        self.peer: Optional["_Side"] = None
        self.pending: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.proxy.cut:
            return
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.proxy.sides.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _Outgoing(_Side):
    def connectionMade(self) -> None:
        self.proxy.sides.add(self)
        assert self.peer is not None and self.transport is not None
        for data in self.peer.pending:
            self.transport.write(data)
        self.peer.pending = []
        self.peer.transport.resumeProducing()


class _Incoming(_Side):
    def connectionMade(self) -> None:
        self.proxy.sides.add(self)
        assert self.transport is not None
        self.transport.pauseProducing()
        outgoing = _Outgoing(self.proxy)
        outgoing.peer = self
        self.peer = outgoing
        factory = protocol.ClientFactory()
        factory.protocol = lambda: outgoing  # type: ignore[assignment]
        endpoint = endpoints.TCP4ClientEndpoint(self.proxy.reactor, "127.0.0.1", self.proxy.target_port)
        endpoint.connect(factory).addErrback(lambda _: self.transport.loseConnection())


class TcpProxy:
    """
    Listens on a loopback port and forwards to C{target_port}.

    @ivar cut: while true, nothing passes (bytes are dropped both ways).
    """

    def __init__(self, reactor: Any, target_port: int) -> None:
        self.reactor = reactor
        self.target_port = target_port
        self.cut = False
        self.sides: Set[_Side] = set()
        self.port: Any = None

    async def start(self) -> int:
        """
        Listen; returns the proxy's port.
        """
        factory = protocol.Factory.forProtocol(lambda: _Incoming(self))
        self.port = await endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(factory)
        return self.port.getHost().port

    def partition(self) -> None:
        """
        Drop everything from now on; connections stay open.
        """
        self.cut = True

    def heal(self) -> None:
        """
        Let bytes pass again, resetting the connections that lived through
        the cut.
        """
        self.cut = False
        for side in list(self.sides):
            if side.transport is not None:
                side.transport.abortConnection()

    async def stop(self) -> None:
        """
        Stop listening and close every connection.
        """
        self.heal()
        if self.port is not None:
            await self.port.stopListening()
