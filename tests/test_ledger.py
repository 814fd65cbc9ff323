"""
Tests for L{execgo.core.ledger}: admission and the dispatcher's ledger.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.errors import InsufficientResources
from execgo.core.ledger import Ledger, check_admission
from execgo.core.reservation import Reservation
from execgo.core.resourceview import ActiveReservation


class CheckAdmissionTests(SynchronousTestCase):
    """
    L{check_admission}: the submit-time checks of one task against the
    capacity and its tenant's quota.
    """

    capacity = Reservation(task_slots=2, memory_bytes=1000, pids=50)

    def test_fits(self) -> None:
        """
        A task within every bound is admitted, whatever the tenant.
        """
        for tenant in (None, "alice", "nobody"):
            check_admission(
                Reservation(1, 1000, 50), self.capacity,
                {"alice": Reservation(1, 1000, 50)}, tenant,
            )

    def test_zero_slots(self) -> None:
        """
        A capacity of zero slots rejects every task.
        """
        error = self.assertRaises(
            InsufficientResources, check_admission, Reservation(), Reservation(0), {}, None
        )
        self.assertEqual(
            error.message,
            "insufficient resources: task needs 1 task slot(s), 0 available"
            " in runtime capacity",
        )

    def test_memory_and_pids(self) -> None:
        """
        Memory and pids above capacity are rejected.
        """
        error = self.assertRaises(
            InsufficientResources, check_admission,
            Reservation(1, 1001, None), self.capacity, {}, None,
        )
        self.assertIn("memory_bytes 1001 exceeds 1000", error.detail)
        error = self.assertRaises(
            InsufficientResources, check_admission,
            Reservation(1, None, 51), self.capacity, {}, None,
        )
        self.assertIn("pids_max 51 exceeds 50", error.detail)

    def test_unknown_capacity_not_compared(self) -> None:
        """
        Memory and pids are compared only when the capacity knows them.
        """
        check_admission(Reservation(1, 10**18, 10**9), Reservation(1), {}, None)

    def test_tenant_quota(self) -> None:
        """
        The tenant's quota applies after the capacity, naming the tenant;
        C{slots:0} rejects every task of that tenant only.
        """
        quotas = {"alice": Reservation(0), "bob": Reservation(1, 100, None)}
        error = self.assertRaises(
            InsufficientResources, check_admission,
            Reservation(), self.capacity, quotas, "alice",
        )
        self.assertIn("quota of tenant 'alice'", error.detail)
        self.assertRaises(
            InsufficientResources, check_admission,
            Reservation(1, 101, None), self.capacity, quotas, "bob",
        )
        check_admission(Reservation(1, 100, 50), self.capacity, quotas, "bob")
        check_admission(Reservation(), self.capacity, quotas, "Alice")
        check_admission(Reservation(), self.capacity, quotas, None)


class LedgerTests(SynchronousTestCase):
    """
    L{Ledger}: the dispatch-time checks (does a task fit on top of the
    current usage).
    """

    def test_slots(self) -> None:
        """
        Tasks fit until the slots are used up; releasing frees a slot.
        """
        ledger = Ledger(Reservation(2), {})
        self.assertTrue(ledger.fits(Reservation(), None))
        ledger.reserve("a", None, Reservation())
        ledger.reserve("b", None, Reservation())
        self.assertFalse(ledger.fits(Reservation(), None))
        ledger.release("a")
        self.assertTrue(ledger.fits(Reservation(), None))
        self.assertEqual(list(ledger.active), ["b"])

    def test_standby(self) -> None:
        """
        Standby slots let as many tasks again be held beyond the capacity's
        slots, and no more; memory and the tenants' quotas count them as
        if they ran.
        """
        ledger = Ledger(Reservation(2, 1000), {"t": Reservation(2)})
        ledger.standby = 2
        for task_id in ("a", "b", "c"):
            self.assertTrue(ledger.fits(Reservation(1, 300), None))
            ledger.reserve(task_id, None, Reservation(1, 300))
        self.assertFalse(ledger.full)
        self.assertFalse(ledger.fits(Reservation(1, 200), None))
        self.assertFalse(ledger.fits_capacity(Reservation(1, 200)))
        self.assertTrue(ledger.fits(Reservation(1, 100), None))
        self.assertTrue(ledger.fits(Reservation(1), "t"))
        ledger.reserve("t1", "t", Reservation(1))
        ledger.reserve("t2", "t", Reservation(1))
        self.assertTrue(ledger.full)
        ledger.release("a")
        ledger.release("b")
        self.assertFalse(ledger.fits(Reservation(1), "t"))
        self.assertTrue(ledger.fits(Reservation(1), None))
        ledger.standby = 0
        self.assertTrue(ledger.full)
        self.assertFalse(ledger.fits(Reservation(1), None))

    def test_release_idempotent(self) -> None:
        """
        Releasing an unknown or already released task does nothing.
        """
        ledger = Ledger(Reservation(1), {})
        ledger.reserve("a", None, Reservation())
        ledger.release("a")
        ledger.release("a")
        ledger.release("never")
        self.assertEqual(ledger.reserved, Reservation(0, 0, 0))

    def test_reserve_again_replaces(self) -> None:
        """
        Reserving twice for one task counts it once.
        """
        ledger = Ledger(Reservation(4), {})
        ledger.reserve("a", "t", Reservation(1, 10, None))
        ledger.reserve("a", "t", Reservation(1, 20, 3))
        self.assertEqual(ledger.reserved, Reservation(1, 20, 3))

    def test_memory_and_pids(self) -> None:
        """
        Memory and pids are checked on top of current use, only when the
        capacity knows them and the task reserves them.
        """
        ledger = Ledger(Reservation(10, memory_bytes=100, pids=10), {})
        ledger.reserve("a", None, Reservation(1, 60, 6))
        self.assertTrue(ledger.fits(Reservation(1, 40, 4), None))
        self.assertFalse(ledger.fits(Reservation(1, 41, None), None))
        self.assertFalse(ledger.fits(Reservation(1, None, 5), None))
        self.assertTrue(ledger.fits(Reservation(1, None, None), None))
        unknown = Ledger(Reservation(10), {})
        unknown.reserve("a", None, Reservation(1, 10**15, 10**6))
        self.assertTrue(unknown.fits(Reservation(1, 10**15, 10**6), None))

    def test_tenant_quota(self) -> None:
        """
        A tenant with a quota is bounded by its own reservations; others
        only by the capacity; memory/pids only where the quota has them.
        """
        ledger = Ledger(Reservation(10, 1000, 100), {"a": Reservation(2, 100, None)})
        ledger.reserve("x", "a", Reservation(1, 60, 50))
        ledger.reserve("y", "b", Reservation(1, 500, 40))
        self.assertEqual(ledger.tenant_reserved("a"), Reservation(1, 60, 50))
        self.assertEqual(ledger.tenant_reserved("zzz"), Reservation(0, 0, 0))
        self.assertTrue(ledger.fits(Reservation(1, 40, 10), "a"))
        self.assertFalse(ledger.fits(Reservation(1, 41, None), "a"))
        self.assertTrue(ledger.fits(Reservation(1, 300, None), "b"))
        ledger.reserve("z", "a", Reservation())
        self.assertFalse(ledger.fits(Reservation(), "a"))
        self.assertTrue(ledger.fits(Reservation(), "b"))
        self.assertTrue(ledger.fits(Reservation(), None))

    def test_global_limit_applies_to_tenants(self) -> None:
        """
        A tenant within its quota still needs global room.
        """
        ledger = Ledger(Reservation(1), {"a": Reservation(5)})
        ledger.reserve("x", None, Reservation())
        self.assertFalse(ledger.fits(Reservation(), "a"))

    def test_from_active(self) -> None:
        """
        The ledger is rebuilt from the store's active reservations.
        """
        ledger = Ledger.from_active(
            Reservation(3), {},
            [ActiveReservation("a", "running", "t", Reservation(1, 5, None), None),
             ActiveReservation("b", "running", None, Reservation(1, None, 2), None)],
        )
        self.assertEqual(ledger.reserved, Reservation(2, 5, 2))
        self.assertEqual(ledger.active["a"].tenant, "t")
        view = ledger.active
        with self.assertRaises(TypeError):
            view["c"] = None  # type: ignore[index]
