"""
Tests for L{execgo.core.capabilities}: the host probe against fake trees (and once
against this host), and the pure snapshot and its JSON rendering.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core.capabilities import (
    Capabilities,
    build_capabilities,
    normalise_arch,
    normalise_os,
)
from execgo.core.reservation import Reservation
from execgo.host.probe import (
    CgroupFacility,
    CgroupLayout,
    HostFacts,
    cgroup_bases,
    probe_host,
    probe_namespaces,
)

ROOT = "/sys/fs/cgroup/execgo-runtime"
ALL_NS = {"mount": True, "pid": True, "uts": True, "ipc": True, "net": True}
# What the kernel puts in a new group, per v2 controller and per v1 hierarchy.
V2_FILES = {"memory": ("memory.max", "memory.events", "memory.peak"), "pids": ("pids.max",),
            "cpu": ("cpu.max",)}
V1_FILES = {"memory": ("memory.limit_in_bytes", "memory.oom_control"),
            "pids": ("pids.max", "pids.current"), "cpuacct": ("cpuacct.usage",)}


def write(path: str, text: str = "") -> None:
    """
    Create C{path} (and its parents) holding C{text}.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class FakeCgroupFS:
    """
    C{mkdir}/C{rmdir} for a fake tree that populate and remove groups the
    way cgroupfs does: a v2 group gets the core files plus those of the
    controllers enabled in its parent's C{cgroup.subtree_control}; a v1
    group gets its hierarchy's files.

    @ivar made: every directory made, in order.
    @ivar removed: every directory removed, in order.
    """

    def __init__(self, fs_root: str, refuse: Iterable[str] = (), kill: bool = True) -> None:
        self.top = os.path.join(fs_root, "sys/fs/cgroup")
        self.refuse = [os.path.join(fs_root, p.lstrip("/")) for p in refuse]
        self.kill = kill
        self.made: List[str] = []
        self.removed: List[str] = []

    def mkdir(self, path: str) -> None:
        """
        Make a group, or fail with C{EACCES} under a refused path.
        """
        if any(path == p or path.startswith(p + "/") for p in self.refuse):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        os.mkdir(path)
        self.made.append(path)
        parent = os.path.dirname(path)
        if os.path.exists(os.path.join(parent, "cgroup.controllers")):
            with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                enabled = [name.lstrip("+") for name in f.read().split()]
            names = ["cgroup.procs", "cgroup.events", "cpu.stat", "cgroup.subtree_control"]
            if self.kill:
                names.append("cgroup.kill")
            for controller in enabled:
                names.extend(V2_FILES.get(controller, ()))
            write(os.path.join(path, "cgroup.controllers"), " ".join(enabled))
        else:
            hierarchy = os.path.relpath(path, self.top).split(os.sep)[0]
            names = ["cgroup.procs", *V1_FILES.get(hierarchy, ())]
        for name in names:
            write(os.path.join(path, name))

    def rmdir(self, path: str) -> None:
        """
        Remove a group with no child groups.
        """
        if any(entry.is_dir() for entry in os.scandir(path)):
            raise OSError(errno.ENOTEMPTY, "Directory not empty", path)
        shutil.rmtree(path)
        self.removed.append(path)


class RecordingTrial:
    """
    A namespace trial that records its calls and reports every namespace.
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Mapping[str, bool]:
        self.calls += 1
        return ALL_NS


def forbidden(path: str) -> None:
    """
    A C{mkdir}/C{rmdir} that must not be called.
    """
    raise AssertionError(f"cgroup filesystem touched: {path}")


class ProbeTestsMixin:
    """
    Fake-tree builders shared by the probe tests.
    """

    def fs_root(self) -> str:
        """
        A fresh empty fake root with the C{/proc} files every host has.
        """
        root = self.mktemp()  # type: ignore[attr-defined]
        write(os.path.join(root, "proc/sys/kernel/pid_max"), "32768\n")
        write(os.path.join(root, "proc/1/cgroup"), "0::/\n")
        write(os.path.join(root, "proc/self/cgroup"), "0::/\n")
        os.makedirs(os.path.join(root, "data"))
        return root

    def v2_tree(self, root: str, subtree: str = "cpu memory pids") -> None:
        """
        A unified (pure v2) layout whose root enables C{subtree}.
        """
        top = os.path.join(root, "sys/fs/cgroup")
        write(os.path.join(top, "cgroup.controllers"), "cpuset cpu io memory hugetlb pids\n")
        write(os.path.join(top, "cgroup.subtree_control"), subtree + "\n")
        write(os.path.join(top, "cgroup.procs"))

    def hybrid_tree(self, root: str) -> None:
        """
        A hybrid layout like this project's hosts: v1 memory, pids, cpu,
        cpuacct, freezer, and a v2 tree at C{unified} without controllers.
        """
        top = os.path.join(root, "sys/fs/cgroup")
        for hierarchy in ("memory", "pids", "cpu", "cpuacct", "freezer"):
            write(os.path.join(top, hierarchy, "cgroup.procs"))
        write(os.path.join(top, "memory/memory.limit_in_bytes"), "9223372036854771712\n")
        write(os.path.join(top, "cpuacct/cpuacct.usage"), "1\n")
        write(os.path.join(top, "unified/cgroup.controllers"), "hugetlb\n")
        write(os.path.join(top, "unified/cgroup.subtree_control"), "\n")
        write(os.path.join(top, "unified/cgroup.procs"))

    def probe(self, root: str, fake: Optional[FakeCgroupFS] = None, **kwargs) -> HostFacts:
        """
        Probe the fake tree with every namespace working.
        """
        fake = fake or FakeCgroupFS(root)
        options: Dict[str, Any] = dict(
            fs_root=root, try_namespaces=lambda: ALL_NS, mkdir=fake.mkdir,
            rmdir=fake.rmdir, environ={},
        )
        options.update(kwargs)
        return probe_host(os.path.join(root, "data"), ROOT, False, False, **options)


class CgroupProbeTests(ProbeTestsMixin, SynchronousTestCase):
    """
    L{probe_host}'s cgroup detection against fake trees.
    """

    def test_v2_full(self) -> None:
        """
        On a v2 host with memory and pids every capability is v2, under the
        configured root, which the probe creates and removes again after
        enabling the controllers in it.
        """
        root = self.fs_root()
        self.v2_tree(root)
        fake = FakeCgroupFS(root)
        facts = self.probe(root, fake)
        base = os.path.join(root, "sys/fs/cgroup/execgo-runtime")
        self.assertEqual(dict(facts.cgroup), {
            key: CgroupFacility("cgroup_v2", base, True)
            for key in ("memory", "pids", "cpu_accounting", "kill")
        })
        self.assertEqual(fake.made, [base, os.path.join(base, f".probe-{os.getpid()}")])
        self.assertEqual(fake.removed, list(reversed(fake.made)))
        self.assertFalse(os.path.exists(base))
        self.assertEqual(
            facts.cgroup_layout.v2_controllers,
            ("cpuset", "cpu", "io", "memory", "hugetlb", "pids"),
        )
        self.assertTrue(facts.cgroup_layout.v2_is_top)

    def test_v2_existing_base_kept(self) -> None:
        """
        A base that already exists is left in place, with memory and pids
        now enabled for its children.
        """
        root = self.fs_root()
        self.v2_tree(root)
        fake = FakeCgroupFS(root)
        base = os.path.join(root, "sys/fs/cgroup/execgo-runtime")
        fake.mkdir(base)
        facts = self.probe(root, fake)
        self.assertTrue(facts.cgroup["memory"].writable)
        self.assertTrue(os.path.isdir(base))
        with open(os.path.join(base, "cgroup.subtree_control")) as f:
            self.assertEqual(f.read(), "+memory +pids")

    def test_v2_without_controllers(self) -> None:
        """
        A v2 tree whose root does not hand memory and pids down (e.g. a
        container's) offers only tracking and kill; memory and pids are
        recorded as not writable.
        """
        root = self.fs_root()
        self.v2_tree(root, subtree="")
        facts = self.probe(root)
        self.assertEqual(facts.cgroup["kill"].mechanism, "cgroup_v2")
        self.assertTrue(facts.cgroup["kill"].writable)
        self.assertFalse(facts.cgroup["memory"].writable)
        self.assertFalse(facts.cgroup["pids"].writable)
        caps = build(facts)
        self.assertIsNone(caps.memory_mechanism)
        self.assertFalse(caps.cgroup_writable)
        self.assertTrue(caps.cgroup_v2)
        self.assertIn(
            "cgroup v2 detected but cgroup root is not writable: " + ROOT, caps.warnings
        )

    def test_v2_without_kill(self) -> None:
        """
        Kernels without C{cgroup.kill} report no kill mechanism.
        """
        root = self.fs_root()
        self.v2_tree(root)
        facts = self.probe(root, FakeCgroupFS(root, kill=False))
        self.assertFalse(facts.cgroup["kill"].writable)
        self.assertIsNone(build(facts).kill_mechanism)
        self.assertEqual(build(facts).memory_mechanism, "cgroup_v2")

    def test_hybrid(self) -> None:
        """
        On a hybrid host memory and pids come from v1 hierarchies and kill
        and CPU accounting from the unified tree; each base is named after
        the configured root and removed after probing.
        """
        root = self.fs_root()
        self.hybrid_tree(root)
        fake = FakeCgroupFS(root)
        facts = self.probe(root, fake)
        top = os.path.join(root, "sys/fs/cgroup")
        self.assertEqual(dict(facts.cgroup), {
            "memory": CgroupFacility("cgroup_v1", f"{top}/memory/execgo-runtime", True),
            "pids": CgroupFacility("cgroup_v1", f"{top}/pids/execgo-runtime", True),
            "cpu_accounting": CgroupFacility("cgroup_v2", f"{top}/unified/execgo-runtime", True),
            "kill": CgroupFacility("cgroup_v2", f"{top}/unified/execgo-runtime", True),
        })
        self.assertEqual(sorted(fake.made), sorted(fake.removed))
        self.assertEqual(len(fake.made), 6)
        self.assertEqual(
            sorted(os.listdir(os.path.join(top, "memory"))),
            ["cgroup.procs", "memory.limit_in_bytes"],
        )
        caps = build(facts)
        self.assertFalse(caps.cgroup_v2)
        self.assertEqual(caps.cgroup_mechanisms, {
            "memory": "cgroup_v1", "pids": "cgroup_v1",
            "cpu_accounting": "cgroup_v2", "kill": "cgroup_v2",
        })
        self.assertEqual(caps.cgroup_bases["pids"], f"{top}/pids/execgo-runtime")

    def test_pure_v1(self) -> None:
        """
        Without any v2 tree, CPU accounting falls back to v1 cpuacct and
        there is no kill mechanism.
        """
        root = self.fs_root()
        self.hybrid_tree(root)
        shutil.rmtree(os.path.join(root, "sys/fs/cgroup/unified"))
        facts = self.probe(root)
        self.assertEqual(facts.cgroup["cpu_accounting"].mechanism, "cgroup_v1")
        self.assertNotIn("kill", facts.cgroup)
        self.assertIsNone(build(facts).kill_mechanism)

    def test_none(self) -> None:
        """
        A host without cgroups has no facilities and no cgroup warning.
        """
        root = self.fs_root()
        facts = self.probe(root, FakeCgroupFS(root))
        self.assertEqual(dict(facts.cgroup), {})
        self.assertFalse(facts.cgroup_layout.present)
        caps = build(facts)
        self.assertFalse(caps.cgroup_writable)
        self.assertEqual(caps.warnings, ())

    def test_read_only(self) -> None:
        """
        When groups cannot be made anywhere nothing is writable, and the
        snapshot warns.
        """
        root = self.fs_root()
        self.hybrid_tree(root)
        facts = self.probe(root, FakeCgroupFS(root, refuse=["/sys/fs/cgroup"]))
        self.assertEqual(
            {key: facility.writable for key, facility in facts.cgroup.items()},
            {"memory": False, "pids": False, "cpu_accounting": False, "kill": False},
        )
        self.assertEqual(facts.cgroup["memory"].mechanism, "cgroup_v1")
        caps = build(facts)
        self.assertEqual(caps.cgroup_mechanisms, {})
        # The contract's warning names cgroup v2: a v1 hybrid gets none.
        self.assertFalse(caps.cgroup_v2)
        self.assertEqual(caps.warnings, ())

    def test_file_in_the_way(self) -> None:
        """
        A file where the memory base should be makes only memory unusable,
        and the file is left alone.
        """
        root = self.fs_root()
        self.hybrid_tree(root)
        blocker = os.path.join(root, "sys/fs/cgroup/memory/execgo-runtime")
        write(blocker, "not a group")
        facts = self.probe(root)
        self.assertFalse(facts.cgroup["memory"].writable)
        self.assertTrue(facts.cgroup["pids"].writable)
        self.assertTrue(os.path.isfile(blocker))

    def test_stale_probe_group(self) -> None:
        """
        A probe group left by a crashed probe is replaced.
        """
        root = self.fs_root()
        self.v2_tree(root)
        fake = FakeCgroupFS(root)
        base = os.path.join(root, "sys/fs/cgroup/execgo-runtime")
        fake.mkdir(base)
        write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
        fake.mkdir(os.path.join(base, f".probe-{os.getpid()}"))
        facts = self.probe(root, fake)
        self.assertTrue(facts.cgroup["pids"].writable)
        self.assertEqual(os.listdir(base).count(f".probe-{os.getpid()}"), 0)

    def test_root_inside_hierarchy(self) -> None:
        """
        A root inside a v1 hierarchy maps to the same relative path in the
        other hierarchies; missing parents are created and removed.
        """
        root = self.fs_root()
        self.hybrid_tree(root)
        fake = FakeCgroupFS(root)
        facts = probe_host(
            os.path.join(root, "data"), "/sys/fs/cgroup/memory/a/b", False, False,
            fs_root=root, try_namespaces=lambda: ALL_NS, mkdir=fake.mkdir,
            rmdir=fake.rmdir, environ={},
        )
        top = os.path.join(root, "sys/fs/cgroup")
        self.assertEqual(facts.cgroup["pids"].base, f"{top}/pids/a/b")
        self.assertEqual(facts.cgroup["kill"].base, f"{top}/unified/a/b")
        self.assertIn(f"{top}/pids/a", fake.made)
        self.assertFalse(os.path.exists(f"{top}/pids/a"))

    def test_disabled(self) -> None:
        """
        With cgroups disabled no group is made; the layout is still read,
        so the snapshot warns and shows the override.
        """
        root = self.fs_root()
        self.hybrid_tree(root)
        facts = probe_host(os.path.join(root, "data"), ROOT, True, False, fs_root=root,
                           try_namespaces=lambda: ALL_NS, mkdir=forbidden,
                           rmdir=forbidden, environ={})
        self.assertEqual(dict(facts.cgroup), {})
        self.assertTrue(facts.cgroup_layout.present)
        caps = build(facts, disable_cgroup=True)
        self.assertEqual(caps.overrides, {"cgroup": "disabled"})
        # The contract's warning names cgroup v2: a v1 hybrid gets none.
        self.assertEqual(caps.warnings, ())


class CgroupBasesTests(SynchronousTestCase):
    """
    L{cgroup_bases}: where per-task groups go for a given root.
    """

    hybrid = CgroupLayout(
        v2_mount="/sys/fs/cgroup/unified",
        v1_mounts={"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"},
    )

    def test_hybrid_default(self) -> None:
        """
        The default root's basename is used in every hierarchy.
        """
        self.assertEqual(cgroup_bases(self.hybrid, ROOT), {
            "v2": "/sys/fs/cgroup/unified/execgo-runtime",
            "memory": "/sys/fs/cgroup/memory/execgo-runtime",
            "pids": "/sys/fs/cgroup/pids/execgo-runtime",
        })

    def test_hybrid_inside_unified(self) -> None:
        """
        A root inside the unified tree keeps its relative path.
        """
        bases = cgroup_bases(self.hybrid, "/sys/fs/cgroup/unified/x/y/")
        self.assertEqual(bases["v2"], "/sys/fs/cgroup/unified/x/y")
        self.assertEqual(bases["memory"], "/sys/fs/cgroup/memory/x/y")

    def test_v2_verbatim(self) -> None:
        """
        On a unified host the configured root is the v2 base, wherever it is.
        """
        layout = CgroupLayout(v2_mount="/sys/fs/cgroup", v2_is_top=True)
        self.assertEqual(cgroup_bases(layout, "/mnt/cg/execgo"), {"v2": "/mnt/cg/execgo"})
        self.assertEqual(cgroup_bases(layout, ROOT), {"v2": ROOT})

    def test_fs_root(self) -> None:
        """
        The root is looked up under C{fs_root}.
        """
        layout = CgroupLayout(v2_mount="/t/sys/fs/cgroup", v2_is_top=True)
        self.assertEqual(cgroup_bases(layout, ROOT, "/t"), {"v2": "/t" + ROOT})


class HostProbeTests(ProbeTestsMixin, SynchronousTestCase):
    """
    The non-cgroup parts of L{probe_host}.
    """

    def test_own_limits_v2(self) -> None:
        """
        The runtime's own limits are the smallest set on its group or an
        ancestor; C{max} means unset.
        """
        root = self.fs_root()
        self.v2_tree(root)
        write(os.path.join(root, "proc/self/cgroup"), "0::/user.slice/app.scope\n")
        top = os.path.join(root, "sys/fs/cgroup")
        write(f"{top}/user.slice/memory.max", "max\n")
        write(f"{top}/user.slice/pids.max", "500\n")
        write(f"{top}/user.slice/app.scope/memory.max", "1073741824\n")
        write(f"{top}/user.slice/app.scope/pids.max", "max\n")
        facts = self.probe(root)
        self.assertEqual((facts.own_memory_limit, facts.own_pids_limit), (1073741824, 500))

    def test_own_limits_v1(self) -> None:
        """
        On v1 the memory hierarchy's "unlimited" value is ignored, and a
        group path missing from the mount (a container's view) falls back
        to the mount itself.
        """
        root = self.fs_root()
        self.hybrid_tree(root)
        write(os.path.join(root, "proc/self/cgroup"),
              "8:pids:/docker/abc\n4:memory:/process_api/x\n0::/\n")
        top = os.path.join(root, "sys/fs/cgroup")
        write(f"{top}/memory/process_api/x/memory.limit_in_bytes", "9223372036854771712\n")
        write(f"{top}/pids/pids.max", "64\n")
        facts = self.probe(root, try_namespaces=lambda: ALL_NS)
        self.assertEqual((facts.own_memory_limit, facts.own_pids_limit), (None, 64))
        write(f"{top}/memory/process_api/memory.limit_in_bytes", "268435456\n")
        self.assertEqual(self.probe(root).own_memory_limit, 268435456)

    def test_container_markers(self) -> None:
        """
        C{/.dockerenv}, C{/run/.containerenv} and the init process's cgroup
        mark a container; kubepods or the service env var mark Kubernetes.
        """
        cases = [
            ({".dockerenv": ""}, {}, (True, False)),
            ({"run/.containerenv": ""}, {}, (True, False)),
            ({"proc/1/cgroup": "0::/system.slice/containerd.service\n"}, {}, (True, False)),
            ({"proc/1/cgroup": "1:name=systemd:/docker/abc\n"}, {}, (True, False)),
            ({"proc/1/cgroup": "0::/kubepods/burstable/pod1\n"}, {}, (True, True)),
            ({}, {"KUBERNETES_SERVICE_HOST": ""}, (False, True)),
            ({}, {}, (False, False)),
        ]
        for files, environ, expected in cases:
            root = self.fs_root()
            for name, text in files.items():
                write(os.path.join(root, name), text)
            facts = self.probe(root, environ=environ)
            self.assertEqual((facts.containerized, facts.kubernetes), expected, (files, environ))

    def test_data_dir(self) -> None:
        """
        A writable data dir is detected and left clean; a missing one is
        not writable.
        """
        root = self.fs_root()
        facts = self.probe(root)
        self.assertTrue(facts.data_dir_writable)
        self.assertEqual(os.listdir(os.path.join(root, "data")), [])
        missing = probe_host(os.path.join(root, "nope"), ROOT, False, False, fs_root=root,
                             try_namespaces=lambda: ALL_NS, environ={})
        self.assertFalse(missing.data_dir_writable)

    def test_namespaces_and_host(self) -> None:
        """
        Namespace results come from the injected trial; chroot needs euid 0;
        pid_max and memory are the host's.
        """
        root = self.fs_root()
        facts = self.probe(root, try_namespaces=lambda: {"mount": True, "net": False})
        self.assertEqual(dict(facts.namespaces), dict(
            ALL_NS, pid=False, uts=False, ipc=False, net=False
        ))
        self.assertEqual(facts.chroot, os.geteuid() == 0)
        self.assertEqual(facts.pid_max, 32768)
        self.assertEqual(
            facts.physical_memory_bytes,
            os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
        )

    def test_sandbox_disabled(self) -> None:
        """
        With the sandbox disabled namespaces are not tried.
        """
        root = self.fs_root()
        trial = RecordingTrial()
        facts = probe_host(os.path.join(root, "data"), ROOT, False, True, fs_root=root,
                           try_namespaces=trial, environ={})
        self.assertEqual(trial.calls, 0)
        self.assertFalse(any(facts.namespaces.values()))

    def test_not_linux(self) -> None:
        """
        Off Linux no cgroup, namespace or C{/proc} probing happens.
        """
        root = self.fs_root()
        self.v2_tree(root)
        trial = RecordingTrial()
        facts = probe_host(os.path.join(root, "data"), ROOT, False, False, fs_root=root,
                           try_namespaces=trial, mkdir=forbidden, rmdir=forbidden,
                           environ={}, system="Darwin")
        self.assertEqual((trial.calls, dict(facts.cgroup), facts.pid_max), (0, {}, None))
        self.assertEqual(facts.system, "Darwin")
        self.assertFalse(facts.chroot)


class RealHostProbeTests(SynchronousTestCase):
    """
    One probe of the real host, which should be the cgroup hybrid the
    reference machine has (v1 memory and pids, a controller-less v2 tree;
    C{docs/performance.md}).
    """

    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise self.skipTest("needs Linux")
        if os.geteuid() != 0:
            raise self.skipTest("needs root to create cgroups and unshare")
        if not os.path.isfile("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
            raise self.skipTest("needs a cgroup v1 memory hierarchy (the hybrid layout)")
        if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            raise self.skipTest("/sys/fs/cgroup is cgroup v2, not the hybrid layout")

    def test_hybrid_host(self) -> None:
        """
        Memory and pids are v1, kill (where there is a unified tree) is v2,
        every namespace really unshares, and the probe leaves no group.
        """
        name = f"execgo-test-probe-{os.getpid()}"
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        facts = probe_host(data_dir, f"/sys/fs/cgroup/{name}", False, False)
        self.assertEqual(facts.cgroup["memory"],
                         CgroupFacility("cgroup_v1", f"/sys/fs/cgroup/memory/{name}", True))
        self.assertEqual(facts.cgroup["pids"],
                         CgroupFacility("cgroup_v1", f"/sys/fs/cgroup/pids/{name}", True))
        if os.path.isfile("/sys/fs/cgroup/unified/cgroup.controllers"):
            self.assertEqual(facts.cgroup["kill"],
                             CgroupFacility("cgroup_v2", f"/sys/fs/cgroup/unified/{name}", True))
        self.assertEqual(dict(facts.namespaces), ALL_NS)
        self.assertTrue(facts.data_dir_writable)
        for hierarchy in ("memory", "pids", "cpuacct", "unified"):
            self.assertFalse(os.path.exists(f"/sys/fs/cgroup/{hierarchy}/{name}"))
        caps = build(facts, cgroup_root=f"/sys/fs/cgroup/{name}")
        self.assertFalse(caps.cgroup_v2)
        self.assertTrue(caps.cgroup_writable and caps.pids_limit and caps.oom_detection)
        self.assertTrue(caps.linux_sandbox and caps.chroot)

    def test_probe_namespaces(self) -> None:
        """
        The real namespace trial reports every namespace as root.
        """
        self.assertEqual(probe_namespaces(), ALL_NS)


def build(facts: HostFacts, **kwargs) -> Capabilities:
    """
    L{build_capabilities} with defaults for everything but the facts.
    """
    options: Dict[str, Any] = dict(
        runtime_id="node-a", collected_at="2026-04-23T09:59:58.731942113Z",
        max_running_tasks=4, capacity_memory_bytes=None, capacity_pids=None,
        disable_cgroup=False, disable_linux_sandbox=False, data_dir="data",
        cgroup_root=ROOT,
    )
    options.update(kwargs)
    return build_capabilities(facts, **options)


HYBRID_FACTS = HostFacts(
    system="Linux", machine="x86_64", containerized=True, euid=0,
    physical_memory_bytes=25276502016, pid_max=32768,
    cgroup_layout=CgroupLayout(
        v2_mount="/sys/fs/cgroup/unified", v2_controllers=("hugetlb",),
        v1_mounts={"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"},
    ),
    cgroup={
        "memory": CgroupFacility("cgroup_v1", "/sys/fs/cgroup/memory/execgo-runtime", True),
        "pids": CgroupFacility("cgroup_v1", "/sys/fs/cgroup/pids/execgo-runtime", True),
        "kill": CgroupFacility("cgroup_v2", "/sys/fs/cgroup/unified/execgo-runtime", True),
    },
    namespaces=ALL_NS, chroot=True,
)

# The contract's example snapshot (an unprivileged Linux host with
# overrides), plus the added resources.cgroup object.
CONTRACT_EXAMPLE = """
{
  "runtime_id": "node-a",
  "snapshot_version": "v1",
  "collected_at": "2026-04-23T09:59:58.731942113Z",
  "platform": {"os": "linux", "arch": "x86_64", "containerized": false, "kubernetes": false},
  "execution": {"command": true, "script": true, "process_group": true},
  "sandbox": {"process": true, "linux_sandbox": false, "chroot": false,
    "namespaces": {"mount": false, "pid": false, "uts": false, "ipc": false, "net": false}},
  "storage": {"data_dir_writable": true},
  "resources": {"rlimit_cpu": true, "rlimit_memory": true, "cgroup_v2": true,
    "cgroup_writable": false, "memory_limit": true, "pids_limit": false,
    "oom_detection": false, "cpu_quota": false, "ledger": true,
    "capacity": {"task_slots": 4, "memory_bytes": 134217728, "pids": 64},
    "cgroup": {}},
  "stable_semantics": ["submit", "status", "events", "stdout_stderr", "timeout",
    "kill", "artifacts", "result_persistence", "recovery"],
  "enhanced_semantics": ["resource_ledger"],
  "privilege_drop": false,
  "warnings": ["linux_sandbox is unavailable without root-equivalent namespace permissions",
    "cgroup v2 detected but cgroup root is not writable: /sys/fs/cgroup/execgo-runtime"],
  "degraded": true,
  "overrides": {"capacity_memory_bytes": "134217728", "capacity_pids": "64",
    "cgroup": "disabled", "linux_sandbox": "disabled"}
}
"""


def same_text(value: Mapping) -> str:
    """
    Compact JSON keeping key order, to compare renderings as text.
    """
    return json.dumps(value, separators=(",", ":"))


class BuildCapabilitiesTests(SynchronousTestCase):
    """
    L{build_capabilities} and L{Capabilities.to_json}.
    """

    def test_contract_example(self) -> None:
        """
        An unprivileged v2 host with every override renders the contract's
        example exactly (with the added C{resources.cgroup} and
        C{privilege_drop}).
        """
        facts = HostFacts(
            euid=1000,
            cgroup_layout=CgroupLayout(v2_mount="/sys/fs/cgroup", v2_is_top=True,
                                       v2_controllers=("memory", "pids")),
            physical_memory_bytes=1 << 34, pid_max=4194304,
        )
        caps = build(facts, capacity_memory_bytes=134217728, capacity_pids=64,
                     disable_cgroup=True, disable_linux_sandbox=True)
        self.assertEqual(same_text(caps.to_json()), same_text(json.loads(CONTRACT_EXAMPLE)))

    def test_hybrid_root_host(self) -> None:
        """
        A root hybrid host: full sandbox, v1 memory/pids, v2 kill, capacity
        from the host, no warnings, no overrides.
        """
        caps = build(HYBRID_FACTS)
        rendered = caps.to_json()
        self.assertEqual(same_text(rendered["sandbox"]), same_text({
            "process": True, "linux_sandbox": True, "chroot": True, "namespaces": ALL_NS,
        }))
        self.assertEqual(same_text(rendered["resources"]), same_text({
            "rlimit_cpu": True, "rlimit_memory": True, "cgroup_v2": False,
            "cgroup_writable": True, "memory_limit": True, "pids_limit": True,
            "oom_detection": True, "cpu_quota": False, "ledger": True,
            "capacity": {"task_slots": 4, "memory_bytes": 25276502016, "pids": 32768},
            "cgroup": {"memory": "cgroup_v1", "pids": "cgroup_v1", "kill": "cgroup_v2"},
        }))
        self.assertEqual(rendered["enhanced_semantics"], [
            "resource_ledger", "linux_sandbox", "namespaces", "chroot",
            "cgroup_memory", "cgroup_pids", "oom_detection",
        ])
        self.assertEqual(rendered["platform"]["containerized"], True)
        self.assertEqual(list(rendered)[-1], "degraded")
        self.assertNotIn("warnings", rendered)
        self.assertFalse(rendered["degraded"])
        self.assertEqual(caps.cgroup_bases, {
            "memory": "/sys/fs/cgroup/memory/execgo-runtime",
            "pids": "/sys/fs/cgroup/pids/execgo-runtime",
            "kill": "/sys/fs/cgroup/unified/execgo-runtime",
        })

    def test_pids_only(self) -> None:
        """
        Each cgroup semantic is listed only when backed: pids without
        memory gives no OOM detection.
        """
        facts = HostFacts(cgroup={
            "memory": CgroupFacility("cgroup_v1", "/m", False),
            "pids": CgroupFacility("cgroup_v1", "/p", True),
        }, namespaces=dict.fromkeys(ALL_NS, False))
        caps = build(facts)
        self.assertEqual(caps.enhanced_semantics, ("resource_ledger", "cgroup_pids"))
        self.assertTrue(caps.cgroup_writable)
        self.assertFalse(caps.oom_detection)
        self.assertEqual(caps.cgroup_bases, {"pids": "/p"})

    def test_sandbox_rules(self) -> None:
        """
        The sandbox needs one working namespace; each namespace is reported
        as tried; chroot additionally needs euid 0; disabling hides all.
        """
        facts = HostFacts(namespaces=dict(ALL_NS, net=False), chroot=False)
        caps = build(facts)
        self.assertTrue(caps.linux_sandbox)
        self.assertFalse(caps.chroot)
        self.assertEqual(dict(caps.namespaces), dict(ALL_NS, net=False))
        disabled = build(HYBRID_FACTS, disable_linux_sandbox=True)
        self.assertFalse(disabled.linux_sandbox or disabled.chroot)
        self.assertFalse(any(disabled.namespaces.values()))
        self.assertEqual(disabled.warnings, (
            "linux_sandbox is unavailable without root-equivalent namespace permissions",
        ))
        self.assertEqual(disabled.overrides, {"linux_sandbox": "disabled"})
        none = build(HostFacts(namespaces=dict.fromkeys(ALL_NS, False), chroot=True))
        self.assertFalse(none.linux_sandbox or none.chroot)

    def test_warning_order(self) -> None:
        """
        Warnings come data dir, sandbox, cgroup, with the configured paths.
        """
        facts = HostFacts(
            data_dir_writable=False,
            cgroup_layout=CgroupLayout(
                v2_mount="/sys/fs/cgroup", v2_is_top=True, v2_controllers=("memory", "pids")
            ),
            cgroup={"pids": CgroupFacility("cgroup_v2", "/x", False)},
        )
        caps = build(facts, data_dir="rel/data", cgroup_root="/cg/root")
        self.assertEqual(caps.warnings, (
            "data-dir is not writable: rel/data",
            "linux_sandbox is unavailable without root-equivalent namespace permissions",
            "cgroup v2 detected but cgroup root is not writable: /cg/root",
        ))
        self.assertTrue(caps.to_json()["degraded"])
        self.assertFalse(caps.to_json()["storage"]["data_dir_writable"])

    def test_other_host(self) -> None:
        """
        A macOS host: names normalised, no Linux features even if facts
        claim them, pids capacity unknown, the non-Linux sandbox warning.
        """
        facts = attrs.evolve(HYBRID_FACTS, system="Darwin", machine="arm64")
        caps = build(facts)
        self.assertEqual(caps.platform_json(), {
            "os": "macos", "arch": "aarch64", "containerized": True, "kubernetes": False,
        })
        self.assertEqual(caps.warnings, ("linux_sandbox is unavailable on this host",))
        self.assertEqual(caps.cgroup_mechanisms, {})
        self.assertFalse(caps.cgroup_v2)
        self.assertEqual(caps.capacity, Reservation(4, 25276502016, None))

    def test_capacity(self) -> None:
        """
        Overrides win; else the smaller of the runtime's own cgroup limit
        and the host's total; unknown stays unknown.
        """
        limited = attrs.evolve(HYBRID_FACTS, own_memory_limit=1 << 30, own_pids_limit=100)
        self.assertEqual(build(limited).capacity, Reservation(4, 1 << 30, 100))
        self.assertEqual(
            build(limited, capacity_memory_bytes=7, capacity_pids=0,
                  max_running_tasks=0).capacity,
            Reservation(0, 7, 0),
        )
        huge = attrs.evolve(HYBRID_FACTS, own_memory_limit=1 << 50)
        self.assertEqual(build(huge).capacity.memory_bytes, 25276502016)
        self.assertEqual(build(HostFacts()).capacity, Reservation(4))
        self.assertEqual(build(HostFacts()).to_json()["resources"]["capacity"], {"task_slots": 4})

    def test_naming(self) -> None:
        """
        OS identifiers are lowercase, with C{Darwin} as C{macos};
        architectures use C{x86_64} and C{aarch64} for C{amd64} and
        C{arm64}.
        """
        self.assertEqual([normalise_os(s) for s in ("Linux", "Darwin", "FreeBSD")],
                         ["linux", "macos", "freebsd"])
        self.assertEqual([normalise_arch(m) for m in ("amd64", "x86_64", "arm64", "aarch64")],
                         ["x86_64", "x86_64", "aarch64", "aarch64"])
