"""
Typed stub for the C extension L{execgo.host._spawn} (see C{execgo/host/_spawn.c}).
"""

from collections.abc import Sequence

def spawn(
    executables: Sequence[bytes],
    argv: Sequence[bytes],
    envp: Sequence[bytes],
    cwd: bytes,
    stdin: int,
    stdout: int,
    stderr: int,
    keep_fd: int,
    uid: int,
    gid: int,
    umask: int,
    rlimits: Sequence[tuple[int, int, int]],
    cgroup_fd: int = -1,
) -> int:
    """
    Start C{argv} through C{vfork()} as C{uid}/C{gid} (-1: unchanged) and
    return the child's pid; the caller reaps it.  Raises L{OSError} (reaping
    the child) when the child's setup or every C{execve} failed.  With a
    C{cgroup_fd} (a cgroup v2 directory) the child is born in that group
    (C{clone3} with C{CLONE_INTO_CGROUP}).
    """

def clone_into_supported() -> bool:
    """
    Whether L{spawn} can take a C{cgroup_fd} on this kernel and build.
    """
