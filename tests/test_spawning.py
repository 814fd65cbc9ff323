"""
Tests for L{execgo.supervisor.spawning}: a workload spawned inside its
cgroups, and the verdict each failed step gives its task, with fake
kernel edges and an in-memory cgroup facility.
"""

from __future__ import annotations

import os
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import outcome
from execgo.core.constants import PROFILE_LINUX_SANDBOX
from execgo.core.models import ResourceLimits, SandboxPolicy
from execgo.core.plan import ExecutionPlan
from execgo.core.records import Outcome, TaskRecord
from execgo.supervisor import launcher
from execgo.supervisor.spawning import NotStarted, set_limits, spawn_into_groups
from tests.fakes import FIRST_PID, FakeCgroups, FakeProcesses, FakeTaskCgroup, command, plan_for, record

ENV = {"PATH": "/usr/bin:/bin"}
LIMITS = ResourceLimits(memory_bytes=1 << 30, pids_max=64)
GROUPED = plan_for(
    LIMITS,
    memory_enforced=True,
    pids_enforced=True,
    cgroup_enforced=True,
    mechanisms={"memory_bytes": "cgroup_v2", "pids_max": "cgroup_v2"},
)


class SpawnTests(SynchronousTestCase):
    """
    L{spawn_into_groups}: the spawn steps into the task's groups, and a
    failure at any step is the task's verdict, with nothing left behind.
    """

    def setUp(self) -> None:
        self.processes = FakeProcesses()
        self.cgroups = FakeCgroups()
        self.task = record("t", "running", execution=command("/bin/echo", "hi"), limits=LIMITS)

    def refused(self, plan: ExecutionPlan, task: Optional[TaskRecord] = None) -> Outcome:
        """
        The verdict of a spawn that must fail.
        """
        error = self.assertRaises(
            NotStarted, spawn_into_groups, task or self.task, plan, self.cgroups, self.processes, ENV, ()
        )
        return error.verdict

    def test_born_in_its_groups(self) -> None:
        """
        With cgroup enforcement, the task's groups are made and the spawn
        happens between stepping into them and out.
        """
        spawn = spawn_into_groups(self.task, GROUPED, self.cgroups, self.processes, ENV, ())
        self.assertEqual(self.cgroups.calls, [("create", "t"), ("enter", "t"), ("leave", "t")])
        self.assertIs(spawn.group, self.cgroups.groups[0])
        self.assertEqual(spawn.spawned.pid, FIRST_PID)
        self.assertEqual(spawn.spec.argv, ("/bin/echo", "hi"))
        self.assertEqual(self.processes.workloads[FIRST_PID].spec, spawn.spec)

    def test_born_into_lone_v2_group(self) -> None:
        """
        Where the host can and the task's v2 group is its only one, the
        workload is born there (its spawn gets the group's directory) and
        the supervisor never moves.
        """
        self.patch(launcher, "_clone_into", True)
        self.cgroups.place = os.path.abspath(self.mktemp())
        os.mkdir(self.cgroups.place)
        spawn = spawn_into_groups(self.task, GROUPED, self.cgroups, self.processes, ENV, ())
        self.assertEqual(self.cgroups.calls, [("create", "t")])
        self.assertEqual(self.processes.born_in, [self.cgroups.place])
        self.assertIs(spawn.group, self.cgroups.groups[0])

    def test_moves_without_clone_into(self) -> None:
        """
        Where the host cannot, the supervisor moves even for a lone v2
        group.
        """
        self.patch(launcher, "_clone_into", False)
        self.cgroups.place = os.path.abspath(self.mktemp())
        spawn_into_groups(self.task, GROUPED, self.cgroups, self.processes, ENV, ())
        self.assertEqual(self.cgroups.calls, [("create", "t"), ("enter", "t"), ("leave", "t")])
        self.assertEqual(self.processes.born_in, [])

    def test_birthplace_gone(self) -> None:
        """
        A lone v2 group that cannot be opened is C{launch_failed}, and the
        group is removed.
        """
        self.patch(launcher, "_clone_into", True)
        self.cgroups.place = os.path.abspath(self.mktemp())
        verdict = self.refused(GROUPED)
        self.assertEqual(verdict.error.code if verdict.error else None, "launch_failed")
        self.assertIn("cannot open cgroup", verdict.error.message if verdict.error else "")
        self.assertTrue(self.cgroups.groups[0].removed)

    def test_without_groups(self) -> None:
        """
        Without cgroup enforcement, or without a facility, no group is
        made and the workload is spawned as it is.
        """
        for plan, facility in ((plan_for(LIMITS), self.cgroups), (GROUPED, None)):
            spawn = spawn_into_groups(self.task, plan, facility, self.processes, ENV, ())
            self.assertIsNone(spawn.group)
        self.assertEqual(self.cgroups.calls, [])
        self.assertEqual(len(self.processes.workloads), 2)

    def test_sandbox_cannot_be_built(self) -> None:
        """
        A chroot whose root filesystem is missing is
        C{sandbox_setup_failed} before anything is made or spawned.
        """
        sandbox = SandboxPolicy(profile=PROFILE_LINUX_SANDBOX, chroot=True, rootfs="/nonexistent-root")
        verdict = self.refused(plan_for(LIMITS, sandbox, cgroup_enforced=True))
        self.assertEqual(
            verdict, outcome.failed("sandbox_setup_failed", "sandbox: chroot /nonexistent-root: No such directory")
        )
        self.assertEqual((self.cgroups.calls, self.processes.workloads), ([], {}))

    def test_group_not_made(self) -> None:
        """
        Groups that cannot be made are C{sandbox_setup_failed}.
        """
        self.cgroups.fail = "create"
        verdict = self.refused(GROUPED)
        self.assertEqual(
            verdict, outcome.failed("sandbox_setup_failed", "configure cgroup: [Errno 13] Permission denied (create)")
        )
        self.assertEqual(self.processes.workloads, {})

    def test_group_not_entered(self) -> None:
        """
        Groups that cannot be entered are C{launch_failed}: the supervisor
        steps back out and removes them, and nothing is spawned.
        """
        self.cgroups.fail = "enter"
        verdict = self.refused(GROUPED)
        self.assertEqual(
            verdict,
            outcome.failed("launch_failed", "spawn process: cannot enter cgroup: [Errno 13] Permission denied (enter)"),
        )
        self.assertEqual(self.cgroups.calls, [("create", "t"), ("enter", "t"), ("leave", "t")])
        self.assertTrue(self.cgroups.groups[0].removed)
        self.assertEqual(self.processes.workloads, {})

    def test_spawn_refused(self) -> None:
        """
        A spawn the kernel refuses is C{launch_failed}, one the sandbox
        wrapper refuses C{sandbox_setup_failed}; the groups made for it
        are removed either way.
        """
        self.processes.fail = launcher.LaunchError("[Errno 2] No such file or directory")
        self.assertEqual(
            self.refused(GROUPED), outcome.failed("launch_failed", "spawn process: [Errno 2] No such file or directory")
        )
        self.processes.fail = launcher.SandboxSetupError("no user namespaces")
        self.assertEqual(self.refused(GROUPED), outcome.failed("sandbox_setup_failed", "sandbox: no user namespaces"))
        self.assertEqual([group.removed for group in self.cgroups.groups], [True, True])


class LimitTests(SynchronousTestCase):
    """
    L{set_limits}: only the limits the plan enforces are written.
    """

    def test_enforced_only(self) -> None:
        """
        Memory and pids limits go to the groups when enforced, C{None}
        when not.
        """
        cgroups = FakeCgroups()
        group = FakeTaskCgroup("t", {}, None)
        set_limits(GROUPED.resource_enforcement, cgroups, group)  # type: ignore[arg-type]
        set_limits(plan_for(LIMITS).resource_enforcement, cgroups, group)  # type: ignore[arg-type]
        self.assertEqual(cgroups.calls, [("limit", (1 << 30, 64)), ("limit", (None, None))])
