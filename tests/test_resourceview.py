"""
Tests for L{execgo.core.resourceview}: the body of
C{/api/v1/runtime/resources}.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.reservation import Reservation
from execgo.core.resourceview import ActiveReservation, render_resources


class AmountTests(SynchronousTestCase):
    """
    L{Reservation.to_json} as a capacity renders it (C{ResourceCapacity}).
    """

    def test_unknown_dimensions_omitted(self) -> None:
        """
        Memory and pids are left out when unknown.
        """
        self.assertEqual(Reservation(task_slots=3).to_json(), {"task_slots": 3})

    def test_order(self) -> None:
        """
        Keys come in the order task_slots, memory_bytes, pids; zeroes stay.
        """
        rendered = Reservation(task_slots=0, memory_bytes=0, pids=0).to_json()
        self.assertEqual(list(rendered.items()), [
            ("task_slots", 0), ("memory_bytes", 0), ("pids", 0)
        ])


class RenderResourcesTests(SynchronousTestCase):
    """
    L{render_resources} renders the body of C{/api/v1/runtime/resources}.
    """

    def test_empty(self) -> None:
        """
        With nothing reserved, reserved mirrors the capacity's dimensions
        with zeroes and lists are present but empty.
        """
        body = render_resources("rt", Reservation(4, 1000, 64), {}, [], 0)
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
            "alice": Reservation(2, 2147483648, 256),
            "carol": Reservation(1),
            "zed": Reservation(1, None, 1),
        }
        body = render_resources("rt", Reservation(4), quotas, active, 7)
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
        body = render_resources("rt", Reservation(2, 5, None), {}, active, 0)
        self.assertEqual(body["tenants"], [
            {"tenant": "B", "reserved": {"task_slots": 1}},
            {"tenant": "b", "reserved": {"task_slots": 1, "memory_bytes": 10}},
        ])
        self.assertEqual(body["available"], {"task_slots": 0, "memory_bytes": 0})
        self.assertEqual(body["reserved"], {"task_slots": 2, "memory_bytes": 10})
