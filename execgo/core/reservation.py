# -*- test-case-name: tests.test_ledger,tests.test_resourceview -*-
"""
L{Reservation}: an amount of the ledger's resources, what a running task
holds and the shape of capacities, quotas and their sums.
"""

from __future__ import annotations

from typing import Optional

import attrs

from execgo.core.constants import JSON
from execgo.core.models import ResourceLimits


@attrs.frozen
class Reservation:
    """
    An amount of the ledger's three resources: task slots always, memory
    bytes and pids when known.  Above all what a task holds of the ledger
    while it runs (the status's C{reservation}, a C{TaskResourceReservation}
    on the wire, one slot by default); the runtime's capacity, a tenant's
    quota and the sums of reservations are amounts of the same shape
    (C{ResourceCapacity} on the wire), so they are L{Reservation}s too.
    """

    task_slots: int = 1
    memory_bytes: Optional[int] = None
    pids: Optional[int] = None

    def to_json(self) -> JSON:
        """
        Render: task_slots, memory_bytes?, pids?.
        """
        out: JSON = {"task_slots": self.task_slots}
        if self.memory_bytes is not None:
            out["memory_bytes"] = self.memory_bytes
        if self.pids is not None:
            out["pids"] = self.pids
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "Reservation":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(
            task_slots=data.get("task_slots", 1),
            memory_bytes=data.get("memory_bytes"),
            pids=data.get("pids"),
        )

    @classmethod
    def for_limits(cls, limits: ResourceLimits) -> "Reservation":
        """
        The reservation a task with these limits makes: one slot, plus its
        memory and pids limits when set (enforced or not).
        """
        return cls(task_slots=1, memory_bytes=limits.memory_bytes, pids=limits.pids_max)
