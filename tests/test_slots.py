"""
Tests for L{execgo.supervisor.slots.Slots}: the launch orders a supervisor
keeps until one of its task slots frees.
"""

from __future__ import annotations

from typing import List

from twisted.trial.unittest import SynchronousTestCase

from execgo.supervisor.slots import Slots


def ids(orders: List[object]) -> List[str]:
    """
    The task ids of C{(task_id, on_declined)} orders.
    """
    return [order[0] for order in orders]  # type: ignore[index]


class SlotsTests(SynchronousTestCase):
    """
    What L{Slots} keeps and hands out, and in which order.
    """

    def test_taken_in_order_as_slots_free(self) -> None:
        """
        Orders come out oldest first, as many as slots are free next to
        the workloads supervised, and only once.
        """
        slots = Slots(2)
        slots.hold([("a", None), ("b", None), ("c", None)], "server")
        self.assertEqual(ids(slots.take(occupied=2)), [])
        self.assertEqual(ids(slots.take(occupied=1)), ["a"])
        self.assertEqual(ids(slots.take(occupied=0)), ["b", "c"])
        self.assertEqual(len(slots), 0)
        self.assertEqual(slots.take(occupied=0), [])

    def test_over_occupied(self) -> None:
        """
        More workloads than slots (a limit lowered by new settings) free
        none.
        """
        slots = Slots(1)
        slots.hold([("a", None)], "server")
        self.assertEqual(slots.take(occupied=3), [])
        self.assertIn("a", slots)

    def test_no_limit(self) -> None:
        """
        With no limit every order kept is taken at once.
        """
        slots = Slots()
        slots.hold([("a", None), ("b", None)], "server")
        self.assertEqual(ids(slots.take(occupied=100)), ["a", "b"])

    def test_ordered_twice(self) -> None:
        """
        An order for a task kept already keeps its place and its decline.
        """
        declines: List[str] = []
        slots = Slots(1)
        slots.hold([("a", lambda: declines.append("first")), ("b", None)], "one")
        slots.hold([("b", None), ("a", lambda: declines.append("second"))], "two")
        taken = slots.take(occupied=0)
        self.assertEqual(ids(taken), ["a"])
        on_declined = taken[0][1]
        assert on_declined is not None
        on_declined()
        self.assertEqual(declines, ["first"])
        self.assertEqual(len(slots), 1)

    def test_forget_a_closed_connection(self) -> None:
        """
        The orders that came by a connection that closed are dropped; the
        others keep their order.
        """
        slots = Slots(1)
        slots.hold([("a", None), ("b", None)], "gone")
        slots.hold([("c", None)], "here")
        slots.hold([("d", None)], "gone")
        slots.forget("gone")
        self.assertNotIn("a", slots)
        self.assertEqual(ids(slots.take(occupied=0)), ["c"])
        self.assertEqual(len(slots), 0)

    def test_put_back_first(self) -> None:
        """
        Orders taken and put back (their claim failed) come out first
        again, in their order, before those kept meanwhile.
        """
        slots = Slots(2)
        slots.hold([("a", None), ("b", None), ("c", None)], "server")
        taken = slots.take(occupied=0)
        slots.hold([("d", None)], "server")
        slots.put_back(taken)
        self.assertEqual(ids(slots.take(occupied=0)), ["a", "b"])
        self.assertEqual(ids(slots.take(occupied=0)), ["c", "d"])
