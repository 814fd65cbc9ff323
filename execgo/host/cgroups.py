# -*- test-case-name: tests.test_cgroups -*-
"""
Per-task cgroups, as the supervisor uses them: create, place the workload
before its first instruction, limit, signal everything in the group, read
the verdict counters, remove.

Placement works by moving the supervisor itself into the task's groups
just before it spawns the workload and back right after: the child is born
inside the groups (as C{clone3(CLONE_INTO_CGROUP)} would do), and the spawn
stays on the fast C fork/exec path.  The memory limit is written after the
supervisor has left the group, so a tiny limit can never make the kernel
pick the supervisor as the OOM victim; the pids limit is written before the
spawn one above the request (the supervisor is counted while it is inside)
and lowered to the request right after.

Works on cgroup v2, on v1, and on hybrids such as this host (v1 C{memory}
and C{pids} beside a controller-less v2 tree whose C{cgroup.kill} still
kills a whole task at once).  Standard library only.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, List, Mapping, Optional

import attrs

from execgo.host.fsio import read_text, write_control
from execgo.host.probe import cgroup_bases, detect_cgroup_layout, enable_v2_controllers

V2 = "v2"
MEMORY = "memory"
PIDS = "pids"


def _keyed(text: Optional[str], key: str) -> Optional[int]:
    """
    The integer after C{key} in a flat-keyed file (C{memory.events},
    C{memory.oom_control}, C{pids.events}, C{cgroup.events}).
    """
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return None


def own_groups(proc_self_cgroup: str, mounts: Mapping[str, str]) -> Dict[str, str]:
    """
    The directories of this process's own groups, keyed like L{cgroup_bases}
    (C{"v2"} for the unified line C{0::/path}).
    """
    groups = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        names = [V2] if controllers == "" else controllers.split(",")
        for name in names:
            if name in mounts:
                groups[name] = os.path.join(mounts[name], path.lstrip("/"))
    return groups


@attrs.define
class TaskCgroup:
    """
    The groups of one task: hierarchy key to directory, and whether its v2
    group has the memory and pids controllers (else their files are not
    looked for there).
    """

    dirs: Dict[str, str]
    v2_limits: bool = True

    def _file(self, key: str, name: str) -> Optional[str]:
        directory = self.dirs.get(key)
        return None if directory is None else os.path.join(directory, name)

    def _limit_file(self, key: str, name: str) -> Optional[str]:
        """
        A memory or pids controller file: in v2 only where v2 limits.
        """
        return None if key == V2 and not self.v2_limits else self._file(key, name)

    def pids(self) -> List[int]:
        """
        Every process in any of the task's groups.
        """
        found = set()
        for directory in self.dirs.values():
            for word in (read_text(os.path.join(directory, "cgroup.procs")) or "").split():
                if word.isdigit():
                    found.add(int(word))
        return sorted(found)

    def populated(self) -> bool:
        """
        Whether any process of the task is still alive.
        """
        events = self._file(V2, "cgroup.events")
        if events is not None:
            populated = _keyed(read_text(events), "populated")
            if populated is not None:
                return populated > 0
        return bool(self.pids())

    def signal(self, signum: int) -> None:
        """
        Send C{signum} to every process in the groups; C{SIGKILL} goes
        through v2's C{cgroup.kill} where there is one (atomic: nothing can
        fork its way out).
        """
        if signum == signal.SIGKILL:
            kill = self._file(V2, "cgroup.kill")
            if kill is not None and os.path.exists(kill):
                try:
                    write_control(kill, "1")
                except OSError:
                    pass
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def oom_killed(self) -> bool:
        """
        Whether the kernel OOM-killed a process of this task in its group.
        """
        for key, name in ((MEMORY, "memory.oom_control"), (V2, "memory.events")):
            path = self._limit_file(key, name)
            if path is not None and _keyed(read_text(path), "oom_kill"):
                return True
        return False

    def memory_peak(self) -> Optional[int]:
        """
        The group's peak memory use in bytes, when readable.
        """
        for key, name in ((MEMORY, "memory.max_usage_in_bytes"), (V2, "memory.peak")):
            path = self._limit_file(key, name)
            text = None if path is None else read_text(path)
            if text is not None and text.strip().isdigit():
                return int(text.strip())
        return None

    def cpu_ms(self) -> Optional["tuple[int, int]"]:
        """
        User and system CPU milliseconds of every process the task ran (its
        v2 group's C{cpu.stat}, which also counts descendants its leader
        never waited for), when readable.
        """
        path = self._file(V2, "cpu.stat")
        text = None if path is None else read_text(path)
        user = _keyed(text, "user_usec")
        system = _keyed(text, "system_usec")
        if user is None or system is None:
            return None
        return user // 1000, system // 1000

    def pids_limit_hits(self) -> int:
        """
        How many forks the pids limit refused.
        """
        path = self._file(PIDS, "pids.events") or self._limit_file(V2, "pids.events")
        return _keyed(None if path is None else read_text(path), "max") or 0

    def remove(self) -> None:
        """
        Remove the groups (errors ignored: an empty group left behind is
        harmless and a later attempt can remove it).
        """
        for directory in self.dirs.values():
            try:
                os.rmdir(directory)
            except OSError:
                pass


class Cgroups:
    """
    The per-task cgroup facility of one supervisor.

    @param bases: hierarchy key to the directory task groups go under.
    @param home: hierarchy key to the supervisor's own group (where it
        returns after each spawn).
    @param v2_limits: whether the v2 tree has the memory and pids controllers.
    """

    def __init__(self, bases: Dict[str, str], home: Dict[str, str], v2_limits: bool) -> None:
        self.bases = bases
        self.home = home
        self.v2_limits = v2_limits
        self._ready: set = set()
        self._home_fds: Dict[str, int] = {}

    @classmethod
    def detect(cls, cgroup_root: str) -> "Cgroups":
        """
        The facility for this host and C{cgroup_root}.
        """
        layout = detect_cgroup_layout()
        bases = {
            key: path for key, path in cgroup_bases(layout, cgroup_root).items() if key in (V2, MEMORY, PIDS)
        }
        mounts = dict(layout.v1_mounts)
        if layout.v2_mount is not None:
            mounts[V2] = layout.v2_mount
        home = own_groups(read_text("/proc/self/cgroup") or "", mounts)
        v2_limits = "memory" in layout.v2_controllers and "pids" in layout.v2_controllers
        return cls(bases, home, v2_limits)

    @classmethod
    def try_detect(cls, cgroup_root: str) -> Optional["Cgroups"]:
        """
        L{detect}, or C{None} where the host's cgroups cannot be read.
        """
        try:
            return cls.detect(cgroup_root)
        except OSError:
            return None

    def _base(self, key: str) -> str:
        base = self.bases[key]
        if key not in self._ready:
            os.makedirs(base, exist_ok=True)
            if key == V2 and self.v2_limits:
                enable_v2_controllers(base)
            self._ready.add(key)
        return base

    def create(self, task_id: str, mechanisms: Mapping[str, str], pids_max: Optional[int]) -> TaskCgroup:
        """
        Make the task's groups: always the v2 group (tracking and kill),
        the v1 memory group (limit, peak and OOM counters) when memory is
        limited through it (or there is no v2 group to track the task),
        the v1 pids group when pids are limited through it.  A v1 group a
        task does not need costs every fork, exec and exit in it.  The pids limit is
        set one above the request while the supervisor passes through.

        @raise OSError: when a group cannot be made or configured.
        """
        wanted = [V2] if V2 in self.bases else []
        if (mechanisms.get("memory_bytes") == "cgroup_v1" or V2 not in self.bases) and MEMORY in self.bases:
            wanted.append(MEMORY)
        if mechanisms.get("pids_max") == "cgroup_v1" and PIDS in self.bases:
            wanted.append(PIDS)
        dirs = {}
        try:
            for key in wanted:
                directory = os.path.join(self._base(key), task_id)
                try:
                    os.mkdir(directory)
                except FileExistsError:
                    pass
                # Readable (a workload may size itself by its limits),
                # writable by the runtime alone: a task cannot leave its
                # groups or change their limits.
                os.chmod(directory, 0o755)
                dirs[key] = directory
            group = TaskCgroup(dirs, self.v2_limits)
            if pids_max is not None:
                path = group._file(PIDS, "pids.max")
                if path is None and self.v2_limits:
                    path = group._file(V2, "pids.max")
                if path is not None:
                    write_control(path, str(pids_max + 1))
        except OSError:
            TaskCgroup(dirs).remove()
            raise
        return group

    def birthplace(self, group: TaskCgroup) -> Optional[str]:
        """
        The directory a child can be born in directly (C{clone3} with
        C{CLONE_INTO_CGROUP}) when the task's v2 group is its only one,
        else C{None}: a v1 group can only be entered by moving
        (L{enter}, L{leave}).
        """
        return group.dirs[V2] if set(group.dirs) == {V2} else None

    def enter(self, group: TaskCgroup) -> None:
        """
        Move the supervisor into the task's groups (its next child is born
        there).
        """
        pid = str(os.getpid())
        for directory in group.dirs.values():
            write_control(os.path.join(directory, "cgroup.procs"), pid)

    def leave(self, group: TaskCgroup) -> None:
        """
        Move the supervisor back to its own groups, through descriptors of
        their C{cgroup.procs} kept open (one write per group per spawn,
        no open and close).
        """
        pid = str(os.getpid()).encode("ascii")
        for key in group.dirs:
            home = self.home.get(key)
            if home is None:
                continue
            try:
                fd = self._home_fds.get(key)
                if fd is None:
                    fd = self._home_fds[key] = os.open(
                        os.path.join(home, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC
                    )
                os.write(fd, pid)
            except OSError:
                self._forget_home(key)

    def _forget_home(self, key: str) -> None:
        fd = self._home_fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def existing(self, task_id: str) -> TaskCgroup:
        """
        The groups a task still has on disk (none when it has none).
        """
        dirs = {}
        for key, base in self.bases.items():
            directory = os.path.join(base, task_id)
            if os.path.isdir(directory):
                dirs[key] = directory
        return TaskCgroup(dirs, self.v2_limits)

    def discard(self, task_id: str, timeout_s: float = 2.0) -> None:
        """
        Kill everything left in a task's groups and remove them (for tasks
        whose supervisor is gone).  Blocking: run it off the reactor.
        """
        group = self.existing(task_id)
        if not group.dirs:
            return
        deadline = time.monotonic() + timeout_s
        group.signal(signal.SIGKILL)
        while group.populated() and time.monotonic() < deadline:
            time.sleep(0.005)
            group.signal(signal.SIGKILL)
        group.remove()

    def limit(self, group: TaskCgroup, memory_bytes: Optional[int], pids_max: Optional[int]) -> None:
        """
        Write the final limits once the supervisor has left the groups.

        @raise OSError: when the kernel refuses a limit (e.g. the workload
            already uses more memory than it allows).
        """
        if memory_bytes is not None:
            path = group._file(MEMORY, "memory.limit_in_bytes")
            if path is None and self.v2_limits:
                path = group._file(V2, "memory.max")
            if path is not None:
                write_control(path, str(memory_bytes))
        if pids_max is not None:
            path = group._file(PIDS, "pids.max") or (group._file(V2, "pids.max") if self.v2_limits else None)
            if path is not None:
                write_control(path, str(pids_max))
