# -*- test-case-name: tests.test_ledger -*-
"""
The resource ledger's accounting: whether a task can ever be admitted
(L{check_admission}) and what the active tasks hold (L{Ledger}).

Capacity, a tenant's quota, a task's reservation and the sums of
reservations are all amounts of the same three resources (task slots,
memory bytes, pids), so one type, L{Reservation}, serves for each.

Everything here is pure (no I/O): the dispatcher keeps a L{Ledger}
mirroring the active reservations in the store (rebuilt from the store at
start-up) and the submit path calls L{check_admission}.  The quotas are
parsed by L{execgo.core.quotas}; C{/api/v1/runtime/resources} is rendered
by L{execgo.core.resourceview}.
"""

from __future__ import annotations

import types
from typing import Dict, Iterable, Mapping, Optional

import attrs

from execgo.core.errors import InsufficientResources
from execgo.core.reservation import Reservation
from execgo.core.resourceview import ActiveReservation


def _exceeds(reservation: Reservation, bound: Reservation) -> Optional[str]:
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
    capacity: Reservation,
    quotas: Mapping[str, Reservation],
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


def fits_on_top(reservation: Reservation, used: Reservation, bound: Reservation) -> bool:
    """
    Whether C{reservation} fits in C{bound} next to C{used}; memory and pids
    are compared only where C{bound} knows them and the task reserves them.
    The ledger's check, and the claim's (L{execgo.store.transitions}).
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


#: Nothing reserved.
NOTHING = Reservation(task_slots=0, memory_bytes=0, pids=0)


class Ledger:
    """
    The dispatcher's in-memory mirror of the active reservations.

    One entry per task id; the store stays the source of truth and the
    ledger is rebuilt from it at start-up (L{Ledger.from_active}).  Totals,
    global and per tenant, are kept as running sums, so a fit check costs
    the same whatever the number of tasks.

    In a cluster it also keeps what runs on the other nodes
    (L{hold_elsewhere}): that counts against tenant quotas, which hold
    across the cluster, and not against this node's capacity.

    @ivar capacity: the fixed runtime capacity.
    @ivar quotas: tenant name to quota.
    @ivar standby: task slots beyond the capacity's that may be held: the
        launch orders a supervisor keeps until one of its slots frees
        (L{execgo.supervisor.slots}) hold one each.  Memory, pids and the
        tenants' quotas count them as if they ran.
    """

    def __init__(self, capacity: Reservation, quotas: Mapping[str, Reservation]) -> None:
        self.capacity = capacity
        self.quotas: Mapping[str, Reservation] = dict(quotas)
        self.standby = 0
        self._active: Dict[str, Holding] = {}
        self._reserved = NOTHING
        self._tenants: Dict[str, Reservation] = {}
        self._elsewhere: Dict[str, Holding] = {}
        self._tenants_elsewhere: Dict[str, Reservation] = {}

    @classmethod
    def from_active(
        cls,
        capacity: Reservation,
        quotas: Mapping[str, Reservation],
        active: Iterable[ActiveReservation],
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
    def reserved(self) -> Reservation:
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
        return self._reserved.task_slots >= self.capacity.task_slots + self.standby

    def tenant_reserved(self, tenant: str) -> Reservation:
        """
        Totals of the active reservations of one tenant.
        """
        return self._tenants.get(tenant, NOTHING)

    def fits_capacity(self, reservation: Reservation) -> bool:
        """
        Whether the task fits the runtime capacity on top of current usage,
        its tenant's quota aside.
        """
        return fits_on_top(reservation, self._reserved, self._bound)

    @property
    def _bound(self) -> Reservation:
        """
        The capacity, with the standby slots.
        """
        if not self.standby:
            return self.capacity
        return attrs.evolve(self.capacity, task_slots=self.capacity.task_slots + self.standby)

    def fits(self, reservation: Reservation, tenant: Optional[str]) -> bool:
        """
        The dispatch-time check: does the task fit on top of the current
        usage, globally and within its tenant's quota?
        """
        if not fits_on_top(reservation, self._reserved, self._bound):
            return False
        if tenant is not None and tenant in self.quotas:
            used = add(self.tenant_reserved(tenant), self._tenants_elsewhere.get(tenant, NOTHING), 1)
            return fits_on_top(reservation, used, self.quotas[tenant])
        return True

    @property
    def elsewhere(self) -> Mapping[str, Holding]:
        """
        A read-only view: the tasks other nodes run, to their L{Holding}.
        """
        return types.MappingProxyType(self._elsewhere)

    def hold_elsewhere(self, task_id: str, tenant: Optional[str], reservation: Reservation) -> None:
        """
        Record that another node runs C{task_id} with C{reservation}: it
        counts against its tenant's quota here too.
        """
        self.release_elsewhere(task_id)
        self._elsewhere[task_id] = Holding(tenant=tenant, reservation=reservation)
        if tenant is not None:
            self._tenants_elsewhere[tenant] = add(self._tenants_elsewhere.get(tenant, NOTHING), reservation, 1)

    def release_elsewhere(self, task_id: str) -> None:
        """
        Forget a task another node ran; releasing twice is harmless.
        """
        holding = self._elsewhere.pop(task_id, None)
        if holding is None or holding.tenant is None:
            return
        left = add(self._tenants_elsewhere[holding.tenant], holding.reservation, -1)
        if left.task_slots == 0:
            del self._tenants_elsewhere[holding.tenant]
        else:
            self._tenants_elsewhere[holding.tenant] = left

    def reserve(
        self, task_id: str, tenant: Optional[str], reservation: Reservation
    ) -> None:
        """
        Record that C{task_id} holds C{reservation}; reserving again for the
        same task replaces the earlier entry.
        """
        self.release(task_id)
        self._active[task_id] = Holding(tenant=tenant, reservation=reservation)
        self._reserved = add(self._reserved, reservation, 1)
        if tenant is not None:
            self._tenants[tenant] = add(self.tenant_reserved(tenant), reservation, 1)

    def release(self, task_id: str) -> None:
        """
        Forget the reservation of C{task_id}; releasing twice is harmless.
        """
        holding = self._active.pop(task_id, None)
        if holding is None:
            return
        self._reserved = add(self._reserved, holding.reservation, -1)
        if holding.tenant is not None:
            left = add(self.tenant_reserved(holding.tenant), holding.reservation, -1)
            if left.task_slots == 0:
                del self._tenants[holding.tenant]
            else:
                self._tenants[holding.tenant] = left


def add(total: Reservation, reservation: Reservation, sign: int = 1) -> Reservation:
    """
    C{total} plus (C{sign} 1) or minus (C{sign} -1) one reservation.
    """
    return Reservation(
        task_slots=total.task_slots + sign * reservation.task_slots,
        memory_bytes=(total.memory_bytes or 0) + sign * (reservation.memory_bytes or 0),
        pids=(total.pids or 0) + sign * (reservation.pids or 0),
    )
