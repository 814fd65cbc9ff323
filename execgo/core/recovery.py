# -*- test-case-name: tests.test_recovery -*-
"""
What to do with each non-terminal stored task when the server starts, or
when the supervisor it talks to is found gone (C{docs/architecture.md},
"What survives a crash, and why").

L{plan_recovery} is pure: given the tasks and a way to tell whether a
recorded supervisor still lives, it returns one action per task.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import attrs

from execgo.core.constants import STATUS_ACCEPTED, STATUS_RUNNING
from execgo.core.records import TaskRecord
from execgo.core.reservation import Reservation

RELEASE_ORPHAN = "release_orphan"
RECOVERED = "recovered"
LOST = "lost"


@attrs.frozen
class RecoveryAction:
    """
    One decision: C{kind} is L{RELEASE_ORPHAN}, L{RECOVERED} or L{LOST}.

    @ivar reservation: for L{RECOVERED}, the reservation to rebuild when the
        task holds none.
    @ivar kill_pgid: for L{LOST}, a workload process group to kill so that
        nothing of a lost task survives it.
    @ivar record: for L{LOST}, the task (its uid's processes are killed
        and its files handed back before its end is written).
    """

    kind: str
    task_id: str
    reservation: Optional[Reservation] = None
    kill_pgid: Optional[int] = None
    record: Optional[TaskRecord] = None


def plan_recovery(
    records: Sequence[TaskRecord], supervisor_alive: Callable[[int], bool], node_id: Optional[str] = None
) -> List[RecoveryAction]:
    """
    Decide, oldest task first, what recovery does with each task.  A task
    another node claimed is that node's to recover (or the cluster's, when
    the node is lost): nothing is done with it here.
    """
    actions: List[RecoveryAction] = []
    for record in records:
        if node_id is not None and record.node_id is not None and record.node_id != node_id:
            continue
        if record.status == STATUS_ACCEPTED:
            if record.reservation_active:
                actions.append(RecoveryAction(RELEASE_ORPHAN, record.task_id))
        elif record.status == STATUS_RUNNING:
            if record.shim_pid is not None and supervisor_alive(record.shim_pid):
                rebuild = None
                if not record.reservation_active:
                    rebuild = Reservation.for_limits(record.limits)
                actions.append(RecoveryAction(RECOVERED, record.task_id, reservation=rebuild))
            else:
                actions.append(RecoveryAction(LOST, record.task_id, kill_pgid=record.pgid, record=record))
    return actions
