# -*- test-case-name: tests.test_ledger -*-
"""
The resource ledger: capacity, reservations and tenant quotas.

Everything here is pure (no I/O): the dispatcher keeps a L{Ledger} mirroring
the active reservations in the store (rebuilt from the store at start-up),
the submit path calls L{check_admission}, and the resources endpoint renders
the store's view with L{render_resources}.
"""

from __future__ import annotations

import re
import types
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import attrs

from execgo.core.errors import InsufficientResources, InvalidInput
from execgo.core.models import Reservation

JSON = Dict[str, Any]

_U64_MAX = 2**64 - 1
# Rust's u64 parser, which the original implementation used, accepts one
# leading "+"; nothing else but ASCII digits (no "_", no Unicode digits).
_UNSIGNED = re.compile(r"\+?[0-9]+\Z")
_QUOTA_KEYS = ("slots", "memory", "pids")


@attrs.frozen
class Capacity:
    """
    A C{ResourceCapacity}: slots always, memory and pids when known.
    """

    task_slots: int
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


def parse_tenant_quota(spec: str) -> Tuple[str, Capacity]:
    """
    Parse one C{--tenant-quota} value, C{NAME=KEY:VALUE[,KEY:VALUE...]}:
    C{KEY} is C{slots} (required), C{memory} or C{pids}, each C{VALUE} an
    unsigned 64-bit integer; blank items are skipped and a repeated key
    keeps its last value.

    @raise InvalidInput: when the specification breaks any rule; the detail
        quotes the specification.
    """
    name, sep, rest = spec.partition("=")
    if not sep:
        raise InvalidInput(
            f"tenant quota {spec!r} must have the form NAME=KEY:VALUE[,KEY:VALUE...]"
        )
    name = name.strip()
    if not name:
        raise InvalidInput(f"tenant quota {spec!r} has an empty tenant name")
    values: Dict[str, int] = {}
    for raw_item in rest.split(","):
        item = raw_item.strip()
        if not item:
            continue
        key, sep, raw_value = item.partition(":")
        if not sep:
            raise InvalidInput(f"tenant quota {spec!r}: item {item!r} must be KEY:VALUE")
        key = key.strip()
        if key not in _QUOTA_KEYS:
            raise InvalidInput(
                f"tenant quota {spec!r}: unknown key {key!r}"
                " (expected slots, memory or pids)"
            )
        value = raw_value.strip()
        if not _UNSIGNED.match(value) or int(value) > _U64_MAX:
            raise InvalidInput(
                f"tenant quota {spec!r}: {key} must be an unsigned 64-bit integer,"
                f" got {value!r}"
            )
        values[key] = int(value)
    if "slots" not in values:
        raise InvalidInput(f"tenant quota {spec!r} must set slots")
    return name, Capacity(
        task_slots=values["slots"],
        memory_bytes=values.get("memory"),
        pids=values.get("pids"),
    )


def parse_tenant_quotas(specs: Iterable[str]) -> Dict[str, Capacity]:
    """
    Parse every C{--tenant-quota} value; a repeated tenant name keeps the
    last specification.

    @raise InvalidInput: on the first invalid specification.
    """
    quotas: Dict[str, Capacity] = {}
    for spec in specs:
        name, quota = parse_tenant_quota(spec)
        quotas[name] = quota
    return quotas


def _exceeds(reservation: Reservation, bound: Capacity) -> Optional[str]:
    """
    Describe the first dimension in which a single reservation is larger
    than C{bound} (each only when both sides are known), or C{None}.
    """
    if reservation.task_slots > bound.task_slots:
        return (
            f"task needs {reservation.task_slots} task slot(s),"
            f" {bound.task_slots} available"
        )
    if (
        reservation.memory_bytes is not None
        and bound.memory_bytes is not None
        and reservation.memory_bytes > bound.memory_bytes
    ):
        return (
            f"memory_bytes {reservation.memory_bytes} exceeds"
            f" {bound.memory_bytes}"
        )
    if (
        reservation.pids is not None
        and bound.pids is not None
        and reservation.pids > bound.pids
    ):
        return f"pids_max {reservation.pids} exceeds {bound.pids}"
    return None


def check_admission(
    reservation: Reservation,
    capacity: Capacity,
    quotas: Mapping[str, Capacity],
    tenant: Optional[str],
) -> None:
    """
    The submit-time checks: the single task against the total capacity,
    then against its tenant's quota if it has one.  Current usage is not
    considered.

    @raise InsufficientResources: naming what does not fit.
    """
    problem = _exceeds(reservation, capacity)
    if problem is not None:
        raise InsufficientResources(f"{problem} in runtime capacity")
    if tenant is not None and tenant in quotas:
        problem = _exceeds(reservation, quotas[tenant])
        if problem is not None:
            raise InsufficientResources(f"{problem} in quota of tenant {tenant!r}")


def _sum(reservations: Iterable[Reservation]) -> Capacity:
    """
    Add reservations up; absent memory/pids count as 0.
    """
    slots = memory = pids = 0
    for reservation in reservations:
        slots += reservation.task_slots
        memory += reservation.memory_bytes or 0
        pids += reservation.pids or 0
    return Capacity(task_slots=slots, memory_bytes=memory, pids=pids)


def _fits_on_top(reservation: Reservation, used: Capacity, bound: Capacity) -> bool:
    """
    Whether C{reservation} fits in C{bound} next to C{used}; memory and pids
    are compared only where C{bound} knows them and the task reserves them.
    """
    if used.task_slots + reservation.task_slots > bound.task_slots:
        return False
    if reservation.memory_bytes is not None and bound.memory_bytes is not None:
        if (used.memory_bytes or 0) + reservation.memory_bytes > bound.memory_bytes:
            return False
    if reservation.pids is not None and bound.pids is not None:
        if (used.pids or 0) + reservation.pids > bound.pids:
            return False
    return True


@attrs.frozen
class Holding:
    """
    One active reservation held by a task, as the L{Ledger} keeps it.
    """

    tenant: Optional[str]
    reservation: Reservation


class Ledger:
    """
    The dispatcher's in-memory mirror of the active reservations.

    One entry per task id; the store stays the source of truth and the
    ledger is rebuilt from it at start-up (L{Ledger.from_active}).  Totals,
    global and per tenant, are kept as running sums, so a fit check costs
    the same whatever the number of tasks.

    @ivar capacity: the fixed runtime capacity.
    @ivar quotas: tenant name to quota.
    """

    def __init__(self, capacity: Capacity, quotas: Mapping[str, Capacity]) -> None:
        self.capacity = capacity
        self.quotas: Mapping[str, Capacity] = dict(quotas)
        self._active: Dict[str, Holding] = {}
        self._reserved = Capacity(task_slots=0, memory_bytes=0, pids=0)
        self._tenants: Dict[str, Capacity] = {}

    @classmethod
    def from_active(
        cls,
        capacity: Capacity,
        quotas: Mapping[str, Capacity],
        active: Iterable["ActiveReservation"],
    ) -> "Ledger":
        """
        Rebuild the ledger from the active reservations found in the store.
        """
        ledger = cls(capacity, quotas)
        for entry in active:
            ledger.reserve(entry.task_id, entry.tenant, entry.reservation)
        return ledger

    @property
    def active(self) -> Mapping[str, Holding]:
        """
        A read-only view: task id to its L{Holding}.
        """
        return types.MappingProxyType(self._active)

    @property
    def reserved(self) -> Capacity:
        """
        Totals of every active reservation (0 where nothing is reserved).
        """
        return self._reserved

    @property
    def full(self) -> bool:
        """
        Whether every task slot is taken (nothing can fit, so a dispatcher
        can stop looking).
        """
        return self._reserved.task_slots >= self.capacity.task_slots

    def tenant_reserved(self, tenant: str) -> Capacity:
        """
        Totals of the active reservations of one tenant.
        """
        return self._tenants.get(tenant, _ZERO)

    def fits_capacity(self, reservation: Reservation) -> bool:
        """
        Whether the task fits the runtime capacity on top of current usage,
        its tenant's quota aside.
        """
        return _fits_on_top(reservation, self._reserved, self.capacity)

    def fits(self, reservation: Reservation, tenant: Optional[str]) -> bool:
        """
        The dispatch-time check: does the task fit on top of the current
        usage, globally and within its tenant's quota?
        """
        if not _fits_on_top(reservation, self._reserved, self.capacity):
            return False
        if tenant is not None and tenant in self.quotas:
            return _fits_on_top(
                reservation, self.tenant_reserved(tenant), self.quotas[tenant]
            )
        return True

    def reserve(
        self, task_id: str, tenant: Optional[str], reservation: Reservation
    ) -> None:
        """
        Record that C{task_id} holds C{reservation}; reserving again for the
        same task replaces the earlier entry.
        """
        self.release(task_id)
        self._active[task_id] = Holding(tenant=tenant, reservation=reservation)
        self._reserved = _add(self._reserved, reservation, 1)
        if tenant is not None:
            self._tenants[tenant] = _add(self.tenant_reserved(tenant), reservation, 1)

    def release(self, task_id: str) -> None:
        """
        Forget the reservation of C{task_id}; releasing twice is harmless.
        """
        holding = self._active.pop(task_id, None)
        if holding is None:
            return
        self._reserved = _add(self._reserved, holding.reservation, -1)
        if holding.tenant is not None:
            left = _add(self.tenant_reserved(holding.tenant), holding.reservation, -1)
            if left.task_slots == 0:
                del self._tenants[holding.tenant]
            else:
                self._tenants[holding.tenant] = left


_ZERO = Capacity(task_slots=0, memory_bytes=0, pids=0)


def _add(total: Capacity, reservation: Reservation, sign: int) -> Capacity:
    """
    C{total} plus (C{sign} 1) or minus (C{sign} -1) one reservation.
    """
    return Capacity(
        task_slots=total.task_slots + sign * reservation.task_slots,
        memory_bytes=(total.memory_bytes or 0) + sign * (reservation.memory_bytes or 0),
        pids=(total.pids or 0) + sign * (reservation.pids or 0),
    )


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


def _reserved_json(reservations: Sequence[Reservation], capacity: Optional[Capacity]) -> JSON:
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


def _available_json(bound: Capacity, reservations: Sequence[Reservation]) -> JSON:
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


def render_resources(
    runtime_id: str,
    capacity: Capacity,
    quotas: Mapping[str, Capacity],
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
    return {
        "runtime_id": runtime_id,
        "capacity": capacity.to_json(),
        "reserved": _reserved_json(reservations, capacity),
        "available": _available_json(capacity, reservations),
        "active_reservations": entries,
        "accepted_waiting_tasks": accepted_waiting,
        "tenants": tenants,
    }
