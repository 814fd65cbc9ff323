"""
Tests for L{execgo.server.upkeep}, L{execgo.store.repairs} and the write
paths they back up: what a storage fault leaves behind (temporary files,
task directories without a row) or leaves out (a terminal task's
C{result.json}), through the real store functions, the real supervisor
engine and the in-memory runtime.  Faults
are injected (an C{OSError} from the write path) or real (a small full
tmpfs, as root).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from typing import Any, Callable, List

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from execgo.core import errors, records
from execgo.core.models import SandboxPolicy
from execgo.server import upkeep
from execgo.store import (
    connection,
    reads,
    repairs,
    schema,
    submission,
    taskfiles,
    terminal,
    transitions,
)
from execgo.supervisor import endings as supervisor_module
from tests.apifixture import InProcessRuntime, tmp_data_dir
from tests.fakes import command, new_task
from tests.test_supervisor import EngineTestCase, StoreMixin

NOW = 1_700_000_000_000


def temporaries(task_dir: str) -> List[str]:
    """
    The C{result.json} temporaries in a task directory.
    """
    return sorted(name for name in os.listdir(task_dir) if ".tmp-" in name)


def marked(conn: sqlite3.Connection) -> List[str]:
    """
    The ids marked C{result_missing}.
    """
    return [row[0] for row in conn.execute("SELECT task_id FROM tasks WHERE result_missing = 1 ORDER BY task_id")]


def failing(number: int = errno.ENOSPC) -> Callable[..., Any]:
    """
    A C{prepare_result} that fails as a full (or other) file system does.
    """

    def prepare(*args: Any, **kwargs: Any) -> Any:
        raise OSError(number, os.strerror(number))

    return prepare


def mount_tmpfs(test: Any, size: str) -> str:
    """
    A small tmpfs for C{test} (root on Linux only), unmounted at cleanup.
    """
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        raise test.skipTest("mounting a small tmpfs needs root on Linux")
    path = os.path.abspath(test.mktemp())
    os.makedirs(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    test.addCleanup(subprocess.run, ["umount", "-l", path], check=False)
    return path


def fill(directory: str) -> str:
    """
    Fill the file system of C{directory}; the filler's path.
    """
    filler = os.path.join(directory, "filler")
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


class TerminalWriteTests(StoreMixin, SynchronousTestCase):
    """
    A terminal write whose C{result.json} cannot be written still happens,
    leaves no temporary file and marks the task; L{repairs.repair_results}
    writes the file once it can.
    """

    def setUp(self) -> None:
        self.make_store()

    def finish(self, task_id: str, prepare: Callable[..., Any]) -> bool:
        """
        Submit a task and end it, its C{result.json} written aside by
        C{prepare} (in place of L{taskfiles.prepare_result}).
        """
        self.insert(task_id, command())
        patched = self.patch(taskfiles, "prepare_result", prepare)
        try:
            return terminal.finish(self.conn, task_id, records.Outcome(status="success"), NOW)
        finally:
            patched.restore()

    def test_unwritten_result_marked(self) -> None:
        """
        A full disk while rendering: the task is terminal, marked, without
        C{result.json} and without temporaries; a repair writes it as the
        terminal write would have, once.
        """
        self.assertTrue(self.finish("t", failing()))
        record = self.load("t")
        self.assertEqual(record.status, "success")
        self.assertEqual(marked(self.conn), ["t"])
        self.assertFalse(os.path.exists(record.paths.result_path))
        self.assertEqual(temporaries(record.paths.task_dir), [])
        self.assertEqual(repairs.repair_results(self.conn, NOW + 5, 64), (["t"], []))
        self.assertEqual(self.result_json("t"), json.loads(json.dumps(taskfiles.snapshot(record, NOW + 5))))
        self.assertEqual(marked(self.conn), [])
        self.assertEqual(repairs.repair_results(self.conn, NOW + 6, 64), ([], []))

    def test_rename_failure_marked(self) -> None:
        """
        A result written aside that cannot be renamed into place: marked,
        and its temporary removed.
        """
        temporary: List[str] = []

        def prepare(record: records.TaskRecord, *args: Any) -> Any:
            settle = self.real_prepare(record, *args)
            temporary.extend(temporaries(record.paths.task_dir))
            # os.replace onto a directory that is not empty fails.
            os.mkdir(record.paths.result_path)
            os.mkdir(os.path.join(record.paths.result_path, "x"))
            return settle

        self.assertTrue(self.finish("t", prepare))
        task_dir = self.load("t").paths.task_dir
        self.assertEqual(len(temporary), 1)
        self.assertEqual(temporaries(task_dir), [])
        self.assertEqual(marked(self.conn), ["t"])

    def test_repair_waits_for_storage(self) -> None:
        """
        While the file still cannot be written the task stays marked (and
        its error is reported); leftover temporaries of failed removals
        go with the repair.
        """
        self.finish("t", failing(errno.EROFS))
        self.patch(taskfiles, "prepare_result", failing(errno.EROFS))
        done, failures = repairs.repair_results(self.conn, NOW, 64)
        self.assertEqual((done, [task_id for task_id, _ in failures]), ([], ["t"]))
        self.assertIn("Read-only file system", failures[0][1])
        self.assertEqual(marked(self.conn), ["t"])
        self.patch(taskfiles, "prepare_result", self.real_prepare)
        task_dir = self.load("t").paths.task_dir
        leftover = os.path.join(task_dir, "result.json.tmp-1-1")
        open(leftover, "w").close()
        self.assertEqual(repairs.repair_results(self.conn, NOW, 64), (["t"], []))
        self.assertEqual(temporaries(task_dir), [])
        self.assertEqual(self.result_json("t")["status"], "success")

    real_prepare = staticmethod(taskfiles.prepare_result)

    def test_repair_bounded_and_gone(self) -> None:
        """
        At most C{limit} a call; a marked task whose directory is gone is
        only unmarked.
        """
        for task_id in ("a", "b", "c"):
            self.finish(task_id, failing())
        os.rename(self.load("c").paths.task_dir, os.path.join(self.data_dir, "elsewhere"))
        done, _ = repairs.repair_results(self.conn, NOW, 2)
        self.assertEqual(len(done), 2)
        repairs.repair_results(self.conn, NOW, 2)
        self.assertEqual(marked(self.conn), [])
        self.assertFalse(os.path.exists(self.load("c").paths.task_dir))

    def test_scan_marks_recent(self) -> None:
        """
        The start-up scan marks the most recently finished tasks that have
        no C{result.json} (their directory there), within its limit.  (The
        rows are ended without their files, as a supervisor of an older
        version may have left them.)
        """
        for index, task_id in enumerate(("old", "mid", "new", "kept")):
            self.insert(task_id, command())
            terminal.write_terminal(self.conn, task_id, records.Outcome(status="success"), NOW + index)
        with open(self.load("kept").paths.result_path, "w") as f:
            f.write("{}")
        self.assertEqual(repairs.mark_missing_results(self.conn, 3), ["new", "mid"])
        self.assertEqual(marked(self.conn), ["mid", "new"])


class PrepareResultTests(SynchronousTestCase):
    """
    L{taskfiles.prepare_result} never leaves a temporary behind.
    """

    def test_full_disk(self) -> None:
        """
        On a full file system the write fails with C{ENOSPC} and the empty
        temporary it created is gone, however many times it is tried.
        """
        mount = mount_tmpfs(self, "256k")
        task = new_task(mount, "t", command(), make_dirs=True)
        conn = connection.connect(":memory:")
        self.addCleanup(conn.close)
        schema.init_schema(conn)
        transitions.insert_task(conn, task, NOW)
        record = reads.load_task(conn, "t")
        assert record is not None
        fill(mount)
        for _ in range(5):
            with self.assertRaises(OSError) as caught:
                taskfiles.prepare_result(record, NOW)
            self.assertEqual(caught.exception.errno, errno.ENOSPC)
        self.assertEqual(temporaries(task.paths.task_dir), [])


class EndRetryTests(EngineTestCase):
    """
    The supervisor's terminal write on a full data directory (a real
    small tmpfs; the store's refusal injected, as SQLite may still find
    room in its WAL): every retry fails, none leaves a temporary, and the
    write lands with its C{result.json} once space is back.
    """

    def make_store(self) -> None:
        mount = mount_tmpfs(self, "4m")
        self.data_dir = os.path.join(mount, "data")
        os.makedirs(os.path.join(self.data_dir, "tasks"))
        self.db = os.path.join(self.data_dir, "runtime.db")
        self.conn = connection.connect(self.db)
        self.addCleanup(self.conn.close)
        schema.init_schema(self.conn)

    def test_no_temporaries_after_failed_retries(self) -> None:
        """
        Eight failed attempts for two tasks leave no C{result.json.tmp-*};
        then both end C{success} with a C{result.json} matching the database.
        """
        self.patch(supervisor_module, "FINISH_RETRY_S", 0.01)
        real_write = terminal.write_terminal

        def refused(*args: Any) -> Any:
            raise sqlite3.OperationalError("database or disk is full")

        ids = ["f1", "f2"]
        self.launch_until_exited(ids)
        filler = fill(self.data_dir)
        self.patch(terminal, "write_terminal", refused)
        attempts = lambda: sum("cannot record the end" in line for line in self.logged)  # noqa: E731
        self.drive(until=lambda: attempts() >= 8, bound=5.0)
        for task_id in ids:
            self.assertEqual(self.load(task_id).status, "running")
            self.assertEqual(temporaries(self.load(task_id).paths.task_dir), [])
        self.assertTrue(any("No space left" in line or "full" in line for line in self.logged))
        os.unlink(filler)
        self.patch(terminal, "write_terminal", real_write)
        self.drive(bound=5.0)
        for task_id in ids:
            self.assertEqual(self.load(task_id).status, "success")
            self.assert_result_matches(task_id)
            self.assertEqual(temporaries(self.load(task_id).paths.task_dir), [])
        self.assertEqual(marked(self.conn), [])


class EndWithoutResultTests(EngineTestCase):
    """
    The supervisor ends a task whose C{result.json} cannot be written.
    """

    def test_marked_and_repaired(self) -> None:
        """
        The task ends C{success} and is reported; the row is marked and the
        supervisor logs it; the repair writes the file the supervisor
        would have.
        """
        self.patch(taskfiles, "prepare_result", failing(errno.EROFS))
        record = self.run_task("r", command("/bin/echo", "hi"))
        self.assertEqual(record.status, "success")
        self.assertFalse(os.path.exists(record.paths.result_path))
        self.assertEqual(temporaries(record.paths.task_dir), [])
        self.assertEqual(marked(self.conn), ["r"])
        self.assertTrue(any("cannot write the result.json of r" in line for line in self.logged))
        self.assertEqual([m["task_id"] for m in self.messages if m["ev"] == "finished"], ["r"])
        self.patch(taskfiles, "prepare_result", TerminalWriteTests.real_prepare)
        self.assertEqual(repairs.repair_results(self.conn, NOW, 64), (["r"], []))
        self.assert_result_matches("r")


class SubmitFilesTests(StoreMixin, SynchronousTestCase):
    """
    The store's own backstop for paths the file system refuses: the
    request's fault, nothing left on disk.
    """

    def setUp(self) -> None:
        self.make_store()

    def test_refused_paths(self) -> None:
        """
        A NUL or an over-long workspace (built in code, past validation)
        is C{InvalidInput} and leaves no task directory.
        """
        for subdir in ("a\u0000b", "/".join(["d" * 250] * 20)):
            task = new_task(self.data_dir, "t", command(), sandbox=SandboxPolicy(workspace_subdir=subdir))
            with self.assertRaises(errors.InvalidInput) as caught:
                submission.prepare_submit(self.conn, task, {}, 100, lambda: None, NOW)
            self.assertTrue(caught.exception.detail.startswith("sandbox.workspace_subdir: "))
            self.assertEqual(os.listdir(os.path.join(self.data_dir, "tasks")), [])


class RuntimeUpkeepTests(TestCase):
    """
    The repairs run by the in-memory runtime's GC pass and recovery.
    """

    timeout = 30

    def setUp(self) -> "defer.Deferred[None]":
        self.data_dir = tmp_data_dir(self)
        self.tasks = os.path.join(self.data_dir, "tasks")
        self.rt = InProcessRuntime(self.data_dir)
        self.addCleanup(lambda: defer.ensureDeferred(self.rt.stop()))
        return defer.ensureDeferred(self.rt.start())

    async def submit(self, task_id: str) -> None:
        code, _, content = await self.rt.request(
            "POST",
            "/api/v1/tasks",
            json.dumps({"task_id": task_id, "execution": {"kind": "command", "program": "true"}}).encode(),
        )
        self.assertEqual(code, 200, content)

    def orphan(self, name: str, age_s: float) -> str:
        """
        A task directory without a row, as a crash leaves it, C{age_s} old.
        """
        path = os.path.join(self.tasks, name)
        os.makedirs(os.path.join(path, "workspace"))
        for log in ("stdout.log", "stderr.log", "request.json"):
            open(os.path.join(path, log), "w").close()
        then = time.time() - age_s
        os.utime(path, (then, then))
        return path

    @defer.inlineCallbacks
    def test_orphans_collected(self) -> Any:
        """
        A GC pass removes directories without a row that are older than a
        minute or older than the store's opening, and keeps the young
        ones (a submission may be making them), the tasks' own, and
        whatever cannot be a task's.
        """
        yield defer.ensureDeferred(self.submit("real"))
        opened = self.rt.store.opened_s
        self.orphan("old", 3600)
        self.orphan("before-open", time.time() - opened + 5)
        young = self.orphan("young", 0)
        os.makedirs(os.path.join(self.tasks, "not~a-task"))
        open(os.path.join(self.tasks, "plain-file"), "w").close()
        yield defer.ensureDeferred(self.rt.runtime.collect_garbage())
        self.assertEqual(sorted(os.listdir(self.tasks)), ["not~a-task", "plain-file", "real", "young"])
        then = time.time() - 120
        os.utime(young, (then, then))
        yield defer.ensureDeferred(self.rt.runtime.collect_garbage())
        self.assertEqual(sorted(os.listdir(self.tasks)), ["not~a-task", "plain-file", "real"])
        code, _, _ = yield defer.ensureDeferred(self.rt.request("GET", "/api/v1/tasks/real"))
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_orphans_bounded_per_pass(self) -> Any:
        """
        At most L{upkeep.ORPHAN_REMOVE_BATCH} directories go in one pass;
        the rest in the next.
        """
        count = upkeep.ORPHAN_REMOVE_BATCH + 5
        for index in range(count):
            self.orphan(f"o{index}", 3600)
        yield defer.ensureDeferred(self.rt.runtime.collect_garbage())
        self.assertEqual(len(os.listdir(self.tasks)), 5)
        yield defer.ensureDeferred(self.rt.runtime.collect_garbage())
        self.assertEqual(os.listdir(self.tasks), [])

    @defer.inlineCallbacks
    def test_failed_insert_leaves_nothing(self) -> Any:
        """
        A submission whose row cannot be written (the store fails the
        insert) removes the files it made: no directory without a row.
        """
        conn = connection.connect(self.rt.config.database_path)
        conn.execute(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON tasks WHEN NEW.task_id = 'boom'"
            " BEGIN SELECT json('not json'); END"
        )
        conn.close()
        code, _, content = yield defer.ensureDeferred(
            self.rt.request(
                "POST",
                "/api/v1/tasks",
                json.dumps({"task_id": "boom", "execution": {"kind": "command", "program": "true"}}).encode(),
            )
        )
        self.assertEqual(json.loads(content)["error"]["code"], "internal")
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(os.listdir(self.tasks), [])

    @defer.inlineCallbacks
    def test_result_written_by_gc(self) -> Any:
        """
        A cancelled queued task whose C{result.json} could not be written
        gets it at the next GC pass, equal to its status.
        """
        yield defer.ensureDeferred(self.submit("q"))
        self.patch(taskfiles, "prepare_result", failing(errno.ENOSPC))
        code, _, _ = yield defer.ensureDeferred(self.rt.request("POST", "/api/v1/tasks/q/kill"))
        self.assertEqual(code, 200)
        result = os.path.join(self.tasks, "q", "result.json")
        self.assertFalse(os.path.exists(result))
        self.patch(taskfiles, "prepare_result", TerminalWriteTests.real_prepare)
        yield defer.ensureDeferred(self.rt.runtime.collect_garbage())
        _, _, content = yield defer.ensureDeferred(self.rt.request("GET", "/api/v1/tasks/q"))
        with open(result, encoding="utf-8") as f:
            self.assertEqual(json.load(f), json.loads(content))

    @defer.inlineCallbacks
    def test_result_written_at_start(self) -> Any:
        """
        Recovery writes the missing C{result.json} of recently finished
        tasks (here removed behind the runtime's back).
        """
        yield defer.ensureDeferred(self.submit("gone"))
        code, _, _ = yield defer.ensureDeferred(self.rt.request("POST", "/api/v1/tasks/gone/kill"))
        result = os.path.join(self.tasks, "gone", "result.json")
        os.unlink(result)
        yield defer.ensureDeferred(self.rt.runtime.recover())
        self.assertTrue(os.path.exists(result))
