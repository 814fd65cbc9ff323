"""
The enforcement tier: real limits, real namespaces and real
kills on this kind of machine — root, a hybrid cgroup layout (v1 C{memory}
and C{pids} beside a controller-less v2 tree), every namespace available.

A fork bomb is contained by C{pids_max} and the host stays usable; a tree
of processes that ignore SIGTERM, with C{setsid} escapees and orphans, is
gone after a kill; C{linux_sandbox} workloads are pid 1 of their own pid
namespace with a private C{/proc}, hostname, mounts, IPC and (on request)
network, and can be chrooted into a root file system the test builds; a
sandbox that cannot be set up fails the task cleanly; the execution plan
names what enforces each limit, also on a server without cgroups.

Each test skips with the reason when the host lacks what it needs (root,
writable cgroups, the v1 pids hierarchy, namespaces): on the project's
machines and in CI they all run.  The memory hog of a plain task and the
CPU limit of a plain task are covered by L{tests.test_integration}.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from typing import Any, Dict, List, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.serverfixture import (
    CGROUP_FS,
    DEFAULT_CGROUP_ROOT,
    SharedServer,
    poll,
    process_alive,
    process_exists,
    remove_task_cgroups,
    task_cgroup_dirs,
    workload_pids,
)
from tests.test_integration import (
    TERMINAL,
    IntegrationMixin,
    command,
    shell,
    sigterm_ignored,
    unique,
)

GRACE_MS = 300
GRACE = ["--termination-grace-ms", str(GRACE_MS)]
PIDS_V1 = os.path.join(CGROUP_FS, "pids")
MEMORY_V1 = os.path.join(CGROUP_FS, "memory")
CGROUP_REL = os.path.relpath(DEFAULT_CGROUP_ROOT, CGROUP_FS)
SANDBOX = {"profile": "linux_sandbox"}
PIDS_FALLBACK = "pids_max enforcement requires writable cgroup support"
# The sandbox wrapper (execgo/supervisor/sandbox.py) calls signal.signal(signum,
# SIG_DFL) before re-raising the signal that ended the namespace's pid 1;
# for SIGKILL that raises OSError(EINVAL), which main() reports as a setup
# failure.  So any sandboxed workload SIGKILLed by the kernel alone (the
# OOM killer, the RLIMIT_CPU hard limit) ends sandbox_setup_failed with
# "sandbox: OSError: [Errno 22] Invalid argument".
# launcher._check_program looks for the program under the rootfs before
# the spawn; a rootfs that does not exist is reported as a missing program.
# An ordinary task submitted while a fork bomb runs must finish within this.
HOST_UNHARMED_S = 5.0


def read_text(path: str) -> Optional[str]:
    """
    A small file's text, or C{None} when it cannot be read.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def write_text(path: str, text: str) -> None:
    """
    Write a small file.
    """
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def task_group(hierarchy: str, task_id: str) -> str:
    """
    The per-task group of C{task_id} in the v1 C{hierarchy} (C{pids},
    C{memory}) under the default cgroup root.
    """
    return os.path.join(CGROUP_FS, hierarchy, CGROUP_REL, task_id)


def own_namespace(name: str) -> str:
    """
    This process's namespace of kind C{name}, e.g. C{ipc:[4026531839]}
    (the server's too: it is our child and unshares nothing).
    """
    return os.readlink(f"/proc/self/ns/{name}")


def mountinfo_mentioning(*paths: str) -> List[str]:
    """
    The lines of this process's C{mountinfo} whose mount point is one of
    C{paths} or below one (only those: other tests on the host may mount
    and unmount things meanwhile).
    """
    found = []
    for line in (read_text("/proc/self/mountinfo") or "").splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4]
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in paths):
            found.append(line)
    return found


def require_root(case: TestCase) -> None:
    """
    Skip unless this process is root (the runtime needs it for cgroups and
    namespaces, and so do the checks here).
    """
    if os.geteuid() != 0:
        raise case.skipTest("needs root: per-task cgroups and namespaces are root-only")


class EnforcementCase(IntegrationMixin, TestCase):
    """
    Tests sharing one server per class (L{shared}), with steps to skip
    when this host cannot do what a test needs.
    """

    shared: SharedServer
    timeout = 60

    def setUp(self) -> "defer.Deferred[None]":
        require_root(self)
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.server = await type(self).shared.get(self)
        self.api = self.server.client(self)

    async def capabilities(self) -> Dict[str, Any]:
        """
        The server's capability snapshot.
        """
        reply = await self.api.get("/api/v1/runtime/capabilities")
        self.assertEqual(reply.code, 200, reply.body)
        return reply.json()

    async def require_cgroups(self) -> Dict[str, Any]:
        """
        Skip unless the runtime has writable per-task cgroups; return the
        capabilities.
        """
        caps = await self.capabilities()
        if not caps["resources"]["cgroup_writable"]:
            raise self.skipTest("no writable cgroup hierarchy on this host")
        return caps

    async def require_pids_v1(self) -> Dict[str, Any]:
        """
        Skip unless the runtime limits pids through the v1 C{pids}
        hierarchy (the layout of this kind of machine, whose counters the
        tests read).
        """
        caps = await self.require_cgroups()
        if caps["resources"]["cgroup"].get("pids") != "cgroup_v1" or not os.path.isdir(PIDS_V1):
            raise self.skipTest(f"pids are not limited through cgroup v1 ({PIDS_V1}) here")
        return caps

    async def require_sandbox(self) -> Dict[str, Any]:
        """
        Skip unless the runtime offers C{linux_sandbox} with every
        namespace and chroot.
        """
        caps = await self.capabilities()
        sandbox = caps["sandbox"]
        if not sandbox["linux_sandbox"]:
            raise self.skipTest("capabilities say linux_sandbox: false")
        missing = [name for name, ok in sandbox["namespaces"].items() if not ok]
        if missing or not sandbox["chroot"]:
            raise self.skipTest(f"namespaces or chroot unavailable here: {missing}")
        return caps

    def cleanup_cgroups(self, task_id: str) -> None:
        """
        Remove whatever per-task groups C{task_id} leaves (after the
        test's own check that there are none).
        """
        self.addCleanup(remove_task_cgroups, task_id)

    def workspace(self, task_id: str) -> str:
        """
        The absolute workspace of a task (its working directory).
        """
        return os.path.join(self.task_dir(task_id), "workspace")

    async def run_task(self, body: Dict[str, Any], timeout: float = 15.0) -> Dict[str, Any]:
        """
        Submit C{body} and return its terminal status.
        """
        task_id = await self.submit(body)
        return await self.wait_terminal(task_id, timeout=timeout)

    async def event(self, task_id: str, event_type: str) -> List[Dict[str, Any]]:
        """
        The task's events of one type.
        """
        return [e for e in await self.events(task_id) if e["event_type"] == event_type]


# Limits, kills and the execution plan with cgroups


class CgroupEnforcementTests(EnforcementCase):
    """
    Per-task cgroups contain what a workload does: a fork bomb stays under
    C{pids_max} and the host keeps working, a SIGTERM-proof tree with
    escapees dies on kill, and the plan says which mechanism enforces each
    limit.
    """

    async def test_fork_bomb_contained(self) -> None:
        """
        A shell fork bomb with C{pids_max: 16} never has more than 16
        processes in its pids group (+1: the limit is written at 17 before
        the spawn, while the supervisor itself is counted inside, and
        lowered to 16 right after, so the first microseconds of the
        workload may see 17); a C{pids_limit_reached} event records the
        refused forks; an ordinary task submitted meanwhile succeeds; the
        bomb ends (its wall time) and leaves no process and no group.  (Its
        shell forks once, for the bomb, before anything else runs, then
        execs its sleep: a later fork of its own could lose to the bomb.)
        """
        await self.require_pids_v1()
        task_id = unique("bomb")
        self.cleanup_cgroups(task_id)
        group = task_group("pids", task_id)
        reactor = self._reactor()
        await self.submit(
            shell(
                "(f() { f | f & }; f) & exec sleep 30",
                task_id=task_id,
                limits={"pids_max": 16, "wall_time_ms": 3000},
            )
        )
        started = await self.wait_started(task_id)
        workspace = self.workspace(task_id)
        observed: List[int] = []
        limits_seen: Set[str] = set()

        def sample() -> None:
            for name in ("pids.current", "pids.peak"):
                text = read_text(os.path.join(group, name))
                if text is not None and text.strip().isdigit():
                    observed.append(int(text.strip()))
            limit = read_text(os.path.join(group, "pids.max"))
            if limit is not None:
                limits_seen.add(limit.strip())

        async def saturated() -> bool:
            sample()
            return bool(observed) and max(observed) >= 16

        await poll(reactor, saturated, timeout=2.0, what="the bomb to reach pids_max")
        # The host is unharmed: another task runs and succeeds while the
        # bomb keeps hitting its limit.
        other = await self.submit(command("echo", "still fine", task_id=unique("bystander")))
        bystander = await self.wait_terminal(other, timeout=HOST_UNHARMED_S)
        self.assertEqual(
            (bystander["status"], bystander["stdout"]), ("success", "still fine\n"), bystander
        )
        self.assertEqual((await self.status(task_id))["status"], "running")
        await self.wait_for(
            task_id, lambda s: sample() or s["status"] in TERMINAL, timeout=3.0 + 1.0 + 3.0
        )
        status = await self.status(task_id)
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(status["error"]["code"], "timeout", status)
        self.assertIn("fork", status["stderr"].lower())
        self.assertEqual(limits_seen, {"16"}, "pids.max is not the requested limit")
        self.assertGreaterEqual(max(observed), 16)
        self.assertLessEqual(max(observed), 17, f"pids group held {max(observed)} processes")
        [hit] = await self.event(task_id, "pids_limit_reached")
        self.assertEqual(hit["message"], "pids limit reached")
        self.assertEqual(sorted(hit["data"]), ["pids_max", "refused_forks"])
        self.assertEqual(hit["data"]["pids_max"], 16)
        self.assertIsInstance(hit["data"]["refused_forks"], int)
        self.assertGreater(hit["data"]["refused_forks"], 0)
        types = await self.event_types(task_id)
        self.assertLess(types.index("pids_limit_reached"), types.index("resource_released"))
        self.assertEqual(workload_pids(workspace), [])
        self.assertFalse(process_exists(started["pid"]))
        self.assertEqual(task_cgroup_dirs(task_id), [])

    async def test_kill_tree_with_escapees(self) -> None:
        """
        A tree whose every process ignores SIGTERM — children,
        grandchildren, two C{setsid} escapees (one whose parent exited, so
        it is an orphan) — writes its pids to a file; a kill ends the task
        C{cancelled} after the grace period and within a bound, and every
        one of those pids is dead and reaped.
        """
        await self.require_cgroups()
        task_id = unique("tree")
        self.cleanup_cgroups(task_id)
        script = (
            "trap '' TERM\n"
            "echo $$ >> pids\n"
            "sh -c 'echo $$ >> pids; sleep 60 & echo $! >> pids; wait' &\n"
            "setsid sh -c 'echo $$ >> pids; sleep 60 & echo $! >> pids; wait' &\n"
            "setsid sh -c 'sleep 60 & echo $! >> pids' &\n"
            "sleep 60 & echo $! >> pids\n"
            "wait\n"
        )
        await self.submit(shell(script, task_id=task_id))
        started = await self.wait_started(task_id)
        pid_file = os.path.join(self.workspace(task_id), "pids")

        def all_written() -> Optional[List[int]]:
            words = (read_text(pid_file) or "").split()
            return [int(w) for w in words] if len(words) >= 7 else None

        pids = await poll(self._reactor(), all_written, timeout=5, what="the pid file")
        self.assertEqual(len(set(pids)), 7, pids)
        self.assertIn(started["pid"], pids)
        for pid in pids:
            self.assertTrue(process_alive(pid), f"{pid} is not running before the kill")
            self.assertTrue(sigterm_ignored(pid), f"{pid} does not ignore SIGTERM")
        before = self._reactor().seconds()
        reply = await self.kill(task_id)
        self.assertEqual(reply.code, 200, reply.body)
        status = await self.wait_terminal(task_id, timeout=10)
        elapsed = self._reactor().seconds() - before
        self.assertEqual(status["status"], "cancelled", status)
        self.assertEqual(status["error"], {"code": "cancelled", "message": "task cancelled"})
        self.assertGreaterEqual(elapsed, GRACE_MS / 1000 - 0.05, "ended before the grace period")
        self.assertLess(elapsed, GRACE_MS / 1000 + 2.0, "the kill took too long")
        await self.assert_gone(pids)
        self.assertEqual(task_cgroup_dirs(task_id), [])

    async def test_plan_mechanisms(self) -> None:
        """
        With every limit requested the plan names its mechanism per limit:
        C{rlimit} for CPU, the capabilities' cgroup hierarchy for memory
        and pids (C{cgroup_v1} on this hybrid host); the workload sees the
        CPU rlimit, no address-space rlimit, and the limits written in its
        own v1 groups.
        """
        caps = await self.require_cgroups()
        task_id = unique("plan")
        self.cleanup_cgroups(task_id)
        memory_dir = task_group("memory", task_id)
        pids_dir = task_group("pids", task_id)
        status = await self.run_task(
            shell(
                # Give the supervisor time to lower pids.max after the spawn.
                "sleep 0.2; cat /proc/self/limits; "
                f"cat {memory_dir}/memory.limit_in_bytes {pids_dir}/pids.max",
                task_id=task_id,
                limits={"cpu_time_sec": 5, "memory_bytes": 256 << 20, "pids_max": 50},
            )
        )
        self.assertEqual(status["status"], "success", status)
        enforcement = status["execution_plan"]["resource_enforcement"]
        cgroup = caps["resources"]["cgroup"]
        self.assertEqual(
            enforcement["mechanisms"],
            {"cpu_time_sec": "rlimit", "memory_bytes": cgroup["memory"], "pids_max": cgroup["pids"]},
        )
        if os.path.isdir(PIDS_V1) and os.path.isdir(MEMORY_V1):
            self.assertEqual(
                (cgroup["memory"], cgroup["pids"]), ("cgroup_v1", "cgroup_v1"), "hybrid host"
            )
        for key in ("cpu_time_enforced", "memory_enforced", "pids_enforced", "cgroup_enforced"):
            self.assertIs(enforcement[key], True, key)
        self.assertIs(enforcement["oom_detection"], True)
        limits = {
            line[:26].strip(): line[26:].split()
            for line in status["stdout"].splitlines()
            if line.startswith("Max ")
        }
        self.assertEqual(limits["Max cpu time"][:2], ["5", "6"])
        self.assertEqual(limits["Max address space"][:2], ["unlimited", "unlimited"])
        if cgroup["memory"] == "cgroup_v1" and cgroup["pids"] == "cgroup_v1":
            self.assertEqual(status["stdout"].splitlines()[-2:], [str(256 << 20), "50"])
        self.assertEqual(task_cgroup_dirs(task_id), [])


CgroupEnforcementTests.shared = SharedServer(CgroupEnforcementTests, GRACE)


# linux_sandbox


class SandboxTests(EnforcementCase):
    """
    C{linux_sandbox} isolates the workload: pid 1 of its own pid namespace
    with a private C{/proc}, its own hostname, mounts and IPC, a network
    with only C{lo} when asked, a chroot into a root file system; setup
    failures fail the task cleanly.
    """

    async def sandboxed(
        self, script: str, task_id: Optional[str] = None, **sandbox: Any
    ) -> Tuple[str, Dict[str, Any]]:
        """
        Run C{script} under C{/bin/sh -c} in a C{linux_sandbox} (plus the
        C{sandbox} fields given) and return its id and terminal status,
        which must be C{success}.
        """
        await self.require_sandbox()
        task_id = task_id or unique("sbx")
        self.cleanup_cgroups(task_id)
        status = await self.run_task(shell(script, task_id=task_id, sandbox={**SANDBOX, **sandbox}))
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["execution_plan"]["effective_sandbox"]["profile"], "linux_sandbox")
        self.assertIs(status["execution_plan"]["degraded"], False)
        return task_id, status

    async def test_default_namespaces_in_plan(self) -> None:
        """
        Without a C{namespaces} object the effective sandbox has mount,
        pid, uts and ipc on and net off.
        """
        _, status = await self.sandboxed("true")
        self.assertEqual(
            status["execution_plan"]["effective_sandbox"]["namespaces"],
            {"mount": True, "pid": True, "uts": True, "ipc": True, "net": False},
        )

    async def test_pid_one_and_private_proc(self) -> None:
        """
        The workload is pid 1, and C{/proc} is a fresh one of its pid
        namespace: a handful of numeric entries (here only the shell
        itself), none of them the server, the supervisor or this process.
        """
        _, status = await self.sandboxed(
            "echo $$; for e in /proc/[0-9]*; do printf '%s ' \"${e#/proc/}\"; done; echo"
        )
        first, entries = status["stdout"].splitlines()
        self.assertEqual(first, "1")
        numeric = {int(word) for word in entries.split()}
        self.assertIn(1, numeric)
        self.assertLessEqual(len(numeric), 3, numeric)
        outside = {os.getpid(), self.server.pid, status["shim_pid"]}
        self.assertEqual(numeric & outside, set())

    async def test_hostname_and_uts(self) -> None:
        """
        The hostname inside is C{execgo-<task id>} cut to 64 characters;
        changing it inside leaves the host's unchanged.
        """
        host_before = socket.gethostname()
        task_id = unique("h" * 100)
        _, status = await self.sandboxed(
            "read h < /proc/sys/kernel/hostname; echo \"$h\"; "
            f"{sys.executable} -I -c \"import socket; socket.sethostname('changed-inside')\"; "
            "read h < /proc/sys/kernel/hostname; echo \"$h\"",
            task_id=task_id,
        )
        expected = ("execgo-" + task_id)[:64]
        self.assertEqual(len(expected), 64)
        self.assertEqual(status["stdout"].splitlines(), [expected, "changed-inside"])
        self.assertEqual(socket.gethostname(), host_before)

    async def test_namespace_identities(self) -> None:
        """
        The workload's ipc, uts, mount and pid namespaces differ from the
        host's; its network namespace (net is off by default) is the
        host's.
        """
        names = ("ipc", "uts", "mnt", "pid", "net")
        _, status = await self.sandboxed(
            "for n in " + " ".join(names) + "; do readlink /proc/self/ns/$n; done"
        )
        inside = dict(zip(names, status["stdout"].split()))
        for name in ("ipc", "uts", "mnt", "pid"):
            self.assertTrue(inside[name].startswith(f"{name}:["), inside)
            self.assertNotEqual(inside[name], own_namespace(name), name)
        self.assertEqual(inside["net"], own_namespace("net"))

    async def test_private_mounts(self) -> None:
        """
        A tmpfs the workload mounts on a directory of its workspace is not
        visible on the host while the workload runs (mount propagation is
        private), and nothing is left mounted after.
        """
        if shutil.which("mount") is None:
            raise self.skipTest("no mount(8) on this host")
        await self.require_sandbox()
        task_id = unique("mnt")
        self.cleanup_cgroups(task_id)
        await self.submit(
            shell(
                "mkdir m && mount -t tmpfs tmpfs m && echo secret > m/inside && "
                "grep -c ' tmpfs ' /proc/self/mountinfo > ready; "
                "i=0; while [ ! -e go ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done",
                task_id=task_id,
                sandbox=SANDBOX,
            )
        )
        workspace = self.workspace(task_id)
        ready = os.path.join(workspace, "ready")
        await poll(
            self._reactor(),
            lambda: (read_text(ready) or "").strip(),
            timeout=10,
            what="the workload's mount",
        )
        mount_point = os.path.join(workspace, "m")
        self.assertEqual(os.listdir(mount_point), [])
        self.assertEqual(mountinfo_mentioning(workspace), [])
        write_text(os.path.join(workspace, "go"), "")
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(os.listdir(mount_point), [])
        self.assertEqual(mountinfo_mentioning(workspace), [])

    async def test_network_namespace(self) -> None:
        """
        With C{net: true} only C{lo} exists, it is up, and nothing outside
        is reachable: not the server listening on the host's loopback, not
        an outside address.
        """
        probe = (
            "import fcntl, json, socket, struct, sys\n"
            "names = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "req = struct.pack('16sH14s', b'lo', 0, b'')\n"
            "flags = struct.unpack('16sH14s', fcntl.ioctl(s, 0x8913, req))[1]\n"
            "def reach(host, port):\n"
            "    c = socket.socket()\n"
            "    c.settimeout(2)\n"
            "    try:\n"
            "        c.connect((host, port))\n"
            "        return 'connected'\n"
            "    except OSError as e:\n"
            "        return type(e).__name__\n"
            "print(json.dumps({'names': names, 'up': bool(flags & 1),\n"
            "    'server': reach('127.0.0.1', int(sys.argv[1])),\n"
            "    'outside': reach('192.0.2.1', 80)}))\n"
        )
        await self.require_sandbox()
        task_id = unique("net")
        self.cleanup_cgroups(task_id)
        status = await self.run_task(
            command(
                sys.executable,
                "-I",
                "-c",
                probe,
                str(self.server.port),
                task_id=task_id,
                sandbox={**SANDBOX, "namespaces": {"net": True}},
            )
        )
        self.assertEqual(status["status"], "success", status)
        self.assertIs(status["execution_plan"]["effective_sandbox"]["namespaces"]["net"], True)
        seen = json.loads(status["stdout"])
        self.assertEqual(seen["names"], ["lo"])
        self.assertIs(seen["up"], True)
        self.assertEqual(seen["server"], "ConnectionRefusedError")
        self.assertNotEqual(seen["outside"], "connected")

    async def build_rootfs(self) -> str:
        """
        A minimal root file system: C{/bin/sh} with the shared libraries
        C{ldd} names, and an empty C{/proc}.
        """
        sh = os.path.realpath("/bin/sh")
        out, err, code = await getProcessOutputAndValue(
            "/usr/bin/env", ["ldd", sh], env={"PATH": os.environ.get("PATH", os.defpath)}
        )
        if code != 0:
            raise self.skipTest(f"ldd {sh} failed: {err!r}")
        rootfs = os.path.abspath(self.mktemp())
        libraries = []
        for line in out.decode().splitlines():
            words = line.replace("=>", " ").split()
            libraries += [w for w in words if w.startswith("/")]
        self.assertTrue(libraries, out)
        for source in ["/bin/sh", *libraries]:
            target = os.path.join(rootfs, source.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.realpath(source), target)
        os.makedirs(os.path.join(rootfs, "proc"))
        return rootfs

    async def test_chroot(self) -> None:
        """
        A chrooted task runs the rootfs's shell, sees only the rootfs (no
        host C{/etc}), works in its workspace (bound in at the same path),
        and the file it writes there lands in the real workspace; neither
        the bind mount nor C{/proc} leaks to the host.
        """
        await self.require_sandbox()
        rootfs = await self.build_rootfs()
        host_file = "/etc/hostname" if os.path.exists("/etc/hostname") else "/etc"
        task_id = unique("chroot")
        workspace = self.workspace(task_id)
        before = mountinfo_mentioning(rootfs)
        _, status = await self.sandboxed(
            "echo hi > out.txt; for e in /*; do echo \"$e\"; done; "
            f"if [ -e {host_file} ]; then echo host-visible; else echo host-hidden; fi; pwd; echo $$",
            task_id=task_id,
            chroot=True,
            rootfs=rootfs,
        )
        effective = status["execution_plan"]["effective_sandbox"]
        self.assertEqual((effective["chroot"], effective["rootfs"]), (True, rootfs))
        lines = status["stdout"].splitlines()
        self.assertEqual(lines[-3:], ["host-hidden", workspace, "1"])
        # The root it sees is the rootfs: what the test put there, plus the
        # first directory of the workspace path, made (in the overlay's
        # upper layer, never in the rootfs) to bind it in.
        top = "/" + workspace.lstrip("/").split("/")[0]
        self.assertEqual(sorted(lines[:-3]), sorted(["/" + name for name in os.listdir(rootfs)] + [top]))
        self.assertIn("/proc", lines)
        self.assertNotIn("/etc", lines)
        self.assertEqual(read_text(os.path.join(workspace, "out.txt")), "hi\n")
        self.assertFalse(os.path.lexists(os.path.join(rootfs, top.lstrip("/"))), "made inside the rootfs")
        self.assertEqual(os.listdir(os.path.join(rootfs, "proc")), [])
        self.assertEqual(before, [])
        self.assertEqual(mountinfo_mentioning(rootfs), [])

    async def test_chroot_missing_rootfs(self) -> None:
        """
        A chroot into a rootfs that does not exist fails the task
        C{sandbox_setup_failed} with a message naming the chroot — not
        C{launch_failed}, and without hanging.
        """
        await self.require_sandbox()
        task_id = unique("noroot")
        self.cleanup_cgroups(task_id)
        missing = os.path.abspath(self.mktemp())
        status = await self.run_task(
            shell("echo hi", task_id=task_id, sandbox={**SANDBOX, "chroot": True, "rootfs": missing})
        )
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(status["error"]["code"], "sandbox_setup_failed", status)
        self.assertIn("chroot", status["error"]["message"])
        self.assertEqual(task_cgroup_dirs(task_id), [])


    async def test_setup_failure_in_wrapper(self) -> None:
        """
        A sandbox step that fails inside the wrapper (the workspace cannot
        be bound into a rootfs where a file blocks its path) ends the task
        C{failed} / C{sandbox_setup_failed} promptly, with the wrapper's
        reason, never C{launch_failed}, and leaves nothing behind.
        """
        await self.require_sandbox()
        rootfs = await self.build_rootfs()
        task_id = unique("blocked")
        self.cleanup_cgroups(task_id)
        top = self.workspace(task_id).lstrip("/").split("/")[0]
        write_text(os.path.join(rootfs, top), "not a directory\n")
        status = await self.run_task(
            shell("echo hi", task_id=task_id, sandbox={**SANDBOX, "chroot": True, "rootfs": rootfs}),
            timeout=10,
        )
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(status["error"]["code"], "sandbox_setup_failed", status)
        self.assertTrue(status["error"]["message"].startswith("sandbox: "), status["error"])
        self.assertEqual(status["stdout"], "")
        self.assertEqual(workload_pids(self.workspace(task_id)), [])
        self.assertEqual(task_cgroup_dirs(task_id), [])

    async def test_missing_program(self) -> None:
        """
        A sandboxed program that does not exist is C{failed} /
        C{launch_failed}, with no C{started} event.
        """
        await self.require_sandbox()
        task_id = unique("noprog")
        self.cleanup_cgroups(task_id)
        status = await self.run_task(
            command("execgo-no-such-program", task_id=task_id, sandbox=SANDBOX)
        )
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(status["error"]["code"], "launch_failed", status)
        self.assertTrue(status["error"]["message"].startswith("spawn process: "), status["error"])
        self.assertIn("execgo-no-such-program", status["error"]["message"])
        self.assertNotIn("started", await self.event_types(task_id))
        self.assertNotIn("pid", status)
        self.assertEqual(task_cgroup_dirs(task_id), [])

    async def test_sandboxed_memory_limit(self) -> None:
        """
        A memory hog in a C{linux_sandbox} with C{memory_bytes: 64 MiB} is
        OOM-killed in its cgroup: C{failed} / C{memory_limit_exceeded}.
        """
        await self.require_sandbox()
        await self.require_cgroups()
        task_id = unique("sbxoom")
        self.cleanup_cgroups(task_id)
        status = await self.run_task(
            command(
                sys.executable,
                "-I",
                "-c",
                "import time; a = bytearray(300 << 20); time.sleep(5)",
                task_id=task_id,
                sandbox=SANDBOX,
                limits={"memory_bytes": 64 << 20},
            )
        )
        self.assertEqual(status["execution_plan"]["resource_enforcement"]["oom_detection"], True)
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(
            status["error"],
            {"code": "memory_limit_exceeded", "message": "task exceeded memory limit"},
        )
        self.assertEqual(task_cgroup_dirs(task_id), [])


    async def test_sandboxed_cpu_limit(self) -> None:
        """
        A busy loop in a C{linux_sandbox} with C{cpu_time_sec: 1} ends
        C{failed} / C{cpu_limit_exceeded}.  (As pid 1 of its namespace the
        workload ignores SIGXCPU, so it is the hard limit's SIGKILL, one
        second later, that ends it.)
        """
        await self.require_sandbox()
        task_id = unique("sbxcpu")
        self.cleanup_cgroups(task_id)
        status = await self.run_task(
            shell(
                "while :; do :; done",
                task_id=task_id,
                sandbox=SANDBOX,
                limits={"cpu_time_sec": 1, "wall_time_ms": 10000},
            ),
            timeout=12,
        )
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(
            status["error"], {"code": "cpu_limit_exceeded", "message": "task exceeded cpu_time_sec"}
        )



# The namespace mechanics (hostname, mounts, lo, pid 1 inside) are tried
# with workloads that are root, as they are only under --task-user root;
# tasks with a uid of their own are tried in tests.test_isolation.
SandboxTests.shared = SharedServer(SandboxTests, GRACE + ["--task-user", "root", "--sandbox-rootfs-root", "/"])


# Without cgroups


class NoCgroupTests(EnforcementCase):
    """
    A server started with C{--disable-cgroup}: memory falls back to
    C{RLIMIT_AS}; pids cannot be enforced, which adaptive mode reports as
    a fallback and strict mode refuses.
    """

    async def test_memory_by_rlimit(self) -> None:
        """
        C{memory_bytes} is enforced by C{RLIMIT_AS} (the workload sees it),
        with no cgroup and no OOM detection.
        """
        task_id = unique("asmem")
        self.cleanup_cgroups(task_id)
        status = await self.run_task(
            command("cat", "/proc/self/limits", task_id=task_id, limits={"memory_bytes": 64 << 20})
        )
        self.assertEqual(status["status"], "success", status)
        enforcement = status["execution_plan"]["resource_enforcement"]
        self.assertEqual(enforcement["mechanisms"], {"memory_bytes": "rlimit"})
        self.assertIs(enforcement["memory_enforced"], True)
        self.assertIs(enforcement["cgroup_enforced"], False)
        self.assertIs(enforcement["oom_detection"], False)
        self.assertIs(status["execution_plan"]["degraded"], False)
        [line] = [row for row in status["stdout"].splitlines() if row.startswith("Max address space")]
        self.assertEqual(line.split()[3:5], [str(64 << 20), str(64 << 20)])
        self.assertEqual(task_cgroup_dirs(task_id), [])

    async def test_pids_adaptive_fallback(self) -> None:
        """
        In adaptive mode a C{pids_max} request runs unenforced, with the
        fallback reason and a C{degraded} event.
        """
        task_id = unique("nopids")
        status = await self.run_task(command("true", task_id=task_id, limits={"pids_max": 10}))
        self.assertEqual(status["status"], "success", status)
        plan = status["execution_plan"]
        self.assertEqual(plan["capability_mode"], "adaptive")
        self.assertIs(plan["degraded"], True)
        self.assertEqual(plan["fallback_reasons"], [PIDS_FALLBACK])
        enforcement = plan["resource_enforcement"]
        self.assertIs(enforcement["pids_enforced"], False)
        self.assertEqual(enforcement["pids_max"], 10)
        self.assertNotIn("pids_max", enforcement.get("mechanisms", {}))
        [degraded] = await self.event(task_id, "degraded")
        self.assertEqual(degraded["data"]["fallback_reasons"], [PIDS_FALLBACK])
        self.assertEqual(task_cgroup_dirs(task_id), [])

    async def test_pids_strict_refused(self) -> None:
        """
        In strict mode, or with C{requires_strict_sandbox}, a C{pids_max}
        request is 400 C{unsupported_capability} naming the reason, and
        nothing is queued.
        """
        bodies = [
            command("true", limits={"pids_max": 10}, policy={"capability_mode": "strict"}),
            command(
                "true",
                limits={"pids_max": 10},
                control_context={"requires_strict_sandbox": True},
            ),
        ]
        for body in bodies:
            error = self.assert_envelope(
                await self.api.post("/api/v1/tasks", body), 400, "unsupported_capability"
            )
            self.assertEqual(error["message"], f"unsupported capability: {PIDS_FALLBACK}")
        resources = (await self.api.get("/api/v1/runtime/resources")).json()
        self.assertEqual(resources["accepted_waiting_tasks"], 0)
        self.assertEqual(resources["active_reservations"], [])


NoCgroupTests.shared = SharedServer(NoCgroupTests, GRACE + ["--disable-cgroup"])
