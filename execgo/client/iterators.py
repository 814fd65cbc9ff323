# -*- test-case-name: tests.test_client,tests.test_asyncio_client -*-
"""
The stream pieces both clients share, written against C{txaio} so that
one implementation makes Deferreds under Twisted and asyncio futures
under asyncio: a line splitter for NDJSON that holds the stream back
while its lines are consumed (L{LineSplitter}), and an async iterator over
anything a stream pushes to a callback (L{PushIterator}).

Each takes the C{txaio} API of its framework (C{txaio.tx.with_config()}
or C{txaio.aio.with_config(loop)}), never the global one, so a program
may use both clients at once.
"""

from __future__ import annotations

import collections
from inspect import isawaitable
from typing import Any, Awaitable, Callable, Deque, Generic, List, Optional, Tuple, TypeVar

from execgo.client.resume import LineBuffer

__all__ = ["Consumer", "LineSplitter", "PushIterator"]

_T = TypeVar("_T")

Consumer = Callable[[_T], Any]
"""
A callback handed each item; it may return something to await (a
Deferred, a future, a coroutine) to hold the stream back until it is done.
"""


async def _each(waits: List[Awaitable[Any]]) -> None:
    for wait in waits:
        await wait


class LineSplitter:
    """
    Hand each complete line of a byte stream (without its newline) to
    C{on_line}, as the L{LineBuffer} cuts them.

    @param futures: the C{txaio} API of the framework, to wait for several
        lines at once as one of its futures.
    """

    def __init__(self, on_line: Callable[[bytes], Any], lines: LineBuffer, futures: Any) -> None:
        self._on_line = on_line
        self._lines = lines
        self._futures = futures

    def __call__(self, data: bytes) -> Any:
        """
        Feed C{data}; what it returns (if anything) is to be awaited before
        more is fed: it is done when every line C{data} completed has been
        consumed.
        """
        waits = []
        for line in self._lines.feed(data):
            result = self._on_line(line[:-1])
            if result is not None and isawaitable(result):
                waits.append(result)
        if not waits:
            return None
        if len(waits) == 1:
            return waits[0]
        return self._futures.as_future(_each, waits)


class PushIterator(Generic[_T]):
    """
    An async iterator over the items a stream pushes to L{push}.

    Each item is held until the consumer asks for it: L{push} returns a
    future that is done when the item has been taken, so a producer that
    waits for it never runs more than one item ahead.

    @param futures: the C{txaio} API of the framework.
    @param start: called with L{push}; returns the future of the stream,
        which ends the iteration when it is done (or raises its error from
        the next C{__anext__}).
    """

    def __init__(self, futures: Any, start: Callable[[Consumer[_T]], Any]) -> None:
        self._futures = futures
        self._buffer: Deque[Tuple[_T, Any]] = collections.deque()
        self._waiting: Optional[Any] = None
        self._ended: Optional[Any] = None
        self._closers: List[Any] = []
        self._closing = False
        self._stream = start(self.push)
        futures.add_callbacks(self._stream, self._finished, self._end)

    def _take_waiting(self) -> Optional[Any]:
        """
        The consumer's pending C{__anext__}, unless there is none or it was
        cancelled.
        """
        waiting, self._waiting = self._waiting, None
        if waiting is None or self._futures.is_called(waiting):
            return None
        return waiting

    def push(self, item: _T) -> Optional[Any]:
        """
        Offer C{item}; the result is done when the consumer has taken it.
        """
        waiting = self._take_waiting()
        if waiting is not None:
            self._futures.resolve(waiting, item)
            return None
        taken = self._futures.create_future()
        self._buffer.append((item, taken))
        return taken

    def _finished(self, _: Any) -> None:
        self._end(self._futures.create_failure(StopAsyncIteration()))

    def _end(self, failure: Any) -> None:
        if self._closing:
            failure = self._futures.create_failure(StopAsyncIteration())
        self._ended = failure
        waiting = self._take_waiting()
        if waiting is not None:
            self._futures.reject(waiting, failure)
        closers, self._closers = self._closers, []
        for closer in closers:
            self._futures.resolve(closer, None)

    def __aiter__(self) -> "PushIterator[_T]":
        """
        This iterator.
        """
        return self

    def __anext__(self) -> Any:
        """
        The next item, when there is one; L{StopAsyncIteration} once the
        stream has ended, or its error.
        """
        futures = self._futures
        if self._buffer:
            item, taken = self._buffer.popleft()
            futures.resolve(taken, None)
            return futures.create_future_success(item)
        if self._ended is not None:
            return futures.create_future_error(self._ended)
        self._waiting = futures.create_future(canceller=lambda _: self._cancel())
        return self._waiting

    def _cancel(self) -> None:
        if self._ended is None:
            self._futures.cancel(self._stream)
        self._buffer.clear()

    def aclose(self) -> Any:
        """
        Stop the stream (for a consumer that leaves the loop early); the
        result is done once the stream has ended, and the iteration is
        over (L{StopAsyncIteration}).
        """
        self._closing = True
        self._cancel()
        if self._ended is not None:
            return self._futures.create_future_success(None)
        closer = self._futures.create_future()
        self._closers.append(closer)
        return closer
