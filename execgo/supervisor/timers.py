# -*- test-case-name: tests.test_engine -*-
"""
The supervisor's clock: a monotonic time source and a heap of timers, run
by whichever loop drives the engine (the daemon's, the shim's, a test's
that moves the time source by hand).

Standard library only (plus C{attrs}).
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable, List, Optional, Tuple

import attrs


@attrs.define(eq=False)
class Timer:
    """
    A scheduled call; C{cancel()} makes it a no-op.
    """

    deadline: float
    call: Callable[[], object]
    cancelled: bool = False

    def cancel(self) -> None:
        """
        Do not run this call.
        """
        self.cancelled = True


class Timers:
    """
    Calls scheduled on a monotonic clock, run when their loop asks.

    @param monotonic: seconds, never going back (L{time.monotonic}; a test
        hands in a value it moves itself).
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self._heap: List[Tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def call_later(self, delay: float, call: Callable[[], object]) -> Timer:
        """
        Schedule C{call} after C{delay} seconds.
        """
        timer = Timer(self.monotonic() + delay, call)
        heapq.heappush(self._heap, (timer.deadline, next(self._order), timer))
        return timer

    def next_delay(self) -> Optional[float]:
        """
        Seconds until the next live timer, or C{None} when there is none.
        """
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - self.monotonic())

    def run_due(self, guard: Callable[[Callable[[], object]], None]) -> None:
        """
        Run every timer whose deadline has passed, in deadline order (then
        in the order they were scheduled), each through C{guard}, which
        keeps one failing call from stopping the others.
        """
        now = self.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                guard(timer.call)
