# -*- test-case-name: tests.test_client -*-
"""
The Twisted side of a streamed answer: a body receiver that hands a
response body to a callback as it arrives, pausing the connection while
what the callback returned is pending.  The stream pieces both clients
share are L{execgo.client.iterators}.
"""

from __future__ import annotations

import collections
from inspect import isawaitable
from typing import Any, Coroutine, Deque, Optional, cast

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from execgo.client.errors import StreamInterrupted
from execgo.client.iterators import Consumer


class BodyReceiver(Protocol):
    """
    Deliver a response body to C{on_data} as it arrives.

    When C{on_data} returns something to await (a L{Deferred}, a
    coroutine), the connection is paused until it is done, so a slow consumer holds the server back instead of growing a
    buffer; bytes that were already read when the pause began wait here
    (at most one read's worth) and go to C{on_data} one piece at a time.
    Whatever C{on_data} raises (or its Deferred fails with) stops the body
    and fails L{finished} with it.

    @ivar finished: fires with C{None} when the body ended normally (and
        every piece was consumed), fails with L{StreamInterrupted} when it
        broke off, or with the consumer's error.  Cancelling it stops the body.
    """

    def __init__(self, on_data: Consumer[bytes]) -> None:
        self._on_data = on_data
        self._pending: Optional[Deferred[Any]] = None
        self._queue: Deque[bytes] = collections.deque()
        self._lost: Optional[Failure] = None
        self._ended = False
        self.finished: Deferred[None] = Deferred(lambda _: self._stop())

    def _producer(self) -> Optional[IPushProducer]:
        # IResponse.deliverBody connects its protocol to an IPushProducer,
        # which Protocol types as an ITransport (None before that).
        return cast(Optional[IPushProducer], self.transport)

    def _stop(self) -> None:
        producer = self._producer()
        if producer is not None:
            producer.stopProducing()

    def _abort(self, failure: Failure) -> None:
        self._queue.clear()
        self._stop()
        if not self.finished.called:
            self.finished.errback(failure)

    def dataReceived(self, data: bytes) -> None:
        """
        Hand C{data} to the consumer, or queue it while the consumer is
        busy with an earlier piece.
        """
        if self.finished.called:
            return
        if self._pending is not None:
            self._queue.append(data)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        try:
            result = self._on_data(data)
        except BaseException:
            self._abort(Failure())
            return
        if result is not None and isawaitable(result):
            self._pending = ensureDeferred(cast(Coroutine[Any, Any, Any], result))
            producer = self._producer()
            if producer is not None and not self._ended:
                producer.pauseProducing()
            self._pending.addCallbacks(self._consumed, self._abort)

    def _consumed(self, _: Any) -> None:
        self._pending = None
        while self._queue and self._pending is None and not self.finished.called:
            self._deliver(self._queue.popleft())
        if self._pending is not None or self.finished.called:
            return
        if self._ended:
            self._end(self._lost)
        else:
            producer = self._producer()
            if producer is not None:
                producer.resumeProducing()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        """
        The body is over: end now, or once every queued piece is consumed.
        """
        self._ended = True
        self._lost = reason
        if self._pending is None:
            self._end(reason)

    def _end(self, reason: Optional[Failure]) -> None:
        if self.finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(Failure(StreamInterrupted(_describe_failure(reason))))


def _describe_failure(reason: Failure) -> str:
    value = reason.value
    reasons = getattr(value, "reasons", None)
    if reasons and isinstance(reasons[0], Failure):
        value = reasons[0].value
    text = str(value)
    return f"{type(value).__name__}: {text}" if text else type(value).__name__
