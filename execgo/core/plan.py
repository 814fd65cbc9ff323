# -*- test-case-name: tests.test_policy,tests.test_render -*-
"""
The execution plan a task is run by (L{ExecutionPlan}): the sandbox asked
for and the one applied, which limits are enforced and by what
(L{ResourceEnforcement}), and why anything fell short; with the uid and
gid its processes run as (L{RunAs}).  L{execgo.core.policy} resolves it;
these are its frozen values and their wire renderings.
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

import attrs

from execgo.core.constants import JSON
from execgo.core.models import SandboxPolicy, sorted_map


@attrs.frozen
class RunAs:
    """
    The uid and gid a task's processes run as (the plan's C{run_as}).
    """

    uid: int
    gid: int

    def to_json(self) -> JSON:
        """
        Render: uid, gid.
        """
        return {"uid": self.uid, "gid": self.gid}


@attrs.frozen
class ResourceEnforcement:
    """
    Which requested limits will really be enforced, and by what.

    C{mechanisms} maps a limit name (C{"cpu_time_sec"}, C{"memory_bytes"},
    C{"pids_max"}) to the mechanism that enforces it (C{"rlimit"},
    C{"cgroup_v1"}, C{"cgroup_v2"}); it is emitted only when non-empty so the
    contract's fields keep their shape.
    """

    wall_time_ms: int
    cpu_time_sec: Optional[int] = None
    cpu_time_enforced: bool = False
    memory_bytes: Optional[int] = None
    memory_enforced: bool = False
    pids_max: Optional[int] = None
    pids_enforced: bool = False
    cgroup_enforced: bool = False
    oom_detection: bool = False
    mechanisms: Mapping[str, str] = attrs.field(factory=dict)

    def to_json(self) -> JSON:
        """
        Render in wire order; C{mechanisms} last and only if set.
        """
        out: JSON = {"wall_time_ms": self.wall_time_ms}
        if self.cpu_time_sec is not None:
            out["cpu_time_sec"] = self.cpu_time_sec
        out["cpu_time_enforced"] = self.cpu_time_enforced
        if self.memory_bytes is not None:
            out["memory_bytes"] = self.memory_bytes
        out["memory_enforced"] = self.memory_enforced
        if self.pids_max is not None:
            out["pids_max"] = self.pids_max
        out["pids_enforced"] = self.pids_enforced
        out["cgroup_enforced"] = self.cgroup_enforced
        out["oom_detection"] = self.oom_detection
        if self.mechanisms:
            out["mechanisms"] = sorted_map(self.mechanisms)
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "ResourceEnforcement":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(
            wall_time_ms=data["wall_time_ms"],
            cpu_time_sec=data.get("cpu_time_sec"),
            cpu_time_enforced=bool(data.get("cpu_time_enforced", False)),
            memory_bytes=data.get("memory_bytes"),
            memory_enforced=bool(data.get("memory_enforced", False)),
            pids_max=data.get("pids_max"),
            pids_enforced=bool(data.get("pids_enforced", False)),
            cgroup_enforced=bool(data.get("cgroup_enforced", False)),
            oom_detection=bool(data.get("oom_detection", False)),
            mechanisms=dict(data.get("mechanisms") or {}),
        )


@attrs.frozen
class ExecutionPlan:
    """
    The resolved plan: what was asked, what will be applied, and why not.
    """

    capability_mode: str
    requested_sandbox: SandboxPolicy
    effective_sandbox: SandboxPolicy
    resource_enforcement: ResourceEnforcement
    degraded: bool = False
    fallback_reasons: Tuple[str, ...] = ()
    capability_warnings: Tuple[str, ...] = ()

    def to_json(self) -> JSON:
        """
        Render in wire order, empty lists left out.
        """
        out: JSON = {
            "capability_mode": self.capability_mode,
            "requested_sandbox": self.requested_sandbox.to_json(),
            "effective_sandbox": self.effective_sandbox.to_json(),
            "resource_enforcement": self.resource_enforcement.to_json(),
            "degraded": self.degraded,
        }
        if self.fallback_reasons:
            out["fallback_reasons"] = list(self.fallback_reasons)
        if self.capability_warnings:
            out["capability_warnings"] = list(self.capability_warnings)
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "ExecutionPlan":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(
            capability_mode=data["capability_mode"],
            requested_sandbox=SandboxPolicy.from_json(data["requested_sandbox"]),
            effective_sandbox=SandboxPolicy.from_json(data["effective_sandbox"]),
            resource_enforcement=ResourceEnforcement.from_json(
                data["resource_enforcement"]
            ),
            degraded=bool(data.get("degraded", False)),
            fallback_reasons=tuple(data.get("fallback_reasons") or ()),
            capability_warnings=tuple(data.get("capability_warnings") or ()),
        )
