"""
Tests for L{execgo.host.cgroups}: the per-task cgroup facility against fake
hierarchies in a temporary directory (plain directories and files standing
for cgroupfs), and once against this host's real hierarchies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from typing import Dict

from twisted.trial.unittest import SynchronousTestCase

from execgo.host.cgroups import MEMORY, PIDS, V2, Cgroups, TaskCgroup, own_groups
from execgo.host.probe import detect_cgroup_layout

CGROUP_FS = "/sys/fs/cgroup"
REAL_ROOT = "/sys/fs/cgroup/execgo-runtime"
V1_PIDS = {"pids_max": "cgroup_v1"}
V1_MEMORY = {"memory_bytes": "cgroup_v1"}
V1_BOTH = {**V1_PIDS, **V1_MEMORY}
# pids.events of cgroup v2 with the pids controller: same format as v1.


def write(path: str, text: str = "") -> None:
    """
    Create C{path} (and its parents) holding C{text}.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def read(path: str) -> str:
    """
    A file's text.
    """
    with open(path) as f:
        return f.read()


class FakeTreeMixin:
    """
    A fake hybrid tree: a v2 tree at C{<tmp>/unified}, v1 C{memory} and
    C{pids} hierarchies beside it, task groups under C{execgo-runtime} in
    each, and the test process's own groups (C{home}).
    """

    def tree(self, keys: tuple = (V2, MEMORY, PIDS)) -> Dict[str, Dict[str, str]]:
        """
        Make the hierarchies of C{keys}; return C{{"bases": ..., "home":
        ...}}.  The bases themselves are not made (L{Cgroups} makes them).
        """
        top = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        mounts = {V2: os.path.join(top, "unified"), MEMORY: os.path.join(top, "memory"),
                  PIDS: os.path.join(top, "pids")}  # fmt: skip
        bases, home = {}, {}
        for key in keys:
            write(os.path.join(mounts[key], "cgroup.procs"))
            bases[key] = os.path.join(mounts[key], "execgo-runtime")
            home[key] = os.path.join(mounts[key], "home")
            write(os.path.join(home[key], "cgroup.procs"))
        return {"bases": bases, "home": home}

    def facility(self, keys: tuple = (V2, MEMORY, PIDS), v2_limits: bool = False) -> Cgroups:
        """
        A L{Cgroups} over a fresh fake tree of C{keys}.
        """
        paths = self.tree(keys)
        return Cgroups(paths["bases"], paths["home"], v2_limits)

    def sleeper(self) -> subprocess.Popen:
        """
        A real child process that would sleep for a minute; killed and
        reaped by the test's cleanup if still there.
        """
        child = subprocess.Popen(["sleep", "60"])

        def stop() -> None:
            if child.poll() is None:
                child.kill()
                child.wait()

        self.addCleanup(stop)  # type: ignore[attr-defined]
        return child


class CreateTests(FakeTreeMixin, SynchronousTestCase):
    """
    L{Cgroups.create} makes the task's groups, and only those it needs.
    """

    def test_hybrid_groups(self) -> None:
        """
        On a hybrid tree a task always gets the v2 group (tracking and
        kill), and the v1 memory group when its memory is limited through
        it; the bases are made on first use; without a pids limit no
        C{pids.max} is written.
        """
        cgroups = self.facility()
        group = cgroups.create("t1", V1_MEMORY, None)
        self.assertEqual(
            group.dirs,
            {V2: os.path.join(cgroups.bases[V2], "t1"),
             MEMORY: os.path.join(cgroups.bases[MEMORY], "t1")},
        )  # fmt: skip
        for directory in group.dirs.values():
            self.assertTrue(os.path.isdir(directory), directory)
            self.assertEqual(os.listdir(directory), [])
        self.assertFalse(os.path.exists(os.path.join(cgroups.bases[PIDS], "t1")))

    def test_unlimited_tracked_in_v2_alone(self) -> None:
        """
        A task without memory or pids limits gets its v2 group alone: the
        v1 groups cost every spawn and exit under them and enforce nothing
        for it.
        """
        cgroups = self.facility()
        group = cgroups.create("t1u", {}, None)
        self.assertEqual(group.dirs, {V2: os.path.join(cgroups.bases[V2], "t1u")})
        self.assertFalse(os.path.exists(os.path.join(cgroups.bases[MEMORY], "t1u")))

    def test_memory_group_without_v2(self) -> None:
        """
        Without a v2 tree the v1 memory group tracks the task.
        """
        cgroups = self.facility((MEMORY,))
        self.assertEqual(list(cgroups.create("t1m", {}, None).dirs), [MEMORY])

    def test_v1_pids_limit_one_above(self) -> None:
        """
        With pids limited through v1 the pids group is made too, and its
        C{pids.max} is written one above the request (the supervisor is
        counted while it passes through); nothing goes to the v2 group.
        """
        cgroups = self.facility()
        group = cgroups.create("t2", V1_PIDS, 16)
        self.assertEqual(sorted(group.dirs), sorted([V2, PIDS]))
        self.assertEqual(read(os.path.join(group.dirs[PIDS], "pids.max")), "17")
        self.assertFalse(os.path.exists(os.path.join(group.dirs[V2], "pids.max")))

    def test_v2_pids_limit_one_above(self) -> None:
        """
        On a pure v2 tree the pids limit goes to the v2 group's
        C{pids.max}, one above the request.
        """
        cgroups = self.facility((V2,), v2_limits=True)
        group = cgroups.create("t3", {"pids_max": "cgroup_v2"}, 5)
        self.assertEqual(list(group.dirs), [V2])
        self.assertEqual(read(os.path.join(group.dirs[V2], "pids.max")), "6")

    def test_enables_v2_controllers_once(self) -> None:
        """
        When the v2 tree has the memory and pids controllers, the base's
        C{cgroup.subtree_control} gets them (those the base offers), once
        per facility.
        """
        paths = self.tree((V2,))
        base = paths["bases"][V2]
        write(os.path.join(base, "cgroup.controllers"), "cpu io memory pids\n")
        write(os.path.join(base, "cgroup.subtree_control"), "")
        cgroups = Cgroups(paths["bases"], paths["home"], True)
        cgroups.create("t4", {}, None)
        self.assertEqual(read(os.path.join(base, "cgroup.subtree_control")), "+memory +pids")
        write(os.path.join(base, "cgroup.subtree_control"), "")
        cgroups.create("t5", {}, None)
        self.assertEqual(read(os.path.join(base, "cgroup.subtree_control")), "")

    def test_no_controllers_without_v2_limits(self) -> None:
        """
        Without v2 limits (this host's controller-less v2 tree) the base's
        C{cgroup.subtree_control} is not touched.
        """
        paths = self.tree((V2,))
        base = paths["bases"][V2]
        write(os.path.join(base, "cgroup.controllers"), "memory pids\n")
        Cgroups(paths["bases"], paths["home"], False).create("t6", {}, None)
        self.assertFalse(os.path.exists(os.path.join(base, "cgroup.subtree_control")))

    def test_existing_group_reused(self) -> None:
        """
        A group left over with the same task id is reused, not an error.
        """
        cgroups = self.facility()
        first = cgroups.create("t7", V1_PIDS, 3)
        second = cgroups.create("t7", V1_PIDS, 3)
        self.assertEqual(first.dirs, second.dirs)
        self.assertEqual(read(os.path.join(second.dirs[PIDS], "pids.max")), "4")

    def test_failure_removes_made_groups(self) -> None:
        """
        When a group cannot be made, C{create} raises L{OSError} and
        removes the groups it had already made.
        """
        paths = self.tree((V2, MEMORY))
        memory_mount = os.path.dirname(paths["bases"][MEMORY])
        # A regular file where the memory base would go.
        write(paths["bases"][MEMORY], "not a directory\n")
        cgroups = Cgroups(paths["bases"], paths["home"], False)
        self.assertRaises(OSError, cgroups.create, "t8", V1_MEMORY, None)
        self.assertFalse(os.path.exists(os.path.join(paths["bases"][V2], "t8")))
        self.assertTrue(os.path.isdir(memory_mount))

    def test_failure_writing_pids_limit(self) -> None:
        """
        A C{pids.max} that cannot be written fails the creation with
        L{OSError}.
        """
        cgroups = self.facility()
        os.makedirs(os.path.join(cgroups.bases[PIDS], "t9", "pids.max"))
        self.assertRaises(OSError, cgroups.create, "t9", V1_BOTH, 2)
        self.assertFalse(os.path.exists(os.path.join(cgroups.bases[V2], "t9")))
        self.assertFalse(os.path.exists(os.path.join(cgroups.bases[MEMORY], "t9")))


class PlacementTests(FakeTreeMixin, SynchronousTestCase):
    """
    L{Cgroups.enter} and L{Cgroups.leave} move the calling process into
    the task's groups and back to its own.
    """

    def test_enter_and_leave(self) -> None:
        """
        C{enter} writes this process's pid into every group's
        C{cgroup.procs}; C{leave} writes it into the home group of each
        hierarchy the task has a group in, and no other.
        """
        cgroups = self.facility()
        group = cgroups.create("p1", V1_MEMORY, None)
        cgroups.enter(group)
        for directory in group.dirs.values():
            self.assertEqual(read(os.path.join(directory, "cgroup.procs")), str(os.getpid()))
        cgroups.leave(group)
        for key in (V2, MEMORY):
            self.assertEqual(read(os.path.join(cgroups.home[key], "cgroup.procs")), str(os.getpid()))
        self.assertEqual(read(os.path.join(cgroups.home[PIDS], "cgroup.procs")), "")

    def test_enter_failure(self) -> None:
        """
        C{enter} raises L{OSError} when a group is gone.
        """
        cgroups = self.facility()
        group = TaskCgroup({V2: os.path.join(cgroups.bases[V2], "gone")})
        self.assertRaises(OSError, cgroups.enter, group)

    def test_leave_tolerates_missing_home(self) -> None:
        """
        C{leave} skips hierarchies without a known home group and ignores
        a home it cannot write (the spawn must go on).
        """
        paths = self.tree()
        home = {V2: os.path.join(paths["home"][V2], "missing")}
        cgroups = Cgroups(paths["bases"], home, False)
        group = cgroups.create("p2", {}, None)
        cgroups.leave(group)
        self.assertFalse(os.path.exists(home[V2]))
        self.assertEqual(read(os.path.join(paths["home"][MEMORY], "cgroup.procs")), "")


class LimitTests(FakeTreeMixin, SynchronousTestCase):
    """
    L{Cgroups.limit} writes the final limits where the hierarchy keeps
    them.
    """

    def test_v1_limits(self) -> None:
        """
        On a hybrid tree memory goes to the v1 C{memory.limit_in_bytes}
        and pids to the v1 C{pids.max} (lowered to the request); the v2
        group gets neither.
        """
        cgroups = self.facility()
        group = cgroups.create("l1", V1_BOTH, 16)
        cgroups.limit(group, 64 << 20, 16)
        self.assertEqual(read(os.path.join(group.dirs[MEMORY], "memory.limit_in_bytes")),
                         str(64 << 20))  # fmt: skip
        self.assertEqual(read(os.path.join(group.dirs[PIDS], "pids.max")), "16")
        self.assertEqual(os.listdir(group.dirs[V2]), [])

    def test_v2_limits(self) -> None:
        """
        On a v2 tree with its controllers memory goes to C{memory.max} and
        pids to C{pids.max} of the v2 group.
        """
        cgroups = self.facility((V2,), v2_limits=True)
        group = cgroups.create("l2", {"pids_max": "cgroup_v2"}, 8)
        cgroups.limit(group, 1 << 30, 8)
        self.assertEqual(read(os.path.join(group.dirs[V2], "memory.max")), str(1 << 30))
        self.assertEqual(read(os.path.join(group.dirs[V2], "pids.max")), "8")

    def test_v2_without_controllers(self) -> None:
        """
        A v2 group without the memory and pids controllers gets no limit
        files.
        """
        cgroups = self.facility((V2,), v2_limits=False)
        group = cgroups.create("l3", {}, None)
        cgroups.limit(group, 1 << 30, 8)
        self.assertEqual(os.listdir(group.dirs[V2]), [])

    def test_nothing_requested(self) -> None:
        """
        No limit requested, nothing written.
        """
        cgroups = self.facility()
        group = cgroups.create("l4", V1_PIDS, None)
        cgroups.limit(group, None, None)
        for directory in group.dirs.values():
            self.assertEqual(os.listdir(directory), [])

    def test_refused_limit(self) -> None:
        """
        A limit the kernel refuses raises L{OSError} (the supervisor then
        fails the task C{sandbox_setup_failed}).
        """
        cgroups = self.facility()
        group = cgroups.create("l5", V1_MEMORY, None)
        os.mkdir(os.path.join(group.dirs[MEMORY], "memory.limit_in_bytes"))
        self.assertRaises(OSError, cgroups.limit, group, 1 << 20, None)


class CounterTests(SynchronousTestCase):
    """
    L{TaskCgroup}'s verdict counters, read from the kernel's flat-keyed
    files.
    """

    def group(self, files: Dict[str, Dict[str, str]]) -> TaskCgroup:
        """
        A task group whose hierarchy key maps to a directory holding
        C{files} (name to content).
        """
        top = self.mktemp()
        dirs = {}
        for key, contents in files.items():
            dirs[key] = os.path.join(top, key)
            os.makedirs(dirs[key])
            for name, text in contents.items():
                write(os.path.join(dirs[key], name), text)
        return TaskCgroup(dirs)

    def test_oom_killed_v1(self) -> None:
        """
        The v1 C{memory.oom_control} says an OOM kill happened when its
        C{oom_kill} counter is above zero.
        """
        control = "oom_kill_disable 0\nunder_oom 0\noom_kill {}\n"
        self.assertTrue(self.group({MEMORY: {"memory.oom_control": control.format(2)}}).oom_killed())
        self.assertFalse(self.group({MEMORY: {"memory.oom_control": control.format(0)}}).oom_killed())

    def test_oom_killed_v2(self) -> None:
        """
        The v2 C{memory.events} says so through its C{oom_kill} counter;
        C{oom} alone (the limit was hit, nothing killed) is not a kill.
        """
        events = "low 0\nhigh 0\nmax 9\noom {}\noom_kill {}\noom_group_kill 0\n"
        self.assertTrue(self.group({V2: {"memory.events": events.format(1, 1)}}).oom_killed())
        self.assertFalse(self.group({V2: {"memory.events": events.format(3, 0)}}).oom_killed())

    def test_oom_killed_either(self) -> None:
        """
        A kill recorded in either hierarchy counts.
        """
        group = self.group(
            {MEMORY: {"memory.oom_control": "oom_kill 0\n"}, V2: {"memory.events": "oom_kill 1\n"}}
        )
        self.assertTrue(group.oom_killed())

    def test_oom_unreadable(self) -> None:
        """
        No counter file, or garbage in it, is no OOM kill.
        """
        self.assertFalse(self.group({MEMORY: {}, V2: {}}).oom_killed())
        self.assertFalse(self.group({MEMORY: {"memory.oom_control": "oom_kill x\noom_kill\n"}}).oom_killed())
        self.assertFalse(TaskCgroup({}).oom_killed())

    def test_memory_peak(self) -> None:
        """
        The peak comes from v1 C{memory.max_usage_in_bytes} first, else v2
        C{memory.peak}; unreadable or non-numeric values give C{None}.
        """
        both = self.group({MEMORY: {"memory.max_usage_in_bytes": "1000\n"},
                           V2: {"memory.peak": "2000\n"}})  # fmt: skip
        self.assertEqual(both.memory_peak(), 1000)
        garbled = self.group({MEMORY: {"memory.max_usage_in_bytes": "max\n"},
                              V2: {"memory.peak": "2000\n"}})  # fmt: skip
        self.assertEqual(garbled.memory_peak(), 2000)
        self.assertEqual(self.group({V2: {"memory.peak": "3\n"}}).memory_peak(), 3)
        self.assertIsNone(self.group({MEMORY: {}, V2: {}}).memory_peak())
        self.assertIsNone(TaskCgroup({}).memory_peak())

    def test_pids_limit_hits_v1(self) -> None:
        """
        Refused forks are the C{max} counter of the v1 C{pids.events}; a
        missing file means none.
        """
        self.assertEqual(self.group({PIDS: {"pids.events": "max 7\n"}}).pids_limit_hits(), 7)
        self.assertEqual(self.group({PIDS: {"pids.events": "max 0\n"}}).pids_limit_hits(), 0)
        self.assertEqual(self.group({PIDS: {}}).pids_limit_hits(), 0)
        self.assertEqual(TaskCgroup({}).pids_limit_hits(), 0)

    def test_pids_limit_hits_v2(self) -> None:
        """
        Where pids are limited through the v2 group, refused forks are the
        C{max} counter of its C{pids.events}.
        """
        group = self.group({V2: {"pids.events": "max 4\n", "pids.max": "8\n"}})
        self.assertEqual(group.pids_limit_hits(), 4)


    def test_populated_from_events(self) -> None:
        """
        The v2 C{cgroup.events} decides, whatever C{cgroup.procs} says
        (it is the kernel's own answer, zombies and threads included).
        """
        busy = self.group({V2: {"cgroup.events": "populated 1\nfrozen 0\n"}})
        self.assertTrue(busy.populated())
        idle = self.group({V2: {"cgroup.events": "populated 0\nfrozen 0\n", "cgroup.procs": "42\n"},
                           PIDS: {"cgroup.procs": "42\n"}})  # fmt: skip
        self.assertFalse(idle.populated())

    def test_populated_from_procs(self) -> None:
        """
        Without a readable C{cgroup.events}, any pid in any group's
        C{cgroup.procs} means populated.
        """
        self.assertTrue(self.group({PIDS: {"cgroup.procs": "42\n"}}).populated())
        self.assertTrue(self.group({V2: {"cgroup.procs": "7\n"}, MEMORY: {}}).populated())
        self.assertFalse(self.group({PIDS: {"cgroup.procs": ""}, MEMORY: {}}).populated())
        self.assertFalse(TaskCgroup({}).populated())

    def test_pids(self) -> None:
        """
        C{pids} is the sorted union of every group's C{cgroup.procs},
        ignoring anything that is not a pid.
        """
        group = self.group({V2: {"cgroup.procs": "30\n10\n"},
                            MEMORY: {"cgroup.procs": "10\n20\nx\n"}, PIDS: {}})  # fmt: skip
        self.assertEqual(group.pids(), [10, 20, 30])


class SignalAndRemoveTests(FakeTreeMixin, SynchronousTestCase):
    """
    Signalling every process of a task's groups, removing the groups, and
    finding and discarding what a task left behind.
    """

    def test_signal_listed_processes(self) -> None:
        """
        C{signal} sends the signal to every pid in the groups' C{cgroup.procs}.
        """
        child = self.sleeper()
        cgroups = self.facility()
        group = cgroups.create("s1", V1_MEMORY, None)
        write(os.path.join(group.dirs[MEMORY], "cgroup.procs"), f"{child.pid}\n")
        group.signal(signal.SIGTERM)
        self.assertEqual(child.wait(), -signal.SIGTERM)
        # A pid that is gone is not an error.
        group.signal(signal.SIGTERM)

    def test_sigkill_uses_cgroup_kill(self) -> None:
        """
        C{SIGKILL} also writes C{1} to v2's C{cgroup.kill} where the group
        has one, and never creates that file where it has not.
        """
        cgroups = self.facility()
        with_kill = cgroups.create("s2", {}, None)
        write(os.path.join(with_kill.dirs[V2], "cgroup.kill"))
        with_kill.signal(signal.SIGKILL)
        self.assertEqual(read(os.path.join(with_kill.dirs[V2], "cgroup.kill")), "1")
        without = cgroups.create("s3", {}, None)
        without.signal(signal.SIGKILL)
        self.assertFalse(os.path.exists(os.path.join(without.dirs[V2], "cgroup.kill")))
        with_kill.signal(signal.SIGTERM)
        self.assertEqual(read(os.path.join(with_kill.dirs[V2], "cgroup.kill")), "1")

    def test_remove(self) -> None:
        """
        C{remove} removes the (empty) groups; a group that cannot be
        removed (still busy, here: not empty) or is already gone is left
        silently.
        """
        cgroups = self.facility()
        group = cgroups.create("s4", V1_BOTH, 3)
        group.remove()
        self.assertFalse(os.path.exists(group.dirs[V2]))
        self.assertFalse(os.path.exists(group.dirs[MEMORY]))
        self.assertTrue(os.path.exists(os.path.join(group.dirs[PIDS], "pids.max")))
        group.remove()

    def test_existing(self) -> None:
        """
        C{existing} finds the groups a task still has in each hierarchy,
        and none for a task that has none.
        """
        cgroups = self.facility()
        made = cgroups.create("s5", V1_BOTH, None)
        self.assertEqual(cgroups.existing("s5").dirs, made.dirs)
        os.rmdir(made.dirs[MEMORY])
        self.assertEqual(sorted(cgroups.existing("s5").dirs), sorted([V2, PIDS]))
        self.assertEqual(cgroups.existing("nothing").dirs, {})

    def test_discard_removes_groups(self) -> None:
        """
        C{discard} removes the empty groups a task left behind; for a task
        with none it does nothing.
        """
        cgroups = self.facility()
        cgroups.create("s6", V1_BOTH, None)
        cgroups.discard("s6")
        self.assertEqual(cgroups.existing("s6").dirs, {})
        cgroups.discard("never-made")

    def test_discard_kills_leftovers(self) -> None:
        """
        C{discard} SIGKILLs the processes still listed in the groups (and
        gives up waiting at its deadline).
        """
        child = self.sleeper()
        cgroups = self.facility()
        group = cgroups.create("s7", {}, None)
        write(os.path.join(group.dirs[V2], "cgroup.procs"), f"{child.pid}\n")
        write(os.path.join(group.dirs[V2], "cgroup.kill"))
        cgroups.discard("s7", timeout_s=0)
        self.assertEqual(child.wait(), -signal.SIGKILL)
        self.assertEqual(read(os.path.join(group.dirs[V2], "cgroup.kill")), "1")


class OwnGroupsTests(SynchronousTestCase):
    """
    L{own_groups} maps C{/proc/self/cgroup} to this process's group
    directories.
    """

    def test_hybrid(self) -> None:
        """
        Each v1 line maps each of its controllers that has a mount; the
        unified C{0::} line maps to C{"v2"}; named and unmounted
        hierarchies and malformed lines are skipped.
        """
        text = (
            "12:pids:/user.slice\n"
            "4:memory:/process_api/abc\n"
            "3:cpu,cpuacct:/\n"
            "9:name=systemd:/init.scope\n"
            "7:blkio:/x\n"
            "garbage\n"
            "0::/task/inner\n"
        )
        mounts = {"pids": "/fs/pids", "memory": "/fs/memory", "cpuacct": "/fs/cpuacct",
                  V2: "/fs/unified"}  # fmt: skip
        groups = own_groups(text, mounts)
        self.assertEqual(
            {key: os.path.normpath(path) for key, path in groups.items()},
            {
                "pids": "/fs/pids/user.slice",
                "memory": "/fs/memory/process_api/abc",
                "cpuacct": "/fs/cpuacct",
                V2: "/fs/unified/task/inner",
            },
        )

    def test_pure_v2(self) -> None:
        """
        On a pure v2 host the single line gives the v2 group; with no
        mounts nothing is mapped.
        """
        self.assertEqual(own_groups("0::/a/b\n", {V2: "/sys/fs/cgroup"}),
                         {V2: "/sys/fs/cgroup/a/b"})  # fmt: skip
        self.assertEqual(own_groups("0::/a/b\n", {}), {})
        self.assertEqual(own_groups("", {V2: "/sys/fs/cgroup"}), {})


class RealHostTests(SynchronousTestCase):
    """
    The facility on this host's real hierarchies (root and a hybrid layout
    only): a group is made, entered and left by this very process, limited
    and removed.
    """

    def own_cgroup(self) -> str:
        """
        This process's C{/proc/self/cgroup}.
        """
        return read("/proc/self/cgroup")

    def test_create_enter_leave_remove(self) -> None:
        """
        C{detect} finds the v2 tree and the v1 memory and pids hierarchies;
        a task's groups are made with C{pids.max} one above the request;
        this process enters them (C{/proc/self/cgroup} shows the task in
        every hierarchy) and leaves them (its groups are as before); the
        final limits are written; the empty groups are removed.
        """
        if os.geteuid() != 0:
            raise self.skipTest("needs root to make cgroups")
        layout = detect_cgroup_layout()
        if layout.v2_mount is None or not {"memory", "pids"} <= set(layout.v1_mounts):
            raise self.skipTest("not a hybrid cgroup host (v2 tree plus v1 memory and pids)")
        cgroups = Cgroups.detect(REAL_ROOT)
        self.assertEqual(sorted(cgroups.bases), sorted([V2, MEMORY, PIDS]))
        self.assertEqual(sorted(set(cgroups.home) & {V2, MEMORY, PIDS}), sorted([V2, MEMORY, PIDS]))
        task_id = f"cgtest-{uuid.uuid4().hex[:12]}"
        before = self.own_cgroup()
        group = cgroups.create(task_id, V1_BOTH, 1000)
        self.addCleanup(self.restore, cgroups, group)
        self.assertEqual(sorted(group.dirs), sorted([V2, MEMORY, PIDS]))
        self.assertEqual(read(os.path.join(group.dirs[PIDS], "pids.max")).strip(), "1001")
        cgroups.enter(group)
        try:
            inside = self.own_cgroup()
            self.assertIn(os.getpid(), group.pids())
            self.assertTrue(group.populated())
        finally:
            cgroups.leave(group)
        lines = [line for line in inside.splitlines() if line.endswith(f"/{task_id}")]
        controllers = {line.split(":")[1] for line in lines}
        self.assertTrue({"", "memory", "pids"} <= controllers, inside)
        self.assertEqual(self.own_cgroup(), before)
        self.assertEqual(group.pids(), [])
        self.assertFalse(group.populated())
        cgroups.limit(group, 64 << 20, 1000)
        self.assertEqual(
            int(read(os.path.join(group.dirs[MEMORY], "memory.limit_in_bytes"))), 64 << 20
        )
        self.assertEqual(read(os.path.join(group.dirs[PIDS], "pids.max")).strip(), "1000")
        self.assertFalse(group.oom_killed())
        self.assertEqual(group.pids_limit_hits(), 0)
        self.assertIsInstance(group.memory_peak(), int)
        group.remove()
        for directory in group.dirs.values():
            self.assertFalse(os.path.exists(directory), directory)

    def restore(self, cgroups: Cgroups, group: TaskCgroup) -> None:
        """
        Whatever happened, put this process back in its groups and remove
        the task's.
        """
        cgroups.leave(group)
        group.remove()
