"""
Tests for L{execgo.host.procinfo}.
"""

from __future__ import annotations

import os
import signal
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from execgo.host import procinfo


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


class SupervisorPidsTests(SynchronousTestCase):
    """
    L{procinfo.supervisor_pids} over a fake C{/proc}.
    """

    def process(self, proc: str, pid: int, ppid: int, state: str, *argv: str) -> None:
        os.makedirs(os.path.join(proc, str(pid)))
        with open(os.path.join(proc, str(pid), "stat"), "w") as stat:
            stat.write(f"{pid} (python3) {state} {ppid} {pid} {pid} 0\n")
        with open(os.path.join(proc, str(pid), "cmdline"), "wb") as cmdline:
            cmdline.write(b"\0".join(arg.encode() for arg in argv) + b"\0")

    def test_finds_supervisors_of_the_directory(self) -> None:
        """
        Live supervisors and shims naming the directory (or a file in it)
        are found; a vfork child sharing its parent's command line, a
        zombie, another directory's supervisor (even one whose path starts
        the same) and a plain process naming the directory are not.
        """
        proc = self.mktemp()
        data = "/srv/data"
        execgo = ("python3", "-m", "execgo")
        self.process(proc, 10, 1, "S", *execgo, "internal-supervisor", "--database", f"{data}/runtime.db")
        self.process(proc, 11, 10, "R", *execgo, "internal-supervisor", "--database", f"{data}/runtime.db")
        self.process(proc, 12, 1, "S", *execgo, "internal-shim", "--data-dir", data)
        self.process(proc, 13, 1, "Z", *execgo, "internal-supervisor", "--data-dir", data)
        self.process(proc, 14, 1, "S", *execgo, "internal-supervisor", "--data-dir", "/srv/data2")
        self.process(proc, 15, 1, "S", "sleep", f"{data}/x")
        os.makedirs(os.path.join(proc, "self"))
        self.assertEqual(sorted(procinfo.supervisor_pids(data, proc)), [10, 12])


class WorkloadPidsTests(SynchronousTestCase):
    """
    L{procinfo.workload_pids} over the real C{/proc}.
    """

    def sleeper(self, cwd: str) -> "subprocess.Popen[bytes]":
        process = subprocess.Popen(["sleep", "30"], cwd=cwd)
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        return process

    def test_workload_pids(self) -> None:
        """
        A live process working inside the directory is found, once it is
        reaped it is not, and a process working elsewhere never is.
        """
        inside = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(inside, "workspace"))
        worker = self.sleeper(os.path.join(inside, "workspace"))
        self.sleeper("/")
        self.assertEqual(procinfo.workload_pids(inside), [worker.pid])
        worker.kill()
        worker.wait()
        self.assertEqual(procinfo.workload_pids(inside), [])

