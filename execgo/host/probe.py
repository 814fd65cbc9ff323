# -*- test-case-name: tests.test_capabilities -*-
"""
The host probe: raw L{HostFacts} gathered with blocking calls (run
L{probe_host} once, off the reactor), and where per-task cgroups go.
L{execgo.core.capabilities} turns the facts into the capability snapshot.

Cgroup placement.  Per-task groups go under a
I{base} directory per mechanism, derived from the configured C{cgroup_root}
(default C{/sys/fs/cgroup/execgo-runtime}):

  - If C{/sys/fs/cgroup} itself is cgroup v2 (it has C{cgroup.controllers}),
    the v2 base is C{cgroup_root} as configured, and there are no v1 bases.
  - Otherwise (hybrid or pure v1) the v2 tree, if any, is
    C{/sys/fs/cgroup/unified} and the v1 hierarchies are
    C{/sys/fs/cgroup/<controller>} for C{memory}, C{pids} and C{cpuacct}.
    Each base is C{<hierarchy>/<rel>}, where C{rel} is C{cgroup_root}'s path
    inside whichever of those hierarchies contains it (so
    C{--cgroup-root /sys/fs/cgroup/memory/a/b} gives C{.../pids/a/b} too),
    else its basename (so the default gives
    C{/sys/fs/cgroup/memory/execgo-runtime},
    C{/sys/fs/cgroup/pids/execgo-runtime}, ...,
    C{/sys/fs/cgroup/unified/execgo-runtime}).

For each capability (C{memory}, C{pids}, C{cpu_accounting}, C{kill}) cgroup
v2 is preferred when a probe group under the v2 base really offers it
(C{memory.max}, C{pids.max}, C{cpu.stat}, C{cgroup.kill}), else cgroup v1
when a probe group under that controller's base offers it
(C{memory.limit_in_bytes}, C{pids.max}, C{cpuacct.usage}).  Writability is
tested by creating and removing C{<base>/.probe-<pid>} (creating the base if
missing, and removing it again if the probe created it), never by mode bits.
On a v2 base the probe enables C{memory} and C{pids} in
C{<base>/cgroup.subtree_control} (L{enable_v2_controllers}); whoever creates
the base later must do the same.
"""


from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from execgo.core.constants import NAMESPACE_NAMES
from execgo.core.hostfacts import (
    CGROUP_KEYS,
    CGROUP_V1,
    CGROUP_V2,
    CgroupFacility,
    CgroupLayout,
    HostFacts,
)
from execgo.host.fsio import read_text, write_control

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup/execgo-runtime"
CGROUP_MOUNT = "/sys/fs/cgroup"

# Per capability: the v1 controller, and the file a group of it must have
# plus a harmless value to write into it (None: existence is enough).
_V1 = {
    "memory": ("memory", "memory.limit_in_bytes", "-1"),
    "pids": ("pids", "pids.max", "max"),
    "cpu_accounting": ("cpuacct", "cpuacct.usage", None),
}
_V2 = {
    "memory": ("memory.max", "max"),
    "pids": ("pids.max", "max"),
    "cpu_accounting": ("cpu.stat", None),
    "kill": ("cgroup.kill", None),
}
_V2_ENABLE = ("memory", "pids")
# v1 memory reports "no limit" as PAGE_COUNTER_MAX pages (about 2**63).
_UNLIMITED = 2**62
_CLONE_FLAGS = {
    "mount": 0x00020000,
    "pid": 0x20000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "net": 0x40000000,
}


def _host(fs_root: str, path: str) -> str:
    """
    Map a host path into C{fs_root}.
    """
    return os.path.join(fs_root, os.path.normpath(path).lstrip("/"))


def _read(path: str) -> Optional[str]:
    return read_text(path, 65536)


def _parse_limit(text: Optional[str]) -> Optional[int]:
    """
    A limit file's value, or C{None} when unset, unlimited or unreadable.
    """
    if text is None:
        return None
    value = text.strip()
    if not value.isdigit():
        return None
    number = int(value)
    return None if number >= _UNLIMITED else number


def detect_cgroup_layout(fs_root: str = "/") -> CgroupLayout:
    """
    Find the cgroup hierarchies by reading only (no group is created).
    """
    top = _host(fs_root, CGROUP_MOUNT)
    v2_mount = None
    for candidate in (top, os.path.join(top, "unified")):
        if os.path.isfile(os.path.join(candidate, "cgroup.controllers")):
            v2_mount = candidate
            break
    controllers: Tuple[str, ...] = ()
    if v2_mount is not None:
        text = _read(os.path.join(v2_mount, "cgroup.controllers")) or ""
        controllers = tuple(text.split())
    v1_mounts = {}
    if v2_mount != top:
        for controller in ("memory", "pids", "cpuacct"):
            mount = os.path.join(top, controller)
            if os.path.isfile(os.path.join(mount, "cgroup.procs")) and not (
                os.path.exists(os.path.join(mount, "cgroup.controllers"))
            ):
                v1_mounts[controller] = mount
    return CgroupLayout(
        v2_mount=v2_mount,
        v2_is_top=v2_mount is not None and v2_mount == top,
        v2_controllers=controllers,
        v1_mounts=v1_mounts,
    )


def cgroup_bases(
    layout: CgroupLayout, cgroup_root: str, fs_root: str = "/"
) -> Dict[str, str]:
    """
    Where per-task groups go, per hierarchy: key C{"v2"} and the v1
    controller names, following the rule in the module docstring.
    """
    root = _host(fs_root, cgroup_root)
    mounts = list(layout.v1_mounts.values())
    if layout.v2_mount is not None:
        mounts.insert(0, layout.v2_mount)
    rel = os.path.basename(root)
    for mount in mounts:
        if root == mount or root.startswith(mount.rstrip("/") + "/"):
            rel = os.path.relpath(root, mount)
            break
    bases = {}
    if layout.v2_mount is not None:
        bases["v2"] = root if layout.v2_is_top else os.path.normpath(
            os.path.join(layout.v2_mount, rel)
        )
    for controller, mount in layout.v1_mounts.items():
        bases[controller] = os.path.normpath(os.path.join(mount, rel))
    return bases


def enable_v2_controllers(base: str, wanted: Tuple[str, ...] = _V2_ENABLE) -> None:
    """
    Write those of C{wanted} that C{base} has (its C{cgroup.controllers})
    into its C{cgroup.subtree_control}, so groups made under it get their
    files (e.g. C{memory.max}).  Controllers the kernel refuses are left
    out silently.
    """
    available = (_read(os.path.join(base, "cgroup.controllers")) or "").split()
    enabled = (_read(os.path.join(base, "cgroup.subtree_control")) or "").split()
    missing = [name for name in wanted if name in available and name not in enabled]
    if not missing:
        return
    path = os.path.join(base, "cgroup.subtree_control")
    try:
        write_control(path, " ".join(f"+{name}" for name in missing))
    except OSError:
        # One refused controller fails the whole write: try them one by one.
        for name in missing:
            with contextlib.suppress(OSError):
                write_control(path, f"+{name}")


def _try_group(
    base: str,
    check: Callable[[str], Dict[str, bool]],
    mkdir: Callable[[str], None],
    rmdir: Callable[[str], None],
    prepare: Optional[Callable[[str], None]] = None,
) -> Optional[Dict[str, bool]]:
    """
    Create C{base} (if missing) and a probe group in it, report what
    C{check} finds there, and remove everything this created.

    @return: C{check}'s result, or C{None} when a group could not be made
        or removed.
    """
    created: List[str] = []
    try:
        missing = []
        cursor = base
        while not os.path.isdir(cursor):
            missing.append(cursor)
            parent = os.path.dirname(cursor)
            if parent == cursor:
                break
            cursor = parent
        for path in reversed(missing):
            mkdir(path)
            created.append(path)
        if prepare is not None:
            prepare(base)
        probe = os.path.join(base, f".probe-{os.getpid()}")
        if os.path.isdir(probe):
            rmdir(probe)  # left over by a crashed earlier probe
        mkdir(probe)
        try:
            return check(probe)
        finally:
            rmdir(probe)
    except OSError:
        return None
    finally:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                rmdir(path)


def _check_files(
    table: Mapping[str, Tuple[str, Optional[str]]],
) -> Callable[[str], Dict[str, bool]]:
    """
    A probe check: for each capability, does its file exist in the probe
    group and (where a value is given) accept a harmless write?
    """

    def check(group: str) -> Dict[str, bool]:
        result = {}
        for key, (name, value) in table.items():
            path = os.path.join(group, name)
            ok = os.path.isfile(path)
            if ok and value is not None:
                try:
                    write_control(path, value)
                except OSError:
                    ok = False
            result[key] = ok
        return result

    return check


def _probe_cgroups(
    layout: CgroupLayout,
    cgroup_root: str,
    fs_root: str,
    mkdir: Callable[[str], None],
    rmdir: Callable[[str], None],
) -> Dict[str, CgroupFacility]:
    """
    Try each hierarchy and pick, per capability, v2 if it works there,
    else v1 (see the module docstring).
    """
    bases = cgroup_bases(layout, cgroup_root, fs_root)
    found: Dict[str, CgroupFacility] = {}
    if "v2" in bases:
        base = bases["v2"]
        works = _try_group(
            base, _check_files(_V2), mkdir, rmdir, prepare=enable_v2_controllers
        ) or {}
        for key in CGROUP_KEYS:
            # kill and cpu.stat are core v2 files; memory/pids need controllers.
            offered = key in ("kill", "cpu_accounting") or key in layout.v2_controllers
            if works.get(key) or offered:
                found[key] = CgroupFacility(CGROUP_V2, base, bool(works.get(key)))
    for key, (controller, name, value) in _V1.items():
        if controller not in bases or (key in found and found[key].writable):
            continue
        base = bases[controller]
        works = _try_group(base, _check_files({key: (name, value)}), mkdir, rmdir) or {}
        if works.get(key) or key not in found:
            found[key] = CgroupFacility(CGROUP_V1, base, bool(works.get(key)))
    return found


def _own_limits(fs_root: str, layout: CgroupLayout) -> Tuple[Optional[int], Optional[int]]:
    """
    The memory and pids limits of the runtime's own cgroup, from
    C{/proc/self/cgroup}: the smallest value set on its group or a visible
    ancestor, in either hierarchy.
    """
    text = _read(_host(fs_root, "/proc/self/cgroup")) or ""
    found: Dict[str, List[int]] = {"memory": [], "pids": []}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            if layout.v2_mount is None:
                continue
            sources = [(layout.v2_mount, "memory", "memory.max"),
                       (layout.v2_mount, "pids", "pids.max")]
        else:
            names = controllers.split(",")
            sources = [
                (layout.v1_mounts[c], c, f)
                for c, f in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max"))
                if c in names and c in layout.v1_mounts
            ]
        for mount, key, name in sources:
            group = os.path.normpath(os.path.join(mount, path.lstrip("/")))
            if not os.path.isdir(group) or not group.startswith(mount):
                group = mount  # a container sees its own group as the mount
            while True:
                limit = _parse_limit(_read(os.path.join(group, name)))
                if limit is not None:
                    found[key].append(limit)
                if group == mount or len(group) <= len(mount):
                    break
                group = os.path.dirname(group)
    return (
        min(found["memory"], default=None),
        min(found["pids"], default=None),
    )


def probe_namespaces() -> Dict[str, bool]:
    """
    For each namespace, whether a forked child can C{unshare(2)} it.
    """
    try:
        unshare = ctypes.CDLL(None, use_errno=True).unshare
    except (OSError, AttributeError):
        return dict.fromkeys(NAMESPACE_NAMES, False)
    result = {}
    for name in NAMESPACE_NAMES:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                code = 0 if unshare(_CLONE_FLAGS[name]) == 0 else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        result[name] = os.waitstatus_to_exitcode(status) == 0
    return result


def _data_dir_writable(data_dir: str) -> bool:
    """
    Whether a probe file can be written into (and removed from) C{data_dir}.
    """
    path = os.path.join(data_dir, f".execgo-runtime-probe-{os.getpid()}")
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write("probe")
        os.remove(path)
    except OSError:
        return False
    return True


def _physical_memory() -> Optional[int]:
    """
    Total pages times page size, if the host reports them.
    """
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def probe_host(
    data_dir: str,
    cgroup_root: str,
    disable_cgroup: bool,
    disable_linux_sandbox: bool,
    *,
    fs_root: str = "/",
    try_namespaces: Optional[Callable[[], Mapping[str, bool]]] = None,
    mkdir: Callable[[str], None] = os.mkdir,
    rmdir: Callable[[str], None] = os.rmdir,
    environ: Optional[Mapping[str, str]] = None,
    system: Optional[str] = None,
) -> HostFacts:
    """
    Gather the host facts (blocking: call once, in a thread).

    Host paths (C{/sys}, C{/proc}, C{/.dockerenv}, C{/run}) are read under
    C{fs_root}; C{data_dir} is used as given.  Cgroups are only read, never
    created, when C{disable_cgroup}; namespaces are not tried when
    C{disable_linux_sandbox} or off Linux.

    @param try_namespaces: returns namespace name to whether it can be
        unshared; L{probe_namespaces} by default.
    @param mkdir: makes one directory (cgroup probing goes through it).
    @param rmdir: removes one directory.
    @param environ: the environment to look for C{KUBERNETES_SERVICE_HOST}
        in; C{os.environ} by default.
    @param system: overrides C{platform.system()}.
    """
    environ = os.environ if environ is None else environ
    system = platform.system() if system is None else system
    linux = system == "Linux"
    init_cgroup = _read(_host(fs_root, "/proc/1/cgroup")) or ""
    containerized = (
        os.path.exists(_host(fs_root, "/.dockerenv"))
        or os.path.exists(_host(fs_root, "/run/.containerenv"))
        or any(word in init_cgroup for word in ("docker", "containerd", "kubepods"))
    )
    kubernetes = "KUBERNETES_SERVICE_HOST" in environ or "kubepods" in init_cgroup
    pid_max = None
    layout = CgroupLayout()
    facilities: Dict[str, CgroupFacility] = {}
    own: Tuple[Optional[int], Optional[int]] = (None, None)
    namespaces = dict.fromkeys(NAMESPACE_NAMES, False)
    if linux:
        pid_max = _parse_limit(_read(_host(fs_root, "/proc/sys/kernel/pid_max")))
        layout = detect_cgroup_layout(fs_root)
        own = _own_limits(fs_root, layout)
        if not disable_cgroup:
            facilities = _probe_cgroups(layout, cgroup_root, fs_root, mkdir, rmdir)
        if not disable_linux_sandbox:
            probe = probe_namespaces if try_namespaces is None else try_namespaces
            tried = probe()
            namespaces = {name: bool(tried.get(name, False)) for name in NAMESPACE_NAMES}
    euid = os.geteuid() if hasattr(os, "geteuid") else -1
    return HostFacts(
        system=system,
        machine=platform.machine(),
        posix=os.name == "posix",
        containerized=containerized,
        kubernetes=kubernetes,
        euid=euid,
        data_dir_writable=_data_dir_writable(data_dir),
        physical_memory_bytes=_physical_memory(),
        pid_max=pid_max,
        cgroup_layout=layout,
        cgroup=facilities,
        namespaces=namespaces,
        chroot=linux and euid == 0,
        own_memory_limit=own[0],
        own_pids_limit=own[1],
    )
