"""
Tests for L{execgo.service.RuntimeService}'s draining stop: it waits on
the requests in flight themselves, never by polling, and for no longer
than its bound.
"""

from __future__ import annotations

from typing import List, Set

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from execgo.config import RuntimeConfig
from execgo.service import RuntimeService


class FakeRequest:
    """
    A request in flight: a fresh Deferred per C{notifyFinish}, all fired
    by L{finish}.
    """

    def __init__(self, site: "FakeSite") -> None:
        self.site = site
        self.waiters: List[defer.Deferred[None]] = []

    def notifyFinish(self) -> "defer.Deferred[None]":
        waiter: defer.Deferred[None] = defer.Deferred()
        self.waiters.append(waiter)
        return waiter

    def finish(self) -> None:
        self.site.inflight.discard(self)
        for waiter in self.waiters:
            waiter.callback(None)


class FakeSite:
    """
    The site's record of its requests in flight.
    """

    def __init__(self) -> None:
        self.inflight: Set[FakeRequest] = set()

    def request(self) -> FakeRequest:
        request = FakeRequest(self)
        self.inflight.add(request)
        return request


class DrainTests(SynchronousTestCase):
    """
    L{RuntimeService._drain_requests} over a fake site and a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = RuntimeService(self.clock, RuntimeConfig(data_dir=self.mktemp()), {})
        self.site = FakeSite()
        self.service.site = self.site  # type: ignore[assignment]

    def drain(self, timeout_s: float = 10.0) -> "defer.Deferred[None]":
        return defer.ensureDeferred(self.service._drain_requests(timeout_s))

    def test_nothing_in_flight(self) -> None:
        """
        With no request in flight the drain is over at once.
        """
        self.successResultOf(self.drain())

    def test_waits_for_each_request(self) -> None:
        """
        The drain ends when the last request in flight finishes, including
        one that came in while it waited; no timer is left behind.
        """
        first, second = self.site.request(), self.site.request()
        drained = self.drain()
        first.finish()
        self.assertNoResult(drained)
        late = self.site.request()
        second.finish()
        self.assertNoResult(drained)
        late.finish()
        self.successResultOf(drained)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bounded(self) -> None:
        """
        A request that never finishes holds the stop for the bound only.
        """
        self.site.request()
        drained = self.drain(timeout_s=2.0)
        self.clock.advance(1.9)
        self.assertNoResult(drained)
        self.clock.advance(0.2)
        self.successResultOf(drained)
