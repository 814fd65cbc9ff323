"""
Tests for L{execgo.host.escalation}: the kill-by-escalation rule alone,
and the server's direct kill (L{execgo.server.directkill.DirectKills},
while no supervisor is connected) that follows it on a reactor's clock.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any, Callable, List, Tuple

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from execgo.host import escalation
from execgo.server.directkill import DirectKills


@attrs.define
class Scheduled:
    """
    A call handed to L{FakeSchedule}.
    """

    delay: float
    call: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """
        Call it off.
        """
        self.cancelled = True


class FakeSchedule:
    """
    A C{schedule} function that records what it is given.
    """

    def __init__(self) -> None:
        self.calls: List[Scheduled] = []

    def __call__(self, delay: float, call: Callable[[], None]) -> Scheduled:
        scheduled = Scheduled(delay, call)
        self.calls.append(scheduled)
        return scheduled


class TerminateTests(SynchronousTestCase):
    """
    L{escalation.terminate} and L{escalation.kill_now}.
    """

    def setUp(self) -> None:
        self.sent: List[int] = []
        self.schedule = FakeSchedule()

    def test_first_step(self) -> None:
        """
        The first request sends SIGTERM and schedules the last step after
        the grace period; that step sends SIGKILL.
        """
        pending = escalation.terminate(self.sent.append, 1.5, self.schedule, None)
        self.assertEqual(self.sent, [signal.SIGTERM])
        self.assertEqual(self.schedule.calls, [pending])
        self.assertEqual(pending.delay, 1.5)
        pending.call()
        self.assertEqual(self.sent, [signal.SIGTERM, signal.SIGKILL])

    def test_repeated_request(self) -> None:
        """
        A request while the last step is pending sends SIGTERM again and
        leaves that step as it was.
        """
        pending = escalation.terminate(self.sent.append, 1.5, self.schedule, None)
        again = escalation.terminate(self.sent.append, 1.5, self.schedule, pending)
        self.assertIs(again, pending)
        self.assertEqual(len(self.schedule.calls), 1)
        self.assertEqual(self.sent, [signal.SIGTERM, signal.SIGTERM])

    def test_kill_now(self) -> None:
        """
        The last step alone sends SIGKILL and schedules nothing.
        """
        escalation.kill_now(self.sent.append)
        self.assertEqual(self.sent, [signal.SIGKILL])
        self.assertEqual(self.schedule.calls, [])


class GroupSignallerTests(SynchronousTestCase):
    """
    L{escalation.group_signaller}.
    """

    def test_group_then_cgroup(self) -> None:
        """
        A signal goes to the process group, then to the cgroups when there
        are any.
        """
        sent: List[Tuple[str, Any, int]] = []

        class Cgroup:
            def signal(self, signum: int) -> None:
                sent.append(("cgroup", None, signum))

        def signal_group(pgid: int, signum: int) -> bool:
            sent.append(("group", pgid, signum))
            return True

        escalation.group_signaller(77, signal_group, Cgroup())(signal.SIGTERM)
        escalation.group_signaller(78, signal_group)(signal.SIGKILL)
        self.assertEqual(
            sent,
            [("group", 77, signal.SIGTERM), ("cgroup", None, signal.SIGTERM), ("group", 78, signal.SIGKILL)],
        )

    def test_real_group(self) -> None:
        """
        By default it signals a real process group with C{killpg}.
        """
        child = subprocess.Popen(["sleep", "30"], start_new_session=True)
        self.addCleanup(lambda: child.poll() is None and child.kill())
        escalation.group_signaller(child.pid)(signal.SIGKILL)
        self.assertEqual(child.wait(timeout=5), -signal.SIGKILL)


class DirectKillTests(SynchronousTestCase):
    """
    The server's own escalation while no supervisor is connected
    (L{DirectKills}), on a L{Clock}, against a real process
    group that ignores SIGTERM.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.kills = DirectKills(self.clock, 0.25)
        self.child = subprocess.Popen(
            ["/bin/sh", "-c", "trap '' TERM; echo ready; exec sleep 30"],
            start_new_session=True,
            stdout=subprocess.PIPE,
        )
        self.addCleanup(self.reap)
        assert self.child.stdout is not None
        self.assertEqual(self.child.stdout.readline(), b"ready\n")

    def reap(self) -> None:
        """
        Kill and reap the child whatever the test did.
        """
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        assert self.child.stdout is not None
        self.child.stdout.close()

    def test_escalates_on_the_reactor(self) -> None:
        """
        SIGTERM at once (ignored here), again on a repeated kill, and one
        SIGKILL when the grace period has passed on the reactor's clock;
        then nothing is left scheduled.
        """
        self.kills.kill("t", self.child.pid)
        self.kills.kill("t", self.child.pid)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertIsNone(self.child.poll())
        self.clock.advance(0.125)
        self.assertIsNone(self.child.poll())
        self.clock.advance(0.125)
        self.assertEqual(self.child.wait(timeout=5), -signal.SIGKILL)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.kills.timers, {})
