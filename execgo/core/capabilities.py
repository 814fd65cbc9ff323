# -*- test-case-name: tests.test_capabilities -*-
"""
What this host can do, as the runtime reports and uses it: the pure
L{Capabilities} snapshot built from the probe's L{HostFacts}
(L{execgo.host.probe}) and the configuration, served by
C{/api/v1/runtime/capabilities} and used by plan resolution
(L{execgo.core.policy}).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import attrs

from execgo.core.constants import JSON, NAMESPACE_NAMES
from execgo.core.hostfacts import CGROUP_KEYS, HostFacts
from execgo.core.reservation import Reservation

SNAPSHOT_VERSION = "v1"
STABLE_SEMANTICS = (
    "submit",
    "status",
    "events",
    "stdout_stderr",
    "timeout",
    "kill",
    "artifacts",
    "result_persistence",
    "recovery",
)


def normalise_os(system: str) -> str:
    """
    The contract's OS identifier: lowercase, C{darwin} as C{macos}.
    """
    name = system.strip().lower()
    return "macos" if name == "darwin" else name


def normalise_arch(machine: str) -> str:
    """
    The contract's CPU identifier: C{amd64}/C{x64} as C{x86_64}, C{arm64}
    as C{aarch64}.
    """
    name = machine.strip().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(name, name)


@attrs.frozen
class Capabilities:
    """
    The capability snapshot (C{GET /api/v1/runtime/capabilities}) with the
    detail plan resolution and the supervisor need.

    @ivar namespaces: namespace name to whether it is supported.
    @ivar memory_mechanism: C{"cgroup_v2"}/C{"cgroup_v1"} when a writable
        per-task memory cgroup exists, else C{None}; likewise
        C{pids_mechanism}, C{cpu_accounting_mechanism} and C{kill_mechanism}
        (C{cgroup.kill}, v2 only).
    @ivar cgroup_bases: capability key (L{CGROUP_KEYS}) to the directory its
        per-task groups go under, for the available mechanisms.
    @ivar cgroup_v2: a cgroup v2 tree with both the C{memory} and C{pids}
        controllers exists (detection, not writability).
    @ivar overrides: configured overrides, as the snapshot names them
        (C{capacity_memory_bytes}, C{capacity_pids}, C{cgroup},
        C{linux_sandbox}).
    @ivar privilege_drop: tasks run without the runtime's privileges (a
        uid of their own, or an unprivileged C{--task-user}).
    """

    runtime_id: str
    collected_at: str
    capacity: Reservation
    os: str = "linux"
    arch: str = "x86_64"
    containerized: bool = False
    kubernetes: bool = False
    process_group: bool = True
    linux_sandbox: bool = False
    chroot: bool = False
    namespaces: Mapping[str, bool] = attrs.field(
        factory=lambda: dict.fromkeys(NAMESPACE_NAMES, False)
    )
    data_dir_writable: bool = True
    rlimit_cpu: bool = True
    rlimit_memory: bool = True
    memory_limit: bool = True
    cgroup_v2: bool = False
    memory_mechanism: Optional[str] = None
    pids_mechanism: Optional[str] = None
    cpu_accounting_mechanism: Optional[str] = None
    kill_mechanism: Optional[str] = None
    cgroup_bases: Mapping[str, str] = attrs.field(factory=dict)
    warnings: Tuple[str, ...] = ()
    overrides: Mapping[str, str] = attrs.field(factory=dict)
    privilege_drop: bool = False

    snapshot_version = SNAPSHOT_VERSION
    cpu_quota = False
    ledger = True

    @property
    def cgroup_writable(self) -> bool:
        """
        Some per-task cgroup limiting memory or pids really works.
        """
        return self.memory_mechanism is not None or self.pids_mechanism is not None

    @property
    def pids_limit(self) -> bool:
        """
        Pids can be limited (only a cgroup can do that).
        """
        return self.pids_mechanism is not None

    @property
    def oom_detection(self) -> bool:
        """
        Kernel OOM kills can be detected (memory limited by a cgroup).
        """
        return self.memory_mechanism is not None

    @property
    def degraded(self) -> bool:
        """
        True iff there are warnings.
        """
        return bool(self.warnings)

    @property
    def cgroup_mechanisms(self) -> Dict[str, str]:
        """
        The C{resources.cgroup} object: capability key to mechanism, for
        the available ones, in L{CGROUP_KEYS} order.
        """
        values = (
            self.memory_mechanism,
            self.pids_mechanism,
            self.cpu_accounting_mechanism,
            self.kill_mechanism,
        )
        return {key: value for key, value in zip(CGROUP_KEYS, values, strict=True) if value}

    @property
    def enhanced_semantics(self) -> Tuple[str, ...]:
        """
        C{resource_ledger}, the sandbox semantics when the sandbox is
        available, then each cgroup semantic that is backed.
        """
        names = ["resource_ledger"]
        if self.linux_sandbox:
            names += ["linux_sandbox", "namespaces", "chroot"]
        if self.memory_mechanism is not None:
            names.append("cgroup_memory")
        if self.pids_mechanism is not None:
            names.append("cgroup_pids")
        if self.oom_detection:
            names.append("oom_detection")
        return tuple(names)

    def platform_json(self) -> JSON:
        """
        The C{platform} object, shared with C{/api/v1/runtime/info}.
        """
        return {
            "os": self.os,
            "arch": self.arch,
            "containerized": self.containerized,
            "kubernetes": self.kubernetes,
        }

    def to_json(self) -> JSON:
        """
        Render the snapshot as the API answers it, with C{resources.cgroup}
        (the mechanism of each available cgroup capability) added after
        C{capacity}.
        """
        out: JSON = {
            "runtime_id": self.runtime_id,
            "snapshot_version": self.snapshot_version,
            "collected_at": self.collected_at,
            "platform": self.platform_json(),
            "execution": {
                "command": True,
                "script": True,
                "process_group": self.process_group,
            },
            "sandbox": {
                "process": True,
                "linux_sandbox": self.linux_sandbox,
                "chroot": self.chroot,
                "namespaces": {
                    name: bool(self.namespaces.get(name, False))
                    for name in NAMESPACE_NAMES
                },
            },
            "storage": {"data_dir_writable": self.data_dir_writable},
            "resources": {
                "rlimit_cpu": self.rlimit_cpu,
                "rlimit_memory": self.rlimit_memory,
                "cgroup_v2": self.cgroup_v2,
                "cgroup_writable": self.cgroup_writable,
                "memory_limit": self.memory_limit,
                "pids_limit": self.pids_limit,
                "oom_detection": self.oom_detection,
                "cpu_quota": self.cpu_quota,
                "ledger": self.ledger,
                "capacity": self.capacity.to_json(),
                "cgroup": self.cgroup_mechanisms,
            },
            "stable_semantics": list(STABLE_SEMANTICS),
            "enhanced_semantics": list(self.enhanced_semantics),
            "privilege_drop": self.privilege_drop,
        }
        if self.warnings:
            out["warnings"] = list(self.warnings)
        out["degraded"] = self.degraded
        if self.overrides:
            out["overrides"] = {key: self.overrides[key] for key in sorted(self.overrides)}
        return out


def _smallest(*values: Optional[int]) -> Optional[int]:
    """
    The smallest known value, or C{None} if none is known.
    """
    return min((v for v in values if v is not None), default=None)


def build_capabilities(
    facts: HostFacts,
    *,
    runtime_id: str,
    collected_at: str,
    max_running_tasks: int,
    capacity_memory_bytes: Optional[int],
    capacity_pids: Optional[int],
    disable_cgroup: bool,
    disable_linux_sandbox: bool,
    data_dir: str,
    cgroup_root: str,
    privilege_drop: bool = False,
) -> Capabilities:
    """
    Turn host facts and configuration into the snapshot (pure).

    The sandbox is available on Linux, when not disabled, if at least one
    namespace could really be unshared; C{chroot} additionally needs
    euid 0.  Capacity: an override, else the smaller of the runtime's own
    cgroup limit and the host's total (L{_capacity}).
    """
    os_name = normalise_os(facts.system)
    linux = os_name == "linux"
    sandbox = linux and not disable_linux_sandbox and any(facts.namespaces.values())
    mechanisms, bases = _cgroup_mechanisms(facts, enabled=linux and not disable_cgroup)
    cgroup_v2 = linux and {"memory", "pids"} <= set(facts.cgroup_layout.v2_controllers)
    return Capabilities(
        runtime_id=runtime_id,
        collected_at=collected_at,
        capacity=_capacity(facts, linux, max_running_tasks, capacity_memory_bytes, capacity_pids),
        os=os_name,
        arch=normalise_arch(facts.machine),
        containerized=facts.containerized,
        kubernetes=facts.kubernetes,
        process_group=facts.posix,
        linux_sandbox=sandbox,
        chroot=sandbox and facts.chroot,
        namespaces={
            name: sandbox and bool(facts.namespaces.get(name, False))
            for name in NAMESPACE_NAMES
        },
        data_dir_writable=facts.data_dir_writable,
        rlimit_cpu=facts.posix,
        rlimit_memory=facts.posix,
        memory_limit=facts.posix,
        cgroup_v2=cgroup_v2,
        memory_mechanism=mechanisms["memory"],
        pids_mechanism=mechanisms["pids"],
        cpu_accounting_mechanism=mechanisms["cpu_accounting"],
        kill_mechanism=mechanisms["kill"],
        cgroup_bases=bases,
        warnings=_warnings(
            facts,
            linux=linux,
            sandbox=sandbox,
            cgroup_unwritable=cgroup_v2 and mechanisms["memory"] is None and mechanisms["pids"] is None,
            data_dir=data_dir,
            cgroup_root=cgroup_root,
        ),
        overrides=_overrides(capacity_memory_bytes, capacity_pids, disable_cgroup, disable_linux_sandbox),
        privilege_drop=privilege_drop,
    )


def _cgroup_mechanisms(
    facts: HostFacts, enabled: bool
) -> Tuple[Dict[str, Optional[str]], Dict[str, str]]:
    """
    For each capability key (L{CGROUP_KEYS}), the mechanism of its
    facility when a probe could really write one (else C{None}), and the
    base directory of each such facility; nothing when cgroups are off.
    """
    mechanisms: Dict[str, Optional[str]] = dict.fromkeys(CGROUP_KEYS)
    bases: Dict[str, str] = {}
    if enabled:
        for key in CGROUP_KEYS:
            facility = facts.cgroup.get(key)
            if facility is not None and facility.writable:
                mechanisms[key] = facility.mechanism
                bases[key] = facility.base
    return mechanisms, bases


def _warnings(
    facts: HostFacts,
    *,
    linux: bool,
    sandbox: bool,
    cgroup_unwritable: bool,
    data_dir: str,
    cgroup_root: str,
) -> Tuple[str, ...]:
    """
    What the snapshot warns of, which makes it C{degraded}: a data
    directory that cannot be written, no sandbox, and a cgroup v2 tree in
    which no per-task group limiting memory or pids could be made.
    """
    warnings = []
    if not facts.data_dir_writable:
        warnings.append(f"data-dir is not writable: {data_dir}")
    if not sandbox:
        warnings.append(
            "linux_sandbox is unavailable without root-equivalent namespace permissions"
            if linux
            else "linux_sandbox is unavailable on this host"
        )
    if cgroup_unwritable:
        warnings.append(
            f"cgroup v2 detected but cgroup root is not writable: {cgroup_root}"
        )
    return tuple(warnings)


def _overrides(
    capacity_memory_bytes: Optional[int],
    capacity_pids: Optional[int],
    disable_cgroup: bool,
    disable_linux_sandbox: bool,
) -> Dict[str, str]:
    """
    The configured overrides, as the snapshot's C{overrides} names them.
    """
    overrides = {}
    if capacity_memory_bytes is not None:
        overrides["capacity_memory_bytes"] = str(capacity_memory_bytes)
    if capacity_pids is not None:
        overrides["capacity_pids"] = str(capacity_pids)
    if disable_cgroup:
        overrides["cgroup"] = "disabled"
    if disable_linux_sandbox:
        overrides["linux_sandbox"] = "disabled"
    return overrides


def _capacity(
    facts: HostFacts,
    linux: bool,
    max_running_tasks: int,
    capacity_memory_bytes: Optional[int],
    capacity_pids: Optional[int],
) -> Reservation:
    """
    The runtime's capacity: its task slots, and memory and pids as
    configured, else the smaller of the runtime's own cgroup limit and the
    host's total (pids are known on Linux only).
    """
    memory = capacity_memory_bytes
    if memory is None:
        memory = _smallest(facts.own_memory_limit, facts.physical_memory_bytes)
    pids = capacity_pids
    if pids is None and linux:
        pids = _smallest(facts.own_pids_limit, facts.pid_max)
    return Reservation(task_slots=max_running_tasks, memory_bytes=memory, pids=pids)
