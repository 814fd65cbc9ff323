# -*- test-case-name: tests.test_spawning,tests.test_engine -*-
"""
How the supervisor engine spawns a claimed task's workload into its
cgroups (L{spawn_into_groups}), and what a failure at each step means for
the task (L{NotStarted}, with its verdict): a launch that cannot be built
or a sandbox that cannot be set up is C{sandbox_setup_failed}, a process
that cannot be started is C{launch_failed}.

Standard library only (plus C{attrs}).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import attrs

from execgo.core import outcome
from execgo.core.plan import ExecutionPlan, ResourceEnforcement
from execgo.core.records import Outcome, TaskRecord
from execgo.host.cgroups import Cgroups, TaskCgroup
from execgo.supervisor import launcher
from execgo.supervisor.processes import Processes


class NotStarted(Exception):
    """
    A claimed task's workload could not be started (nothing of it runs).

    @ivar verdict: how the task ends.
    """

    def __init__(self, verdict: Outcome) -> None:
        super().__init__(verdict)
        self.verdict = verdict


@attrs.frozen
class Spawn:
    """
    A workload just started: the process, the cgroups it was born in
    (C{None} without), and what it was started from.
    """

    spawned: launcher.Spawned
    group: Optional[TaskCgroup]
    spec: launcher.LaunchSpec


def spawn_into_groups(
    record: TaskRecord,
    plan: ExecutionPlan,
    facility: Optional[Cgroups],
    processes: Processes,
    base_env: Mapping[str, str],
    rootfs_roots: Sequence[str],
) -> Spawn:
    """
    Build the launch of C{record} by its C{plan}, make its cgroups when
    the plan enforces limits through them (and C{facility} is there), and spawn the workload
    inside them: born straight into a lone v2 group where the host can
    (L{launcher.can_clone_into}), else with the supervisor stepping into
    the groups for the duration of the spawn, so the child is born there.  The final limits are set once
    the supervisor has left them (L{set_limits}).

    @raise NotStarted: when any step fails (the groups made are removed).
    """
    enforcement = plan.resource_enforcement
    try:
        spec = launcher.build_launch(record, plan, base_env, rootfs_roots)
    except launcher.SandboxSetupError as e:
        raise NotStarted(outcome.failed("sandbox_setup_failed", f"sandbox: {e}")) from None
    group = None
    if enforcement.cgroup_enforced and facility is not None:
        try:
            group = facility.create(
                record.task_id,
                enforcement.mechanisms,
                enforcement.pids_max if enforcement.pids_enforced else None,
            )
        except OSError as e:
            raise NotStarted(outcome.failed("sandbox_setup_failed", f"configure cgroup: {e}")) from None
    try:
        spawned = _spawn(processes, spec, group, facility)
    except launcher.LaunchError as e:
        if group is not None:
            group.remove()
        if isinstance(e, launcher.SandboxSetupError):
            raise NotStarted(outcome.failed("sandbox_setup_failed", f"sandbox: {e}")) from None
        raise NotStarted(outcome.failed("launch_failed", f"spawn process: {e}")) from None
    return Spawn(spawned, group, spec)


def set_limits(enforcement: ResourceEnforcement, facility: Cgroups, group: TaskCgroup) -> None:
    """
    Write the final limits a plan enforces (C{enforcement}) into a
    workload's cgroups.

    @raise OSError: when they cannot be set (the workload already runs:
        the caller kills it).
    """
    facility.limit(
        group,
        enforcement.memory_bytes if enforcement.memory_enforced else None,
        enforcement.pids_max if enforcement.pids_enforced else None,
    )


def _spawn(
    processes: Processes, spec: launcher.LaunchSpec, group: Optional[TaskCgroup], facility: Optional[Cgroups]
) -> launcher.Spawned:
    if group is None or facility is None:
        return processes.spawn(spec)
    place = facility.birthplace(group)
    if place is not None and launcher.can_clone_into():
        return _born_into(processes, spec, place)
    try:
        facility.enter(group)
    except OSError as e:
        facility.leave(group)
        raise launcher.LaunchError(f"cannot enter cgroup: {e}") from None
    try:
        return processes.spawn(spec)
    finally:
        facility.leave(group)


def _born_into(processes: Processes, spec: launcher.LaunchSpec, directory: str) -> launcher.Spawned:
    """
    Spawn the workload born in the cgroup v2 C{directory}: the supervisor
    never moves, so no move waits for the kernel's RCU grace period.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise launcher.LaunchError(f"cannot open cgroup: {e}") from None
    try:
        return processes.spawn(spec, fd)
    finally:
        os.close(fd)
