# -*- test-case-name: tests.test_engine -*-
"""
One launched workload as the supervisor engine knows it: L{Running}, the
state its launch, its escalation, its reaping and its end share, in one
place; and the hand-back of a task's files before its end is written
(L{hand_back}).

Standard library only (plus C{attrs}).
"""

from __future__ import annotations

from typing import Callable, Optional

import attrs

from execgo.core.records import TaskRecord
from execgo.core.results import Usage
from execgo.host import privileges
from execgo.host.cgroups import TaskCgroup
from execgo.host.escalation import Signaller, group_signaller
from execgo.host.privileges import TaskIdentity
from execgo.supervisor.timers import Timer


@attrs.define
class Running:
    """
    The supervisor's state for one launched workload: one entity, one place.

    @ivar kill_timer: the SIGKILL a kill or a timeout scheduled (kept once
        it ran: one escalation per workload sends one).
    @ivar grace_s: the grace period the workload was launched with.
    @ivar timeout_unrecorded: its wall timer fired while the store could
        not record it; the reaper records it before the task's end.
    @ivar fenced: killed because its node could not keep its lease: it
        ends C{node_lost}.
    """

    task_id: str
    pid: int
    started_mono: float
    record: TaskRecord
    timed_out: bool = False
    timeout_unrecorded: bool = False
    cancel_requested: bool = False
    kill_timer: Optional[Timer] = None
    wall_timer: Optional[Timer] = None
    poll_timer: Optional[Timer] = None
    exit_status: Optional[int] = None
    usage: Optional[Usage] = None
    drain_deadline: float = 0.0
    cgroup: Optional[TaskCgroup] = None
    setup_error: Optional[str] = None
    status_fd: Optional[int] = None
    grace_s: float = 0.0
    fenced: bool = False

    def signaller(self, signal_group: Callable[[int, int], object]) -> Signaller:
        """
        What signals everything of this workload: its process group
        (through C{signal_group}, the kernel edge) and its cgroups.
        """
        return group_signaller(self.pid, signal_group, self.cgroup)


def hand_back(identity: Optional[TaskIdentity], record: TaskRecord, drained: bool, log: Callable[[str], None]) -> None:
    """
    Before a task's end is written: L{privileges.hand_back}, its trouble
    logged (the end is written all the same).

    @param identity: who tasks run as.
    @param drained: the task's cgroups are known empty.
    """
    try:
        whole = privileges.hand_back(identity, record.run_as, record.paths.task_dir, record.paths.script_path, drained)
    except OSError as e:
        log(f"cannot hand back the files of {record.task_id}: {e}")
        return
    if not whole:
        log(
            f"{record.task_id}: handed back its workspace's top and the first"
            f" {privileges.RECLAIM_ENTRIES} entries below it; the rest keep its uid"
        )
