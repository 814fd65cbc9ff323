# -*- test-case-name: tests.test_listener -*-
"""
The HTTP listener's limits: how long a client may take to send a request,
how long a connection may sit idle, and how many connections may be open.

Without them a few hundred clients that send their headers a byte at a
time, or a thousand idle keep-alive connections, held the server's
descriptors until the process ran out and could accept nothing more, not
even C{/healthz}.

* B{Request timeout} (C{--request-header-timeout-ms}): a request's line and
  headers must arrive within this time of its first byte (for a new
  connection: of the connection), and its body within this time again.  A
  client that is slower is disconnected.  Twisted's own timeout
  (C{Site.timeout}) cannot do this: every byte received restarts it.
* B{Idle timeout} (C{--idle-connection-timeout-ms}): a connection with no
  request in flight for this long is closed.  This one is Twisted's
  (C{Site.timeout}, through L{http.HTTPChannel}), which stops counting
  while a request is being answered, so a long-poll (C{?wait_ms}) or a
  C{follow=true} stream is never idle, however long it lasts.
* B{Connection cap} (C{--max-connections}; by default the descriptor limit
  less a reserve, L{derive_max_connections}, after the soft limit has been
  raised to the hard one, L{raise_descriptor_limit}): a connection beyond
  it first displaces the connection that has been waiting longest with no
  request in flight (idle keep-alive connections, clients still sending a
  request); when every connection is answering a request, the newcomer
  gets a canned C{503} envelope and is closed.  Either way the server
  never runs out of descriptors, so it keeps accepting and answering.

L{Listener} is the factory the port listens with: it wraps the API's
L{twisted.web.server.Site}, whose channels it makes L{LimitedChannel}s.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from typing import Any, Callable, List, Optional, Set, Tuple, cast

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server

from execgo.core import encoding, errors

#: Descriptors kept back from the connection cap, at least (store, logs,
#: the supervisor channel, the log files of follow=true streams).
MIN_RESERVE = 128
#: The smallest connection cap ever derived.
MIN_CONNECTIONS = 16
#: Connections answered with the canned 503 at once, at most; beyond, a
#: connection is closed as soon as it is accepted.
MAX_OVERFLOW = 64

_BUSY_BODY = encoding.compact(errors.Unavailable("too many connections: try again").envelope())
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_BUSY_BODY)
) + _BUSY_BODY


def _connected(connection: protocol.Protocol) -> ITCPTransport:
    """
    The transport of a connection the listener accepted.
    """
    # Every caller holds a connection that makeConnection has set up (its
    # transport is then set, and Twisted never clears it).  The API listens
    # on TCP (service.listen_description), whose transports are
    # ITCPTransports: they have abortConnection, which ITransport lacks.
    assert connection.transport is not None
    return cast(ITCPTransport, connection.transport)


def raise_descriptor_limit(
    getrlimit: Callable[[int], Tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, Tuple[int, int]], None] = resource.setrlimit,
) -> int:
    """
    Raise this process's soft C{RLIMIT_NOFILE} to its hard limit (when the
    hard one is finite and the kernel allows it).

    @return: the soft limit now in force.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft < hard):
        try:
            setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (OSError, ValueError):
            pass
    return soft


def derive_max_connections(soft_limit: int, configured: int) -> int:
    """
    The connection cap: C{configured} (0: derived), never closer to the
    descriptor limit than L{MIN_RESERVE} / 2; derived, the limit less a
    quarter of it, at least L{MIN_RESERVE}.
    """
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        soft_limit = 1 << 20
    highest = max(MIN_CONNECTIONS, soft_limit - MIN_RESERVE // 2)
    if configured > 0:
        return min(configured, highest)
    return max(MIN_CONNECTIONS, soft_limit - max(MIN_RESERVE, soft_limit // 4))


class LimitedChannel(http.HTTPChannel):
    """
    An HTTP channel with a request timeout, that tells its L{Listener}
    when it starts and stops answering a request.

    @ivar header_timeout: seconds a request may take to arrive (C{None}:
        no limit), set by the listener.
    @ivar busy: whether a request is being answered.
    @ivar reading: whether part of a request has arrived.
    @ivar evicted: whether the listener closed it to admit another.
    """

    header_timeout: Optional[float] = None
    listener: Optional["Listener"] = None
    busy = False
    reading = False
    evicted = False
    _deadline: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if data and not self.busy and not self.reading:
            self.reading = True
            if self._deadline is None:
                self._arm()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.reading and self.length != 0:
            # The body (a length, or chunked) gets a period of its own.
            self._disarm()
            self._arm()

    def allContentReceived(self) -> None:
        self._disarm()
        self.reading = False
        self.busy = True
        if self.listener is not None:
            self.listener.answering(self)
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self.busy = False
        if self.listener is not None:
            self.listener.waiting(self)
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self.listener is not None:
            self.listener.closed(self)
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        """
        Close the connection (the idle or the request timeout ran out),
        and abort it if it is not gone after C{abortTimeout}; quietly,
        since an access log is not kept either.
        """
        if self._abortingCall is not None:
            return
        self.setTimeout(None)
        self._disarm()
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def forceAbortClient(self) -> None:
        """
        The peer did not let the connection close: drop it.
        """
        self._abortingCall = None
        _connected(self).abortConnection()

    def _arm(self) -> None:
        if self.header_timeout is not None and self._deadline is None:
            self._deadline = self.callLater(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.busy:
            self.timeoutConnection()


class _Busy(protocol.Protocol):
    """
    A connection beyond the cap: answered with L{BUSY_RESPONSE}, closed.
    """

    def __init__(self, listener: "Listener") -> None:
        self.listener = listener

    def connectionMade(self) -> None:
        transport = _connected(self)
        transport.write(BUSY_RESPONSE)
        transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.listener.overflowing -= 1


class Listener(protocol.Factory):
    """
    The factory the API port listens with: L{LimitedChannel}s of C{site},
    at most C{max_connections} of them (C{0}: no cap).

    @param site: the API's site; its C{timeout} is the idle timeout and
        its reactor runs every timer.
    @param header_timeout_s: the request timeout (C{None}: none).
    """

    noisy = False

    def __init__(self, site: server.Site, header_timeout_s: Optional[float], max_connections: int) -> None:
        self.site = site
        # Twisted types HTTPFactory.protocol as the method that builds its
        # own channel, though a factory's protocol is there to be replaced.
        site.protocol = LimitedChannel  # type: ignore[assignment,method-assign]
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.open: Set[LimitedChannel] = set()
        self._emptied: List["defer.Deferred[None]"] = []
        self.overflowing = 0
        self.evictions = 0
        self.refusals = 0
        # Connections with no request in flight, longest waiting first.
        self._waiting: "OrderedDict[LimitedChannel, None]" = OrderedDict()

    @property
    def reactor(self) -> IReactorTime:
        """
        The reactor of the site (every channel's timers run on it).
        """
        return self.site.reactor

    def doStart(self) -> None:
        super().doStart()
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()
        super().doStop()

    def buildProtocol(self, addr: Any) -> Optional[protocol.Protocol]:
        if self.max_connections and len(self.open) >= self.max_connections and not self._evict():
            self.refusals += 1
            if self.overflowing >= MAX_OVERFLOW:
                return None
            self.overflowing += 1
            return _Busy(self)
        channel = self.site.buildProtocol(addr)
        assert isinstance(channel, LimitedChannel)
        channel.header_timeout = self.header_timeout_s
        channel.listener = self
        self.open.add(channel)
        self._waiting[channel] = None
        return channel

    def answering(self, channel: LimitedChannel) -> None:
        """
        C{channel} has a request in flight: it is never displaced.
        """
        self._waiting.pop(channel, None)

    def waiting(self, channel: LimitedChannel) -> None:
        """
        C{channel} answered its request and waits for the next one.
        """
        if channel in self.open:
            self._waiting[channel] = None
            self._waiting.move_to_end(channel)

    def closed(self, channel: LimitedChannel) -> None:
        """
        C{channel} is gone.
        """
        self.open.discard(channel)
        self._waiting.pop(channel, None)
        if not self.open:
            emptied, self._emptied = self._emptied, []
            for waiting in emptied:
                waiting.callback(None)

    def close_all(self) -> "defer.Deferred[None]":
        """
        Close every connection once what it has written has left it
        (C{loseConnection} sends the buffer first); fires when all are gone.
        """
        if not self.open:
            return defer.succeed(None)
        emptied: "defer.Deferred[None]" = defer.Deferred()
        self._emptied.append(emptied)
        for channel in list(self.open):
            _connected(channel).loseConnection()
        return emptied

    def _evict(self) -> bool:
        """
        Close the connection waiting longest without a request in flight.

        @return: whether there was one.
        """
        if not self._waiting:
            return False
        channel, _ = self._waiting.popitem(last=False)
        self.open.discard(channel)
        channel.evicted = True
        self.evictions += 1
        _connected(channel).abortConnection()
        return True
