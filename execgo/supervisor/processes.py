# -*- test-case-name: tests.test_supervisor,tests.test_engine -*-
"""
The supervisor engine's edges to the kernel, in one interface: start a
workload, find and reap exited children, signal and probe process groups,
give back a passing memory peak.

L{HostProcesses} is the real thing; the engine's unit tests hand in a fake
with the same methods, so its timers, escalation and verdicts run without
processes.  Standard library only (plus C{attrs}).
"""

from __future__ import annotations

import os
from typing import Optional, Protocol

import attrs

from execgo.host import procinfo
from execgo.supervisor import launcher


@attrs.frozen
class Reaped:
    """
    A reaped child: its wait status and what it used.
    """

    status: int
    user_cpu_ms: int
    system_cpu_ms: int
    max_rss_bytes: int


class Processes(Protocol):
    """
    What the engine asks of the kernel.
    """

    def spawn(self, spec: launcher.LaunchSpec, cgroup_fd: Optional[int] = None) -> launcher.Spawned:
        """
        Start a workload (L{launcher.spawn}), born in the cgroup v2
        directory C{cgroup_fd} if given.

        @raise launcher.LaunchError: when it cannot be started.
        """

    def read_status(self, status_fd: Optional[int]) -> Optional[str]:
        """
        The sandbox wrapper's failure line, if any, closing its pipe
        (L{launcher.read_status}).
        """

    def exited(self) -> Optional[int]:
        """
        The pid of an exited child not reaped yet (left unreaped), or
        C{None} when there is none.
        """

    def reap(self, pid: int) -> Optional[Reaped]:
        """
        Reap the exited child C{pid}; C{None} when it is not a child.
        """

    def signal_group(self, pgid: int, signum: int) -> bool:
        """
        Signal a process group; C{False} when it is gone.
        """

    def group_alive(self, pgid: int) -> bool:
        """
        Whether any process of a process group exists.
        """

    def reset_peak_rss(self) -> bool:
        """
        Forget this process's passing memory peak (L{procinfo.reset_peak_rss}).
        """


class HostProcesses:
    """
    L{Processes} on this host.
    """

    def spawn(self, spec: launcher.LaunchSpec, cgroup_fd: Optional[int] = None) -> launcher.Spawned:
        """
        L{launcher.spawn}.
        """
        return launcher.spawn(spec, cgroup_fd)

    def read_status(self, status_fd: Optional[int]) -> Optional[str]:
        """
        L{launcher.read_status}.
        """
        return launcher.read_status(status_fd)

    def exited(self) -> Optional[int]:
        """
        C{waitid} without waiting or reaping.
        """
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None
        return None if info is None else info.si_pid

    def reap(self, pid: int) -> Optional[Reaped]:
        """
        C{wait4}, with the child's C{rusage}.
        """
        try:
            _, status, rusage = os.wait4(pid, 0)
        except ChildProcessError:
            return None
        return Reaped(
            status=status,
            user_cpu_ms=int(rusage.ru_utime * 1000),
            system_cpu_ms=int(rusage.ru_stime * 1000),
            max_rss_bytes=rusage.ru_maxrss * 1024,
        )

    def signal_group(self, pgid: int, signum: int) -> bool:
        """
        L{procinfo.kill_group}.
        """
        return procinfo.kill_group(pgid, signum)

    def group_alive(self, pgid: int) -> bool:
        """
        L{procinfo.group_alive}.
        """
        return procinfo.group_alive(pgid)

    def reset_peak_rss(self) -> bool:
        """
        L{procinfo.reset_peak_rss}.
        """
        return procinfo.reset_peak_rss()
