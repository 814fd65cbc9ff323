"""
Tests for L{execgo.server.budget}: the byte budget large previews share, and the
reservation a snapshot carries until it is sent.
"""

from __future__ import annotations

import gc

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from execgo.server.budget import (
    ByteBudget,
    HeldSnapshot,
    claim,
    preview_weight,
    release,
)


class ByteBudgetTests(SynchronousTestCase):
    """
    L{ByteBudget}: reservations wait for bytes, first come first served.
    """

    def test_take_within_capacity(self) -> None:
        """
        A reservation that fits is granted at once and its release gives
        the bytes back (once, however often it is released).
        """
        budget = ByteBudget(100)
        hold = self.successResultOf(budget.take(60))
        self.assertEqual((hold.amount, budget.free), (60, 40))
        hold.release()
        hold.release()
        self.assertEqual(budget.free, 100)

    def test_waits_in_order(self) -> None:
        """
        A reservation that does not fit waits; one queued behind it waits
        too even if it would fit (no overtaking); releases grant them in
        order.
        """
        budget = ByteBudget(100)
        first = self.successResultOf(budget.take(80))
        big = budget.take(50)
        small = budget.take(10)
        self.assertNoResult(big)
        self.assertNoResult(small)
        self.assertEqual(budget.waiting, 2)
        first.release()
        self.assertEqual(self.successResultOf(big).amount, 50)
        self.assertEqual(self.successResultOf(small).amount, 10)
        self.assertEqual((budget.free, budget.waiting), (40, 0))

    def test_clamped_to_capacity(self) -> None:
        """
        A reservation larger than the whole budget takes the whole budget
        (so it can always be served).
        """
        budget = ByteBudget(100)
        hold = self.successResultOf(budget.take(10_000))
        self.assertEqual((hold.amount, budget.free), (100, 0))

    def test_cancel_gives_up_the_place(self) -> None:
        """
        Cancelling a waiting reservation removes it, and those behind it
        are served if they now can.
        """
        budget = ByteBudget(100)
        first = self.successResultOf(budget.take(70))
        blocked = budget.take(50)
        behind = budget.take(20)
        self.assertNoResult(behind)
        blocked.cancel()
        self.failureResultOf(blocked, defer.CancelledError)
        self.assertEqual(self.successResultOf(behind).amount, 20)
        first.release()
        self.assertEqual(budget.free, 80)

    def test_positive_capacity(self) -> None:
        """
        A budget of nothing is refused.
        """
        self.assertRaises(ValueError, ByteBudget, 0)


class HeldSnapshotTests(SynchronousTestCase):
    """
    L{HeldSnapshot}, L{claim}, L{release}, L{preview_weight}.
    """

    def test_claim_once(self) -> None:
        """
        The reservation is claimed once; the snapshot stays a plain-looking
        snapshot.
        """
        budget = ByteBudget(10)
        snapshot = HeldSnapshot({"status": "running", "stdout": "abc"}, self.successResultOf(budget.take(4)))
        self.assertEqual(snapshot, {"status": "running", "stdout": "abc"})
        hold = claim(snapshot)
        assert hold is not None
        self.assertIsNone(claim(snapshot))
        hold.release()
        self.assertEqual(budget.free, 10)
        self.assertIsNone(claim({"status": "running"}))

    def test_release_unsent(self) -> None:
        """
        L{release} gives back the reservation of a snapshot not sent.
        """
        budget = ByteBudget(10)
        snapshot = HeldSnapshot({}, self.successResultOf(budget.take(4)))
        release(snapshot)
        release({})
        self.assertEqual(budget.free, 10)

    def test_freed_unclaimed(self) -> None:
        """
        A snapshot dropped with its reservation unclaimed gives it back.
        """
        budget = ByteBudget(10)
        snapshot = HeldSnapshot({}, self.successResultOf(budget.take(4)))
        del snapshot
        gc.collect()
        self.assertEqual(budget.free, 10)

    def test_weight(self) -> None:
        """
        The weight of a snapshot is the characters of its two previews.
        """
        self.assertEqual(preview_weight({"stdout": "ab", "stderr": "cde"}), 5)
        self.assertEqual(preview_weight({"status": "accepted"}), 0)
