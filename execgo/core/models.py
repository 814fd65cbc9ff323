# -*- test-case-name: tests.test_validation,tests.test_render,tests.test_policy -*-
"""
Frozen values shared by every part of the runtime.

Each class renders itself to the wire form with C{to_json()} (a plain C{dict}
in wire order, the fixed key order of the API's answers that C{docs/api.md}
describes, absent optional fields left out) and reads a trusted wire form
back with C{from_json()}.
Untrusted input never goes through C{from_json}: L{execgo.core.submission}
parses it.  This module imports only C{attrs} so the supervisor and CLI stay light.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import attrs

JSON = Dict[str, Any]

STATUS_ACCEPTED = "accepted"
STATUS_RUNNING = "running"
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"
TERMINAL_STATUSES = frozenset({STATUS_SUCCESS, STATUS_FAILED, STATUS_CANCELLED})
ALL_STATUSES = (
    STATUS_ACCEPTED,
    STATUS_RUNNING,
    STATUS_SUCCESS,
    STATUS_FAILED,
    STATUS_CANCELLED,
)

KIND_COMMAND = "command"
KIND_SCRIPT = "script"
MODE_ADAPTIVE = "adaptive"
MODE_STRICT = "strict"
PROFILE_PROCESS = "process"
PROFILE_LINUX_SANDBOX = "linux_sandbox"
NAMESPACE_NAMES = ("mount", "pid", "uts", "ipc", "net")

DEFAULT_WALL_TIME_MS = 300_000
DEFAULT_OUTPUT_MAX_BYTES = 4_194_304


def _sorted_map(value: Mapping[str, str]) -> Dict[str, str]:
    return {key: value[key] for key in sorted(value)}


@attrs.frozen
class ExecutionSpec:
    """
    What to run: a command with arguments, or a script for an interpreter.
    """

    kind: str
    program: Optional[str] = None
    args: Tuple[str, ...] = ()
    script: Optional[str] = None
    interpreter: Optional[Tuple[str, ...]] = None
    env: Mapping[str, str] = attrs.field(factory=dict)

    def to_json(self) -> JSON:
        """
        Render in wire order: kind, program?, args, script?, interpreter?, env.
        """
        out: JSON = {"kind": self.kind}
        if self.program is not None:
            out["program"] = self.program
        out["args"] = list(self.args)
        if self.script is not None:
            out["script"] = self.script
        if self.interpreter is not None:
            out["interpreter"] = list(self.interpreter)
        out["env"] = _sorted_map(self.env)
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "ExecutionSpec":
        """
        Read back a trusted rendering of L{to_json}.
        """
        interpreter = data.get("interpreter")
        return cls(
            kind=data["kind"],
            program=data.get("program"),
            args=tuple(data.get("args") or ()),
            script=data.get("script"),
            interpreter=None if interpreter is None else tuple(interpreter),
            env=dict(data.get("env") or {}),
        )


@attrs.frozen
class ResourceLimits:
    """
    Per-task limits; C{None} means "not requested".
    """

    wall_time_ms: int = DEFAULT_WALL_TIME_MS
    cpu_time_sec: Optional[int] = None
    memory_bytes: Optional[int] = None
    pids_max: Optional[int] = None
    stdout_max_bytes: int = DEFAULT_OUTPUT_MAX_BYTES
    stderr_max_bytes: int = DEFAULT_OUTPUT_MAX_BYTES

    def to_json(self) -> JSON:
        """
        Render in wire order, leaving out the unset optional limits.
        """
        out: JSON = {"wall_time_ms": self.wall_time_ms}
        for name in ("cpu_time_sec", "memory_bytes", "pids_max"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["stdout_max_bytes"] = self.stdout_max_bytes
        out["stderr_max_bytes"] = self.stderr_max_bytes
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "ResourceLimits":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(
            wall_time_ms=data.get("wall_time_ms", DEFAULT_WALL_TIME_MS),
            cpu_time_sec=data.get("cpu_time_sec"),
            memory_bytes=data.get("memory_bytes"),
            pids_max=data.get("pids_max"),
            stdout_max_bytes=data.get("stdout_max_bytes", DEFAULT_OUTPUT_MAX_BYTES),
            stderr_max_bytes=data.get("stderr_max_bytes", DEFAULT_OUTPUT_MAX_BYTES),
        )


@attrs.frozen
class Namespaces:
    """
    Which Linux namespaces a C{linux_sandbox} workload gets.
    """

    mount: bool = True
    pid: bool = True
    uts: bool = True
    ipc: bool = True
    net: bool = False

    def to_json(self) -> JSON:
        """
        All five booleans, in the order mount, pid, uts, ipc, net.
        """
        return {name: getattr(self, name) for name in NAMESPACE_NAMES}

    @classmethod
    def from_json(cls, data: JSON) -> "Namespaces":
        """
        Read back a trusted rendering, defaulting missing keys.
        """
        defaults = cls()
        return cls(
            **{name: data.get(name, getattr(defaults, name)) for name in NAMESPACE_NAMES}
        )


@attrs.frozen
class SandboxPolicy:
    """
    How isolated the workload is.
    """

    profile: str = PROFILE_PROCESS
    workspace_subdir: Optional[str] = None
    rootfs: Optional[str] = None
    chroot: bool = False
    namespaces: Optional[Namespaces] = None

    def to_json(self) -> JSON:
        """
        Render: profile, workspace_subdir?, rootfs?, chroot, namespaces?.
        """
        out: JSON = {"profile": self.profile}
        if self.workspace_subdir is not None:
            out["workspace_subdir"] = self.workspace_subdir
        if self.rootfs is not None:
            out["rootfs"] = self.rootfs
        out["chroot"] = self.chroot
        if self.namespaces is not None:
            out["namespaces"] = self.namespaces.to_json()
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "SandboxPolicy":
        """
        Read back a trusted rendering of L{to_json}.
        """
        namespaces = data.get("namespaces")
        return cls(
            profile=data.get("profile", PROFILE_PROCESS),
            workspace_subdir=data.get("workspace_subdir"),
            rootfs=data.get("rootfs"),
            chroot=bool(data.get("chroot", False)),
            namespaces=None if namespaces is None else Namespaces.from_json(namespaces),
        )


@attrs.frozen
class ControlContext:
    """
    Who asked for the task and under which tenant; persisted, not echoed.
    """

    control_plane_mode: Optional[str] = None
    tenant: Optional[str] = None
    owner: Optional[str] = None
    expected_runtime_profile: Optional[str] = None
    requires_strict_sandbox: bool = False
    requires_resource_reservation: bool = False
    labels: Mapping[str, str] = attrs.field(factory=dict)

    def to_json(self) -> JSON:
        """
        Render as in C{request.json}: labels left out when empty.
        """
        out: JSON = {}
        for name in (
            "control_plane_mode",
            "tenant",
            "owner",
            "expected_runtime_profile",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["requires_strict_sandbox"] = self.requires_strict_sandbox
        out["requires_resource_reservation"] = self.requires_resource_reservation
        if self.labels:
            out["labels"] = _sorted_map(self.labels)
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "ControlContext":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(
            control_plane_mode=data.get("control_plane_mode"),
            tenant=data.get("tenant"),
            owner=data.get("owner"),
            expected_runtime_profile=data.get("expected_runtime_profile"),
            requires_strict_sandbox=bool(data.get("requires_strict_sandbox", False)),
            requires_resource_reservation=bool(
                data.get("requires_resource_reservation", False)
            ),
            labels=dict(data.get("labels") or {}),
        )


@attrs.frozen
class SubmitRequest:
    """
    A decoded submission with every default applied.

    C{capability_mode} is C{None} when the request had no C{policy}, a null
    one, or one without a mode: the server's default mode applies to all
    three.
    """

    execution: ExecutionSpec
    task_id: Optional[str] = None
    limits: ResourceLimits = attrs.field(factory=ResourceLimits)
    sandbox: SandboxPolicy = attrs.field(factory=SandboxPolicy)
    capability_mode: Optional[str] = None
    control_context: Optional[ControlContext] = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)

    def to_json(self) -> JSON:
        """
        The normalised request: the body the CLI sends and C{request.json}.
        """
        out: JSON = {}
        if self.task_id is not None:
            out["task_id"] = self.task_id
        out["execution"] = self.execution.to_json()
        out["limits"] = self.limits.to_json()
        out["sandbox"] = self.sandbox.to_json()
        if self.capability_mode is not None:
            out["policy"] = {"capability_mode": self.capability_mode}
        if self.control_context is not None:
            out["control_context"] = self.control_context.to_json()
        out["metadata"] = _sorted_map(self.metadata)
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "SubmitRequest":
        """
        Read back a trusted rendering of L{to_json}.
        """
        policy = data.get("policy")
        context = data.get("control_context")
        return cls(
            task_id=data.get("task_id"),
            execution=ExecutionSpec.from_json(data["execution"]),
            limits=ResourceLimits.from_json(data.get("limits") or {}),
            sandbox=SandboxPolicy.from_json(data.get("sandbox") or {}),
            capability_mode=None if policy is None else policy.get("capability_mode"),
            control_context=None if context is None else ControlContext.from_json(context),
            metadata=dict(data.get("metadata") or {}),
        )

    @property
    def tenant(self) -> Optional[str]:
        """
        The tenant named in the control context, if any.
        """
        return None if self.control_context is None else self.control_context.tenant

    @property
    def owner(self) -> Optional[str]:
        """
        The owner named in the control context, if any.
        """
        return None if self.control_context is None else self.control_context.owner


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
            out["mechanisms"] = _sorted_map(self.mechanisms)
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


@attrs.frozen
class ErrorInfo:
    """
    A task's C{error}: a code from the ErrorCode list and a message.
    """

    code: str
    message: str

    def to_json(self) -> JSON:
        """
        Render: code, message.
        """
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, data: JSON) -> "ErrorInfo":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(code=data["code"], message=data["message"])


@attrs.frozen
class Usage:
    """
    What a finished workload consumed (the status's C{usage}, a
    C{ResourceUsage} on the wire).
    """

    duration_ms: int
    user_cpu_ms: Optional[int] = None
    system_cpu_ms: Optional[int] = None
    max_rss_bytes: Optional[int] = None
    memory_peak_bytes: Optional[int] = None

    def to_json(self) -> JSON:
        """
        Render: duration_ms then the optional figures that are known.
        """
        out: JSON = {"duration_ms": self.duration_ms}
        for name in ("user_cpu_ms", "system_cpu_ms", "max_rss_bytes", "memory_peak_bytes"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "Usage":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(
            duration_ms=data["duration_ms"],
            user_cpu_ms=data.get("user_cpu_ms"),
            system_cpu_ms=data.get("system_cpu_ms"),
            max_rss_bytes=data.get("max_rss_bytes"),
            memory_peak_bytes=data.get("memory_peak_bytes"),
        )
