# -*- test-case-name: tests.test_client -*-
"""
The typed answers of the runtime-wide endpoints for L{execgo.client}:
health, info, capabilities, configuration and the resource ledger.

Each is a frozen attrs class read with C{from_json}, which checks the
contract's fields (L{MalformedResponse} when one is missing or mistyped);
the larger ones keep the whole decoded object in C{raw}.  No Twisted here.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple, Type, TypeVar

import attrs

from execgo.client.errors import MalformedResponse
from execgo.client.models import get_field, json_object

_T = TypeVar("_T")


def _strings(data: Mapping[str, Any], key: str) -> Tuple[str, ...]:
    values = get_field(data, key, list, False) or []
    if not all(isinstance(value, str) for value in values):
        raise MalformedResponse(f"field {key!r} is not a list of strings")
    return tuple(values)


def _nested(data: Mapping[str, Any], key: str, cls: Type[_T], required: bool) -> Optional[_T]:
    value = get_field(data, key, dict, required)
    return None if value is None else cls.from_json(value)  # type: ignore[attr-defined]



@attrs.frozen
class Health:
    """
    The answer of C{/healthz} (C{status} C{"ok"}) or C{/readyz} (C{"ready"}).
    """

    status: str
    version: str

    @classmethod
    def from_json(cls, data: Any) -> "Health":
        """
        Read a decoded health answer.
        """
        data = json_object(data, "health answer")
        return cls(get_field(data, "status", str, True), get_field(data, "version", str, True))


@attrs.frozen
class Platform:
    """
    The host platform (C{platform} of the info and capabilities answers).
    """

    os: str
    arch: str
    containerized: bool
    kubernetes: bool

    @classmethod
    def from_json(cls, data: Any) -> "Platform":
        """
        Read a decoded C{platform} object.
        """
        data = json_object(data, "platform")
        return cls(
            os=get_field(data, "os", str, True),
            arch=get_field(data, "arch", str, True),
            containerized=get_field(data, "containerized", bool, True),
            kubernetes=get_field(data, "kubernetes", bool, True),
        )


@attrs.frozen
class ResourceCapacity:
    """
    A C{ResourceCapacity}: task slots, and memory and pids when known.
    """

    task_slots: int
    memory_bytes: Optional[int] = None
    pids: Optional[int] = None

    @classmethod
    def from_json(cls, data: Any) -> "ResourceCapacity":
        """
        Read a decoded C{ResourceCapacity}.
        """
        data = json_object(data, "resource capacity")
        return cls(
            task_slots=get_field(data, "task_slots", int, True),
            memory_bytes=get_field(data, "memory_bytes", int, False),
            pids=get_field(data, "pids", int, False),
        )


@attrs.frozen
class RuntimeInfo:
    """
    C{GET /api/v1/runtime/info}.
    """

    runtime_id: str
    version: str
    started_at: str
    snapshot_version: str
    platform: Platform
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> "RuntimeInfo":
        """
        Read a decoded info answer.
        """
        data = json_object(data, "runtime info")
        return cls(
            runtime_id=get_field(data, "runtime_id", str, True),
            version=get_field(data, "version", str, True),
            started_at=get_field(data, "started_at", str, True),
            snapshot_version=get_field(data, "snapshot_version", str, True),
            platform=Platform.from_json(get_field(data, "platform", dict, True)),
            raw=data,
        )


@attrs.frozen
class CapabilitySnapshot:
    """
    C{GET /api/v1/runtime/capabilities}: the headline facts; the detailed
    C{execution}, C{sandbox}, C{storage} and C{resources} objects are in
    C{raw}.
    """

    runtime_id: str
    snapshot_version: str
    collected_at: str
    platform: Platform
    capacity: ResourceCapacity
    degraded: bool
    stable_semantics: Tuple[str, ...] = ()
    enhanced_semantics: Tuple[str, ...] = ()
    warnings: Tuple[str, ...] = ()
    overrides: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> "CapabilitySnapshot":
        """
        Read a decoded capability snapshot.
        """
        data = json_object(data, "capabilities")
        resources = json_object(get_field(data, "resources", dict, True), "resources")
        return cls(
            runtime_id=get_field(data, "runtime_id", str, True),
            snapshot_version=get_field(data, "snapshot_version", str, True),
            collected_at=get_field(data, "collected_at", str, True),
            platform=Platform.from_json(get_field(data, "platform", dict, True)),
            capacity=ResourceCapacity.from_json(get_field(resources, "capacity", dict, True)),
            degraded=get_field(data, "degraded", bool, True),
            stable_semantics=_strings(data, "stable_semantics"),
            enhanced_semantics=_strings(data, "enhanced_semantics"),
            warnings=_strings(data, "warnings"),
            overrides=dict(get_field(data, "overrides", dict, False) or {}),
            raw=data,
        )


_SETTINGS: Tuple[Tuple[str, type], ...] = (
    ("runtime_id", str),
    ("listen_addr", str),
    ("data_dir", str),
    ("max_running_tasks", int),
    ("max_queued_tasks", int),
    ("termination_grace_ms", int),
    ("result_retention_secs", int),
    ("gc_interval_ms", int),
    ("dispatch_poll_interval_ms", int),
    ("cgroup_root", str),
    ("default_capability_mode", str),
    ("cgroup_enabled", bool),
)


@attrs.frozen
class RuntimeSettings:
    """
    C{GET /api/v1/runtime/config}: the non-secret effective configuration.
    """

    runtime_id: str
    listen_addr: str
    data_dir: str
    max_running_tasks: int
    max_queued_tasks: int
    termination_grace_ms: int
    result_retention_secs: int
    gc_interval_ms: int
    dispatch_poll_interval_ms: int
    cgroup_root: str
    default_capability_mode: str
    cgroup_enabled: bool
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> "RuntimeSettings":
        """
        Read a decoded configuration answer.
        """
        data = json_object(data, "config")
        values = {name: get_field(data, name, kind, True) for name, kind in _SETTINGS}
        return cls(raw=data, **values)


@attrs.frozen
class ActiveReservation:
    """
    One entry of C{active_reservations}: a task holding ledger capacity.
    """

    task_id: str
    status: str
    reservation: ResourceCapacity
    reserved_at: Optional[str] = None

    @classmethod
    def from_json(cls, data: Any) -> "ActiveReservation":
        """
        Read a decoded reservation entry.
        """
        data = json_object(data, "active reservation")
        return cls(
            task_id=get_field(data, "task_id", str, True),
            status=get_field(data, "status", str, True),
            reservation=ResourceCapacity.from_json(get_field(data, "reservation", dict, True)),
            reserved_at=get_field(data, "reserved_at", str, False),
        )


@attrs.frozen
class TenantUsage:
    """
    One entry of C{tenants}: what a tenant holds, and its quota if it has one.
    """

    tenant: str
    reserved: ResourceCapacity
    quota: Optional[ResourceCapacity] = None
    available: Optional[ResourceCapacity] = None

    @classmethod
    def from_json(cls, data: Any) -> "TenantUsage":
        """
        Read a decoded tenant entry.
        """
        data = json_object(data, "tenant")
        return cls(
            tenant=get_field(data, "tenant", str, True),
            reserved=_nested(data, "reserved", ResourceCapacity, True),  # type: ignore[arg-type]
            quota=_nested(data, "quota", ResourceCapacity, False),
            available=_nested(data, "available", ResourceCapacity, False),
        )


@attrs.frozen
class ResourcesView:
    """
    C{GET /api/v1/runtime/resources}: the resource ledger.
    """

    runtime_id: str
    capacity: ResourceCapacity
    reserved: ResourceCapacity
    available: ResourceCapacity
    active_reservations: Tuple[ActiveReservation, ...]
    accepted_waiting_tasks: int
    tenants: Tuple[TenantUsage, ...]
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> "ResourcesView":
        """
        Read a decoded resources answer.
        """
        data = json_object(data, "resources")
        return cls(
            runtime_id=get_field(data, "runtime_id", str, True),
            capacity=_nested(data, "capacity", ResourceCapacity, True),  # type: ignore[arg-type]
            reserved=_nested(data, "reserved", ResourceCapacity, True),  # type: ignore[arg-type]
            available=_nested(data, "available", ResourceCapacity, True),  # type: ignore[arg-type]
            active_reservations=tuple(
                ActiveReservation.from_json(item)
                for item in get_field(data, "active_reservations", list, True)
            ),
            accepted_waiting_tasks=get_field(data, "accepted_waiting_tasks", int, True),
            tenants=tuple(
                TenantUsage.from_json(item) for item in get_field(data, "tenants", list, True)
            ),
            raw=data,
        )


@attrs.frozen
class ClusterNode:
    """
    One node of C{GET /api/v1/runtime/cluster}.
    """

    node_id: str
    advertise_url: str
    labels: Mapping[str, str]
    state: str
    started_at: str
    lease_expires_at: str
    running_tasks: int
    capacity: ResourceCapacity

    @classmethod
    def from_json(cls, data: Any) -> "ClusterNode":
        """
        Read a decoded C{ClusterNode}.
        """
        data = json_object(data, "cluster node")
        labels = get_field(data, "labels", dict, True)
        if not all(isinstance(value, str) for value in labels.values()):
            raise MalformedResponse("field 'labels' must map strings to strings")
        return cls(
            node_id=get_field(data, "node_id", str, True),
            advertise_url=get_field(data, "advertise_url", str, True),
            labels=dict(labels),
            state=get_field(data, "state", str, True),
            started_at=get_field(data, "started_at", str, True),
            lease_expires_at=get_field(data, "lease_expires_at", str, True),
            running_tasks=get_field(data, "running_tasks", int, True),
            capacity=_nested(data, "capacity", ResourceCapacity, True),  # type: ignore[arg-type]
        )


def cluster_nodes(data: Any) -> Tuple[ClusterNode, ...]:
    """
    Read a decoded C{GET /api/v1/runtime/cluster} answer: its nodes.
    """
    data = json_object(data, "cluster")
    return tuple(ClusterNode.from_json(node) for node in get_field(data, "nodes", list, True))
