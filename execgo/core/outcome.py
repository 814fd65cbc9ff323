# -*- test-case-name: tests.test_outcome -*-
"""
Classification of a finished workload (the verdict table of L{classify}),
and the fixed outcomes of tasks that never ran.

Pure functions: everything the verdict depends on is an argument.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

import attrs

from execgo.core.constants import STATUS_CANCELLED, STATUS_FAILED, STATUS_SUCCESS
from execgo.core.records import Outcome
from execgo.core.results import ErrorInfo, Usage


@attrs.frozen
class Exit:
    """
    How the workload's leader ended and what it used.

    @ivar status: the raw wait status from C{wait4}.
    @ivar usage: the usage figures, duration included.
    @ivar timed_out: the wall-time limit fired.
    @ivar cancelled: a kill was requested (remembered or flagged in the store).
    @ivar oom_killed: the task's memory cgroup recorded an OOM kill.
    @ivar pids_limited: the task's pids cgroup refused a fork.
    @ivar cpu_time_sec: the enforced CPU limit, if any.
    """

    status: int
    usage: Usage
    timed_out: bool = False
    cancelled: bool = False
    oom_killed: bool = False
    cpu_time_sec: Optional[int] = None

    @property
    def exit_code(self) -> Optional[int]:
        """
        The exit code when the leader exited normally.
        """
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def exit_signal(self) -> Optional[int]:
        """
        The signal number when a signal ended the leader.
        """
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


def _cpu_limit_hit(exit: Exit) -> bool:
    if exit.exit_signal == signal.SIGXCPU:
        return True
    if exit.exit_signal != signal.SIGKILL or exit.cpu_time_sec is None:
        return False
    # SIGKILL at the hard limit, one second after SIGXCPU was due.
    used_ms = (exit.usage.user_cpu_ms or 0) + (exit.usage.system_cpu_ms or 0)
    return used_ms >= exit.cpu_time_sec * 1000


def classify(exit: Exit) -> Outcome:
    """
    The terminal outcome of a reaped workload; the first matching rule
    wins: timeout, cancellation, OOM kill, CPU limit, exit code 0, another
    exit code, a signal, anything else.
    """
    code, sig = exit.exit_code, exit.exit_signal
    if exit.timed_out:
        status, error = STATUS_FAILED, ErrorInfo("timeout", "task exceeded wall_time_ms")
    elif exit.cancelled:
        status, error = STATUS_CANCELLED, ErrorInfo("cancelled", "task cancelled")
    elif exit.oom_killed:
        status, error = STATUS_FAILED, ErrorInfo(
            "memory_limit_exceeded", "task exceeded memory limit"
        )
    elif _cpu_limit_hit(exit):
        status, error = STATUS_FAILED, ErrorInfo("cpu_limit_exceeded", "task exceeded cpu_time_sec")
    elif code == 0:
        status, error = STATUS_SUCCESS, None
    elif code is not None:
        status, error = STATUS_FAILED, ErrorInfo("exit_nonzero", f"task exited with code {code}")
    elif sig is not None:
        status, error = STATUS_FAILED, ErrorInfo("internal", f"task terminated by signal {sig}")
    else:
        status, error = STATUS_FAILED, ErrorInfo("internal", "task failed with unknown outcome")
    return Outcome(
        status=status,
        error=error,
        duration_ms=exit.usage.duration_ms,
        exit_code=code,
        exit_signal=sig,
        usage=exit.usage,
    )


def failed(code: str, message: str) -> Outcome:
    """
    A C{failed} outcome with no exit information and duration 0.
    """
    return Outcome(status=STATUS_FAILED, error=ErrorInfo(code, message), duration_ms=0)


#: The message of a task that ended because its node was lost (its lease
#: ran out, or the node could not keep it and killed its workloads).
NODE_LOST = "node_lost"


def node_lost(verdict: Optional[Outcome] = None) -> Outcome:
    """
    C{failed}, C{internal}, L{NODE_LOST}: a task of a lost node, with what
    is known of how its workload ended (C{verdict}, when it was reaped).
    """
    lost = failed("internal", NODE_LOST)
    if verdict is None:
        return lost
    return attrs.evolve(verdict, status=lost.status, error=lost.error)


def cancelled(message: str) -> Outcome:
    """
    A C{cancelled} outcome of a task that never ran (duration 0).
    """
    return Outcome(status=STATUS_CANCELLED, error=ErrorInfo("cancelled", message), duration_ms=0)
