"""
Tests for L{execgo.server.web.listener}: the request and idle timeouts, the
connection cap, and the descriptor limit, driven with a L{Clock} and
L{StringTransport} (no sockets, no sleeps); then the real server with
hundreds of slow and idle sockets open.
"""

from __future__ import annotations

import resource
from typing import Any, List, Tuple

from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource as web_resource
from twisted.web import server

from execgo.server.web.listener import (
    BUSY_RESPONSE,
    MAX_OVERFLOW,
    MIN_CONNECTIONS,
    LimitedChannel,
    Listener,
    derive_max_connections,
    raise_descriptor_limit,
)
from tests.serverfixture import ApiClient, ServerProcess, poll

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
GET = b"GET /quick HTTP/1.1\r\nHost: x\r\n\r\n"
HOLD = b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"


class _Resource(web_resource.Resource):
    """
    C{/quick} answers at once; C{/hold} is answered when the test says
    (a long-poll); C{POST} answers with the body's length.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: List[Any] = []

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/hold":
            self.held.append(request)
            return server.NOT_DONE_YET
        return b"ok"

    def render_POST(self, request: Any) -> bytes:
        return b"%d" % len(request.content.read())


class ListenerTestsBase(SynchronousTestCase):
    """
    A site on a L{Clock} behind a L{Listener}: 10 s request timeout, 60 s
    idle timeout.
    """

    header_s: Any = 10.0
    idle_s: Any = 60.0
    cap = 0

    def setUp(self) -> None:
        self.clock = Clock()
        self.resource = _Resource()
        self.site = server.Site(self.resource, reactor=self.clock, timeout=self.idle_s)
        self.listener = Listener(self.site, self.header_s, self.cap)
        self.connections: List[Tuple[Any, StringTransport]] = []

    def tearDown(self) -> None:
        for request in self.resource.held:
            if not request.finished and not request._disconnected:
                request.finish()
        for channel, _ in self.connections:
            if channel.transport is not None and not getattr(channel, "_lost", False):
                channel._lost = True
                channel.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def connect(self) -> Tuple[Any, StringTransport]:
        """
        A new connection: its protocol and transport.
        """
        channel = self.listener.buildProtocol(ADDRESS)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.connections.append((channel, transport))
        return channel, transport

    def lose(self, channel: Any) -> None:
        """
        The connection of C{channel} is gone (what the reactor reports
        after a close).
        """
        channel._lost = True
        channel.connectionLost(Failure(error.ConnectionDone()))


class RequestTimeoutTests(ListenerTestsBase):
    """
    The request timeout: line and headers within 10 s of the first byte
    (or of the connection), the body within 10 s more.
    """

    def test_silent_connection(self) -> None:
        """
        A connection that sends nothing is closed after the request
        timeout, well before the idle timeout.
        """
        channel, transport = self.connect()
        self.assertIsInstance(channel, LimitedChannel)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_trickled_headers(self) -> None:
        """
        Headers sent a line a second are cut off at 10 s, although every
        line restarts Twisted's own (idle) timeout.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET /quick HTTP/1.1\r\n")
        for second in range(1, 10):
            self.clock.advance(1.0)
            self.assertFalse(transport.disconnecting, second)
            channel.dataReceived(b"X-Slow-%d: yes\r\n" % second)
        self.clock.advance(1.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_prompt_request_answered(self) -> None:
        """
        A request sent in time is answered, and the connection stays open
        (idle) afterwards.
        """
        channel, transport = self.connect()
        self.clock.advance(5.0)
        channel.dataReceived(GET)
        self.assertIn(b"200 OK", transport.value())
        self.clock.advance(30.0)
        self.assertFalse(transport.disconnecting)

    def test_body_gets_its_own_period(self) -> None:
        """
        Headers complete at 9 s start a fresh period for the body: still
        open at 18.9 s, closed at 19.1 s without the rest of the body.
        """
        channel, transport = self.connect()
        self.clock.advance(9.0)
        channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_next_request_deadline_starts_at_its_first_byte(self) -> None:
        """
        On a kept-alive connection the time between requests is not the
        request's: the next request's 10 s start at its first byte.
        """
        channel, transport = self.connect()
        channel.dataReceived(GET)
        self.clock.advance(30.0)
        channel.dataReceived(b"GET /quick HTTP/1.1\r\n")
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_pipelined_request(self) -> None:
        """
        A request that arrives while the previous one is answered is
        served after it, under its own deadline.
        """
        channel, transport = self.connect()
        channel.dataReceived(HOLD + GET)
        self.clock.advance(20.0)
        self.assertFalse(transport.disconnecting)
        self.resource.held[0].finish()
        self.assertEqual(transport.value().count(b"200 OK"), 2)
        self.clock.advance(20.0)
        self.assertFalse(transport.disconnecting)


class IdleTimeoutTests(ListenerTestsBase):
    """
    The idle timeout counts only time with no request in flight.
    """

    def test_idle_keepalive_closed(self) -> None:
        """
        A kept-alive connection with nothing to do is closed after 60 s.
        """
        channel, transport = self.connect()
        channel.dataReceived(GET)
        self.clock.advance(59.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_long_request_is_not_idle(self) -> None:
        """
        A request answered after 600 s (a long-poll, a follow stream) keeps
        its connection; the idle time starts when it is done.
        """
        channel, transport = self.connect()
        channel.dataReceived(HOLD)
        self.clock.advance(600.0)
        self.assertFalse(transport.disconnecting)
        self.resource.held[0].write(b"done")
        self.resource.held[0].finish()
        self.clock.advance(59.0)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.1)
        self.assertTrue(transport.disconnecting)


class SimultaneousTimeoutsTests(ListenerTestsBase):
    """
    Both timeouts at 10 s: a silent connection meets both at once.
    """

    idle_s = 10.0

    def test_closed_once(self) -> None:
        """
        The connection is closed once, with one abort timer (cancelled when
        the connection is gone), and a peer that never lets go is dropped
        after C{abortTimeout}.
        """
        channel, transport = self.connect()
        self.clock.advance(10.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(channel.abortTimeout)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DisabledTimeoutsTests(ListenerTestsBase):
    """
    Both timeouts at 0 (C{None}): nothing is ever timed out.
    """

    header_s = None
    idle_s = None

    def test_no_timers(self) -> None:
        """
        No timer is armed for a connection, however slow.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET /quick HT")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600.0)
        self.assertFalse(transport.disconnecting)


class ConnectionCapTests(ListenerTestsBase):
    """
    At most two connections: a third displaces the one waiting longest
    with no request in flight, or is answered 503 when all are busy.
    """

    cap = 2

    def test_displaces_oldest_waiting(self) -> None:
        """
        The connection waiting longest is closed for the newcomer; one
        that has just finished a request counts as waiting since then.
        """
        first, first_transport = self.connect()
        self.clock.advance(1.0)
        second, second_transport = self.connect()
        self.clock.advance(1.0)
        first.dataReceived(GET)
        third, third_transport = self.connect()
        self.assertIsInstance(third, LimitedChannel)
        self.assertTrue(second_transport.disconnected)
        self.assertFalse(first_transport.disconnecting)
        self.assertEqual((len(self.listener.open), self.listener.evictions), (2, 1))
        self.lose(second)
        self.assertEqual(len(self.listener.open), 2)

    def test_busy_connections_kept(self) -> None:
        """
        When every connection has a request in flight, the newcomer gets
        the canned 503 envelope and is closed; the busy ones are kept.
        """
        first, first_transport = self.connect()
        second, second_transport = self.connect()
        first.dataReceived(HOLD)
        second.dataReceived(HOLD)
        busy = self.listener.buildProtocol(ADDRESS)
        self.assertNotIsInstance(busy, LimitedChannel)
        transport = StringTransport()
        busy.makeConnection(transport)
        self.assertEqual(transport.value(), BUSY_RESPONSE)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b'"message":"unavailable: too many connections', BUSY_RESPONSE)
        self.assertFalse(first_transport.disconnecting or second_transport.disconnecting)
        self.assertEqual(self.listener.refusals, 1)
        busy.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.listener.overflowing, 0)

    def test_overflow_bounded(self) -> None:
        """
        Beyond L{MAX_OVERFLOW} canned answers in progress, connections are
        refused outright (closed as soon as accepted).
        """
        for channel, _ in (self.connect(), self.connect()):
            channel.dataReceived(HOLD)
        answers = [self.listener.buildProtocol(ADDRESS) for _ in range(MAX_OVERFLOW)]
        self.assertNotIn(None, answers)
        self.assertIsNone(self.listener.buildProtocol(ADDRESS))
        for answer in answers:
            answer.connectionLost(None)

    def test_freed_by_request_end(self) -> None:
        """
        A busy connection whose request ends can be displaced again.
        """
        first, first_transport = self.connect()
        second, _ = self.connect()
        first.dataReceived(HOLD)
        second.dataReceived(HOLD)
        self.resource.held[0].finish()
        third, _ = self.connect()
        self.assertIsInstance(third, LimitedChannel)
        self.assertTrue(first_transport.disconnected)


class DescriptorLimitTests(SynchronousTestCase):
    """
    L{raise_descriptor_limit} and L{derive_max_connections}.
    """

    def test_raised_to_hard(self) -> None:
        """
        The soft limit is raised to the hard one.
        """
        calls: List[Any] = []
        limit = raise_descriptor_limit(lambda which: (1024, 4096), lambda which, value: calls.append(value))
        self.assertEqual((limit, calls), (4096, [(4096, 4096)]))

    def test_not_raised(self) -> None:
        """
        A refused raise, an infinite hard limit, or a soft limit at the
        hard one leave the soft limit as it is.
        """

        def refuse(which: int, value: Any) -> None:
            raise ValueError("not allowed")

        self.assertEqual(raise_descriptor_limit(lambda which: (1024, 4096), refuse), 1024)
        self.assertEqual(raise_descriptor_limit(lambda which: (1024, resource.RLIM_INFINITY), refuse), 1024)
        self.assertEqual(raise_descriptor_limit(lambda which: (4096, 4096), refuse), 4096)

    def test_derived_cap(self) -> None:
        """
        Derived: the limit less a quarter (at least 128); configured: as
        given, but never within 64 of the limit; never below the minimum.
        """
        self.assertEqual(derive_max_connections(1024, 0), 768)
        self.assertEqual(derive_max_connections(20000, 0), 15000)
        self.assertEqual(derive_max_connections(256, 0), 128)
        self.assertEqual(derive_max_connections(100, 0), MIN_CONNECTIONS)
        self.assertEqual(derive_max_connections(1024, 300), 300)
        self.assertEqual(derive_max_connections(1024, 5000), 960)


# The real server


class _Raw(protocol.Protocol):
    """
    A client that sends C{payload} and keeps what it receives; C{lost}
    fires when the connection is gone.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.gone = False

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True
        self.lost.callback(None)


class RealServerTests(TestCase):
    """
    A real server with a connection cap of 350 and a 2 s request timeout,
    crowded by 150 kept-alive idle connections and then 300 clients that
    never finish their headers.
    """

    timeout = 60

    async def _open(self, reactor: Any, port: int, payload: bytes, count: int) -> List[_Raw]:
        """
        C{count} connections sending C{payload}, opened 25 at a time;
        those the server displaced before they were connected (a reset)
        are left out.
        """
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        opened: List[_Raw] = []
        for start in range(0, count, 25):
            clients = [_Raw(payload) for _ in range(min(25, count - start))]
            results = await defer.DeferredList(
                [endpoints.connectProtocol(endpoint, client) for client in clients], consumeErrors=True
            )
            opened.extend(client for client, (ok, _) in zip(clients, results) if ok)
        return opened

    async def _close(self, clients: List[_Raw]) -> None:
        for client in clients:
            if not client.gone:
                client.transport.abortConnection()
        await defer.gatherResults([client.lost for client in clients])

    @defer.inlineCallbacks
    def test_crowded_listener_answers(self) -> Any:
        """
        With 450 connections opened against a cap of 350, C{/healthz} and
        a submit on fresh connections are answered at once (well under a
        second each): newcomers displace the idle connections waiting
        longest.  The slow clients are cut off by the request timeout; the
        idle ones that were not displaced stay.
        """
        yield defer.ensureDeferred(self._crowded())

    async def _crowded(self) -> None:
        from twisted.internet import reactor

        server = ServerProcess(
            reactor,
            self.mktemp(),
            ["--max-connections", "350", "--request-header-timeout-ms", "2000"],
        )
        self.addCleanup(server.shutdown)
        await server.start()
        idle = await self._open(reactor, server.port, b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n", 150)
        self.addCleanup(lambda: defer.ensureDeferred(self._close(idle)))
        await poll(reactor, lambda: all(c.received.endswith(b"}") for c in idle), what="idle answers")
        slow = await self._open(reactor, server.port, b"GET /healthz HTTP/1.1\r\nHost: slow\r\n", 300)
        self.addCleanup(lambda: defer.ensureDeferred(self._close(slow)))
        self.assertEqual((len(idle), len(slow)), (150, 300))
        await poll(reactor, lambda: sum(c.gone for c in idle) >= 100, what="idle connections displaced")

        for _ in range(3):
            api = ApiClient(reactor, server.url)
            try:
                began = reactor.seconds()
                health = await api.get("/healthz")
                health_s = reactor.seconds() - began
                began = reactor.seconds()
                submitted = await api.post("/api/v1/tasks", {"execution": {"kind": "command", "program": "/bin/true"}})
                submit_s = reactor.seconds() - began
            finally:
                await api.close()
            self.assertEqual((health.code, submitted.code), (200, 200), submitted.body)
            self.assertLess(health_s, 1.0)
            self.assertLess(submit_s, 1.0)
            task_id = submitted.json()["task_id"]
        await poll(reactor, lambda: all(c.gone for c in slow), timeout=10.0, what="slow clients cut off")
        self.assertEqual([c.received for c in slow if c.received], [])
        survivors = [c for c in idle if not c.gone]
        # 100 displaced by the slow clients, a few more by the requests
        # above (until the slow clients were cut off, the cap was full).
        self.assertTrue(40 <= len(survivors) <= 50, len(survivors))
        api = server.client(self)
        done = await api.get(f"/api/v1/tasks/{task_id}?wait_ms=10000")
        self.assertEqual(done.json()["status"], "success")
