# -*- test-case-name: tests.test_procinfo -*-
"""
Facts about processes from C{/proc}: is a recorded supervisor still the
process we started, and is a process group still populated.

Standard library only; blocking but cheap (one small C{/proc} read).
"""

from __future__ import annotations

import os

SUPERVISOR_MARKERS = (b"internal-supervisor", b"internal-shim")


def is_running(pid: int, proc: str = "/proc") -> bool:
    """
    Whether C{pid} names a live process (a zombie does not count: on a host
    whose PID 1 never reaps, an orphan's zombie lingers forever).
    """
    if pid <= 0:
        return False
    try:
        with open(f"{proc}/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return bool(fields) and fields[0] not in (b"Z", b"X")


def is_supervisor(pid: int, proc: str = "/proc") -> bool:
    """
    Whether C{pid} is alive and is an execgo supervisor or shim (guards
    against a recycled pid being taken for a live supervisor).
    """
    if not is_running(pid, proc):
        return False
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as cmdline:
            text = cmdline.read()
    except OSError:
        return False
    return any(marker in text for marker in SUPERVISOR_MARKERS)


def kill_group(pgid: int, signum: int) -> bool:
    """
    Signal a process group; C{False} when it is gone (not an error).
    """
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    """
    Whether any process of a process group exists (zombies included: the
    group id stays taken until they are reaped).
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
