"""
Tests for L{execgo.core.policy}: plans resolved for a request
(L{resolve_plan}), synthesised for a stored task without one
(L{synthesise_plan}), and the one builder both use (L{build_plan}).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.capabilities import Capabilities
from execgo.core.errors import UnsupportedCapability
from execgo.core.models import (
    ControlContext,
    ExecutionSpec,
    Namespaces,
    ResourceLimits,
    SandboxPolicy,
    SubmitRequest,
)
from execgo.core.policy import build_plan, plan_of, resolve_plan, synthesise_plan
from execgo.core.reservation import Reservation
from tests.fakes import plan_for, record

ALL_NAMESPACES = {"mount": True, "pid": True, "uts": True, "ipc": True, "net": True}
NO_NAMESPACES = dict.fromkeys(ALL_NAMESPACES, False)


def caps(**kwargs: Any) -> Capabilities:
    """
    A snapshot of a root Linux host like this project's (cgroup v1 memory
    and pids, v2 kill), with C{kwargs} changed.
    """
    values: dict = dict(
        runtime_id="rt",
        collected_at="2026-04-23T09:59:58Z",
        capacity=Reservation(4),
        linux_sandbox=True,
        chroot=True,
        namespaces=ALL_NAMESPACES,
        memory_mechanism="cgroup_v1",
        pids_mechanism="cgroup_v1",
        cpu_accounting_mechanism="cgroup_v2",
        kill_mechanism="cgroup_v2",
    )
    values.update(kwargs)
    return Capabilities(**values)


BARE = caps(
    linux_sandbox=False,
    chroot=False,
    namespaces=NO_NAMESPACES,
    memory_mechanism=None,
    pids_mechanism=None,
    cpu_accounting_mechanism=None,
    kill_mechanism=None,
    warnings=("linux_sandbox is unavailable without root-equivalent namespace permissions",),
)


def request(
    sandbox: Optional[SandboxPolicy] = None,
    limits: Optional[ResourceLimits] = None,
    mode: Optional[str] = None,
    strict_sandbox: bool = False,
) -> SubmitRequest:
    """
    A validated command request.
    """
    return SubmitRequest(
        execution=ExecutionSpec(kind="command", program="true"),
        sandbox=sandbox or SandboxPolicy(),
        limits=limits or ResourceLimits(),
        capability_mode=mode,
        control_context=ControlContext(requires_strict_sandbox=strict_sandbox)
        if strict_sandbox
        else None,
    )


ALL_LIMITS = ResourceLimits(cpu_time_sec=2, memory_bytes=1 << 20, pids_max=16)
SANDBOX = SandboxPolicy(
    profile="linux_sandbox", workspace_subdir="w", rootfs="/srv/root", chroot=True
)


class ModeTests(SynchronousTestCase):
    """
    Which mode a plan reports and when resolution is strict.
    """

    def test_default_mode(self) -> None:
        """
        A request without a mode gets the server default.
        """
        plan = resolve_plan(request(), caps(), "strict")
        self.assertEqual(plan.capability_mode, "strict")
        self.assertEqual(resolve_plan(request(), caps(), "adaptive").capability_mode, "adaptive")

    def test_request_mode_wins(self) -> None:
        """
        An explicit mode in the request overrides the server default.
        """
        plan = resolve_plan(request(sandbox=SANDBOX, mode="adaptive"), BARE, "strict")
        self.assertEqual(plan.capability_mode, "adaptive")
        self.assertTrue(plan.degraded)
        self.assertRaises(
            UnsupportedCapability,
            resolve_plan, request(sandbox=SANDBOX, mode="strict"), BARE, "adaptive",
        )

    def test_requires_strict_sandbox(self) -> None:
        """
        C{requires_strict_sandbox} makes resolution strict, but a plan that
        resolves still reports the adaptive mode.
        """
        error = self.assertRaises(
            UnsupportedCapability,
            resolve_plan,
            request(sandbox=SANDBOX, mode="adaptive", strict_sandbox=True),
            BARE,
            "adaptive",
        )
        self.assertEqual(error.message, "unsupported capability: linux_sandbox is unavailable")
        plan = resolve_plan(request(strict_sandbox=True), caps(), "adaptive")
        self.assertEqual(plan.capability_mode, "adaptive")
        self.assertFalse(plan.degraded)

    def test_strict_everything_available(self) -> None:
        """
        Strict resolution succeeds when nothing is missing.
        """
        plan = resolve_plan(request(SANDBOX, ALL_LIMITS, "strict"), caps(), "adaptive")
        self.assertEqual(plan.capability_mode, "strict")
        self.assertEqual(plan.fallback_reasons, ())


class SandboxTests(SynchronousTestCase):
    """
    Profile, chroot and namespace resolution.
    """

    def test_process_profile_untouched(self) -> None:
        """
        A process sandbox is applied as requested, namespaces and all.
        """
        sandbox = SandboxPolicy(workspace_subdir="x", namespaces=Namespaces(net=True))
        plan = resolve_plan(request(sandbox), BARE, "adaptive")
        self.assertEqual(plan.requested_sandbox, sandbox)
        self.assertEqual(plan.effective_sandbox, sandbox)
        self.assertFalse(plan.degraded)

    def test_default_namespaces(self) -> None:
        """
        A linux_sandbox request without namespaces gets the defaults in the
        effective sandbox; the requested one stays without.
        """
        plan = resolve_plan(request(SANDBOX), caps(), "adaptive")
        self.assertIsNone(plan.requested_sandbox.namespaces)
        self.assertEqual(
            plan.effective_sandbox.to_json(),
            {"profile": "linux_sandbox", "workspace_subdir": "w", "rootfs": "/srv/root",
             "chroot": True, "namespaces": {"mount": True, "pid": True, "uts": True,
                                            "ipc": True, "net": False}},
        )

    def test_sandbox_fallback(self) -> None:
        """
        Without the sandbox, the effective sandbox is a process one keeping
        only the workspace subdir; no chroot or namespace reasons follow.
        """
        plan = resolve_plan(request(SANDBOX), BARE, "adaptive")
        self.assertEqual(plan.effective_sandbox, SandboxPolicy(workspace_subdir="w"))
        self.assertEqual(plan.requested_sandbox, SANDBOX)
        self.assertTrue(plan.degraded)
        self.assertEqual(
            plan.fallback_reasons,
            ("linux_sandbox is unavailable; falling back to process sandbox",),
        )

    def test_chroot_fallback(self) -> None:
        """
        Without chroot, chroot is dropped with its rootfs.
        """
        plan = resolve_plan(request(SANDBOX), caps(chroot=False), "adaptive")
        self.assertEqual(plan.fallback_reasons, ("chroot is unavailable; running without chroot",))
        self.assertFalse(plan.effective_sandbox.chroot)
        self.assertIsNone(plan.effective_sandbox.rootfs)
        self.assertEqual(plan.effective_sandbox.profile, "linux_sandbox")
        error = self.assertRaises(
            UnsupportedCapability, resolve_plan, request(SANDBOX), caps(chroot=False), "strict"
        )
        self.assertEqual(error.detail, "chroot is unavailable")

    def test_namespaces(self) -> None:
        """
        Each namespace is requested-and-supported; unsupported requested
        ones give a reason each, in mount, pid, uts, ipc, net order.
        """
        host = caps(namespaces={"mount": True, "pid": False, "uts": True,
                                "ipc": True, "net": False})
        sandbox = SandboxPolicy(
            profile="linux_sandbox",
            namespaces=Namespaces(mount=False, pid=True, uts=True, ipc=True, net=True),
        )
        plan = resolve_plan(request(sandbox), host, "adaptive")
        self.assertEqual(
            plan.effective_sandbox.namespaces,
            Namespaces(mount=False, pid=False, uts=True, ipc=True, net=False),
        )
        self.assertEqual(plan.fallback_reasons, (
            "pid namespace is unavailable; running without it",
            "net namespace is unavailable; running without it",
        ))
        error = self.assertRaises(
            UnsupportedCapability, resolve_plan, request(sandbox), host, "strict"
        )
        self.assertEqual(error.detail, "pid namespace is unavailable")

    def test_unrequested_unsupported_namespace(self) -> None:
        """
        An unsupported namespace that was not requested is no fallback.
        """
        plan = resolve_plan(request(SANDBOX), caps(namespaces=dict(ALL_NAMESPACES, net=False)),
                            "strict")
        self.assertFalse(plan.degraded)
        self.assertEqual(plan.effective_sandbox.namespaces, Namespaces())


class EnforcementTests(SynchronousTestCase):
    """
    Limit enforcement flags, mechanisms and their fallback reasons.
    """

    def test_full_plan_json(self) -> None:
        """
        On this host's kind of snapshot every limit is enforced: CPU by
        rlimit, memory and pids by cgroup v1, with OOM detection.
        """
        plan = resolve_plan(request(SANDBOX, ALL_LIMITS), caps(warnings=("w1",)), "adaptive")
        self.assertEqual(
            json.dumps(plan.resource_enforcement.to_json(), separators=(",", ":")),
            '{"wall_time_ms":300000,"cpu_time_sec":2,"cpu_time_enforced":true,'
            '"memory_bytes":1048576,"memory_enforced":true,"pids_max":16,'
            '"pids_enforced":true,"cgroup_enforced":true,"oom_detection":true,'
            '"mechanisms":{"cpu_time_sec":"rlimit","memory_bytes":"cgroup_v1",'
            '"pids_max":"cgroup_v1"}}',
        )
        self.assertEqual(plan.capability_warnings, ("w1",))
        self.assertNotIn("fallback_reasons", plan.to_json())

    def test_process_profile_uses_cgroup(self) -> None:
        """
        A process-profile task gets its per-task cgroup too, so its pids
        limit is enforced.
        """
        plan = resolve_plan(request(limits=ALL_LIMITS), caps(), "strict")
        enforcement = plan.resource_enforcement
        self.assertTrue(enforcement.cgroup_enforced)
        self.assertTrue(enforcement.pids_enforced)
        self.assertTrue(enforcement.oom_detection)

    def test_cgroup_without_limits(self) -> None:
        """
        The cgroup is used even when no limit is requested; nothing is
        enforced or named, and the unset limits are left out.
        """
        enforcement = resolve_plan(request(), caps(), "adaptive").resource_enforcement
        self.assertEqual(enforcement.to_json(), {
            "wall_time_ms": 300000, "cpu_time_enforced": False,
            "memory_enforced": False, "pids_enforced": False,
            "cgroup_enforced": True, "oom_detection": False,
        })

    def test_no_cgroup(self) -> None:
        """
        Without cgroups memory falls back to RLIMIT_AS (no OOM detection)
        and pids cannot be enforced.
        """
        plan = resolve_plan(request(SANDBOX, ALL_LIMITS), BARE, "adaptive")
        enforcement = plan.resource_enforcement
        self.assertEqual(
            dict(enforcement.mechanisms), {"cpu_time_sec": "rlimit", "memory_bytes": "rlimit"}
        )
        self.assertEqual(
            (enforcement.cgroup_enforced, enforcement.memory_enforced,
             enforcement.pids_enforced, enforcement.oom_detection),
            (False, True, False, False),
        )
        self.assertEqual(plan.fallback_reasons, (
            "linux_sandbox is unavailable; falling back to process sandbox",
            "pids_max enforcement requires writable cgroup support",
        ))
        self.assertEqual(plan.capability_warnings, BARE.warnings)
        error = self.assertRaises(
            UnsupportedCapability, resolve_plan, request(limits=ALL_LIMITS), BARE, "strict"
        )
        self.assertEqual(
            error.message,
            "unsupported capability: pids_max enforcement requires writable cgroup support",
        )

    def test_reason_order_without_rlimits(self) -> None:
        """
        With neither rlimits nor cgroups, reasons come CPU, memory, pids,
        and strict mode names the first.
        """
        host = caps(rlimit_cpu=False, rlimit_memory=False,
                    memory_mechanism=None, pids_mechanism=None)
        plan = resolve_plan(request(limits=ALL_LIMITS), host, "adaptive")
        self.assertEqual(plan.fallback_reasons, (
            "cpu_time_sec enforcement is unavailable",
            "memory_bytes enforcement is unavailable",
            "pids_max enforcement requires writable cgroup support",
        ))
        self.assertEqual(dict(plan.resource_enforcement.mechanisms), {})
        self.assertFalse(plan.resource_enforcement.cpu_time_enforced)
        error = self.assertRaises(
            UnsupportedCapability, resolve_plan, request(limits=ALL_LIMITS), host, "strict"
        )
        self.assertEqual(error.detail, "cpu_time_sec enforcement is unavailable")

    def test_only_requested_limits_checked(self) -> None:
        """
        A limit that is not requested is neither a reason nor enforced.
        """
        plan = resolve_plan(
            request(limits=ResourceLimits(memory_bytes=5)), BARE, "strict"
        )
        self.assertEqual(dict(plan.resource_enforcement.mechanisms), {"memory_bytes": "rlimit"})
        self.assertFalse(plan.degraded)

    def test_pids_cgroup_only(self) -> None:
        """
        With only a pids cgroup, a cgroup is still used, memory is limited
        by rlimit, and OOM kills are not detected.
        """
        enforcement = resolve_plan(
            request(limits=ALL_LIMITS), caps(memory_mechanism=None), "strict"
        ).resource_enforcement
        self.assertTrue(enforcement.cgroup_enforced)
        self.assertEqual(enforcement.mechanisms["memory_bytes"], "rlimit")
        self.assertFalse(enforcement.oom_detection)

    def test_cgroup_v2(self) -> None:
        """
        The mechanism named is the snapshot's, e.g. cgroup v2.
        """
        host = caps(memory_mechanism="cgroup_v2", pids_mechanism="cgroup_v2")
        plan = resolve_plan(request(limits=ALL_LIMITS), host, "adaptive")
        enforcement = plan.resource_enforcement
        self.assertEqual(
            dict(enforcement.mechanisms),
            {"cpu_time_sec": "rlimit", "memory_bytes": "cgroup_v2", "pids_max": "cgroup_v2"},
        )
        self.assertTrue(enforcement.oom_detection)


class SynthesisePlanTests(SynchronousTestCase):
    """
    L{synthesise_plan}: the plan of a stored task that has none.
    """

    def test_process(self) -> None:
        """
        A process-profile task: adaptive, no cgroup; CPU and memory enforced
        when set; pids never; not degraded.
        """
        limits = ResourceLimits(wall_time_ms=9, cpu_time_sec=1, memory_bytes=2, pids_max=3)
        sandbox = SandboxPolicy(workspace_subdir="w")
        plan = synthesise_plan(record("t", limits=limits, sandbox=sandbox))
        self.assertEqual(plan.capability_mode, "adaptive")
        self.assertEqual(plan.requested_sandbox, sandbox)
        self.assertEqual(plan.effective_sandbox, sandbox)
        self.assertEqual(
            plan.resource_enforcement.to_json(),
            {
                "wall_time_ms": 9, "cpu_time_sec": 1, "cpu_time_enforced": True,
                "memory_bytes": 2, "memory_enforced": True, "pids_max": 3,
                "pids_enforced": False, "cgroup_enforced": False, "oom_detection": False,
            },
        )
        self.assertFalse(plan.degraded)
        self.assertEqual((plan.fallback_reasons, plan.capability_warnings), ((), ()))

    def test_linux_sandbox(self) -> None:
        """
        A C{linux_sandbox} task gets a cgroup: pids enforced and OOM
        detection when the limits are set.
        """
        sandbox = SandboxPolicy(profile="linux_sandbox", namespaces=Namespaces())
        plan = synthesise_plan(
            record("t", limits=ResourceLimits(memory_bytes=2, pids_max=3), sandbox=sandbox)
        )
        enforcement = plan.resource_enforcement
        self.assertTrue(enforcement.cgroup_enforced)
        self.assertTrue(enforcement.pids_enforced)
        self.assertTrue(enforcement.oom_detection)
        self.assertFalse(enforcement.cpu_time_enforced)

    def test_unset_limits(self) -> None:
        """
        With no limits nothing is enforced.
        """
        sandbox = SandboxPolicy(profile="linux_sandbox")
        enforcement = synthesise_plan(record("t", sandbox=sandbox)).resource_enforcement
        self.assertEqual(
            (enforcement.memory_enforced, enforcement.pids_enforced, enforcement.oom_detection),
            (False, False, False),
        )

    def test_plan_of(self) -> None:
        """
        A stored plan wins over synthesis.
        """
        plan = plan_for(degraded=True, fallback_reasons=("r",))
        self.assertIs(plan_of(record("t", plan=plan)), plan)


class BuildPlanTests(SynchronousTestCase):
    """
    L{build_plan}: the one constructor of a plan, from its inputs.
    """

    limits = ResourceLimits(wall_time_ms=7, cpu_time_sec=1, memory_bytes=2, pids_max=3)

    def enforcement(self, enforcers: dict, cgroup: bool) -> dict:
        """
        The C{resource_enforcement} of a plan built with C{enforcers}.
        """
        sandbox = SandboxPolicy()
        plan = build_plan("adaptive", sandbox, sandbox, self.limits, enforcers, cgroup)
        return plan.resource_enforcement.to_json()

    def test_named_mechanisms(self) -> None:
        """
        Named mechanisms are listed; memory by a cgroup detects OOM, by an
        rlimit it does not, whatever C{cgroup} says.
        """
        by_cgroup = self.enforcement({"memory_bytes": "cgroup_v2", "pids_max": "cgroup_v2"}, False)
        self.assertEqual(by_cgroup["mechanisms"], {"memory_bytes": "cgroup_v2", "pids_max": "cgroup_v2"})
        self.assertEqual(
            (by_cgroup["cpu_time_enforced"], by_cgroup["memory_enforced"], by_cgroup["pids_enforced"]),
            (False, True, True),
        )
        self.assertIs(by_cgroup["oom_detection"], True)
        self.assertIs(self.enforcement({"memory_bytes": "rlimit"}, True)["oom_detection"], False)

    def test_unrecorded_mechanisms(self) -> None:
        """
        A limit enforced by a mechanism nobody recorded is enforced but
        not listed (no C{mechanisms} key at all); its memory detects OOM
        exactly when the task has a cgroup.
        """
        enforcers = {"cpu_time_sec": None, "memory_bytes": None}
        with_cgroup = self.enforcement(enforcers, True)
        self.assertNotIn("mechanisms", with_cgroup)
        self.assertEqual(
            (with_cgroup["cpu_time_enforced"], with_cgroup["memory_enforced"], with_cgroup["oom_detection"]),
            (True, True, True),
        )
        self.assertIs(self.enforcement(enforcers, False)["oom_detection"], False)

    def test_reasons_degrade(self) -> None:
        """
        Reasons make the plan degraded and are kept in order, with the
        warnings.
        """
        sandbox = SandboxPolicy()
        plan = build_plan("strict", sandbox, sandbox, self.limits, {}, False, ["b", "a"], ["w"])
        self.assertEqual(
            (plan.capability_mode, plan.degraded, plan.fallback_reasons, plan.capability_warnings),
            ("strict", True, ("b", "a"), ("w",)),
        )
        self.assertFalse(build_plan("strict", sandbox, sandbox, self.limits, {}, False).degraded)
