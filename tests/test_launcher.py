"""
Tests for L{execgo.supervisor.launcher}: the pure launch derivation, and real
workload processes started by L{launcher.spawn}.
"""

from __future__ import annotations

import os
import resource
import signal
import stat
from typing import Dict, List, Optional, Tuple

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core.models import ExecutionSpec, Namespaces, ResourceLimits, SandboxPolicy
from execgo.core.plan import RunAs
from execgo.supervisor import launcher
from tests.fakes import command, plan_for, record, shell

BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/x",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "USER": "x",
    "SECRET": "s3cret",
    "LC_ALL": "C",
    "PYTHONPATH": "/p",
}


class ChildEnvironmentTests(SynchronousTestCase):
    """
    L{launcher.child_environment}: a few inherited variables, overridden by
    the task's C{env}.
    """

    def test_only_inherited(self) -> None:
        """
        Only C{PATH}, C{HOME}, C{LANG}, C{TMPDIR} and C{USER} are inherited.
        """
        self.assertEqual(
            launcher.child_environment(BASE_ENV, {}),
            {"PATH": "/usr/bin:/bin", "HOME": "/home/x", "LANG": "C.UTF-8", "TMPDIR": "/tmp", "USER": "x"},
        )

    def test_missing_not_invented(self) -> None:
        """
        An inherited variable unset in the base is not set.
        """
        self.assertEqual(launcher.child_environment({"HOME": "/h"}, {}), {"HOME": "/h"})

    def test_task_env_overrides(self) -> None:
        """
        The task's own env adds variables and overrides inherited ones.
        """
        env = launcher.child_environment(BASE_ENV, {"PATH": "/opt", "FOO": "bar", "SECRET": "mine"})
        self.assertEqual(env["PATH"], "/opt")
        self.assertEqual(env["FOO"], "bar")
        self.assertEqual(env["SECRET"], "mine")
        self.assertNotIn("LC_ALL", env)


class RlimitsForTests(SynchronousTestCase):
    """
    L{launcher.rlimits_for}.
    """

    def test_none(self) -> None:
        """
        Nothing enforced, no rlimits (requested but unenforced limits too).
        """
        self.assertEqual(launcher.rlimits_for(plan_for()), ())
        limits = ResourceLimits(cpu_time_sec=3, memory_bytes=1 << 20)
        self.assertEqual(launcher.rlimits_for(plan_for(limits)), ())

    def test_cpu(self) -> None:
        """
        CPU time: soft = the limit, hard one second above.
        """
        plan = plan_for(ResourceLimits(cpu_time_sec=3), cpu_enforced=True)
        self.assertEqual(launcher.rlimits_for(plan), ((resource.RLIMIT_CPU, 3, 4),))

    def test_memory_rlimit(self) -> None:
        """
        Memory enforced by rlimit (named, or by default) sets C{RLIMIT_AS}.
        """
        limits = ResourceLimits(memory_bytes=1 << 30)
        expected = ((resource.RLIMIT_AS, 1 << 30, 1 << 30),)
        self.assertEqual(
            launcher.rlimits_for(plan_for(limits, memory_enforced=True, mechanisms={"memory_bytes": "rlimit"})),
            expected,
        )
        self.assertEqual(launcher.rlimits_for(plan_for(limits, memory_enforced=True)), expected)

    def test_memory_cgroup(self) -> None:
        """
        Memory enforced by a cgroup sets no C{RLIMIT_AS}.
        """
        limits = ResourceLimits(cpu_time_sec=1, memory_bytes=1 << 30)
        for mechanism in ("cgroup_v1", "cgroup_v2"):
            plan = plan_for(
                limits, cpu_enforced=True, memory_enforced=True, mechanisms={"memory_bytes": mechanism}
            )
            self.assertEqual(launcher.rlimits_for(plan), ((resource.RLIMIT_CPU, 1, 2),))


class BuildLaunchTests(SynchronousTestCase):
    """
    L{launcher.build_launch}: how a task's workload is started.
    """

    def test_command(self) -> None:
        """
        A command runs C{[program] + args} in the workspace with the logs
        and the derived environment.
        """
        task = record("t", "running", execution=command("ls", "-l", "/", env={"A": "1"}), data_dir="/d")
        plan = plan_for(ResourceLimits(cpu_time_sec=2), cpu_enforced=True)
        spec = launcher.build_launch(task, plan, BASE_ENV)
        self.assertEqual(spec.argv, ("ls", "-l", "/"))
        self.assertEqual(spec.env, dict(launcher.child_environment(BASE_ENV, {}), A="1"))
        self.assertEqual(spec.cwd, "/d/tasks/t/workspace")
        self.assertEqual(spec.stdout_path, "/d/tasks/t/stdout.log")
        self.assertEqual(spec.stderr_path, "/d/tasks/t/stderr.log")
        self.assertEqual(spec.rlimits, ((resource.RLIMIT_CPU, 2, 3),))
        self.assertIsNone(spec.script_path)
        self.assertIsNone(spec.script_text)

    def test_script_without_interpreter(self) -> None:
        """
        A script without interpreter runs as C{/bin/sh -c <text>}; the file
        is still written.
        """
        task = record("t", "running", execution=shell("echo hi"), data_dir="/d")
        spec = launcher.build_launch(task, plan_for(), BASE_ENV)
        self.assertEqual(spec.argv, ("/bin/sh", "-c", "echo hi"))
        self.assertEqual(spec.script_path, "/d/tasks/t/script.sh")
        self.assertEqual(spec.script_text, "echo hi")

    def test_script_with_interpreter(self) -> None:
        """
        With an interpreter the argv is the interpreter plus the absolute
        script path; C{args} is ignored.
        """
        execution = ExecutionSpec(
            kind="script", script="print(1)", interpreter=("python3", "-u"), args=("ignored",)
        )
        task = record("t", "running", execution=execution, data_dir="/d")
        spec = launcher.build_launch(task, plan_for(), BASE_ENV)
        self.assertEqual(spec.argv, ("python3", "-u", "/d/tasks/t/script.py"))
        self.assertEqual(spec.script_path, "/d/tasks/t/script.py")

    def test_process_profile_no_sandbox(self) -> None:
        """
        A process-profile task needs no sandbox wrapper.
        """
        task = record("t", "running", data_dir="/d")
        self.assertIsNone(launcher.build_launch(task, plan_for(), BASE_ENV).sandbox)

    def test_linux_sandbox_config(self) -> None:
        """
        An effective C{linux_sandbox} profile hands the wrapper the granted
        namespaces, the workspace, the argv and the environment.
        """
        sandbox = SandboxPolicy(profile="linux_sandbox", namespaces=Namespaces(net=True))
        task = record("t", "running", execution=command("/bin/true"), data_dir="/d", sandbox=sandbox)
        spec = launcher.build_launch(task, plan_for(sandbox=sandbox), {"PATH": "/bin"})
        assert spec.sandbox is not None
        self.assertEqual(spec.sandbox["namespaces"], Namespaces(net=True).to_json())
        self.assertEqual(spec.sandbox["cwd"], "/d/tasks/t/workspace")
        self.assertEqual(spec.sandbox["argv"], ["/bin/true"])
        self.assertEqual(spec.sandbox["env"], {"PATH": "/bin"})
        self.assertIsNone(spec.sandbox["rootfs"])
        self.assertEqual(spec.argv, ("/bin/true",))

    def test_read_status_none(self) -> None:
        """
        Without a wrapper status pipe there is no wrapper failure.
        """
        self.assertIsNone(launcher.read_status(None))


class SpawnTests(SynchronousTestCase):
    """
    L{launcher.spawn} with real processes.
    """

    def setUp(self) -> None:
        self.task_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.task_dir)
        self.pids: list = []
        self.addCleanup(self._reap_all)

    def _reap_all(self) -> None:
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    def spec(
        self,
        argv: Tuple[str, ...],
        env: Optional[Dict[str, str]] = None,
        rlimits: Tuple[launcher.RLimit, ...] = (),
        cwd: Optional[str] = None,
        script: Optional[str] = None,
    ) -> launcher.LaunchSpec:
        """
        A launch spec in this test's task directory.
        """
        return launcher.LaunchSpec(
            argv=argv,
            env={"PATH": "/usr/bin:/bin"} if env is None else env,
            cwd=cwd or os.path.join(self.task_dir, "workspace"),
            stdout_path=os.path.join(self.task_dir, "stdout.log"),
            stderr_path=os.path.join(self.task_dir, "stderr.log"),
            rlimits=rlimits,
            script_path=None if script is None else os.path.join(self.task_dir, "script.sh"),
            script_text=script,
        )

    def start(self, spec: launcher.LaunchSpec) -> int:
        """
        Spawn and remember the pid for clean-up.
        """
        spawned = launcher.spawn(spec)
        self.assertIsNone(spawned.status_fd)
        self.pids.append(spawned.pid)
        return spawned.pid

    def wait(self, pid: int) -> int:
        """
        Reap C{pid} and return its exit code.
        """
        self.pids.remove(pid)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def read(self, name: str) -> str:
        """
        A file of the task directory.
        """
        with open(os.path.join(self.task_dir, name), encoding="utf-8") as f:
            return f.read()

    def identity_run(self) -> List[str]:
        """
        Run a workload as uid and gid 1879048292 and return what it says
        of itself: uid, groups, effective capabilities, no_new_privs,
        umask, and the owner and mode of its working directory.
        """
        if os.geteuid() != 0:
            raise self.skipTest("needs root to give a workload another uid")
        uid = 0x70000000 + 100
        spec = attrs.evolve(
            self.spec(
                ("/bin/sh", "-c", "id -u; id -G; grep -E '^(CapEff|NoNewPrivs|Umask)' /proc/self/status;"
                 " stat -c '%u %a' ."),
                script="true\n",
            ),
            task_dir=self.task_dir,
            run_as=RunAs(uid, uid),
        )
        pid = self.start(spec)
        self.assertEqual(self.wait(pid), 0, self.read("stderr.log"))
        self.assertEqual(os.stat(os.path.join(self.task_dir, "script.sh")).st_uid, uid)
        self.assertEqual(os.stat(self.task_dir).st_mode & 0o777, 0o711)
        return self.read("stdout.log").splitlines()

    def test_identity(self) -> None:
        """
        A workload with an identity of its own runs with that uid and gid
        only, no capabilities, C{no_new_privs}, umask 077, in its own 0700
        workspace (through the C{_spawn} extension, which sets
        C{no_new_privs} itself).
        """
        if launcher._spawn is None:
            raise self.skipTest("execgo.host._spawn is not built here")
        uid = str(0x70000000 + 100)
        self.assertEqual(
            self.identity_run(),
            [uid, uid, "Umask:\t0077", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", f"{uid} 700"],
        )

    def test_identity_without_extension(self) -> None:
        """
        Without the C{_spawn} extension, C{subprocess} gives the workload
        the same identity.  (C{no_new_privs} then comes from the
        supervisor, which sets it on itself: not in this test process.)
        """
        self.patch(launcher, "_spawn", None)
        uid = str(0x70000000 + 100)
        lines = self.identity_run()
        self.assertEqual(lines[:4], [uid, uid, "Umask:\t0077", "CapEff:\t0000000000000000"])
        self.assertEqual(lines[-1], f"{uid} 700")

    def test_oversized_limit_is_a_launch_error(self) -> None:
        """
        A limit no C type can hold (only a row stored before submissions
        were checked against the kernel could carry one) is a launch
        error, not an exception that escapes the supervisor.
        """
        spec = self.spec(("/bin/true",), rlimits=((resource.RLIMIT_CPU, 2**70, 2**70),))
        self.assertRaises(launcher.LaunchError, launcher.spawn, spec)

    def test_output_cwd_env(self) -> None:
        """
        Output goes to the log files, the working directory is the (created)
        workspace, only the given environment is seen, stdin is empty.
        """
        script = 'echo out; echo err >&2; pwd; echo "[$FOO][$SECRET]"; cat; echo end'
        pid = self.start(self.spec(("/bin/sh", "-c", script), env={"PATH": "/bin", "FOO": "f"}))
        self.assertEqual(self.wait(pid), 0)
        workspace = os.path.join(self.task_dir, "workspace")
        self.assertEqual(self.read("stdout.log"), f"out\n{workspace}\n[f][]\nend\n")
        self.assertEqual(self.read("stderr.log"), "err\n")

    def test_logs_truncated(self) -> None:
        """
        Existing log files are truncated, and created with mode 0600 (the
        runtime's alone: a workload reaches its logs only as descriptors).
        """
        with open(os.path.join(self.task_dir, "stdout.log"), "w") as f:
            f.write("old content that is long\n")
        pid = self.start(self.spec(("/bin/sh", "-c", "echo new")))
        self.assertEqual(self.wait(pid), 0)
        self.assertEqual(self.read("stdout.log"), "new\n")
        mode = stat.S_IMODE(os.stat(os.path.join(self.task_dir, "stderr.log")).st_mode)
        self.assertEqual(mode, 0o600)

    def test_exit_code(self) -> None:
        """
        The returned pid is the workload's: its exit code is reaped here.
        """
        pid = self.start(self.spec(("/bin/sh", "-c", "exit 7")))
        self.assertEqual(self.wait(pid), 7)

    def test_new_session(self) -> None:
        """
        The workload leads a new session and process group.
        """
        pid = self.start(self.spec(("/bin/sh", "-c", "exec sleep 10")))
        self.assertEqual(os.getsid(pid), pid)
        self.assertEqual(os.getpgid(pid), pid)
        self.assertNotEqual(os.getsid(pid), os.getsid(0))

    def test_rlimits_applied(self) -> None:
        """
        The requested rlimits are in force in the workload.
        """
        rlimits = ((resource.RLIMIT_CPU, 5, 6), (resource.RLIMIT_AS, 1 << 31, 1 << 31))
        pid = self.start(self.spec(("/bin/sh", "-c", "exec sleep 10"), rlimits=rlimits))
        with open(f"/proc/{pid}/limits") as f:
            limits = {line[:26].strip(): line[26:].split() for line in f.read().splitlines()[1:]}
        self.assertEqual(limits["Max cpu time"][:2], ["5", "6"])
        self.assertEqual(limits["Max address space"][:2], [str(1 << 31), str(1 << 31)])

    def test_script_file(self) -> None:
        """
        The script file is written with mode 0700 before the start.
        """
        script = "echo from-file\n"
        spec = self.spec(("/bin/sh", os.path.join(self.task_dir, "script.sh")), script=script)
        pid = self.start(spec)
        self.assertEqual(self.wait(pid), 0)
        self.assertEqual(self.read("script.sh"), script)
        self.assertEqual(stat.S_IMODE(os.stat(spec.script_path or "").st_mode), 0o700)
        self.assertEqual(self.read("stdout.log"), "from-file\n")

    def test_path_lookup_in_child_env(self) -> None:
        """
        A program without C{/} is looked up in the child's C{PATH}.
        """
        pid = self.start(self.spec(("sh", "-c", "echo found"), env={"PATH": "/bin"}))
        self.assertEqual(self.wait(pid), 0)
        self.assertEqual(self.read("stdout.log"), "found\n")
        error = self.assertRaises(
            launcher.LaunchError, launcher.spawn, self.spec(("sh", "-c", "true"), env={"PATH": "/nonexistent"})
        )
        self.assertIn("No such file", str(error))

    def test_missing_program(self) -> None:
        """
        A missing program is a L{launcher.LaunchError} with the OS error.
        """
        error = self.assertRaises(
            launcher.LaunchError, launcher.spawn, self.spec(("/nonexistent/program",))
        )
        self.assertIn("No such file or directory", str(error))

    def test_bad_cwd(self) -> None:
        """
        A working directory that cannot be created is a
        L{launcher.LaunchError}.
        """
        blocker = os.path.join(self.task_dir, "file")
        open(blocker, "w").close()
        error = self.assertRaises(
            launcher.LaunchError,
            launcher.spawn,
            self.spec(("/bin/true",), cwd=os.path.join(blocker, "workspace")),
        )
        self.assertTrue(str(error))
