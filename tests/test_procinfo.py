"""
Tests for L{execgo.procinfo}.
"""

from __future__ import annotations

import os
import signal
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from execgo import procinfo


def _peak_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class PeakRSSTests(SynchronousTestCase):
    """
    L{procinfo.reset_peak_rss}.
    """

    def test_reset_forgets_a_spike(self) -> None:
        """
        After a 200 MiB spike is freed, resetting takes the peak down by
        (nearly) all of it.
        """
        if not os.path.exists("/proc/self/clear_refs"):
            raise self.skipTest("no /proc/self/clear_refs")
        spike = bytearray(200 << 20)
        spike[:: 4096] = b"x" * len(spike[:: 4096])
        del spike
        during = _peak_kib()
        self.assertGreater(during, 200 << 10)
        self.assertTrue(procinfo.reset_peak_rss())
        self.assertLess(_peak_kib(), during - (150 << 10))

    def test_without_proc(self) -> None:
        """
        Without the file (another /proc, another OS) it says so.
        """
        self.assertFalse(procinfo.reset_peak_rss(self.mktemp()))


class GroupTests(SynchronousTestCase):
    """
    L{procinfo.group_alive} and L{procinfo.kill_group}.
    """

    def test_group_lifecycle(self) -> None:
        """
        A live group is alive; killed and reaped, it is gone, and killing
        it again is not an error.
        """
        child = subprocess.Popen(["sleep", "30"], start_new_session=True)
        self.assertTrue(procinfo.group_alive(child.pid))
        self.assertTrue(procinfo.kill_group(child.pid, signal.SIGKILL))
        child.wait()
        self.assertFalse(procinfo.group_alive(child.pid))
        self.assertFalse(procinfo.kill_group(child.pid, signal.SIGKILL))
