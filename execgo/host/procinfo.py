# -*- test-case-name: tests.test_procinfo -*-
"""
Facts about processes from C{/proc}: is a recorded supervisor still the
process we started, and is a process group still populated.

Standard library only; blocking but cheap (one small C{/proc} read).
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any, List, Optional

from execgo.host.fsio import write_control

SUPERVISOR_MARKERS = (b"internal-supervisor", b"internal-shim")
PR_SET_NO_NEW_PRIVS = 38


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


def _argv(pid: int, proc: str) -> List[bytes]:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as cmdline:
            return [part for part in cmdline.read().split(b"\0") if part]
    except OSError:
        return []


def _parent(pid: int, proc: str) -> Optional[int]:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def supervisor_pids(data_dir: str, proc: str = "/proc") -> List[int]:
    """
    The live supervisor (or shim) processes of C{data_dir}: those whose
    command line names it, or a file inside it, beside the subcommand.  A
    child of one of them with the same command line is a workload caught
    between C{vfork} and C{exec} (it shares its parent's memory, so its
    C{cmdline} too), not a supervisor.  For tests and benchmarks that must
    find or end them.
    """
    root = os.path.abspath(data_dir).encode()
    found = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        pid = int(name)
        argv = _argv(pid, proc)
        if not any(marker in argv for marker in SUPERVISOR_MARKERS):
            continue
        if any(arg == root or arg.startswith(root + b"/") for arg in argv) and is_running(pid, proc):
            found.append(pid)
    return [pid for pid in found if _parent(pid, proc) not in found]


def workload_pids(directory: str, proc: str = "/proc") -> List[int]:
    """
    The live processes (this one excluded) whose working directory is
    inside C{directory}: every workload runs in C{<task_dir>/workspace}.
    For tests and benchmarks that must find or end them.
    """
    root = os.path.realpath(directory) + os.sep
    found = []
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"{proc}/{name}/cwd")
        except OSError:
            continue
        cwd = cwd.removesuffix(" (deleted)")
        if (cwd + os.sep).startswith(root) and is_running(int(name), proc):
            found.append(int(name))
    return found


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


def reset_peak_rss(proc: str = "/proc") -> bool:
    """
    Give freed heap memory back to the system (C{malloc_trim}, where the C
    library has it) and reset this process's peak resident size to its
    current size (Linux C{clear_refs} 5).  A child spawned through
    C{vfork} reports its parent's peak as its own C{ru_maxrss}, so the
    supervisor resets its peak after a passing spike (rendering a large
    output preview) rather than have later tasks report it.

    @return: whether the kernel took the reset.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
    try:
        write_control(f"{proc}/self/clear_refs", "5")
    except OSError:
        return False
    return True


def set_no_new_privs() -> bool:
    """
    Set C{no_new_privs} on this process (inherited by everything it
    starts: no set-user-id program or file capability can raise their
    rights); C{False} where the kernel refuses.
    """
    libc = _libc()
    return libc is not None and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0


@functools.lru_cache(maxsize=None)
def _libc() -> Any:
    """
    The C library, or C{None} where it cannot be loaded.
    """
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None
