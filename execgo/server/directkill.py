# -*- test-case-name: tests.test_escalation,tests.test_runtime -*-
"""
The server's own kill of a running task while no supervisor is
connected to do it (L{DirectKills}): the same escalation the supervisor
follows (L{escalation.terminate}), on the reactor's clock, its last step
called off when the task's end is reported.
"""

from __future__ import annotations

from typing import Callable, Dict

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from execgo.host import escalation
from execgo.host.procinfo import kill_group


class DirectKills:
    """
    Kills by escalation from the server, one timer per task.

    @param reactor: runs the grace periods.
    @param grace_s: seconds between SIGTERM and SIGKILL
        (C{--termination-grace-ms}).
    @param signal_group: C{signal_group(pgid, signum)}, a group gone being
        no error (L{kill_group}).

    @ivar timers: the last step scheduled, by task id, until it is taken
        or called off.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        grace_s: float,
        signal_group: Callable[[int, int], object] = kill_group,
    ) -> None:
        self.reactor = reactor
        self.grace_s = grace_s
        self.signal_group = signal_group
        self.timers: Dict[str, IDelayedCall] = {}

    def kill(self, task_id: str, pgid: int) -> None:
        """
        Kill the running task C{task_id}, whose workload leads the process
        group C{pgid}, by escalation: SIGTERM now (again on a repeated
        kill), SIGKILL once the grace period has passed.
        """
        self.timers[task_id] = escalation.terminate(
            escalation.group_signaller(pgid, self.signal_group),
            self.grace_s,
            lambda delay, kill: self.reactor.callLater(delay, self._kill_later, task_id, kill),
            self.timers.get(task_id),
        )

    def _kill_later(self, task_id: str, kill: Callable[[], None]) -> None:
        """
        The grace period of a direct kill is over: forget its timer and
        take the last step.
        """
        self.timers.pop(task_id, None)
        kill()

    def ended(self, task_id: str) -> None:
        """
        The task ended: call its last step off.
        """
        timer = self.timers.pop(task_id, None)
        if timer is not None and timer.active():
            timer.cancel()

    def stop(self) -> None:
        """
        Call every last step off.
        """
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()
