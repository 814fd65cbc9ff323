"""
Tests for L{execgo.host._spawn}, the C extension that starts a workload through
C{vfork()} and changes its credentials with raw syscalls.  Every test starts
real processes: the child writes into a temporary file its stdout points to,
and the test reaps it with C{os.waitpid}.  The credential tests need root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import signal
from typing import Dict, List, Optional, Sequence, Tuple
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

try:
    from execgo.host import _spawn
except ImportError:  # built without a compiler: the caller falls back to Popen
    _spawn = None  # type: ignore[assignment]

SH = b"/bin/sh"
CAT = b"/bin/cat"
# Ids that belong to no account on any ordinary system.
UNUSED_ID = 1879048192 + 4242
NOT_ROOT = "needs root (a uid/gid change)" if os.geteuid() != 0 else None


def fields(text: str) -> Dict[str, str]:
    """
    The C{Name:<tab>value} lines of a C{/proc/<pid>/status} as a dict.
    """
    result = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        result[name] = value.strip()
    return result


class SpawnTestsBase(SynchronousTestCase):
    """
    Starts children with their stdout and stderr on one temporary file and
    stdin on C{/dev/null}.
    """

    if _spawn is None:
        skip = "execgo.host._spawn is not built (no C compiler at install time)"

    def setUp(self) -> None:
        self.outPath = self.mktemp()
        self.out = os.open(self.outPath, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self.addCleanup(os.close, self.out)
        self.null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, self.null)
        self.zombiesBefore = self.zombies()

    def spawn(
        self,
        argv: Sequence[bytes],
        executables: Optional[Sequence[bytes]] = None,
        envp: Sequence[bytes] = (),
        cwd: bytes = b"/",
        stdio: Optional[Tuple[int, int, int]] = None,
        keep_fd: int = -1,
        uid: int = -1,
        gid: int = -1,
        umask: int = -1,
        rlimits: Sequence[Tuple[int, int, int]] = (),
        cgroup_fd: int = -1,
    ) -> int:
        """
        Call C{spawn}, trying C{argv[0]} alone unless given C{executables}.
        """
        stdin, stdout, stderr = stdio if stdio is not None else (self.null, self.out, self.out)
        return _spawn.spawn(
            executables if executables is not None else [argv[0]],
            argv, envp, cwd, stdin, stdout, stderr, keep_fd, uid, gid, umask, rlimits, cgroup_fd,
        )

    def run_child(self, argv: Sequence[bytes], **kwargs) -> Tuple[int, str]:
        """
        Spawn, reap, and return the exit code and everything the child wrote.
        """
        os.ftruncate(self.out, 0)
        os.lseek(self.out, 0, os.SEEK_SET)
        pid = self.spawn(argv, **kwargs)
        _, status = os.waitpid(pid, 0)
        with open(self.outPath, encoding="utf-8") as f:
            return os.waitstatus_to_exitcode(status), f.read()

    def status(self, **kwargs) -> Dict[str, str]:
        """
        The child's own C{/proc/self/status} (C{cat} is the spawned process).
        """
        code, output = self.run_child([CAT, b"/proc/self/status"], **kwargs)
        self.assertEqual(code, 0, output)
        return fields(output)

    def zombies(self) -> List[int]:
        """
        The pids of this process's children that exited and are not reaped,
        read from C{/proc}: C{waitpid(-1, WNOHANG)} would reap (and steal
        from Twisted's reaper) another test's child.
        """
        found = []
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat") as f:
                    state, ppid = f.read().rpartition(")")[2].split()[:2]
            except (OSError, ValueError):
                continue
            if state == "Z" and int(ppid) == os.getpid():
                found.append(int(name))
        return sorted(found)

    def assert_no_child(self) -> None:
        """
        No zombie child was added since C{setUp}: a failed spawn reaps its own.
        """
        self.assertEqual(self.zombies(), self.zombiesBefore, "zombie children were left behind")


class SpawnTests(SpawnTestsBase):
    """
    The child's program, arguments, environment, descriptors and process
    state.
    """

    def test_exit_status_and_output(self) -> None:
        """
        The pid returned is the child's: its exit code and what it wrote to
        stdout and stderr (given the same fd) are seen.
        """
        code, output = self.run_child([SH, b"-c", b"echo out; echo err >&2; exit 3"])
        self.assertEqual((code, output), (3, "out\nerr\n"))

    def test_argv_exactly(self) -> None:
        """
        The program gets argv exactly as given, argv[0] included although it
        is not the executable's path.
        """
        script = b'printf "[%s]" "$0" "$@"; cat /proc/$$/cmdline'
        argv = [b"zero", b"-c", script, b"one", b"a b", b""]
        code, output = self.run_child(argv, executables=[SH])
        self.assertEqual((code, output), (0, "[one][a b][]" + "\0".join(a.decode() for a in argv) + "\0"))

    def test_env_exactly(self) -> None:
        """
        The environment is exactly C{envp}: C{env} prints nothing else.
        """
        envp = [b"A=1", b"B=two words", b"C="]
        code, output = self.run_child([b"/usr/bin/env"], envp=envp)
        self.assertEqual((code, output), (0, "A=1\nB=two words\nC=\n"))

    def test_cwd(self) -> None:
        """
        The child starts in C{cwd}.
        """
        path = os.path.realpath(self.mktemp())
        os.mkdir(path)
        code, output = self.run_child([b"/bin/pwd"], cwd=os.fsencode(path))
        self.assertEqual((code, output), (0, path + "\n"))

    def test_missing_program(self) -> None:
        """
        A program that does not exist raises L{FileNotFoundError} naming
        argv[0], like C{subprocess}, and the failed child is reaped.
        """
        with self.assertRaises(FileNotFoundError) as caught:
            self.spawn([b"prog"], executables=[b"/nonexistent/prog"])
        self.assertEqual(caught.exception.errno, errno.ENOENT)
        self.assertEqual(caught.exception.filename, "prog")
        self.assertEqual(str(caught.exception), "[Errno 2] No such file or directory: 'prog'")
        self.assert_no_child()

    def test_bad_cwd(self) -> None:
        """
        A C{cwd} that cannot be entered raises an L{OSError} naming it.
        """
        with self.assertRaises(FileNotFoundError) as caught:
            self.spawn([b"/bin/true"], cwd=b"/nonexistent/dir")
        self.assertEqual(caught.exception.filename, "/nonexistent/dir")
        self.assert_no_child()

    def test_executables_in_order(self) -> None:
        """
        The candidate paths are tried in order: a missing one is skipped.
        """
        code, output = self.run_child([b"sh", b"-c", b"echo found"], executables=[b"/nonexistent/sh", SH])
        self.assertEqual((code, output), (0, "found\n"))

    def test_permission_denied_remembered(self) -> None:
        """
        A candidate that is not executable (C{EACCES}) is skipped too, but is
        the error reported when no later candidate runs, as with C{execvp}.
        """
        plain = os.path.abspath(self.mktemp())
        with open(plain, "w") as f:
            f.write("echo never\n")
        os.chmod(plain, 0o644)
        code, output = self.run_child([b"sh", b"-c", b"echo found"], executables=[os.fsencode(plain), SH])
        self.assertEqual((code, output), (0, "found\n"))
        with self.assertRaises(PermissionError) as caught:
            self.spawn([b"prog"], executables=[os.fsencode(plain), b"/nonexistent/prog"])
        self.assertEqual(caught.exception.filename, "prog")
        self.assert_no_child()

    def test_stdio_already_low(self) -> None:
        """
        Sources that are themselves 0, 1 or 2 (swapped, and one given twice)
        end up where asked, none overwritten by an earlier C{dup2}.
        """
        inPath, outPath = self.mktemp(), self.mktemp()
        source = os.open(inPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.addCleanup(os.close, source)
        os.write(source, b"input\n")
        os.lseek(source, 0, os.SEEK_SET)
        sink = os.open(outPath, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.addCleanup(os.close, sink)
        saved = [os.dup(0), os.dup(1)]
        try:
            os.dup2(sink, 0)
            os.dup2(source, 1)
            pid = self.spawn([SH, b"-c", b"cat; echo err >&2"], stdio=(1, 0, 0))
        finally:
            for fd, copy in enumerate(saved):
                os.dup2(copy, fd)
                os.close(copy)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        with open(outPath) as f:
            self.assertEqual(f.read(), "input\nerr\n")

    def test_keep_fd_only(self) -> None:
        """
        C{keep_fd} reaches the child at the same number although it is
        close-on-exec in the parent; every other descriptor above 2 (here an
        inheritable one) is closed.
        """
        readEnd, keep = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, keep)
        extra = os.dup(self.null)
        os.set_inheritable(extra, True)
        self.addCleanup(os.close, extra)
        pid = self.spawn([b"/bin/ls", b"-l", b"/proc/self/fd"], keep_fd=keep)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        with open(self.outPath) as f:
            links = dict(line.split()[-3::2] for line in f if " -> " in line)
        # ls's own directory descriptor is listed too.
        own = [name for name, target in links.items() if target == f"/proc/{pid}/fd"]
        self.assertEqual(len(own), 1, links)
        del links[own[0]]
        self.assertEqual(sorted(links), sorted(["0", "1", "2", str(keep)]))
        self.assertEqual(links[str(keep)], os.readlink(f"/proc/self/fd/{keep}"))

    def test_new_session(self) -> None:
        """
        The child leads a new session and process group.
        """
        code, output = self.run_child([CAT, b"/proc/self/stat"])
        self.assertEqual(code, 0)
        pid = int(output.split()[0])
        state = output.rpartition(")")[2].split()
        self.assertEqual((int(state[2]), int(state[3])), (pid, pid))

    def test_signals_default(self) -> None:
        """
        Signals ignored in the parent (SIGINT here; SIGPIPE by Python) or
        handled by Python are default in the child, and its mask is empty
        although the parent blocks SIGUSR1; the parent's own mask is intact.
        """
        for signum, handler in [(signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, lambda *a: None)]:
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))
            signal.signal(signum, handler)
        before = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        self.addCleanup(signal.pthread_sigmask, signal.SIG_SETMASK, before)
        status = self.status()
        self.assertEqual(int(status["SigIgn"], 16), 0)
        self.assertEqual(int(status["SigBlk"], 16), 0)
        self.assertEqual(signal.pthread_sigmask(signal.SIG_BLOCK, []), before | {signal.SIGUSR1})

    def test_libc_internal_signals_default(self) -> None:
        """
        Signals 32 and 33, which glibc's C{sigaction} refuses to touch, are
        default in the child even when an ancestor left them ignored (as
        trial's C{-j} workers have them): ignored signals survive exec.
        """
        if platform.machine() != "x86_64":
            raise SkipTest("sets dispositions with the x86_64 rt_sigaction syscall number")
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_rt_sigaction, SIG_IGN = 13, 1
        for signum in (32, 33):
            ignore, old = (ctypes.c_ulong * 4)(SIG_IGN, 0, 0, 0), (ctypes.c_ulong * 4)()
            self.assertEqual(libc.syscall(SYS_rt_sigaction, signum, ignore, old, 8), 0)
            self.addCleanup(libc.syscall, SYS_rt_sigaction, signum, old, None, 8)
        with open("/proc/self/status") as f:
            self.assertEqual(int(fields(f.read())["SigIgn"], 16) & (3 << 31), 3 << 31)
        self.assertEqual(int(self.status()["SigIgn"], 16), 0)

    def test_no_new_privs(self) -> None:
        """
        The child runs with C{PR_SET_NO_NEW_PRIVS}.
        """
        self.assertEqual(self.status()["NoNewPrivs"], "1")

    def test_umask(self) -> None:
        """
        The umask is applied to the files the child creates (-1 leaves the
        parent's).
        """
        path = os.fsencode(os.path.realpath(self.mktemp()))
        os.mkdir(path)
        code, _ = self.run_child([SH, b"-c", b": > made"], cwd=path, umask=0o027)
        self.assertEqual(code, 0)
        self.assertEqual(os.stat(os.path.join(path, b"made")).st_mode & 0o777, 0o640)
        current = os.umask(0o022)
        os.umask(current)
        self.assertEqual(int(self.status()["Umask"], 8), current)

    def test_rlimits(self) -> None:
        """
        The resource limits are set in the child (-1 meaning unlimited).
        """
        for which in (resource.RLIMIT_CPU, resource.RLIMIT_CORE):
            if resource.getrlimit(which)[1] != resource.RLIM_INFINITY:
                raise SkipTest("needs unlimited CPU and core hard limits (raising one needs privilege)")
        limits = [(resource.RLIMIT_CPU, 7, 9), (resource.RLIMIT_NOFILE, 64, 64), (resource.RLIMIT_CORE, 0, -1)]
        code, output = self.run_child([CAT, b"/proc/self/limits"], rlimits=limits)
        self.assertEqual(code, 0)
        rows = {line[:26].strip(): line[26:].split()[:2] for line in output.splitlines()[1:]}
        self.assertEqual(rows["Max cpu time"], ["7", "9"])
        self.assertEqual(rows["Max open files"], ["64", "64"])
        self.assertEqual(rows["Max core file size"], ["0", "unlimited"])

    def test_failed_setup_reaped(self) -> None:
        """
        A setup step failing after vfork raises an L{OSError} naming the step,
        and the child is reaped.
        """
        with self.assertRaises(OSError) as caught:
            self.spawn([b"/bin/true"], rlimits=[(resource.RLIMIT_CPU, 9, 7)])
        self.assertEqual(caught.exception.errno, errno.EINVAL)
        self.assertEqual(caught.exception.strerror, "setrlimit: Invalid argument")
        closed = os.dup(self.null)
        os.close(closed)
        with self.assertRaises(OSError) as caught:
            self.spawn([b"/bin/true"], stdio=(closed, self.out, self.out))
        self.assertEqual(str(caught.exception), "[Errno 9] dup2: Bad file descriptor")
        self.assert_no_child()

    def test_no_fd_leak(self) -> None:
        """
        Spawning 200 times, successfully or not, leaves the parent's
        descriptors as they were.
        """
        before = len(os.listdir("/proc/self/fd"))
        for i in range(200):
            if i % 2:
                os.waitpid(self.spawn([b"/bin/true"]), 0)
            else:
                self.assertRaises(FileNotFoundError, self.spawn, [b"/nonexistent/prog"])
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)
        self.assert_no_child()

    def test_bad_arguments(self) -> None:
        """
        Malformed arguments raise L{TypeError} or L{ValueError} in the parent
        and start nothing.
        """
        bad: List[Tuple[type, Dict[str, object]]] = [
            (ValueError, {"argv": [b"/bin/true", b"a\0b"]}),
            (ValueError, {"envp": [b"A=\0"]}),
            (ValueError, {"executables": [b"/bin/\0true"]}),
            (ValueError, {"cwd": b"/\0"}),
            (ValueError, {"argv": []}),
            (ValueError, {"executables": []}),
            (TypeError, {"argv": ["/bin/true"]}),
            (TypeError, {"argv": b"/bin/true"}),
            (TypeError, {"envp": None}),
            (TypeError, {"cwd": "/"}),
            (ValueError, {"stdio": (-1, 1, 2)}),
            (ValueError, {"keep_fd": 2}),
            (ValueError, {"uid": -2}),
            (ValueError, {"gid": 2**32 - 1}),
            (OverflowError, {"uid": 2**64}),
            (ValueError, {"umask": 0o1000}),
            (TypeError, {"rlimits": [(resource.RLIMIT_CPU, 1)]}),
            (TypeError, {"rlimits": [[resource.RLIMIT_CPU, 1, 1]]}),
            (ValueError, {"rlimits": [(resource.RLIMIT_CPU, -2, 1)]}),
            (ValueError, {"rlimits": [(999, 1, 1)]}),
            (TypeError, {"rlimits": [(resource.RLIMIT_CPU, "1", 1)]}),
        ]
        for exception, kwargs in bad:
            argv = kwargs.pop("argv", [b"/bin/true"])
            executables = kwargs.pop("executables", [b"/bin/true"])
            self.assertRaises(exception, self.spawn, argv, executables=executables, **kwargs)
        self.assert_no_child()

    def test_credentials_need_privilege(self) -> None:
        """
        Without root, a uid/gid change fails at C{setgroups} with C{EPERM}.
        """
        if not NOT_ROOT:
            raise SkipTest("runs as root")
        with self.assertRaises(PermissionError) as caught:
            self.spawn([b"/bin/true"], uid=UNUSED_ID, gid=UNUSED_ID)
        self.assertEqual(caught.exception.strerror, "setgroups: Operation not permitted")
        self.assert_no_child()


class CredentialTests(SpawnTestsBase):
    """
    As root: the child runs as another uid/gid, with nothing left of root.
    """

    if NOT_ROOT:
        skip = NOT_ROOT

    def test_switched(self) -> None:
        """
        Real, effective, saved and filesystem ids are the given ones, there
        are no supplementary groups and no capabilities (effective, permitted,
        ambient).
        """
        uid, gid = UNUSED_ID, UNUSED_ID + 1
        self.addCleanup(os.setgroups, os.getgroups())
        os.setgroups([UNUSED_ID + 2])
        status = self.status(uid=uid, gid=gid)
        self.assertEqual(status["Uid"].split(), [str(uid)] * 4)
        self.assertEqual(status["Gid"].split(), [str(gid)] * 4)
        self.assertEqual(status["Groups"], "")
        for name in ("CapEff", "CapPrm", "CapAmb"):
            self.assertEqual(int(status[name], 16), 0, name)
        self.assertEqual(status["NoNewPrivs"], "1")

    def test_cwd_only_root_can_traverse(self) -> None:
        """
        The child enters its cwd as root before dropping privileges, so a
        directory below one only root may traverse works; afterwards it really
        is the other uid (it cannot list that parent).
        """
        top = os.path.realpath(self.mktemp())
        os.mkdir(top, 0o700)
        os.chmod(top, 0o700)
        sub = os.path.join(top, "sub")
        os.mkdir(sub)
        os.chmod(sub, 0o777)
        script = b"pwd; : > mine; ls .. >/dev/null 2>&1 || echo denied"
        code, output = self.run_child([SH, b"-c", script], cwd=os.fsencode(sub), uid=UNUSED_ID, gid=UNUSED_ID)
        self.assertEqual((code, output), (0, sub + "\n" + "denied\n"))
        made = os.stat(os.path.join(sub, "mine"))
        self.assertEqual((made.st_uid, made.st_gid), (UNUSED_ID, UNUSED_ID))

    def test_uid_only(self) -> None:
        """
        A uid change alone also drops root's supplementary groups.
        """
        self.addCleanup(os.setgroups, os.getgroups())
        os.setgroups([UNUSED_ID + 2])
        status = self.status(uid=UNUSED_ID)
        self.assertEqual(status["Uid"].split(), [str(UNUSED_ID)] * 4)
        self.assertEqual(status["Groups"], "")
        self.assertEqual(int(status["CapEff"], 16), 0)

    def test_parent_stays_dumpable(self) -> None:
        """
        The kernel marks the memory the vfork child shares with the parent
        non-dumpable when the child changes its ids; the parent (dumpable
        before) is dumpable again afterwards, so core dumps of the supervisor
        still work.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        PR_GET_DUMPABLE = 3
        self.assertEqual(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1, "the test needs a dumpable process")
        code, _ = self.run_child([b"/bin/true"], uid=UNUSED_ID, gid=UNUSED_ID)
        self.assertEqual(code, 0)
        self.assertEqual(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1)

    def test_kept_capabilities_refused(self) -> None:
        """
        If the parent asked the kernel to keep capabilities across the uid
        change (C{PR_SET_KEEPCAPS}), the child's check of its credentials
        fails rather than running the program with root's permitted set.
        """
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_KEEPCAPS = 8
        self.assertEqual(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), 0)
        self.addCleanup(libc.prctl, PR_SET_KEEPCAPS, 0, 0, 0, 0)
        with self.assertRaises(PermissionError) as caught:
            self.spawn([b"/bin/true"], uid=UNUSED_ID, gid=UNUSED_ID)
        self.assertEqual(caught.exception.strerror, "verify credentials: Operation not permitted")
        self.assert_no_child()

    def test_root_uid(self) -> None:
        """
        uid 0 is a valid target (root keeps its capabilities then; only the
        ids and groups are checked).
        """
        status = self.status(uid=0, gid=0)
        self.assertEqual(status["Uid"].split(), ["0"] * 4)
        self.assertEqual(status["Groups"], "")


V2_ROOT = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"


class CloneIntoTests(SpawnTestsBase):
    """
    As root on a kernel with C{CLONE_INTO_CGROUP}: a child born in a
    cgroup v2 group, the spawning process never in it.
    """

    if NOT_ROOT:
        skip = NOT_ROOT

    def setUp(self) -> None:
        super().setUp()
        if not _spawn.clone_into_supported():
            raise SkipTest("no clone3 with CLONE_INTO_CGROUP here")
        if not os.path.exists(os.path.join(V2_ROOT, "cgroup.procs")) or os.path.exists(
            os.path.join(V2_ROOT, "memory.limit_in_bytes")
        ):
            raise SkipTest("no cgroup v2 tree")
        self.group = os.path.join(V2_ROOT, f"execgo-spawntest-{os.getpid()}")
        os.mkdir(self.group)
        self.addCleanup(os.rmdir, self.group)
        self.fd = os.open(self.group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.addCleanup(os.close, self.fd)

    def own_cgroup(self) -> str:
        """
        This process's C{/proc/self/cgroup}.
        """
        with open("/proc/self/cgroup") as f:
            return f.read()

    def test_born_in_group(self) -> None:
        """
        The child is in the group from its first instruction (its own
        C{/proc/self/cgroup} says so), as the uid asked for; this process
        stays where it was.
        """
        before = self.own_cgroup()
        code, output = self.run_child(
            [CAT, b"/proc/self/cgroup", b"/proc/self/status"], uid=UNUSED_ID, gid=UNUSED_ID, cgroup_fd=self.fd
        )
        self.assertEqual(code, 0, output)
        name = os.path.basename(self.group)
        self.assertTrue([line for line in output.splitlines() if line.startswith("0::") and line.endswith(name)])
        self.assertEqual(fields(output)["Uid"].split(), [str(UNUSED_ID)] * 4)
        self.assertEqual(self.own_cgroup(), before)

    def test_failure_reported_and_reaped(self) -> None:
        """
        A child that cannot exec fails the spawn as the vfork path does,
        and is reaped.
        """
        with self.assertRaises(FileNotFoundError):
            self.spawn([b"/nonexistent/program"], cgroup_fd=self.fd)
        self.assert_no_child()

    def test_bad_group(self) -> None:
        """
        A descriptor that is not a cgroup fails the spawn before any child
        exists.
        """
        with open(os.devnull) as f:
            with self.assertRaises(OSError):
                self.spawn([b"/bin/true"], cgroup_fd=f.fileno())
        self.assert_no_child()

    def test_many(self) -> None:
        """
        Spawn after spawn through the one child stack, each exit status
        its own.
        """
        for code in range(20):
            status, _ = self.run_child([b"/bin/sh", b"-c", b"exit %d" % code], cgroup_fd=self.fd)
            self.assertEqual(status, code)


class BuiltTests(SynchronousTestCase):
    """
    Where the project is built for CI, the extension must be there: a
    silently missing one would leave workloads on the slow path.
    """

    def test_built_in_ci(self) -> None:
        """
        With C{CI} set (C{.ci/run}), C{execgo.host._spawn} imports.
        """
        if not os.environ.get("CI"):
            raise SkipTest("only checked in CI, where a C compiler is installed")
        self.assertIsNotNone(_spawn)
