# -*- test-case-name: tests.test_enforcement,tests.test_isolation -*-
"""
The C{linux_sandbox} exec wrapper: puts the workload into its own
namespaces (and optionally a chroot), then execs it.

The supervisor spawns C{python -I <this file> <config-json>} inside the
task's cgroups instead of the workload itself, passing the write end of a
pipe (its number is C{status_fd} in the configuration).  This program, in order:

 1. unshares the requested mount, uts, ipc and net namespaces;
 2. makes mount propagation private (nothing it mounts leaks to the host);
 3. sets the hostname of the new uts namespace;
 4. brings C{lo} up in the new net namespace (and nothing else exists);
 5. with a pid namespace, unshares it and forks: the child is the first
    process (pid 1) of the namespace and this process stays as its parent,
    relaying termination signals and finally dying the way the child died;
 6. in the workload process: when it chroots, lays an overlay over the
    root filesystem (its upper layer in the task directory: nothing is
    ever created inside the rootfs itself) and bind-mounts the workspace
    into it at the same path; mounts a fresh C{/proc} (pid and mount
    namespaces); chroots; changes to the working directory; takes the
    task's uid and gid (no groups, no capabilities: a chroot cannot be
    left without C{CAP_SYS_CHROOT}) and execs.

Any failure before the exec writes one line to that pipe (C{setup: ...}
for the sandbox, C{exec: ...} for the program itself) and exits 127; a
successful exec closes it (it is close-on-exec), so the
supervisor can tell a setup failure from a workload that exits 127.

Standard library and C{ctypes} only, and no C{execgo} import: it runs with
C{-I} for a fast start.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 4096
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_status_fd = -1

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """
    A sandbox step failed.
    """


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(code)} (errno {code})")


def _unshare(flags: int, what: str) -> None:
    _check(_libc.unshare(flags), f"unshare {what}")


def _mount(source: str, target: str, fstype: str, flags: int, what: str, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        what,
    )


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def _report(line: str) -> None:
    try:
        os.write(_status_fd, line.encode("utf-8", "replace")[:4000] + b"\n")
    except OSError:
        pass


def _passable_dirs(path: str) -> None:
    """
    Make C{path} and its missing parents, each mode 0711 (the workload,
    whose uid owns none of them, must pass through to its workspace).
    """
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory)
        os.chmod(directory, 0o711)


def _overlay_root(rootfs: str, staging: str, cwd: str) -> str:
    """
    The root the workload is chrooted into: the rootfs under an overlay
    whose upper layer is in the task directory, so nothing the sandbox
    (the workspace's mount point) or the workload creates ever lands in
    the rootfs itself; the workspace bound in at its own path.
    """
    for name in ("", "upper", "work", "root"):
        os.makedirs(os.path.join(staging, name), mode=0o700, exist_ok=True)
    lower = os.open(rootfs, os.O_PATH | os.O_DIRECTORY)
    os.chdir(staging)
    # Paths by descriptor and relative to the staging directory: no
    # character of a path can be read as an option separator.
    _mount(
        "overlay",
        "root",
        "overlay",
        0,
        "overlay rootfs",
        f"lowerdir=/proc/self/fd/{lower},upperdir=upper,workdir=work",
    )
    os.close(lower)
    root = os.path.join(staging, "root")
    os.chmod(root, 0o755)
    inside = os.path.join(root, cwd.lstrip("/"))
    try:
        _passable_dirs(inside)
    except OSError as e:
        raise SetupError(f"bind workspace: {e.strerror}: {cwd}") from None
    _mount(cwd, inside, "", MS_BIND | MS_REC, "bind workspace")
    return root


def _drop_privileges(config: dict) -> None:
    """
    Become the task's uid and gid, with no supplementary groups, no
    capabilities (the kernel clears them when every uid is non-zero) and
    umask 077; C{no_new_privs} comes from the supervisor.
    """
    uid, gid = config.get("uid"), config.get("gid")
    if gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
    if uid is not None:
        os.setresuid(uid, uid, uid)
        os.umask(0o077)


def _enter_workload(config: dict) -> None:
    """
    The last steps, in the process that becomes the workload: /proc,
    chroot with the workspace bound in, cwd, the task's identity, exec.
    """
    namespaces = config["namespaces"]
    rootfs = config.get("rootfs")
    cwd = config["cwd"]
    root = rootfs
    if namespaces.get("mount"):
        if rootfs:
            root = _overlay_root(rootfs, config["staging"], cwd)
            proc = os.path.join(root, "proc")
        else:
            proc = "/proc"
        if namespaces.get("pid") and os.path.isdir(proc):
            _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mount /proc")
    if root:
        try:
            os.chroot(root)
        except OSError as e:
            raise SetupError(f"chroot {rootfs}: {e.strerror}") from None
    try:
        os.chdir(cwd)
    except OSError as e:
        raise SetupError(f"chdir {cwd}: {e.strerror}") from None
    _drop_privileges(config)
    argv = config["argv"]
    try:
        os.execvpe(argv[0], argv, config["env"])
    except OSError as e:
        _report(f"exec: [Errno {e.errno}] {e.strerror}: {argv[0]!r}")
        os._exit(127)


def _relay_until_exit(child: int) -> None:
    """
    Stay as the parent of the namespace's pid 1: forward termination
    signals, then die the way it died (so the supervisor sees its status).
    """

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, forward)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            os._exit(127)
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
        if killed_by not in (signal.SIGKILL, signal.SIGSTOP):
            # Those two cannot be caught, so need no reset (and refuse one).
            signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 127)


def run(config: dict) -> None:
    """
    Apply the sandbox described by C{config} and exec the workload.
    """
    global _status_fd
    _status_fd = int(config["status_fd"])
    fcntl.fcntl(_status_fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    namespaces = config["namespaces"]
    flags = 0
    for name, flag in (("mount", CLONE_NEWNS), ("uts", CLONE_NEWUTS), ("ipc", CLONE_NEWIPC), ("net", CLONE_NEWNET)):
        if namespaces.get(name):
            flags |= flag
    if flags:
        _unshare(flags, "namespaces")
    if namespaces.get("mount"):
        _mount("", "/", "", MS_REC | MS_PRIVATE, "make mounts private")
    if namespaces.get("uts") and config.get("hostname"):
        name = config["hostname"].encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    if namespaces.get("net"):
        try:
            _loopback_up()
        except OSError as e:
            raise SetupError(f"bring up lo: {e.strerror}") from None
    if namespaces.get("pid"):
        _unshare(CLONE_NEWPID, "pid namespace")
        child = os.fork()
        if child:
            _relay_until_exit(child)
    _enter_workload(config)


def main() -> None:
    """
    C{python -I sandbox.py <config-json>}.
    """
    try:
        run(json.loads(sys.argv[1]))
    except SetupError as e:
        _report(f"setup: {e}")
    except Exception as e:  # noqa: BLE001 - anything here is a setup failure
        _report(f"setup: {type(e).__name__}: {e}")
    os._exit(127)


if __name__ == "__main__":
    main()
