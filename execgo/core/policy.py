# -*- test-case-name: tests.test_policy -*-
"""
Execution-plan resolution: what a request asked for against what the host
offers.

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

from typing import Dict, List, Optional

import attrs

from execgo.core.capabilities import Capabilities
from execgo.core.errors import UnsupportedCapability
from execgo.core.models import (
    MODE_STRICT,
    NAMESPACE_NAMES,
    PROFILE_LINUX_SANDBOX,
    PROFILE_PROCESS,
    ExecutionPlan,
    Namespaces,
    ResourceEnforcement,
    SubmitRequest,
)

RLIMIT = "rlimit"


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
    requested = request.sandbox
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
    enforcement = _resolve_enforcement(request, caps, resolution)
    return ExecutionPlan(
        capability_mode=mode,
        requested_sandbox=requested,
        effective_sandbox=effective,
        resource_enforcement=enforcement,
        degraded=bool(resolution.reasons),
        fallback_reasons=tuple(resolution.reasons),
        capability_warnings=tuple(caps.warnings),
    )


def _resolve_enforcement(
    request: SubmitRequest, caps: Capabilities, resolution: _Resolution
) -> ResourceEnforcement:
    """
    Decide, for each requested limit, whether and by what it is enforced.
    """
    limits = request.limits
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
    mechanisms: Dict[str, str] = {}
    for name in ("cpu_time_sec", "memory_bytes", "pids_max"):
        if getattr(limits, name) is None:
            continue
        mechanism = available[name]
        if mechanism is None:
            resolution.unavailable(missing[name])
        else:
            mechanisms[name] = mechanism
    memory_by_cgroup = mechanisms.get("memory_bytes", RLIMIT) != RLIMIT
    return ResourceEnforcement(
        wall_time_ms=limits.wall_time_ms,
        cpu_time_sec=limits.cpu_time_sec,
        cpu_time_enforced="cpu_time_sec" in mechanisms,
        memory_bytes=limits.memory_bytes,
        memory_enforced="memory_bytes" in mechanisms,
        pids_max=limits.pids_max,
        pids_enforced="pids_max" in mechanisms,
        cgroup_enforced=caps.cgroup_writable,
        oom_detection=memory_by_cgroup,
        mechanisms=mechanisms,
    )
