"""
Tests for L{execgo.core.outcome}: the verdict table of a reaped workload, row
by row, and the outcomes of tasks that never ran.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import outcome
from execgo.core.results import ErrorInfo, Usage

USAGE = Usage(duration_ms=42, user_cpu_ms=10, system_cpu_ms=5, max_rss_bytes=4096)


def exited(code: int) -> int:
    """
    The wait status of a normal exit with C{code}.
    """
    return code << 8


def killed(signum: int) -> int:
    """
    The wait status of a termination by C{signum} (no core dump).
    """
    return int(signum)


def classify(status: int, **kwargs: Any) -> Any:
    """
    Classify a wait status with the default usage.
    """
    kwargs.setdefault("usage", USAGE)
    return outcome.classify(outcome.Exit(status=status, **kwargs))


class WaitStatusTests(SynchronousTestCase):
    """
    L{outcome.Exit} decodes the raw wait status.
    """

    def test_helpers_match_os(self) -> None:
        """
        The test's status builders agree with C{os.waitstatus_to_exitcode}.
        """
        self.assertEqual(os.waitstatus_to_exitcode(exited(3)), 3)
        self.assertEqual(os.waitstatus_to_exitcode(killed(signal.SIGTERM)), -signal.SIGTERM)

    def test_exit(self) -> None:
        """
        A normal exit has a code and no signal.
        """
        exit = outcome.Exit(status=exited(7), usage=USAGE)
        self.assertEqual((exit.exit_code, exit.exit_signal), (7, None))

    def test_signal(self) -> None:
        """
        A signal death has a signal and no code, also with a core dump bit.
        """
        exit = outcome.Exit(status=killed(signal.SIGSEGV) | 0x80, usage=USAGE)
        self.assertEqual((exit.exit_code, exit.exit_signal), (None, signal.SIGSEGV))


class ClassifyTests(SynchronousTestCase):
    """
    Every row of the table and its precedence.
    """

    def assertVerdict(self, verdict: Any, status: str, code: Any, message: Any = None) -> None:
        """
        The verdict has this status and error (C{code=None}: no error).
        """
        self.assertEqual(verdict.status, status)
        if code is None:
            self.assertIsNone(verdict.error)
        else:
            self.assertEqual(verdict.error, ErrorInfo(code, message))

    def test_success(self) -> None:
        """
        Row 5: exit 0 is C{success} with no error; exit info and usage kept.
        """
        verdict = classify(exited(0))
        self.assertVerdict(verdict, "success", None)
        self.assertEqual((verdict.exit_code, verdict.exit_signal), (0, None))
        self.assertEqual(verdict.usage, USAGE)
        self.assertEqual(verdict.duration_ms, 42)

    def test_exit_nonzero(self) -> None:
        """
        Row 6: a non-zero exit is C{exit_nonzero} naming the code.
        """
        verdict = classify(exited(3))
        self.assertVerdict(verdict, "failed", "exit_nonzero", "task exited with code 3")
        self.assertEqual(verdict.exit_code, 3)
        self.assertVerdict(
            classify(exited(255)), "failed", "exit_nonzero", "task exited with code 255"
        )

    def test_signal(self) -> None:
        """
        Row 7: death by a signal is C{internal}, naming the raw number.
        """
        verdict = classify(killed(signal.SIGTERM))
        self.assertVerdict(verdict, "failed", "internal", "task terminated by signal 15")
        self.assertEqual((verdict.exit_code, verdict.exit_signal), (None, 15))

    def test_unknown(self) -> None:
        """
        Row 8: a status that is neither exit nor signal (stopped) is the
        unknown outcome.
        """
        stopped = (signal.SIGSTOP << 8) | 0x7F
        verdict = classify(stopped)
        self.assertVerdict(verdict, "failed", "internal", "task failed with unknown outcome")
        self.assertEqual((verdict.exit_code, verdict.exit_signal), (None, None))

    def test_timeout(self) -> None:
        """
        Row 1: a timeout is C{failed/timeout} whatever the exit status,
        exit 0 included; exit info is still recorded.
        """
        for status in (exited(0), exited(1), killed(signal.SIGKILL), killed(signal.SIGXCPU)):
            verdict = classify(status, timed_out=True, oom_killed=True, cpu_time_sec=0)
            self.assertVerdict(verdict, "failed", "timeout", "task exceeded wall_time_ms")
        self.assertEqual(classify(exited(0), timed_out=True).exit_code, 0)

    def test_timeout_beats_cancel(self) -> None:
        """
        Timeout wins over cancellation.
        """
        self.assertVerdict(
            classify(killed(signal.SIGTERM), timed_out=True, cancelled=True),
            "failed",
            "timeout",
            "task exceeded wall_time_ms",
        )

    def test_cancelled(self) -> None:
        """
        Row 2: a kill request makes it C{cancelled}, even after exit 0, and
        beats OOM and CPU limits.
        """
        for status in (exited(0), exited(2), killed(signal.SIGTERM), killed(signal.SIGXCPU)):
            verdict = classify(status, cancelled=True, oom_killed=True)
            self.assertVerdict(verdict, "cancelled", "cancelled", "task cancelled")
            self.assertEqual(verdict.usage, USAGE)

    def test_oom(self) -> None:
        """
        Row 3: an OOM kill recorded by the cgroup is C{memory_limit_exceeded},
        before the CPU and exit rows.
        """
        for status in (killed(signal.SIGKILL), exited(0), killed(signal.SIGXCPU)):
            self.assertVerdict(
                classify(status, oom_killed=True, cpu_time_sec=0),
                "failed",
                "memory_limit_exceeded",
                "task exceeded memory limit",
            )

    def test_sigxcpu(self) -> None:
        """
        Row 4: SIGXCPU is C{cpu_limit_exceeded}, with or without a known
        limit.
        """
        verdict = classify(killed(signal.SIGXCPU))
        self.assertVerdict(verdict, "failed", "cpu_limit_exceeded", "task exceeded cpu_time_sec")
        self.assertEqual(verdict.exit_signal, signal.SIGXCPU)
        self.assertVerdict(
            classify(killed(signal.SIGXCPU), cpu_time_sec=5),
            "failed", "cpu_limit_exceeded", "task exceeded cpu_time_sec",
        )

    def test_sigkill_at_cpu_limit(self) -> None:
        """
        SIGKILL with CPU usage at or above the limit is the hard limit
        (the hard C{RLIMIT_CPU}, a second above the soft one):
        C{cpu_limit_exceeded}.
        """
        at_limit = Usage(duration_ms=3000, user_cpu_ms=1500, system_cpu_ms=500)
        self.assertVerdict(
            classify(killed(signal.SIGKILL), usage=at_limit, cpu_time_sec=2),
            "failed", "cpu_limit_exceeded", "task exceeded cpu_time_sec",
        )
        above = Usage(duration_ms=3000, user_cpu_ms=2999)
        self.assertVerdict(
            classify(killed(signal.SIGKILL), usage=above, cpu_time_sec=2),
            "failed", "cpu_limit_exceeded", "task exceeded cpu_time_sec",
        )

    def test_sigkill_below_cpu_limit(self) -> None:
        """
        SIGKILL with usage under the limit, or without a CPU limit, is a
        plain signal death.
        """
        below = Usage(duration_ms=3000, user_cpu_ms=1999)
        self.assertVerdict(
            classify(killed(signal.SIGKILL), usage=below, cpu_time_sec=2),
            "failed", "internal", "task terminated by signal 9",
        )
        self.assertVerdict(
            classify(killed(signal.SIGKILL), usage=Usage(duration_ms=1, user_cpu_ms=10**9)),
            "failed", "internal", "task terminated by signal 9",
        )

    def test_other_signal_at_cpu_limit(self) -> None:
        """
        Only SIGKILL (and SIGXCPU) count as the CPU limit: SIGTERM with high
        usage is a signal death.
        """
        high = Usage(duration_ms=3000, user_cpu_ms=9000)
        self.assertVerdict(
            classify(killed(signal.SIGTERM), usage=high, cpu_time_sec=2),
            "failed", "internal", "task terminated by signal 15",
        )
        self.assertVerdict(
            classify(exited(0), usage=high, cpu_time_sec=2), "success", None
        )


class FixedOutcomeTests(SynchronousTestCase):
    """
    L{outcome.failed} and L{outcome.cancelled}.
    """

    def test_failed(self) -> None:
        """
        A failure with no exit information and duration 0.
        """
        verdict = outcome.failed("launch_failed", "spawn process: nope")
        self.assertEqual(verdict.status, "failed")
        self.assertEqual(verdict.error, ErrorInfo("launch_failed", "spawn process: nope"))
        self.assertEqual(verdict.duration_ms, 0)
        self.assertEqual((verdict.exit_code, verdict.exit_signal, verdict.usage), (None, None, None))

    def test_cancelled(self) -> None:
        """
        A cancellation of a task that never ran, duration 0.
        """
        verdict = outcome.cancelled("task cancelled before execution")
        self.assertEqual(verdict.status, "cancelled")
        self.assertEqual(verdict.error, ErrorInfo("cancelled", "task cancelled before execution"))
        self.assertEqual(verdict.duration_ms, 0)
        self.assertIsNone(verdict.usage)
