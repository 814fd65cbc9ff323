"""
Tests for L{execgo.store.taskfiles}: the task file layout, log previews,
the snapshot read from them, and C{result.json}.
"""

from __future__ import annotations

import json
import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core import records
from execgo.core.encoding import compact, pretty
from execgo.core.models import ResourceLimits
from execgo.store import taskfiles
from tests.fakes import command, plan_for, record, shell

WHOLE_MS = 1776939330000
STAMP_MS = WHOLE_MS + 125  # 2026-04-23T10:15:30.125Z


class ScriptExtensionTests(SynchronousTestCase):
    """
    L{taskfiles.script_extension}: the script file's extension from its
    interpreter.
    """

    def test_table(self) -> None:
        """
        The first matching substring of C{interpreter[0]} picks the extension,
        C{sh} otherwise or without an interpreter.
        """
        cases = [
            (None, "sh"),
            ((), "sh"),
            (("python3",), "py"),
            (("/usr/bin/python3.11", "-u"), "py"),
            (("/bin/bash",), "sh"),
            (("zsh",), "zsh"),
            (("node",), "js"),
            (("perl",), "sh"),
            (("python-bash",), "py"),
            (("bash-node",), "sh"),
            (("env", "python3"), "sh"),
            (("PYTHON",), "sh"),
        ]
        for interpreter, extension in cases:
            self.assertEqual(taskfiles.script_extension(interpreter), extension, interpreter)


class TaskPathsTests(SynchronousTestCase):
    """
    L{taskfiles.task_paths}.
    """

    def test_command(self) -> None:
        """
        Every file lives in C{<data_dir>/tasks/<id>}; no script path for a
        command.
        """
        paths = taskfiles.task_paths("/d", "t1", command(), None)
        self.assertEqual(
            paths,
            records.TaskPaths(
                task_dir="/d/tasks/t1",
                workspace_dir="/d/tasks/t1/workspace",
                request_path="/d/tasks/t1/request.json",
                result_path="/d/tasks/t1/result.json",
                stdout_path="/d/tasks/t1/stdout.log",
                stderr_path="/d/tasks/t1/stderr.log",
                script_path=None,
            ),
        )

    def test_script(self) -> None:
        """
        A script's file sits in the task directory, named by its interpreter.
        """
        self.assertEqual(
            taskfiles.task_paths("/d", "t1", shell("x", ["node"]), None).script_path,
            "/d/tasks/t1/script.js",
        )
        self.assertEqual(
            taskfiles.task_paths("/d", "t1", shell("x"), None).script_path, "/d/tasks/t1/script.sh"
        )

    def test_workspace_subdir(self) -> None:
        """
        The workspace subdirectory is appended (normalised); C{""} and C{.}
        mean the workspace itself.
        """
        self.assertEqual(
            taskfiles.task_paths("/d", "t", command(), "a/./b").workspace_dir, "/d/tasks/t/workspace/a/b"
        )
        self.assertEqual(taskfiles.task_paths("/d", "t", command(), "").workspace_dir, "/d/tasks/t/workspace")
        self.assertEqual(taskfiles.task_paths("/d", "t", command(), ".").workspace_dir, "/d/tasks/t/workspace")


class ReadPreviewTests(SynchronousTestCase):
    """
    L{taskfiles.read_preview}: the head of a log, decoded as UTF-8 with
    replacement, and whether the log is longer.
    """

    def write(self, data: bytes) -> str:
        """
        A temporary file holding C{data}.
        """
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(data)
        return path

    def test_missing(self) -> None:
        """
        A missing file is C{("", False)}.
        """
        self.assertEqual(taskfiles.read_preview(self.mktemp(), 10), ("", False))

    def test_short_and_exact(self) -> None:
        """
        A file no longer than the limit is returned whole, not truncated.
        """
        self.assertEqual(taskfiles.read_preview(self.write(b"hello"), 10), ("hello", False))
        self.assertEqual(taskfiles.read_preview(self.write(b"hello"), 5), ("hello", False))
        self.assertEqual(taskfiles.read_preview(self.write(b""), 5), ("", False))

    def test_truncated(self) -> None:
        """
        A longer file gives its head and the truncation flag.
        """
        self.assertEqual(taskfiles.read_preview(self.write(b"hello world"), 5), ("hello", True))
        self.assertEqual(taskfiles.read_preview(self.write(b"hello"), 4), ("hell", True))

    def test_many_slices(self) -> None:
        """
        A preview longer than one slice (read and decoded a slice at a
        time) is exactly the bytes decoded at once, multibyte and invalid
        sequences across slice boundaries included, whatever the cut.
        """
        data = ("x€😀é".encode("utf-8") + b"\xff\xc3") * 60_000
        path = self.write(data)
        for limit in (len(data), 500_001, 262_145, 262_143):
            self.assertEqual(
                taskfiles.read_preview(path, limit),
                (data[:limit].decode("utf-8", errors="replace"), limit < len(data)),
            )

    def test_huge_limit(self) -> None:
        """
        A client-controlled huge limit does not allocate the limit: the read
        is bounded by the file size.
        """
        self.assertEqual(taskfiles.read_preview(self.write(b"abc"), 2**63 - 1), ("abc", False))

    def test_invalid_utf8(self) -> None:
        """
        Invalid sequences become U+FFFD; valid multibyte text is kept.
        """
        self.assertEqual(
            taskfiles.read_preview(self.write(b"a\xffb\xc3\xa9"), 100), ("a\ufffdb\u00e9", False)
        )

    def test_cut_multibyte(self) -> None:
        """
        A multibyte character cut by the limit becomes U+FFFD.
        """
        path = self.write("ab\u20ac".encode("utf-8"))  # € is e2 82 ac
        self.assertEqual(taskfiles.read_preview(path, 4), ("ab\ufffd", True))
        self.assertEqual(taskfiles.read_preview(path, 3), ("ab\ufffd", True))
        self.assertEqual(taskfiles.read_preview(path, 5), ("ab\u20ac", False))


class SnapshotTests(SynchronousTestCase):
    """
    L{taskfiles.snapshot}: the status snapshot with the previews read.
    """

    def test_snapshot_reads_logs(self) -> None:
        """
        L{taskfiles.snapshot} reads both previews with the task's limits.
        """
        data_dir = os.path.abspath(self.mktemp())
        task = record(
            "t", "accepted", data_dir=data_dir, plan=plan_for(),
            limits=ResourceLimits(stdout_max_bytes=3, stderr_max_bytes=10),
        )
        os.makedirs(task.paths.task_dir)
        with open(task.paths.stdout_path, "wb") as out:
            out.write(b"abcdef")
        out = taskfiles.snapshot(task, STAMP_MS)
        self.assertEqual(
            (out["stdout"], out["stdout_truncated"], out["stderr"], out["stderr_truncated"]),
            ("abc", True, "", False),
        )


class PrepareResultTests(SynchronousTestCase):
    """
    L{taskfiles.prepare_result}: C{result.json} written aside, then put in place
    or thrown away.
    """

    def terminal(self) -> "records.TaskRecord":
        data_dir = os.path.abspath(self.mktemp())
        done = record("demo-1", "success", data_dir=data_dir, plan=plan_for(),
                      finished_at_ms=STAMP_MS, duration_ms=3)
        os.makedirs(done.paths.task_dir)
        return done

    def test_put_in_place(self) -> None:
        """
        Settled with C{True}, the snapshot is C{result.json}: pretty JSON
        with two-space indentation, raw UTF-8, no trailing newline, and no
        temporary file left behind.
        """
        done = self.terminal()
        settle = taskfiles.prepare_result(done, STAMP_MS)
        self.assertFalse(os.path.exists(done.paths.result_path))
        settle(True)
        with open(done.paths.result_path, "rb") as written:
            text = written.read().decode("utf-8")
        value = taskfiles.snapshot(done, STAMP_MS)
        self.assertEqual(text, json.dumps(value, indent=2, ensure_ascii=False))
        self.assertFalse(text.endswith("\n"))
        self.assertEqual(json.loads(text)["status"], "success")
        self.assertEqual(os.listdir(done.paths.task_dir), ["result.json"])

    def test_replaces(self) -> None:
        """
        A second result replaces the whole file.
        """
        done = self.terminal()
        with open(done.paths.result_path, "w") as old:
            old.write("x" * 100000)
        taskfiles.prepare_result(done, STAMP_MS)(True)
        with open(done.paths.result_path) as written:
            self.assertEqual(json.load(written)["task_id"], "demo-1")

    def test_thrown_away(self) -> None:
        """
        Settled with C{False} (the terminal write did not take), nothing is
        left: no C{result.json}, no temporary file.
        """
        done = self.terminal()
        taskfiles.prepare_result(done, STAMP_MS)(False)
        self.assertEqual(os.listdir(done.paths.task_dir), [])

    def test_rendered(self) -> None:
        """
        The caller is handed the snapshot and the size of the file's text,
        which is at least the size of the snapshot's compact encoding.
        """
        done = self.terminal()
        seen: list = []
        taskfiles.prepare_result(done, STAMP_MS, lambda status, size: seen.append((status, size)))(True)
        with open(done.paths.result_path, "rb") as written:
            data = written.read()
        [(status, size)] = seen
        self.assertEqual(status, json.loads(data))
        self.assertEqual(size, len(data))
        self.assertGreaterEqual(size, len(compact(status)))

    def test_ceiling(self) -> None:
        """
        With a ceiling, a task stored with larger limits (an older store)
        gets previews of at most the ceiling in C{result.json}; a long
        preview full of escapes is written exactly as L{pretty}
        renders it.
        """
        done = self.terminal()
        done = attrs.evolve(done, limits=attrs.evolve(done.limits, stdout_max_bytes=2**63 - 1))
        with open(done.paths.stdout_path, "wb") as log:
            log.write(b"\x00\xff\"x" * 100_000)
        seen: list = []
        taskfiles.prepare_result(done, STAMP_MS, lambda status, size: seen.append((status, size)), 150_000)(True)
        with open(done.paths.result_path, "rb") as written:
            data = written.read()
        [(status, size)] = seen
        self.assertEqual(len(status["stdout"]), 150_000)
        self.assertIs(status["stdout_truncated"], True)
        self.assertEqual(data, pretty(status).encode("utf-8"))
        self.assertEqual(size, len(data))
        self.assertEqual(taskfiles.snapshot(done, STAMP_MS, 10)["stdout"], "\x00\ufffd\"x" * 2 + "\x00\ufffd")
