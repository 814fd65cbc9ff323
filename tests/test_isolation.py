"""
Least privilege, tried the way a hostile tenant and a hostile local user
would, against the real server started as root with bearer tokens.

A task runs as a uid of its own with no groups, no capabilities and
C{no_new_privs}; it cannot read the store, the token file, another task's
workspace or its own C{request.json}, cannot write its C{result.json},
cannot signal the supervisor, the server or another task, cannot leave
its cgroups, and leaves no process behind, with or without cgroups; a
later task with the same uid cannot read the earlier one's workspace; a
chroot cannot be left; a rootfs outside the allowed roots is refused; an
unprivileged local user cannot reach the supervisor's socket; a stopped
supervisor makes C{/readyz} say so and is replaced.

Every test needs root (the runtime drops privileges only as root) and
skips with the reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from execgo import control
from execgo.host.privileges import DEFAULT_TASK_UID_RANGE
from tests.serverfixture import ServerProcess, SharedServer, poll, process_state, sleep
from tests.test_enforcement import EnforcementCase, read_text, require_root
from tests.test_integration import TERMINAL, IntegrationMixin, shell, unique

GRACE = ["--termination-grace-ms", "300"]
ALPHA = {"Authorization": "Bearer alpha-token"}
BETA = {"Authorization": "Bearer beta-token"}
TOKENS = "alpha-token tenant=alpha owner=alice\nbeta-token tenant=beta owner=bob\n"
FIRST_UID = DEFAULT_TASK_UID_RANGE[0]
ESCAPE_C = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
#include <errno.h>
#include <string.h>
int main(void) {
    mkdir("esc", 0700);
    if (chroot("esc") != 0) { printf("chroot: %s\n", strerror(errno)); }
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) { printf("chroot2: %s\n", strerror(errno)); }
    FILE *f = fopen("/etc/hostname", "r");
    printf(f ? "escaped\n" : "contained\n");
    return 0;
}
"""


def uid_processes(uid: int) -> List[int]:
    """
    The live processes (zombies aside) whose real or effective uid is
    C{uid}.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        status = read_text(f"/proc/{name}/status") or ""
        for line in status.splitlines():
            if line.startswith("Uid:"):
                ids = line.split()[1:3]
                if str(uid) in ids and process_state(int(name)) not in (None, "Z", "X"):
                    found.append(int(name))
                break
    return found


class TokenServer(SharedServer):
    """
    A shared server whose token file (two tenants, world-readable as
    written) sits in the test's temporary directory.
    """

    async def get(self, testcase: TestCase) -> ServerProcess:
        if not hasattr(self, "token_file"):
            directory = os.path.abspath(testcase.mktemp())
            os.makedirs(directory)
            self.token_file = os.path.join(directory, "tokens")
            with open(self.token_file, "w") as out:
                out.write(TOKENS)
            os.chmod(self.token_file, 0o644)
            self.rootfs_root = os.path.join(directory, "roots")
            os.makedirs(self.rootfs_root)
            self.args = [*self.args, "--auth-token-file", self.token_file, "--sandbox-rootfs-root", self.rootfs_root]
        return await super().get(testcase)


class IsolationTests(EnforcementCase):
    """
    Tasks of two tenants against each other and against the runtime.
    """

    shared: TokenServer

    async def capabilities(self) -> Dict[str, Any]:
        """
        The capability snapshot, asked with a token.
        """
        reply = await self.api.request("GET", "/api/v1/runtime/capabilities", headers=ALPHA)
        self.assertEqual(reply.code, 200, reply.body)
        return dict(reply.json())

    async def submit_as(self, headers: Dict[str, str], body: Dict[str, Any]) -> str:
        reply = await self.api.request("POST", "/api/v1/tasks", json_body=body, headers=headers)
        self.assertEqual(reply.code, 200, reply.body)
        return str(reply.json()["task_id"])

    async def status_as(self, headers: Dict[str, str], task_id: str) -> Dict[str, Any]:
        reply = await self.api.request("GET", f"/api/v1/tasks/{task_id}", headers=headers)
        self.assertEqual(reply.code, 200, reply.body)
        return dict(reply.json())

    async def finish_as(self, headers: Dict[str, str], task_id: str, timeout: float = 15.0) -> Dict[str, Any]:
        async def done() -> Optional[Dict[str, Any]]:
            status = await self.status_as(headers, task_id)
            return status if status["status"] in TERMINAL else None

        return dict(await poll(self._reactor(), done, timeout, what=f"task {task_id}"))

    async def run_as(self, headers: Dict[str, str], script: str, **fields: Any) -> Dict[str, Any]:
        task_id = await self.submit_as(headers, shell(script, task_id=unique("iso"), **fields))
        return await self.finish_as(headers, task_id)

    async def test_identity_inside(self) -> None:
        """
        A task runs as a uid of its own from the default range (the plan
        says which), gid equal, no supplementary groups, no capabilities,
        C{no_new_privs}, umask 077, its workspace (mode 0700, its own) as
        home; the capability snapshot says privileges are dropped.
        """
        self.assertIs((await self.capabilities())["privilege_drop"], True)
        status = await self.run_as(
            ALPHA,
            "id -u; id -g; id -G; grep -E '^(Cap(Inh|Prm|Eff|Amb)|NoNewPrivs|Umask):' /proc/self/status;"
            ' echo "$HOME"; stat -c "%u %g %a" "$HOME"',
        )
        self.assertEqual(status["status"], "success", status)
        run_as = status["execution_plan"]["run_as"]
        uid = run_as["uid"]
        self.assertTrue(DEFAULT_TASK_UID_RANGE[0] <= uid <= DEFAULT_TASK_UID_RANGE[1], run_as)
        self.assertEqual(run_as["gid"], uid)
        lines = status["stdout"].splitlines()
        self.assertEqual(lines[:3], [str(uid), str(uid), str(uid)])
        fields = dict(line.split(":\t") for line in lines[3:9])
        for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            self.assertEqual(int(fields[name], 16), 0, name)
        self.assertEqual(fields["NoNewPrivs"], "1")
        self.assertEqual(fields["Umask"], "0077")
        workspace = status["artifacts"]["task_dir"] + "/workspace"
        self.assertEqual(lines[9:], [workspace, f"{uid} {uid} 700"])
        # Ended: the workspace is the runtime's again.
        self.assertEqual(os.stat(workspace).st_uid, 0)

    async def test_cannot_reach_runtime_files(self) -> None:
        """
        While another tenant's task runs, a task reads neither the store,
        the token file, the data directory's listing, the other task's
        workspace file, nor its own C{request.json}; it cannot write its
        own C{result.json}; the token file is the runtime's alone now.
        """
        server = self.server
        data_dir = os.path.abspath(server.data_dir)
        other = await self.submit_as(
            ALPHA,
            shell(
                "echo hunter2 > secret.txt; i=0;"
                " while [ ! -e go ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done",
                task_id=unique("victim"),
            ),
        )
        workspace = os.path.join(data_dir, "tasks", other, "workspace")
        await poll(self._reactor(), lambda: os.path.exists(os.path.join(workspace, "secret.txt")), what="the secret")
        attacker_id = unique("attacker")
        task_dir = os.path.join(data_dir, "tasks", attacker_id)
        attempts = [
            f"cat {data_dir}/runtime.db",
            f"cat {self.shared.token_file}",
            f"ls {data_dir}",
            f"ls {data_dir}/tasks",
            f"cat {workspace}/secret.txt",
            f"ls {workspace}",
            f"cat {task_dir}/request.json",
            f"echo forged > {task_dir}/result.json",
            f"cat {task_dir}/stdout.log",
            f"cat {data_dir}/run/settings.json",
        ]
        script = "; ".join(f"if {attempt} >/dev/null 2>&1; then echo 'OPEN {i}'; else echo 'shut {i}'; fi"
                           for i, attempt in enumerate(attempts))
        status = await self.finish_as(BETA, await self.submit_as(BETA, shell(script, task_id=attacker_id)))
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["stdout"].splitlines(), [f"shut {i}" for i in range(len(attempts))], attempts)
        with open(os.path.join(workspace, "go"), "w"):
            pass
        self.assertEqual((await self.finish_as(ALPHA, other))["status"], "success")
        self.assertEqual(os.stat(self.shared.token_file).st_mode & 0o077, 0)
        self.assertNotIn("forged", read_text(os.path.join(task_dir, "result.json")) or "")

    async def test_cannot_signal_the_runtime_or_others(self) -> None:
        """
        C{kill -9 $PPID}, C{kill -STOP $PPID} (the supervisor), a signal
        to the server and to another tenant's running workload all fail;
        the other task finishes C{success} and the server stays ready.
        """
        other = await self.submit_as(ALPHA, shell("sleep 1; echo done", task_id=unique("bystander")))

        async def running() -> Optional[Dict[str, Any]]:
            status = await self.status_as(ALPHA, other)
            return status if "pid" in status else None

        pid = (await poll(self._reactor(), running, what="the bystander"))["pid"]
        status = await self.run_as(
            BETA,
            f"kill -9 $PPID; kill -STOP $PPID; kill -9 {self.server.pid}; kill -9 {pid}; kill -STOP {pid}; echo tried",
        )
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["stdout"], "tried\n")
        self.assertEqual(status["stderr"].count("Operation not permitted"), 5, status["stderr"])
        bystander = await self.finish_as(ALPHA, other)
        self.assertEqual((bystander["status"], bystander["stdout"]), ("success", "done\n"), bystander)
        self.assertEqual((await self.api.get("/readyz")).code, 200)

    async def test_cannot_leave_its_cgroups(self) -> None:
        """
        Writing its pid into the root groups' C{cgroup.procs} (v2 and the
        v1 memory hierarchy) is refused; nothing of it survives its end.
        """
        await self.require_cgroups()
        targets = [path for path in ("/sys/fs/cgroup/unified/cgroup.procs", "/sys/fs/cgroup/cgroup.procs",
                                     "/sys/fs/cgroup/memory/cgroup.procs") if os.path.exists(path)]
        script = "; ".join(f"if echo $$ > {path}; then echo 'LEFT {path}'; fi" for path in targets)
        status = await self.run_as(ALPHA, script + "; (setsid sleep 300 &) ; echo $$")
        self.assertEqual(status["status"], "success", status)
        self.assertNotIn("LEFT", status["stdout"])
        self.assertEqual(uid_processes(status["execution_plan"]["run_as"]["uid"]), [])

    async def test_no_survivors_after_a_normal_end(self) -> None:
        """
        A task that leaves a daemon behind (new session, detached) ends
        C{success} and nothing of its uid is left.
        """
        status = await self.run_as(ALPHA, "setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 & echo started")
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(uid_processes(status["execution_plan"]["run_as"]["uid"]), [])

    async def test_reused_uid_cannot_read_the_earlier_workspace(self) -> None:
        """
        The next task gets the same (lowest free) uid, and cannot read
        the workspace its predecessor wrote with that uid: it was handed
        back to the runtime first.
        """
        first = await self.run_as(ALPHA, "echo hunter2 > secret.txt; chmod 644 secret.txt; id -u")
        self.assertEqual(first["status"], "success", first)
        secret = first["artifacts"]["task_dir"] + "/workspace/secret.txt"
        self.assertEqual(os.stat(secret).st_uid, 0)
        second = await self.run_as(BETA, f"id -u; cat {secret} || echo denied")
        self.assertEqual(second["execution_plan"]["run_as"], first["execution_plan"]["run_as"])
        self.assertEqual(second["stdout"].splitlines(), [first["stdout"].strip(), "denied"])

    async def test_chroot_cannot_be_left(self) -> None:
        """
        The classic escape (C{mkdir}, C{chroot}, C{chdir("..")} x 64,
        C{chroot(".")}) from a static program in a chroot fails with
        C{EPERM}: the task has no C{CAP_SYS_CHROOT}.
        """
        await self.require_sandbox()
        gcc = shutil.which("gcc")
        if gcc is None:
            raise self.skipTest("no gcc to build the static escape program")
        rootfs = os.path.join(self.shared.rootfs_root, unique("escape"))
        os.makedirs(os.path.join(rootfs, "proc"))
        source = os.path.join(rootfs, "escape.c")
        with open(source, "w") as out:
            out.write(ESCAPE_C)
        built = subprocess.run([gcc, "-static", "-O1", "-o", os.path.join(rootfs, "escape"), source],
                               capture_output=True)
        if built.returncode != 0:
            raise self.skipTest(f"cannot link a static program here: {built.stderr[-300:]!r}")
        task_id = unique("esc")
        self.cleanup_cgroups(task_id)
        status = await self.finish_as(
            ALPHA,
            await self.submit_as(
                ALPHA,
                {
                    "task_id": task_id,
                    "execution": {"kind": "command", "program": "/escape"},
                    "sandbox": {"profile": "linux_sandbox", "chroot": True, "rootfs": rootfs},
                },
            ),
        )
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(
            status["stdout"].splitlines(),
            ["chroot: Operation not permitted", "chroot2: Operation not permitted", "contained"],
        )
        self.assertEqual(sorted(os.listdir(rootfs)), ["escape", "escape.c", "proc"], "made inside the rootfs")

    async def test_rootfs_outside_the_roots_refused(self) -> None:
        """
        A rootfs that is not under an allowed root (C{/usr}, a path with
        C{..}, a relative one) is C{invalid_input} at submit, and nothing
        is made under it.
        """
        before = sorted(os.listdir("/usr"))
        for rootfs in ("/usr", self.shared.rootfs_root + "/../x", "relative/root", self.shared.rootfs_root + "x"):
            reply = await self.api.request(
                "POST",
                "/api/v1/tasks",
                json_body={
                    "execution": {"kind": "command", "program": "/bin/true"},
                    "sandbox": {"profile": "linux_sandbox", "chroot": True, "rootfs": rootfs},
                },
                headers=ALPHA,
            )
            self.assertEqual(reply.code, 400, (rootfs, reply.body))
            self.assertEqual(reply.json()["error"]["code"], "invalid_input")
            self.assertIn("--sandbox-rootfs-root", reply.json()["error"]["message"])
        self.assertEqual(sorted(os.listdir("/usr")), before)

    async def test_local_user_cannot_reach_the_supervisor(self) -> None:
        """
        As uid 65534: connecting to the control socket (to launch, kill,
        shut down), binding its name (to impersonate the supervisor) and
        replacing the directory all fail with C{EACCES}.
        """
        path = control.socket_path(self.server.data_dir)
        self.assertTrue(os.path.exists(path))
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            results = []
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                for action in ("connect", "bind"):
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        with control.reachable(path) as address:
                            getattr(sock, action)(address)
                        if action == "connect":
                            sock.sendall(b'{"op":"shutdown"}\n')
                        results.append(f"{action}:ok")
                    except OSError as e:
                        results.append(f"{action}:{e.errno}")
                try:
                    os.rename(control.run_dir(self.server.data_dir), control.run_dir(self.server.data_dir) + ".x")
                    results.append("rename:ok")
                except OSError as e:
                    results.append(f"rename:{e.errno}")
            finally:
                os.write(writer, " ".join(results).encode())
                os._exit(0)
        os.close(writer)
        outcome = os.read(reader, 1000).decode()
        os.close(reader)
        os.waitpid(pid, 0)
        self.assertEqual(outcome, "connect:13 bind:13 rename:13")
        status = await self.run_as(ALPHA, "echo still-served")
        self.assertEqual(status["stdout"], "still-served\n")


IsolationTests.shared = TokenServer(IsolationTests, GRACE)


class NoCgroupIsolationTests(EnforcementCase):
    """
    Without cgroups, the uid alone finds what a task left behind.
    """

    async def test_no_survivors_without_cgroups(self) -> None:
        """
        A detached daemon (new session, double fork) of a task on a server
        with C{--disable-cgroup} is killed at the task's normal end.
        """
        status = await self.run_task(
            shell("(setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 &); echo left", task_id=unique("nocg"))
        )
        self.assertEqual(status["status"], "success", status)
        self.assertIs(status["execution_plan"]["resource_enforcement"]["cgroup_enforced"], False)
        uid = status["execution_plan"]["run_as"]["uid"]
        self.assertGreaterEqual(uid, FIRST_UID)
        self.assertEqual(uid_processes(uid), [])


NoCgroupIsolationTests.shared = SharedServer(NoCgroupIsolationTests, GRACE + ["--disable-cgroup"])


class TaskUserTests(EnforcementCase):
    """
    C{--task-user nobody}: every task runs as that one account.
    """

    async def test_fixed_account(self) -> None:
        """
        The task is uid and gid 65534 with no other group; the plan and the
        capability snapshot say so.
        """
        caps = (await self.api.get("/api/v1/runtime/capabilities")).json()
        self.assertIs(caps["privilege_drop"], True)
        status = await self.run_task(shell("id -u; id -G", task_id=unique("nobody")))
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["execution_plan"]["run_as"], {"uid": 65534, "gid": 65534})
        self.assertEqual(status["stdout"].splitlines(), ["65534", "65534"])


TaskUserTests.shared = SharedServer(TaskUserTests, GRACE + ["--task-user", "nobody"])


class WatchdogTests(IntegrationMixin, TestCase):
    """
    A supervisor that stops answering is noticed and replaced.
    """

    timeout = 60

    def setUp(self) -> "defer.Deferred[None]":
        require_root(self)
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        from twisted.internet import reactor

        self.server = ServerProcess(reactor, self.mktemp(), GRACE)
        await self.server.start()
        self.addCleanup(self.server.shutdown)
        self.api = self.server.client(self)

    async def test_stopped_supervisor_replaced(self) -> None:
        """
        With its supervisor stopped (what C{kill -STOP $PPID} did when
        tasks ran as root), C{/readyz} answers 503 naming the silence
        within a few seconds; the server then kills and replaces it, fails
        its running task C{internal}, and runs new tasks again.
        """
        reactor = self._reactor()
        task_id = await self.submit(shell("sleep 60", task_id=unique("stuck")))
        running = await self.wait_started(task_id)
        supervisor = running["shim_pid"]
        os.kill(supervisor, signal.SIGSTOP)
        self.addCleanup(lambda: os.kill(supervisor, signal.SIGCONT) if process_state(supervisor) else None)

        async def unready() -> Any:
            reply = await self.api.get("/readyz")
            return reply if reply.code == 503 else None

        reply = await poll(reactor, unready, timeout=8, what="readyz to say 503")
        self.assertEqual(reply.json()["error"]["code"], "internal")
        self.assertIn(f"supervisor {supervisor} has not answered", reply.json()["error"]["message"])
        failed = await self.wait_terminal(task_id, timeout=20)
        self.assertEqual(failed["status"], "failed", failed)
        self.assertEqual(failed["error"]["code"], "internal")
        self.assertIn(str(supervisor), failed["error"]["message"])
        status = await self.wait_terminal(await self.submit(shell("echo again", task_id=unique("after"))))
        self.assertEqual((status["status"], status["stdout"]), ("success", "again\n"))
        self.assertNotEqual(status["shim_pid"], supervisor)
        self.assertEqual((await self.api.get("/readyz")).code, 200)
        await sleep(reactor, 0)
        self.assertIn("killing it", self.server.log_text())
