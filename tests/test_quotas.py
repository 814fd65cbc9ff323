"""
Tests for L{execgo.core.quotas}: the C{--tenant-quota} format.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.errors import InvalidInput
from execgo.core.quotas import parse_tenant_quota, parse_tenant_quotas
from execgo.core.reservation import Reservation


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
            ("alice", Reservation(task_slots=2, memory_bytes=2147483648, pids=256)),
        )

    def test_slots_only(self) -> None:
        """
        Memory and pids are optional and stay unknown when absent.
        """
        self.assertEqual(parse_tenant_quota("bob=slots:0"), ("bob", Reservation(0)))

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
            ("t", Reservation(task_slots=4, memory_bytes=10)),
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
            Reservation(task_slots=0, memory_bytes=2**64 - 1, pids=7),
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
            Reservation(task_slots=5, pids=4),
        )

    def test_repeated_name_keeps_last(self) -> None:
        """
        L{parse_tenant_quotas} keeps the last specification of a name.
        """
        self.assertEqual(
            parse_tenant_quotas(["a=slots:1,memory:9", "b=slots:2", "a=slots:3"]),
            {"a": Reservation(3), "b": Reservation(2)},
        )

    def test_first_error_aborts(self) -> None:
        """
        L{parse_tenant_quotas} raises on an invalid entry.
        """
        self.assertRaises(InvalidInput, parse_tenant_quotas, ["a=slots:1", "b"])
