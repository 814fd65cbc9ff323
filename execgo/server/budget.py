# -*- test-case-name: tests.test_budget -*-
"""
The byte budget that large output previews share in the server.

A status snapshot carries up to C{--max-output-preview-bytes} of each log.
One such read is bounded by that ceiling; many at once are bounded here: a
read whose previews are larger than L{SMALL_PREVIEW_BYTES} reserves what
it will read before it reads (L{ByteBudget.take}, waiting without blocking
the reactor, first come first served), and the reservation is held until
the response carrying the previews has been written out, or dropped.  Small
previews (the usual case) never wait.

The reservation travels with the snapshot it paid for, as a
L{HeldSnapshot} (a C{dict}, so every other reader of the snapshot sees a
plain snapshot); whoever sends it claims the reservation (L{claim}) and
releases it when done.  A snapshot dropped before anyone claimed its
reservation (a long-poll that reads, then waits and reads again) gives it
back when it is freed, so a forgotten claim cannot leak the budget.

Used on the reactor thread only.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any, Deque, Optional, Tuple

from twisted.internet import defer

from execgo.core.constants import JSON

#: Previews adding up to at most this many bytes are read and answered
#: without a reservation.
SMALL_PREVIEW_BYTES = 64 * 1024


class Hold:
    """
    A reservation of C{amount} bytes of a L{ByteBudget}; L{release} gives
    it back (once: later calls do nothing).
    """

    def __init__(self, budget: "ByteBudget", amount: int) -> None:
        self.budget = budget
        self.amount = amount
        self.released = False

    def release(self) -> None:
        """
        Give the bytes back.
        """
        if not self.released:
            self.released = True
            self.budget._give_back(self.amount)


class ByteBudget:
    """
    C{capacity} bytes shared by the reads that hold reservations.

    @ivar free: the bytes not reserved now.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("a budget needs a positive capacity")
        self.capacity = capacity
        self.free = capacity
        self._waiting: Deque[Tuple[int, "defer.Deferred[Hold]"]] = deque()

    @property
    def waiting(self) -> int:
        """
        How many reservations wait for bytes.
        """
        return len(self._waiting)

    def take(self, amount: int) -> "defer.Deferred[Hold]":
        """
        Reserve C{amount} bytes (at most the whole capacity): a Deferred
        that fires with the L{Hold} once they are free and every earlier
        reservation was served.  Cancelling it gives up the place.
        """
        amount = max(0, min(amount, self.capacity))
        if not self._waiting and amount <= self.free:
            self.free -= amount
            return defer.succeed(Hold(self, amount))

        def cancel(waiter: "defer.Deferred[Hold]") -> None:
            try:
                self._waiting.remove((amount, waiter))
            except ValueError:
                return
            self._grant()

        waiter: defer.Deferred[Hold] = defer.Deferred(cancel)
        self._waiting.append((amount, waiter))
        return waiter

    def _give_back(self, amount: int) -> None:
        self.free += amount
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._waiting[0][0] <= self.free:
            amount, waiter = self._waiting.popleft()
            self.free -= amount
            waiter.callback(Hold(self, amount))


class HeldSnapshot(dict):
    """
    A status snapshot whose previews were read under a reservation, which
    it carries until claimed (L{claim}) or until it is freed.
    """

    hold: Optional[Hold] = None

    def __init__(self, snapshot: JSON, hold: Hold) -> None:
        super().__init__(snapshot)
        self.hold = hold
        weakref.finalize(self, hold.release).atexit = False


def claim(snapshot: Any) -> Optional[Hold]:
    """
    Take the reservation C{snapshot} carries, if any (then it carries none):
    the caller releases it once the snapshot is sent.
    """
    hold = getattr(snapshot, "hold", None)
    if hold is None:
        return None
    snapshot.hold = None
    return hold


def release(snapshot: Any) -> None:
    """
    Give back the reservation of a snapshot that will not be sent.
    """
    hold = claim(snapshot)
    if hold is not None:
        hold.release()


def preview_weight(snapshot: JSON) -> int:
    """
    The characters of a snapshot's two output previews.
    """
    stdout = snapshot.get("stdout")
    stderr = snapshot.get("stderr")
    return (len(stdout) if isinstance(stdout, str) else 0) + (len(stderr) if isinstance(stderr, str) else 0)
