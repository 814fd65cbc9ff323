# -*- test-case-name: tests.test_resourceview -*-
"""
The body of C{GET /api/v1/runtime/resources}: capacity, what the active
tasks reserve, what is left, and the same per tenant
(L{render_resources}).  Pure: the store's active reservations come in as
L{ActiveReservation}s.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

import attrs

from execgo.core.constants import JSON
from execgo.core.reservation import Reservation


@attrs.frozen
class ActiveReservation:
    """
    A task holding an unreleased reservation, as read from the store.

    @ivar reserved_at: the reservation time, formatted as the API formats
        timestamps (RFC 3339 in UTC), or C{None} when unknown.
    """

    task_id: str
    status: str
    tenant: Optional[str]
    reservation: Reservation
    reserved_at: Optional[str] = None


_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z\Z")


def _timestamp_key(value: Optional[str]) -> Tuple[int, str, int]:
    """
    Sort key for a reservation time: known times in time order, unknown
    (or unparseable) ones last.  Parsed rather than compared as text,
    because C{...:30Z} sorts after C{...:30.125Z} as a string.
    """
    match = None if value is None else _TIMESTAMP.match(value)
    if match is None:
        return (1, "", 0)
    fraction = match.group(2) or ""
    return (0, match.group(1), int(fraction.ljust(9, "0")))


def _sum(reservations: Iterable[Reservation]) -> Reservation:
    """
    Add reservations up; absent memory/pids count as 0.
    """
    slots = memory = pids = 0
    for reservation in reservations:
        slots += reservation.task_slots
        memory += reservation.memory_bytes or 0
        pids += reservation.pids or 0
    return Reservation(task_slots=slots, memory_bytes=memory, pids=pids)


def _reserved_json(reservations: Sequence[Reservation], capacity: Optional[Reservation]) -> JSON:
    """
    Render summed reservations: memory/pids present when C{capacity} has
    them or some reservation carries them.
    """
    total = _sum(reservations)
    out: JSON = {"task_slots": total.task_slots}
    if (capacity is not None and capacity.memory_bytes is not None) or any(
        r.memory_bytes is not None for r in reservations
    ):
        out["memory_bytes"] = total.memory_bytes
    if (capacity is not None and capacity.pids is not None) or any(
        r.pids is not None for r in reservations
    ):
        out["pids"] = total.pids
    return out


def _available_json(bound: Reservation, reservations: Sequence[Reservation]) -> JSON:
    """
    Render C{bound} minus the summed reservations, floored at 0, with
    memory/pids only where C{bound} has them.
    """
    total = _sum(reservations)
    out: JSON = {"task_slots": max(0, bound.task_slots - total.task_slots)}
    if bound.memory_bytes is not None:
        out["memory_bytes"] = max(0, bound.memory_bytes - (total.memory_bytes or 0))
    if bound.pids is not None:
        out["pids"] = max(0, bound.pids - (total.pids or 0))
    return out


def _tenants_json(
    ordered: Sequence[ActiveReservation], quotas: Mapping[str, Reservation]
) -> List[JSON]:
    """
    One entry per tenant with a quota or a reservation, by name: its
    quota, what it reserves and what its quota leaves.
    """
    names = {entry.tenant for entry in ordered if entry.tenant is not None}
    names.update(quotas)
    tenants = []
    for name in sorted(names):
        own = [entry.reservation for entry in ordered if entry.tenant == name]
        quota = quotas.get(name)
        tenant: JSON = {"tenant": name}
        if quota is not None:
            tenant["quota"] = quota.to_json()
        tenant["reserved"] = _reserved_json(own, None)
        if quota is not None:
            tenant["available"] = _available_json(quota, own)
        tenants.append(tenant)
    return tenants


def render_resources(
    runtime_id: str,
    capacity: Reservation,
    quotas: Mapping[str, Reservation],
    active: Sequence[ActiveReservation],
    accepted_waiting: int,
) -> JSON:
    """
    The body of C{GET /api/v1/runtime/resources}.

    C{active} should come in creation order; it is (stably) ordered by
    reservation time here, so creation time breaks ties.
    """
    ordered = sorted(active, key=lambda entry: _timestamp_key(entry.reserved_at))
    reservations = [entry.reservation for entry in ordered]
    entries = []
    for entry in ordered:
        item: JSON = {
            "task_id": entry.task_id,
            "status": entry.status,
            "reservation": entry.reservation.to_json(),
        }
        if entry.reserved_at is not None:
            item["reserved_at"] = entry.reserved_at
        entries.append(item)
    return {
        "runtime_id": runtime_id,
        "capacity": capacity.to_json(),
        "reserved": _reserved_json(reservations, capacity),
        "available": _available_json(capacity, reservations),
        "active_reservations": entries,
        "accepted_waiting_tasks": accepted_waiting,
        "tenants": _tenants_json(ordered, quotas),
    }
