# -*- test-case-name: tests.test_validation,tests.test_render,tests.test_policy -*-
"""
The request models: frozen values for what a submission asks for (the
execution, its limits, its sandbox, its control context) and the decoded
submission itself, L{SubmitRequest}.

Each class renders itself to the wire form with C{to_json()} (a plain C{dict}
in wire order, the fixed key order of the API's answers that C{docs/api.md}
describes, absent optional fields left out) and reads a trusted wire form
back with C{from_json()}.
Untrusted input never goes through C{from_json}: L{execgo.core.submission}
parses it.  This module imports only C{attrs} and L{execgo.core.constants},
so the supervisor and CLI stay light.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import attrs

from execgo.core.constants import (
    DEFAULT_OUTPUT_MAX_BYTES,
    DEFAULT_WALL_TIME_MS,
    JSON,
    NAMESPACE_NAMES,
    PROFILE_PROCESS,
)


def sorted_map(value: Mapping[str, str]) -> Dict[str, str]:
    """
    A string map as every value renders one: its keys in order.
    """
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
        out["env"] = sorted_map(self.env)
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
            out["labels"] = sorted_map(self.labels)
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
    node_labels: Mapping[str, str] = attrs.field(factory=dict)

    def to_json(self) -> JSON:
        """
        The normalised request: the body the CLI sends and C{request.json}
        (C{placement} only when it asks for node labels).
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
        out["metadata"] = sorted_map(self.metadata)
        if self.node_labels:
            out["placement"] = {"node_labels": sorted_map(self.node_labels)}
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
            node_labels=dict((data.get("placement") or {}).get("node_labels") or {}),
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
