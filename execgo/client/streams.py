# -*- test-case-name: tests.test_client -*-
"""
Streaming pieces of L{execgo.client}: a body receiver that hands a
response body to a callback as it arrives (pausing the connection while
the callback's Deferred is pending), a line splitter for NDJSON that
holds the stream back while its lines are consumed, and an async iterator
over anything pushed to a callback.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Deque, Generic, Optional, Tuple, TypeVar, cast

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from execgo.client.errors import StreamInterrupted
from execgo.client.resume import LineBuffer

_T = TypeVar("_T")

Consumer = Callable[[_T], Any]
"""
A callback handed each item; it may return a L{Deferred} to hold the
stream back until it fires.
"""


class BodyReceiver(Protocol):
    """
    Deliver a response body to C{on_data} as it arrives.

    When C{on_data} returns a L{Deferred}, the connection is paused until it
    fires, so a slow consumer holds the server back instead of growing a
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
        if isinstance(result, Deferred):
            self._pending = result
            producer = self._producer()
            if producer is not None and not self._ended:
                producer.pauseProducing()
            result.addCallbacks(self._consumed, self._abort)

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


class LineSplitter:
    """
    Hand each complete line of a byte stream (without its newline) to
    C{on_line}, as the L{LineBuffer} cuts them.
    """

    def __init__(self, on_line: Callable[[bytes], Any], lines: LineBuffer) -> None:
        self._on_line = on_line
        self._lines = lines

    def __call__(self, data: bytes) -> Optional[Deferred[Any]]:
        """
        Feed C{data}; the returned Deferred (if any) holds the stream back
        until every line it completed has been consumed.
        """
        waits = []
        for line in self._lines.feed(data):
            result = self._on_line(line[:-1])
            if isinstance(result, Deferred):
                waits.append(result)
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return gatherResults(waits, consumeErrors=True).addErrback(_first_error)


def _first_error(failure: Failure) -> Failure:
    """
    The error itself rather than L{gatherResults}' wrapper.
    """
    if failure.check(FirstError):
        return failure.value.subFailure
    return failure


class PushIterator(Generic[_T]):
    """
    An async iterator over the items a stream pushes to L{push}.

    Each item is held until the consumer asks for it: L{push} returns a
    Deferred that fires when the item has been taken, so a producer that
    waits for it (L{BodyReceiver} does) never runs more than one item ahead.

    @param start: called with L{push}; returns the Deferred of the stream,
        which ends the iteration when it fires (or raises its error from
        the next C{__anext__}).
    """

    def __init__(self, start: Callable[[Consumer[_T]], "Deferred[Any]"]) -> None:
        self._buffer: Deque[Tuple[_T, Deferred[None]]] = collections.deque()
        self._waiting: Optional[Deferred[_T]] = None
        self._ended: Optional[Failure] = None
        self._stream = start(self.push)
        self._stream.addBoth(self._end)

    def push(self, item: _T) -> Optional[Deferred[None]]:
        """
        Offer C{item}; the result fires when the consumer has taken it.
        """
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.callback(item)
            return None
        taken: Deferred[None] = Deferred()
        self._buffer.append((item, taken))
        return taken

    def _end(self, result: Any) -> None:
        self._ended = result if isinstance(result, Failure) else Failure(StopAsyncIteration())
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.errback(self._ended)

    def __aiter__(self) -> "PushIterator[_T]":
        """
        This iterator.
        """
        return self

    def __anext__(self) -> "Deferred[_T]":
        """
        The next item, when there is one; L{StopAsyncIteration} once the
        stream has ended, or its error.
        """
        if self._buffer:
            item, taken = self._buffer.popleft()
            taken.callback(None)
            return succeed(item)
        if self._ended is not None:
            return fail(self._ended)
        self._waiting = Deferred(lambda _: self._cancel())
        return self._waiting

    def _cancel(self) -> None:
        if self._ended is None:
            self._stream.cancel()
        self._buffer.clear()

    def aclose(self) -> "Deferred[None]":
        """
        Stop the stream (for a consumer that leaves the loop early).
        """
        self._cancel()
        return succeed(None)
