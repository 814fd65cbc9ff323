"""
Tests for L{execgo.core.ledger}: quota parsing, admission, the dispatcher's
ledger and the resources rendering.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.errors import InsufficientResources, InvalidInput
from execgo.core.ledger import (
    ActiveReservation,
    Capacity,
    Ledger,
    check_admission,
    parse_tenant_quota,
    parse_tenant_quotas,
    render_resources,
)
from execgo.core.models import Reservation


class CapacityTests(SynchronousTestCase):
    """
    L{Capacity.to_json}.
    """

    def test_unknown_dimensions_omitted(self) -> None:
        """
        Memory and pids are left out when unknown.
        """
        self.assertEqual(Capacity(task_slots=3).to_json(), {"task_slots": 3})

    def test_order(self) -> None:
        """
        Keys come in the order task_slots, memory_bytes, pids; zeroes stay.
        """
        rendered = Capacity(task_slots=0, memory_bytes=0, pids=0).to_json()
        self.assertEqual(list(rendered.items()), [
            ("task_slots", 0), ("memory_bytes", 0), ("pids", 0)
        ])


class ParseTenantQuotaTests(SynchronousTestCase):
    """
    L{parse_tenant_quota} follows every rule of the C{--tenant-quota} format.
    """

    def assertInvalid(self, spec: str) -> InvalidInput:
        """
        Parsing C{spec} raises L{InvalidInput} whose message has the
        C{invalid input:} prefix; return it.
        """
        error = self.assertRaises(InvalidInput, parse_tenant_quota, spec)
        self.assertTrue(error.message.startswith("invalid input: "), error.message)
        return error

    def test_full(self) -> None:
        """
        All three keys are read.
        """
        self.assertEqual(
            parse_tenant_quota("alice=slots:2,memory:2147483648,pids:256"),
            ("alice", Capacity(task_slots=2, memory_bytes=2147483648, pids=256)),
        )

    def test_slots_only(self) -> None:
        """
        Memory and pids are optional and stay unknown when absent.
        """
        self.assertEqual(parse_tenant_quota("bob=slots:0"), ("bob", Capacity(0)))

    def test_no_equals(self) -> None:
        """
        A specification without C{=} is an error.
        """
        error = self.assertInvalid("alice")
        self.assertIn("'alice'", error.detail)

    def test_split_at_first_equals(self) -> None:
        """
        Only the first C{=} splits; a later one is part of an item, which
        then has a bad value.
        """
        self.assertIn("'1=2'", self.assertInvalid("a=slots:1=2").detail)
        error = self.assertInvalid("a=b=slots:1")
        self.assertIn("unknown key 'b=slots'", error.detail)

    def test_name_trimmed(self) -> None:
        """
        The name is trimmed.
        """
        self.assertEqual(parse_tenant_quota("  alice \t=slots:1")[0], "alice")

    def test_name_blank(self) -> None:
        """
        A blank name is an error.
        """
        self.assertIn("empty tenant name", self.assertInvalid("  =slots:1").detail)

    def test_items_trimmed_and_empty_skipped(self) -> None:
        """
        Items, keys and values are trimmed; empty items are skipped.
        """
        self.assertEqual(
            parse_tenant_quota("t= , slots : 4 ,, memory: 10 ,"),
            ("t", Capacity(task_slots=4, memory_bytes=10)),
        )

    def test_item_without_colon(self) -> None:
        """
        An item without C{:} is an error.
        """
        self.assertIn("'slots'", self.assertInvalid("t=slots").detail)

    def test_value_split_at_first_colon(self) -> None:
        """
        Only the first C{:} splits an item, so C{slots:1:2} has the value
        C{1:2}, which is not a number.
        """
        self.assertIn("'1:2'", self.assertInvalid("t=slots:1:2").detail)

    def test_unknown_key(self) -> None:
        """
        Keys other than slots, memory and pids are errors, case-sensitively.
        """
        for spec in ("t=slots:1,cpu:2", "t=Slots:1", "t=slots:1,:3"):
            self.assertIn("unknown key", self.assertInvalid(spec).detail)

    def test_bad_values(self) -> None:
        """
        Values must be unsigned 64-bit decimal integers.
        """
        for value in ("", "-1", "1.5", "0x10", "1_000", "abc", "\u0661",
                      "18446744073709551616", "+"):
            self.assertIn("unsigned 64-bit", self.assertInvalid(f"t=slots:{value}").detail)

    def test_u64_edges(self) -> None:
        """
        Zero and 2**64-1 are accepted, as is a leading C{+} (as Rust's
        C{u64} parser accepts it).
        """
        self.assertEqual(
            parse_tenant_quota("t=slots:0,memory:18446744073709551615,pids:+7")[1],
            Capacity(task_slots=0, memory_bytes=2**64 - 1, pids=7),
        )

    def test_slots_mandatory(self) -> None:
        """
        A specification without slots is an error, even with other keys,
        and so is one with no items at all.
        """
        self.assertIn("must set slots", self.assertInvalid("t=memory:5").detail)
        self.assertIn("must set slots", self.assertInvalid("t=").detail)

    def test_repeated_key_keeps_last(self) -> None:
        """
        A repeated key keeps its last value.
        """
        self.assertEqual(
            parse_tenant_quota("t=slots:1,pids:3,slots:5,pids:4")[1],
            Capacity(task_slots=5, pids=4),
        )

    def test_repeated_name_keeps_last(self) -> None:
        """
        L{parse_tenant_quotas} keeps the last specification of a name.
        """
        self.assertEqual(
            parse_tenant_quotas(["a=slots:1,memory:9", "b=slots:2", "a=slots:3"]),
            {"a": Capacity(3), "b": Capacity(2)},
        )

    def test_first_error_aborts(self) -> None:
        """
        L{parse_tenant_quotas} raises on an invalid entry.
        """
        self.assertRaises(InvalidInput, parse_tenant_quotas, ["a=slots:1", "b"])


class CheckAdmissionTests(SynchronousTestCase):
    """
    L{check_admission}: the submit-time checks of one task against the
    capacity and its tenant's quota.
    """

    capacity = Capacity(task_slots=2, memory_bytes=1000, pids=50)

    def test_fits(self) -> None:
        """
        A task within every bound is admitted, whatever the tenant.
        """
        for tenant in (None, "alice", "nobody"):
            check_admission(
                Reservation(1, 1000, 50), self.capacity,
                {"alice": Capacity(1, 1000, 50)}, tenant,
            )

    def test_zero_slots(self) -> None:
        """
        A capacity of zero slots rejects every task.
        """
        error = self.assertRaises(
            InsufficientResources, check_admission, Reservation(), Capacity(0), {}, None
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
        check_admission(Reservation(1, 10**18, 10**9), Capacity(1), {}, None)

    def test_tenant_quota(self) -> None:
        """
        The tenant's quota applies after the capacity, naming the tenant;
        C{slots:0} rejects every task of that tenant only.
        """
        quotas = {"alice": Capacity(0), "bob": Capacity(1, 100, None)}
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
        ledger = Ledger(Capacity(2), {})
        self.assertTrue(ledger.fits(Reservation(), None))
        ledger.reserve("a", None, Reservation())
        ledger.reserve("b", None, Reservation())
        self.assertFalse(ledger.fits(Reservation(), None))
        ledger.release("a")
        self.assertTrue(ledger.fits(Reservation(), None))
        self.assertEqual(list(ledger.active), ["b"])

    def test_release_idempotent(self) -> None:
        """
        Releasing an unknown or already released task does nothing.
        """
        ledger = Ledger(Capacity(1), {})
        ledger.reserve("a", None, Reservation())
        ledger.release("a")
        ledger.release("a")
        ledger.release("never")
        self.assertEqual(ledger.reserved, Capacity(0, 0, 0))

    def test_reserve_again_replaces(self) -> None:
        """
        Reserving twice for one task counts it once.
        """
        ledger = Ledger(Capacity(4), {})
        ledger.reserve("a", "t", Reservation(1, 10, None))
        ledger.reserve("a", "t", Reservation(1, 20, 3))
        self.assertEqual(ledger.reserved, Capacity(1, 20, 3))

    def test_memory_and_pids(self) -> None:
        """
        Memory and pids are checked on top of current use, only when the
        capacity knows them and the task reserves them.
        """
        ledger = Ledger(Capacity(10, memory_bytes=100, pids=10), {})
        ledger.reserve("a", None, Reservation(1, 60, 6))
        self.assertTrue(ledger.fits(Reservation(1, 40, 4), None))
        self.assertFalse(ledger.fits(Reservation(1, 41, None), None))
        self.assertFalse(ledger.fits(Reservation(1, None, 5), None))
        self.assertTrue(ledger.fits(Reservation(1, None, None), None))
        unknown = Ledger(Capacity(10), {})
        unknown.reserve("a", None, Reservation(1, 10**15, 10**6))
        self.assertTrue(unknown.fits(Reservation(1, 10**15, 10**6), None))

    def test_tenant_quota(self) -> None:
        """
        A tenant with a quota is bounded by its own reservations; others
        only by the capacity; memory/pids only where the quota has them.
        """
        ledger = Ledger(Capacity(10, 1000, 100), {"a": Capacity(2, 100, None)})
        ledger.reserve("x", "a", Reservation(1, 60, 50))
        ledger.reserve("y", "b", Reservation(1, 500, 40))
        self.assertEqual(ledger.tenant_reserved("a"), Capacity(1, 60, 50))
        self.assertEqual(ledger.tenant_reserved("zzz"), Capacity(0, 0, 0))
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
        ledger = Ledger(Capacity(1), {"a": Capacity(5)})
        ledger.reserve("x", None, Reservation())
        self.assertFalse(ledger.fits(Reservation(), "a"))

    def test_from_active(self) -> None:
        """
        The ledger is rebuilt from the store's active reservations.
        """
        ledger = Ledger.from_active(
            Capacity(3), {},
            [ActiveReservation("a", "running", "t", Reservation(1, 5, None), None),
             ActiveReservation("b", "running", None, Reservation(1, None, 2), None)],
        )
        self.assertEqual(ledger.reserved, Capacity(2, 5, 2))
        self.assertEqual(ledger.active["a"].tenant, "t")
        view = ledger.active
        with self.assertRaises(TypeError):
            view["c"] = None  # type: ignore[index]


class RenderResourcesTests(SynchronousTestCase):
    """
    L{render_resources} renders the body of C{/api/v1/runtime/resources}.
    """

    def test_empty(self) -> None:
        """
        With nothing reserved, reserved mirrors the capacity's dimensions
        with zeroes and lists are present but empty.
        """
        body = render_resources("rt", Capacity(4, 1000, 64), {}, [], 0)
        self.assertEqual(
            json.dumps(body),
            '{"runtime_id": "rt", "capacity": {"task_slots": 4, "memory_bytes": 1000,'
            ' "pids": 64}, "reserved": {"task_slots": 0, "memory_bytes": 0, "pids": 0},'
            ' "available": {"task_slots": 4, "memory_bytes": 1000, "pids": 64},'
            ' "active_reservations": [], "accepted_waiting_tasks": 0, "tenants": []}',
        )

    def test_full(self) -> None:
        """
        Presence rules, ordering by reservation time (parsed, creation order
        breaking ties, unknown last), floor at zero and the tenant list.
        """
        active = [
            ActiveReservation("late", "running", "alice",
                              Reservation(1, 536870912, 32), "2026-04-23T10:15:31Z"),
            ActiveReservation("nodate", "accepted", None, Reservation(), None),
            ActiveReservation("whole", "running", "zed", Reservation(1, None, None),
                              "2026-04-23T10:15:30Z"),
            ActiveReservation("frac", "running", "zed", Reservation(1, None, 5),
                              "2026-04-23T10:15:30.125Z"),
            ActiveReservation("early", "running", None, Reservation(),
                              "2026-04-23T10:15:30Z"),
        ]
        quotas = {
            "alice": Capacity(2, 2147483648, 256),
            "carol": Capacity(1),
            "zed": Capacity(1, None, 1),
        }
        body = render_resources("rt", Capacity(4), quotas, active, 7)
        self.assertEqual(body["capacity"], {"task_slots": 4})
        self.assertEqual(
            body["reserved"], {"task_slots": 5, "memory_bytes": 536870912, "pids": 37}
        )
        self.assertEqual(body["available"], {"task_slots": 0})
        self.assertEqual(
            [entry["task_id"] for entry in body["active_reservations"]],
            ["whole", "early", "frac", "late", "nodate"],
        )
        self.assertEqual(
            body["active_reservations"][3],
            {"task_id": "late", "status": "running",
             "reservation": {"task_slots": 1, "memory_bytes": 536870912, "pids": 32},
             "reserved_at": "2026-04-23T10:15:31Z"},
        )
        self.assertEqual(
            body["active_reservations"][4],
            {"task_id": "nodate", "status": "accepted",
             "reservation": {"task_slots": 1}},
        )
        self.assertEqual(body["accepted_waiting_tasks"], 7)
        self.assertEqual(
            json.dumps(body["tenants"][0], separators=(",", ":")),
            '{"tenant":"alice","quota":{"task_slots":2,"memory_bytes":2147483648,'
            '"pids":256},"reserved":{"task_slots":1,"memory_bytes":536870912,'
            '"pids":32},"available":{"task_slots":1,"memory_bytes":1610612736,'
            '"pids":224}}',
        )
        self.assertEqual(body["tenants"][1], {
            "tenant": "carol", "quota": {"task_slots": 1},
            "reserved": {"task_slots": 0}, "available": {"task_slots": 1},
        })
        self.assertEqual(body["tenants"][2], {
            "tenant": "zed", "quota": {"task_slots": 1, "pids": 1},
            "reserved": {"task_slots": 2, "pids": 5},
            "available": {"task_slots": 0, "pids": 0},
        })
        self.assertEqual(len(body["tenants"]), 3)
        self.assertEqual(list(body), [
            "runtime_id", "capacity", "reserved", "available",
            "active_reservations", "accepted_waiting_tasks", "tenants",
        ])

    def test_tenant_without_quota(self) -> None:
        """
        A tenant holding a reservation but without a quota is listed with
        only its reserved sums; names sort by code point.
        """
        active = [
            ActiveReservation("a", "running", "b", Reservation(1, 10, None), None),
            ActiveReservation("c", "running", "B", Reservation(), None),
        ]
        body = render_resources("rt", Capacity(2, 5, None), {}, active, 0)
        self.assertEqual(body["tenants"], [
            {"tenant": "B", "reserved": {"task_slots": 1}},
            {"tenant": "b", "reserved": {"task_slots": 1, "memory_bytes": 10}},
        ])
        self.assertEqual(body["available"], {"task_slots": 0, "memory_bytes": 0})
        self.assertEqual(body["reserved"], {"task_slots": 2, "memory_bytes": 10})
