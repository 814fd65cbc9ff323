"""
Tests for L{execgo.core.bounds}: what the host accepts of a submission, checked
through the real validation pipeline (L{execgo.core.submission.parse_submit}),
and each bound proved against the kernel where this host lets a test do so
(a real spawn with the largest rlimits, a real pids cgroup, a real
C{epoll} wait).
"""

from __future__ import annotations

import json
import os
import select
import selectors
import sys
from typing import Any, Dict, Optional

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import bounds
from execgo.core.errors import InvalidInput
from execgo.core.models import ResourceLimits
from execgo.core.submission import parse_submit
from execgo.supervisor import launcher
from tests.fakes import plan_for

NUL = "\u0000"


def body(execution: Optional[Dict[str, Any]] = None, **fields: Any) -> bytes:
    """
    A submit body: a command (or C{execution}) plus C{fields}.
    """
    request: Dict[str, Any] = {"execution": execution or {"kind": "command", "program": "echo"}}
    request.update(fields)
    return json.dumps(request).encode("utf-8")


class BoundsTestCase(SynchronousTestCase):
    """
    Helpers: accepted, or rejected naming a field.
    """

    def assertAccepted(self, data: bytes) -> None:
        """
        The whole pipeline accepts C{data}.
        """
        try:
            parse_submit(data)
        except InvalidInput as error:
            self.fail(f"rejected: {error.message}")

    def assertRejected(self, data: bytes, field: str, *words: str) -> str:
        """
        The pipeline rejects C{data} naming C{field}, its message holding
        C{words}; the detail.
        """
        with self.assertRaises(InvalidInput) as caught:
            parse_submit(data)
        detail = caught.exception.detail
        self.assertTrue(detail.startswith(field + ": "), detail)
        for word in words:
            self.assertIn(word, detail)
        return detail


class NulTests(BoundsTestCase):
    """
    NUL (U+0000) cannot be in a C string: every string that becomes a path,
    an argument or an environment entry is refused with it at submit, not
    at launch.
    """

    def test_execution_strings(self) -> None:
        """
        C{program}, each of C{args}, each of C{interpreter}, a script run by
        C{/bin/sh -c}, and C{env} keys and values.
        """
        cases = [
            ({"kind": "command", "program": "ec" + NUL + "ho"}, "execution.program"),
            ({"kind": "command", "program": "echo", "args": ["a", "b" + NUL]}, "execution.args[1]"),
            ({"kind": "script", "script": "true", "interpreter": ["sh", NUL]}, "execution.interpreter[1]"),
            ({"kind": "script", "script": "echo a" + NUL}, "execution.script"),
            ({"kind": "command", "program": "echo", "env": {"A": "x" + NUL}}, 'execution.env["A"]'),
            ({"kind": "command", "program": "echo", "env": {"A" + NUL: "x"}}, "execution.env"),
        ]
        for execution, field in cases:
            self.assertRejected(body(execution), field, "NUL")

    def test_script_file_may_hold_nul(self) -> None:
        """
        A script with an interpreter is written to a file, not passed as an
        argument: it may hold NUL.
        """
        self.assertAccepted(body({"kind": "script", "script": "x" + NUL, "interpreter": ["python3"]}))

    def test_sandbox_paths(self) -> None:
        """
        C{workspace_subdir} and C{rootfs}.
        """
        self.assertRejected(body(sandbox={"workspace_subdir": "a" + NUL + "b"}), "sandbox.workspace_subdir", "NUL")
        self.assertRejected(body(sandbox={"rootfs": "/srv/" + NUL}), "sandbox.rootfs", "NUL")


class LengthTests(BoundsTestCase):
    """
    Path components (C{NAME_MAX}), paths (C{PATH_MAX}) and argument
    strings (C{MAX_ARG_STRLEN}), counted in bytes of UTF-8, exactly at
    their edges.
    """

    def test_workspace_subdir(self) -> None:
        """
        Components of at most 255 bytes (a 300-character one used to fail
        the submission with ENAMETOOLONG), at most 1024 bytes in all.
        """
        self.assertAccepted(body(sandbox={"workspace_subdir": "a" * 255}))
        self.assertRejected(body(sandbox={"workspace_subdir": "a" * 300}), "sandbox.workspace_subdir", "255")
        self.assertRejected(body(sandbox={"workspace_subdir": "a" * 256}), "sandbox.workspace_subdir", "256 bytes")
        # Two bytes each in UTF-8: 128 characters are 256 bytes.
        self.assertRejected(body(sandbox={"workspace_subdir": "é" * 128}), "sandbox.workspace_subdir", "256 bytes")
        long_path = "/".join(["a" * 255] * 4) + "/"
        self.assertEqual(len(long_path), 1024)
        self.assertAccepted(body(sandbox={"workspace_subdir": long_path}))
        self.assertRejected(
            body(sandbox={"workspace_subdir": long_path + "e"}), "sandbox.workspace_subdir", "1025 bytes", "1024"
        )

    def test_program_and_interpreter_paths(self) -> None:
        """
        C{program} and C{interpreter[0]} are paths: 4095 bytes, components
        of 255.
        """
        path = "/".join(["a" * 255] * 16)[:4095]
        self.assertAccepted(body({"kind": "command", "program": path}))
        self.assertRejected(body({"kind": "command", "program": path + "a"}), "execution.program", "4095")
        self.assertRejected(body({"kind": "command", "program": "/bin/" + "x" * 256}), "execution.program", "255")
        self.assertRejected(
            body({"kind": "script", "script": "true", "interpreter": ["y" * 256]}),
            "execution.interpreter[0]",
            "255",
        )
        # Only the first element of the interpreter is a path.
        self.assertAccepted(body({"kind": "script", "script": "true", "interpreter": ["sh", "-" * 300]}))

    def test_rootfs(self) -> None:
        """
        C{rootfs} is a path wherever it is given.
        """
        self.assertRejected(body(sandbox={"rootfs": "/" + "r" * 256}), "sandbox.rootfs", "255")

    def test_argument_strings(self) -> None:
        """
        One argument, interpreter element or C{/bin/sh -c} script: at most
        131071 bytes; one environment entry C{NAME=value} too.
        """
        most = bounds.ARG_STRING_MAX_BYTES
        self.assertEqual(most, 131071)
        self.assertAccepted(body({"kind": "command", "program": "echo", "args": ["a" * most]}))
        self.assertRejected(
            body({"kind": "command", "program": "echo", "args": ["a" * (most + 1)]}), "execution.args[0]", str(most)
        )
        self.assertRejected(body({"kind": "script", "script": "a" * (most + 1)}), "execution.script", str(most))
        self.assertAccepted(body({"kind": "command", "program": "echo", "env": {"K": "v" * (most - 2)}}))
        self.assertRejected(
            body({"kind": "command", "program": "echo", "env": {"K": "v" * (most - 1)}}),
            'execution.env["K"]',
            "NAME=value",
            str(most),
        )


class LimitTests(BoundsTestCase):
    """
    Each limit is accepted at its bound and refused one above it, with a
    message naming the field and the bound.
    """

    def test_edges(self) -> None:
        """
        C{wall_time_ms}, C{cpu_time_sec}, C{memory_bytes}, C{pids_max}.
        """
        for name, bound in (
            ("wall_time_ms", bounds.WALL_TIME_MS_MAX),
            ("cpu_time_sec", bounds.CPU_TIME_SEC_MAX),
            ("memory_bytes", bounds.MEMORY_BYTES_MAX),
            ("pids_max", bounds.PIDS_MAX_MAX),
        ):
            self.assertAccepted(body(limits={name: bound}))
            self.assertRejected(body(limits={name: bound + 1}), f"limits.{name}", f"at most {bound}")

    def test_reported_values(self) -> None:
        """
        The values found today: C{cpu_time_sec} 2^64-1 (it used to fail the
        task with "Exception occurred in preexec_fn") and the contract's
        largest integer for every limit.
        """
        self.assertRejected(body(limits={"cpu_time_sec": 18446744073709551615}), "limits.cpu_time_sec", "RLIMIT_CPU")
        for name in ("wall_time_ms", "memory_bytes", "pids_max"):
            self.assertRejected(body(limits={name: 2**64 - 1}), f"limits.{name}")


class KernelTests(SynchronousTestCase):
    """
    The bounds are what this kernel really accepts, one past them what it
    refuses.
    """

    def spawn_with(self, limits: ResourceLimits, script: str) -> str:
        """
        Run C{/bin/sh -c script} through the supervisor's real spawn path
        with the rlimits the launcher derives from C{limits}; its stdout.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        spec = launcher.LaunchSpec(
            argv=("/bin/sh", "-c", script),
            env={"PATH": "/usr/bin:/bin"},
            cwd=work,
            stdout_path=os.path.join(work, "out"),
            stderr_path=os.path.join(work, "err"),
            rlimits=launcher.rlimits_for(plan_for(limits, cpu_enforced=True, memory_enforced=True)),
        )
        spawned = launcher.spawn(spec)
        _, status = os.waitpid(spawned.pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        with open(spec.stdout_path, encoding="ascii") as f:
            return f.read()

    def test_rlimits(self) -> None:
        """
        The largest C{cpu_time_sec} and C{memory_bytes} become real rlimits
        (soft, and hard a second above for the CPU); one more cannot even
        be handed to C{setrlimit}.
        """
        out = self.spawn_with(
            ResourceLimits(cpu_time_sec=bounds.CPU_TIME_SEC_MAX, memory_bytes=bounds.MEMORY_BYTES_MAX),
            "ulimit -t; ulimit -H -t; ulimit -v",
        )
        soft, hard, memory = out.split()
        self.assertEqual((int(soft), int(hard)), (bounds.CPU_TIME_SEC_MAX, bounds.CPU_TIME_SEC_MAX + 1))
        self.assertEqual(int(memory), bounds.MEMORY_BYTES_MAX // 1024)
        # The C spawn path refuses it before the fork, subprocess's in the
        # child ("Exception occurred in preexec_fn").
        with self.assertRaises((launcher.LaunchError, OverflowError)):
            self.spawn_with(ResourceLimits(cpu_time_sec=bounds.CPU_TIME_SEC_MAX + 1), "true")

    def test_pids_max(self) -> None:
        """
        A pids cgroup takes C{pids_max + 1} (what the supervisor writes
        first) at the bound, and refuses one more.
        """
        if os.geteuid() != 0:
            raise self.skipTest("making a cgroup needs root")
        root = "/sys/fs/cgroup/pids"
        if not os.path.isfile(os.path.join(root, "cgroup.procs")):
            raise self.skipTest("no cgroup v1 pids hierarchy")
        group = os.path.join(root, f"execgo-bounds-test-{os.getpid()}")
        os.mkdir(group)
        self.addCleanup(os.rmdir, group)
        control = os.path.join(group, "pids.max")
        for value, accepted in ((bounds.PIDS_MAX_MAX + 1, True), (bounds.PIDS_MAX_MAX + 2, False)):
            fd = os.open(control, os.O_WRONLY)
            try:
                if accepted:
                    os.write(fd, str(value).encode())
                else:
                    with self.assertRaises(OSError):
                        os.write(fd, str(value).encode())
            finally:
                os.close(fd)
        with open(control) as f:
            self.assertEqual(int(f.read()), bounds.PIDS_MAX_MAX + 1)

    def test_memory_cgroup(self) -> None:
        """
        A memory cgroup takes the largest C{memory_bytes} as its limit
        (rounded down to pages).
        """
        if os.geteuid() != 0:
            raise self.skipTest("making a cgroup needs root")
        if os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
            root, name = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
        elif "memory" in _read("/sys/fs/cgroup/cgroup.subtree_control").split():
            root, name = "/sys/fs/cgroup", "memory.max"
        else:
            raise self.skipTest("no memory cgroup to write to")
        group = os.path.join(root, f"execgo-bounds-test-{os.getpid()}")
        os.mkdir(group)
        self.addCleanup(os.rmdir, group)
        fd = os.open(os.path.join(group, name), os.O_WRONLY)
        try:
            os.write(fd, str(bounds.MEMORY_BYTES_MAX).encode())
        finally:
            os.close(fd)
        limit = int(_read(os.path.join(group, name)))
        self.assertGreater(limit, bounds.MEMORY_BYTES_MAX - 65536)

    def test_wall_time_wait(self) -> None:
        """
        The supervisor's loop waits with C{selectors.DefaultSelector}: a
        wait as long as the largest wall time is accepted (it returns at
        once here, something being ready), a wait past 2^31-1 ms raises.
        """
        if not hasattr(select, "epoll") and not hasattr(select, "poll"):
            raise self.skipTest("no epoll or poll")
        reader, writer = os.pipe()
        self.addCleanup(os.close, reader)
        self.addCleanup(os.close, writer)
        os.write(writer, b"x")
        selector = selectors.DefaultSelector()
        self.addCleanup(selector.close)
        selector.register(reader, selectors.EVENT_READ)
        self.assertEqual(len(selector.select(bounds.WALL_TIME_MS_MAX / 1000.0)), 1)
        with self.assertRaises(OverflowError):
            selector.select((2**31) / 1000.0)


def _read(path: str) -> str:
    """
    A control file's text, or C{""} when it cannot be read.
    """
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


if sys.platform != "linux":  # pragma: no cover - the runtime is Linux-only
    KernelTests.skip = "Linux only"  # type: ignore[attr-defined]
