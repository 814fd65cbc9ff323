"""
What the host probe found, as plain values: the cgroup layout, the facility
that provides each cgroup capability and the other L{HostFacts}.  The probe
(L{execgo.host.probe}) fills them in with blocking calls;
L{execgo.core.capabilities} turns them into the capability snapshot.
"""

from __future__ import annotations

from typing import Mapping, Optional, Tuple

import attrs

from execgo.core.constants import NAMESPACE_NAMES

CGROUP_V1 = "cgroup_v1"
CGROUP_V2 = "cgroup_v2"
#: The capabilities a per-task cgroup can provide, in rendering order.
CGROUP_KEYS = ("memory", "pids", "cpu_accounting", "kill")


@attrs.frozen
class CgroupLayout:
    """
    Where the cgroup hierarchies are mounted (paths already under C{fs_root}).

    @ivar v2_mount: the cgroup v2 tree, or C{None}.
    @ivar v2_is_top: whether the v2 tree is C{/sys/fs/cgroup} itself.
    @ivar v2_controllers: the controllers its root C{cgroup.controllers} lists.
    @ivar v1_mounts: v1 controller name (C{memory}, C{pids}, C{cpuacct}) to
        its hierarchy.
    """

    v2_mount: Optional[str] = None
    v2_is_top: bool = False
    v2_controllers: Tuple[str, ...] = ()
    v1_mounts: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def present(self) -> bool:
        """
        Whether any hierarchy able to limit memory or pids exists.
        """
        return self.v2_mount is not None or any(
            name in self.v1_mounts for name in ("memory", "pids")
        )


@attrs.frozen
class CgroupFacility:
    """
    How one capability can be backed by a per-task cgroup.

    @ivar mechanism: C{"cgroup_v2"} or C{"cgroup_v1"}.
    @ivar base: the directory per-task groups go under.
    @ivar writable: whether a probe group there really offered it.
    """

    mechanism: str
    base: str
    writable: bool


@attrs.frozen
class HostFacts:
    """
    Raw facts about the host, gathered once by L{probe_host}.

    @ivar system: C{platform.system()} as reported (e.g. C{"Linux"}).
    @ivar machine: C{platform.machine()} as reported (e.g. C{"amd64"}).
    @ivar cgroup: capability key (L{CGROUP_KEYS}) to the best facility found
        for it: the first writable one, else the preferred one (not
        writable); absent when no hierarchy offers it or cgroups are disabled.
    @ivar namespaces: namespace name to whether unsharing it worked in a
        child process.
    @ivar own_memory_limit: the memory limit of the runtime's own cgroup
        (smallest over it and its visible ancestors), if set.
    @ivar own_pids_limit: the same for pids.
    """

    system: str = "Linux"
    machine: str = "x86_64"
    posix: bool = True
    containerized: bool = False
    kubernetes: bool = False
    euid: int = 0
    data_dir_writable: bool = True
    physical_memory_bytes: Optional[int] = None
    pid_max: Optional[int] = None
    cgroup_layout: CgroupLayout = attrs.field(factory=CgroupLayout)
    cgroup: Mapping[str, CgroupFacility] = attrs.field(factory=dict)
    namespaces: Mapping[str, bool] = attrs.field(
        factory=lambda: dict.fromkeys(NAMESPACE_NAMES, False)
    )
    chroot: bool = False
    own_memory_limit: Optional[int] = None
    own_pids_limit: Optional[int] = None
