# -*- test-case-name: tests.test_escalation -*-
"""
Kill by escalation, the one rule both processes follow to end a task:
C{SIGTERM} to everything of the task, a grace period, then C{SIGKILL},
unless the task ended first.  A repeated request sends C{SIGTERM} again
and leaves the C{SIGKILL} where it was.

The supervisor escalates a kill order or a timeout; the server escalates
a kill itself while no supervisor is connected, and sends the last step
alone to what a lost supervisor left behind.  Each keeps its own timers
(the supervisor's loop, the server's reactor) and its own record of the
last step scheduled: L{terminate} is handed a C{schedule} function and
never sleeps or reads a clock.

Standard library only.
"""

from __future__ import annotations

import signal
from typing import Callable, Optional, Protocol, TypeVar

from execgo.host.procinfo import kill_group

#: The first step: the task is asked to end.
TERMINATE = signal.SIGTERM
#: The last step, after the grace period: it cannot be refused.
KILL = signal.SIGKILL

#: Sends one signal to everything of a task.
Signaller = Callable[[int], object]


class Cancellable(Protocol):
    """
    A scheduled call that can be called off (the supervisor loop's timer,
    a reactor's C{IDelayedCall}).
    """

    def cancel(self) -> None:
        """
        Do not make the call.
        """


C = TypeVar("C", bound=Cancellable)

#: C{schedule(delay_s, call)}: make C{call} after C{delay_s} seconds; what
#: it returns calls that off.
Schedule = Callable[[float, Callable[[], None]], C]


class GroupMember(Protocol):
    """
    Something more to signal with a process group: a task's cgroups
    (whose members a new session escapes the group into).
    """

    def signal(self, signum: int) -> None:
        """
        Send C{signum} to every member.
        """


def group_signaller(
    pgid: int,
    signal_group: Callable[[int, int], object] = kill_group,
    cgroup: Optional[GroupMember] = None,
) -> Signaller:
    """
    What sends a signal to a task: its process group (the workload leads
    it) and, when it has them, its cgroups.

    @param signal_group: C{signal_group(pgid, signum)}, a group gone being
        no error (L{kill_group}).
    """

    def send(signum: int) -> None:
        signal_group(pgid, signum)
        if cgroup is not None:
            cgroup.signal(signum)

    return send


def kill_now(send: Signaller) -> None:
    """
    The last step alone, at once: for what must not run a moment longer
    (a workload whose limits could not be set, the leftovers of a reaped
    workload, a task whose supervisor is gone) and for the end of a grace
    period.
    """
    send(KILL)


def terminate(send: Signaller, grace_s: float, schedule: Schedule[C], pending: Optional[C]) -> C:
    """
    The first step, taken again on every request: C{SIGTERM} now, and the
    last step (L{kill_now}) scheduled after the grace period unless it is
    already.

    @param send: signals everything of the task (L{group_signaller}).
    @param schedule: the owner's timer.
    @param pending: the last step an earlier request scheduled, if any.
    @return: the scheduled last step (C{pending} when given): the owner
        keeps it and cancels it once the task has ended.
    """
    send(TERMINATE)
    if pending is not None:
        return pending
    return schedule(grace_s, lambda: kill_now(send))
