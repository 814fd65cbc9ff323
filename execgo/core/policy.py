# -*- test-case-name: tests.test_policy -*-
"""
Execution plans: the one place a plan is built (L{build_plan}), from a
request resolved against what the host offers (L{resolve_plan}) or from a
stored task that has none (L{synthesise_plan}, L{plan_of}).

Pure: a validated L{SubmitRequest}, the cached L{Capabilities} and the
server's default mode in, an L{ExecutionPlan} (or L{UnsupportedCapability})
out.  Memory and pids limits are enforced with a per-task cgroup for both
sandbox profiles wherever the host has one, hence:

  - C{cgroup_enforced} means a per-task cgroup will be used, which is the
    case for both profiles whenever a memory or pids cgroup mechanism is
    available;
  - memory is enforced by that cgroup when available, else by C{RLIMIT_AS};
    pids only by a cgroup; CPU time by C{RLIMIT_CPU};
  - C{oom_detection} means memory was requested and a cgroup enforces it.

The plan's C{resource_enforcement.mechanisms} names what enforces each
enforced limit (C{"rlimit"}, C{"cgroup_v1"}, C{"cgroup_v2"}).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import attrs

from execgo.core.capabilities import Capabilities
from execgo.core.constants import (
    MODE_ADAPTIVE,
    MODE_STRICT,
    NAMESPACE_NAMES,
    PROFILE_LINUX_SANDBOX,
    PROFILE_PROCESS,
)
from execgo.core.errors import UnsupportedCapability
from execgo.core.models import Namespaces, ResourceLimits, SandboxPolicy, SubmitRequest
from execgo.core.plan import ExecutionPlan, ResourceEnforcement
from execgo.core.records import TaskRecord

RLIMIT = "rlimit"
#: The limits an enforcement mechanism may be found for, in the order
#: their absence is reported.
ENFORCEABLE = ("cpu_time_sec", "memory_bytes", "pids_max")


def build_plan(
    mode: str,
    requested: SandboxPolicy,
    effective: SandboxPolicy,
    limits: ResourceLimits,
    enforcers: Mapping[str, Optional[str]],
    cgroup: bool,
    reasons: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> ExecutionPlan:
    """
    Build an execution plan from its inputs: what was asked, what will be
    applied, and by what each limit is enforced.

    @param enforcers: each enforced limit of L{ENFORCEABLE} to what
        enforces it (L{RLIMIT} or a cgroup mechanism), or to C{None} when
        it is enforced by a mechanism nobody recorded (a per-task cgroup
        when C{cgroup}, else an rlimit); a limit left out is not enforced.
        Only the named mechanisms appear in the plan.
    @param cgroup: whether the task gets a per-task cgroup.
    @param reasons: why the plan falls short of the request; any makes it
        degraded.
    @param warnings: the host's capability warnings.
    """
    return ExecutionPlan(
        capability_mode=mode,
        requested_sandbox=requested,
        effective_sandbox=effective,
        resource_enforcement=ResourceEnforcement(
            wall_time_ms=limits.wall_time_ms,
            cpu_time_sec=limits.cpu_time_sec,
            cpu_time_enforced="cpu_time_sec" in enforcers,
            memory_bytes=limits.memory_bytes,
            memory_enforced="memory_bytes" in enforcers,
            pids_max=limits.pids_max,
            pids_enforced="pids_max" in enforcers,
            cgroup_enforced=cgroup,
            oom_detection=_detects_oom(enforcers, cgroup),
            mechanisms={name: by for name, by in enforcers.items() if by is not None},
        ),
        degraded=bool(reasons),
        fallback_reasons=tuple(reasons),
        capability_warnings=tuple(warnings),
    )


def _detects_oom(enforcers: Mapping[str, Optional[str]], cgroup: bool) -> bool:
    """
    Whether an out-of-memory kill can be told apart: memory is enforced,
    and by a cgroup (named, or unnamed in a task with one), not an rlimit.
    """
    if "memory_bytes" not in enforcers:
        return False
    mechanism = enforcers["memory_bytes"]
    return cgroup if mechanism is None else mechanism != RLIMIT


class _Resolution:
    """
    The fallback bookkeeping of one resolution: strict mode raises on the
    first unavailable capability, adaptive mode collects the reasons.
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.reasons: List[str] = []

    def unavailable(self, missing: str, consequence: Optional[str] = None) -> None:
        """
        Note that C{missing} (e.g. C{"linux_sandbox is unavailable"}) is
        not available; the fallback reason is C{"<missing>; <consequence>"}.

        @raise UnsupportedCapability: in strict mode, naming C{missing}.
        """
        if self.strict:
            raise UnsupportedCapability(missing)
        self.reasons.append(missing if consequence is None else f"{missing}; {consequence}")


def resolve_plan(
    request: SubmitRequest, caps: Capabilities, default_mode: str
) -> ExecutionPlan:
    """
    Resolve the execution plan of a validated request.

    The mode is the request's C{capability_mode}, or C{default_mode} when
    it has none (no policy, or a policy without a mode).  Resolution is
    strict when the mode is C{strict} or the control context sets
    C{requires_strict_sandbox}; the plan still reports the mode.

    @raise UnsupportedCapability: in strict resolution, at the first
        capability the host lacks, in this order: the sandbox profile,
        chroot, each namespace, then the CPU, memory and pids limits.
    """
    mode = request.capability_mode or default_mode
    context = request.control_context
    resolution = _Resolution(
        mode == MODE_STRICT or (context is not None and context.requires_strict_sandbox)
    )
    effective = _resolve_sandbox(request.sandbox, caps, resolution)
    mechanisms = _resolve_mechanisms(request.limits, caps, resolution)
    return build_plan(
        mode,
        request.sandbox,
        effective,
        request.limits,
        mechanisms,
        caps.cgroup_writable,
        resolution.reasons,
        caps.warnings,
    )


def _resolve_sandbox(
    requested: SandboxPolicy, caps: Capabilities, resolution: _Resolution
) -> SandboxPolicy:
    """
    The sandbox the host can apply of the one requested: the profile, then
    chroot, then each namespace.
    """
    effective = requested
    if effective.profile == PROFILE_LINUX_SANDBOX and not caps.linux_sandbox:
        resolution.unavailable(
            "linux_sandbox is unavailable", "falling back to process sandbox"
        )
        effective = attrs.evolve(
            effective, profile=PROFILE_PROCESS, chroot=False, rootfs=None, namespaces=None
        )
    if effective.chroot and not caps.chroot:
        resolution.unavailable("chroot is unavailable", "running without chroot")
        effective = attrs.evolve(effective, chroot=False, rootfs=None)
    if effective.profile == PROFILE_LINUX_SANDBOX:
        wanted = requested.namespaces or Namespaces()
        granted: Dict[str, bool] = {}
        for name in NAMESPACE_NAMES:
            granted[name] = getattr(wanted, name) and bool(caps.namespaces.get(name))
            if getattr(wanted, name) and not granted[name]:
                resolution.unavailable(
                    f"{name} namespace is unavailable", "running without it"
                )
        effective = attrs.evolve(effective, namespaces=Namespaces(**granted))
    return effective


def _resolve_mechanisms(
    limits: ResourceLimits, caps: Capabilities, resolution: _Resolution
) -> Dict[str, Optional[str]]:
    """
    Decide, for each requested limit, whether and by what it is enforced.
    """
    available = {
        "cpu_time_sec": RLIMIT if caps.rlimit_cpu else None,
        "memory_bytes": caps.memory_mechanism
        or (RLIMIT if caps.rlimit_memory else None),
        "pids_max": caps.pids_mechanism,
    }
    missing = {
        "cpu_time_sec": "cpu_time_sec enforcement is unavailable",
        "memory_bytes": "memory_bytes enforcement is unavailable",
        "pids_max": "pids_max enforcement requires writable cgroup support",
    }
    mechanisms: Dict[str, Optional[str]] = {}
    for name in ENFORCEABLE:
        if getattr(limits, name) is None:
            continue
        mechanism = available[name]
        if mechanism is None:
            resolution.unavailable(missing[name])
        else:
            mechanisms[name] = mechanism
    return mechanisms


def synthesise_plan(record: TaskRecord) -> ExecutionPlan:
    """
    The plan of a stored task that has none (a row written before plans
    were stored): adaptive, the stored sandbox as both requested and
    effective, every limit set taken as enforced by a mechanism not
    recorded (pids, and OOM detection, only with C{linux_sandbox}, the one
    profile that had a cgroup then), not degraded.
    """
    limits = record.limits
    cgroup = record.sandbox.profile == PROFILE_LINUX_SANDBOX
    enforced = [name for name in ENFORCEABLE if getattr(limits, name) is not None]
    if not cgroup and "pids_max" in enforced:
        enforced.remove("pids_max")
    return build_plan(
        MODE_ADAPTIVE,
        record.sandbox,
        record.sandbox,
        limits,
        dict.fromkeys(enforced),
        cgroup,
    )


def plan_of(record: TaskRecord) -> ExecutionPlan:
    """
    The stored plan, or the synthesised one for plan-less rows.
    """
    return record.plan if record.plan is not None else synthesise_plan(record)
