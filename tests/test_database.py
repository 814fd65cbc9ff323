"""
Tests for L{execgo.server.database.Store}, the SQLite
L{execgo.server.taskstore.TaskStore}: each method through a real C{adbapi}
pool (its own database thread, the real reactor) on a temporary SQLite
file, with real task directories.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
import time
from typing import Any, List

import attrs
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.trial.unittest import SynchronousTestCase, TestCase

from execgo.core import errors, outcome, records
from execgo.core.models import ControlContext, SubmitRequest
from execgo.core.reservation import Reservation
from execgo.server.database import Store, open_sqlite_pool
from execgo.server.taskstore import TaskStore
from execgo.store import connection, idempotency, terminal, transitions
from execgo.store.backend import SQLITE
from execgo.store.listing import ListQuery
from tests.fakes import command, new_task

NOW = 1_700_000_000_000


class SeamTests(SynchronousTestCase):
    """
    L{Store} is a L{TaskStore}: every method the protocol names.
    """

    def test_every_method(self) -> None:
        """
        Each public name of the protocol is a method of L{Store} with the
        same parameters.
        """
        names = [name for name in vars(TaskStore) if not name.startswith("_") and callable(vars(TaskStore)[name])]
        self.assertIn("finish", names)
        for name in names:
            ours = inspect.signature(getattr(Store, name))
            theirs = inspect.signature(getattr(TaskStore, name))
            self.assertEqual(list(ours.parameters), list(theirs.parameters), name)


class StoreTests(TestCase):
    """
    A L{Store} over a fresh data directory, its jobs in the pool's thread.
    """

    timeout = 30

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.tasks_dir = os.path.join(self.data_dir, "tasks")
        os.makedirs(self.tasks_dir)
        self.store: TaskStore = Store(open_sqlite_pool(reactor, os.path.join(self.data_dir, "runtime.db")))
        self.addCleanup(self.store.close)
        return self.store.init_schema()

    async def submit(self, task_id: str, **changes: Any) -> records.NewTask:
        """
        Submit a task through the store (files and row).
        """
        task = attrs.evolve(new_task(self.data_dir, task_id, command()), **changes)
        await self.store.submit(task, SubmitRequest(execution=command(), task_id=task_id), 100, lambda: None, NOW)
        return task

    async def test_submit_and_read(self) -> None:
        """
        A submission's files and row; then every read sees it.
        """
        task = await self.submit("t")
        self.assertTrue(os.path.isfile(task.paths.request_path))
        self.assertEqual(await self.store.tenant_of("t"), (True, None))
        self.assertEqual(await self.store.tenant_of("nope"), (False, None))
        found = await self.store.snapshot("t", NOW)
        assert found is not None
        self.assertEqual((found[0]["task_id"], found[0]["status"], found[1]), ("t", "accepted", None))
        self.assertIsNone(await self.store.snapshot("nope", NOW))
        page = await self.store.list_page(ListQuery(), NOW)
        self.assertEqual([entry["task_id"] for entry in page["tasks"]], ["t"])
        events = await self.store.events("t")
        assert events is not None
        self.assertEqual([e.event_type for e in events], ["submitted", "accepted", "planned"])
        self.assertIsNone(await self.store.events("nope"))
        status, later = await self.store.poll_events("t", events[0].seq)
        self.assertEqual((status, [e.event_type for e in later]), ("accepted", ["accepted", "planned"]))
        self.assertEqual(await self.store.resources(), ([], 1))
        self.assertEqual(dict((await self.store.metrics()).by_status)["accepted"], 1)
        state = await self.store.scheduler_state(10)
        self.assertEqual(([r.task_id for r in state.active], [q.task_id for q in state.queued]), ([], ["t"]))

    async def test_pool_connections_name_their_backend(self) -> None:
        """
        The connections of L{open_pool} carry the SQLite backend, so the
        store's functions run in its threads ask it (not a default).
        """
        pool = open_sqlite_pool(reactor, os.path.join(self.data_dir, "runtime.db"))
        self.addCleanup(pool.close)
        found = await pool.runWithConnection(lambda conn: getattr(conn, "backend", None))
        self.assertIs(found, SQLITE)

    async def test_submit_refusals(self) -> None:
        """
        A duplicate id is a conflict that leaves the first task's files;
        a full queue is refused before any file is made; a retry of a
        keyed submission is answered with the stored task.
        """
        keyed = {"idempotency_key": "k", "idempotency_hash": "h", "idempotency_scope": records.OPEN_SCOPE}
        first = await self.submit("t", **keyed)
        with self.assertRaises(errors.Conflict):
            await self.submit("t")
        self.assertTrue(os.path.isfile(first.paths.request_path))
        with self.assertRaises(idempotency.Replay):
            await self.submit("other", **keyed)
        self.assertTrue(await self.store.settle_conflict("k2", "h", "t", records.OPEN_SCOPE))
        self.assertIsNone(await self.store.settle_conflict("k2", "h", "unborn", records.OPEN_SCOPE))
        task = new_task(self.data_dir, "full", command())
        with self.assertRaises(errors.QueueFull):
            await self.store.submit(task, SubmitRequest(execution=command()), 1, lambda: None, NOW)
        self.assertFalse(os.path.exists(task.paths.task_dir))

    async def test_queue_bound_within_a_hop(self) -> None:
        """
        Submissions sent together (the last four share a writer hop, whose
        checks all run before its inserts) count those of their hop
        prepared before them against the queue bound: the queue never
        holds more than it may, and a refused one makes no file.
        """
        tasks = [new_task(self.data_dir, f"t{index}", command()) for index in range(5)]
        sent = [
            self.store.submit(task, SubmitRequest(execution=command(), task_id=task.task_id), 3, lambda: None, NOW)
            for task in tasks
        ]
        outcomes = await DeferredList(sent, consumeErrors=True)
        self.assertEqual([ok for ok, _ in outcomes], [True, True, True, False, False])
        for _, failure in outcomes[3:]:
            failure.trap(errors.QueueFull)
        state = await self.store.scheduler_state(10)
        self.assertEqual([queued.task_id for queued in state.queued], ["t0", "t1", "t2"])
        self.assertEqual(sorted(os.listdir(self.tasks_dir)), ["t0", "t1", "t2"])

    async def test_kill_queued_and_finish(self) -> None:
        """
        A kill cancels a queued task with its C{result.json}; a second end
        changes nothing; an owner's task is refused to another owner.
        """
        task = await self.submit("q")
        killed = await self.store.kill("q", None, NOW + 1)
        self.assertEqual((killed.flagged, killed.cancelled_queued), (True, True))
        self.assertEqual(killed.snapshot["status"], "cancelled")
        with open(task.paths.result_path, encoding="utf-8") as f:
            self.assertEqual(json.load(f)["status"], "cancelled")
        self.assertFalse(await self.store.finish("q", outcome.failed("internal", "late"), NOW + 2))
        with self.assertRaises(errors.NotFound):
            await self.store.kill("nope", None, NOW)
        await self.submit("o", control_context=ControlContext(owner="alice"))
        with self.assertRaises(errors.PermissionDenied):
            await self.store.kill("o", "bob", NOW)
        self.assertTrue((await self.store.kill("o", "bob", NOW, any_owner=True)).cancelled_queued)

    async def test_recovery_transitions(self) -> None:
        """
        Recovery's writes and reads: by status, an orphan reservation
        released, a running task recovered, a lost one failed.
        """
        await self.submit("a")
        await self.submit("r")
        self.assertIsNotNone(transitions.claim(self._conn(), "r", 1, NOW + 1))
        self.assertEqual([r.task_id for r in await self.store.by_status(("accepted", "running"))], ["a", "r"])
        await self.store.release_orphan_reservation("a", NOW + 2)
        self.assertTrue(await self.store.mark_recovered("r", Reservation(task_slots=1), NOW + 3))
        self.assertFalse(await self.store.mark_recovered("a", None, NOW + 3))
        self.assertTrue(await self.store.finish("r", outcome.failed("internal", "lost"), NOW + 4, ("running",)))
        self.assertEqual([r.task_id for r in await self.store.by_status(("failed",))], ["r"])

    async def test_gc_and_repairs(self) -> None:
        """
        Collection deletes expired tasks with their directories; a missing
        C{result.json} is marked and written again from the row.
        """
        task = await self.submit("old")
        await self.store.finish("old", outcome.cancelled("x"), NOW + 1)
        os.unlink(task.paths.result_path)
        self.assertEqual(await self.store.mark_missing_results(10), ["old"])
        self.assertEqual(await self.store.repair_results(NOW + 2, 10), (["old"], []))
        self.assertTrue(os.path.isfile(task.paths.result_path))
        self.assertEqual(await self.store.gc(NOW, 10), ([], []))
        self.assertEqual(await self.store.gc(NOW + 1, 10), (["old"], []))
        self.assertFalse(os.path.exists(task.paths.task_dir))
        self.assertEqual(await self.store.events("old"), None)

    async def test_orphan_directories(self) -> None:
        """
        The names under the tasks directory, and the stale ones without a
        row removed (the store's opening is the line).
        """
        await self.submit("real")
        stale = os.path.join(self.tasks_dir, "stale")
        os.makedirs(stale)
        then = time.time() - 3600
        os.utime(stale, (then, then))
        os.makedirs(os.path.join(self.tasks_dir, "not~a-task"))
        names = sorted(await self.store.task_dir_names(self.tasks_dir))
        self.assertEqual(names, ["real", "stale"])
        removed, later, failures = await self.store.collect_orphans(self.tasks_dir, names, time.time(), 10)
        self.assertEqual((removed, later, failures), (["stale"], [], []))
        self.assertEqual(sorted(os.listdir(self.tasks_dir)), ["not~a-task", "real"])

    async def test_logs(self) -> None:
        """
        A log opened and read in chunks; an unknown task has none.
        """
        task = await self.submit("t")
        with open(task.paths.stdout_path, "wb") as out:
            out.write(b"hello")
        opened = await self.store.open_log("t", "stdout")
        assert opened is not None and opened.fd is not None
        self.addCleanup(os.close, opened.fd)
        self.assertEqual(opened.size, 5)
        self.assertEqual(await self.store.read_log("t", opened.fd, 1, 5), (b"ello", True))
        self.assertEqual(await self.store.read_log("t", opened.fd, 5, None), (b"", False))
        self.assertIsNone(await self.store.open_log("nope", "stdout"))

    async def test_jobs_off_the_reactor_thread(self) -> None:
        """
        The store's jobs run in the pool's thread, never the reactor's.
        """
        await self.submit("t")
        threads: List[threading.Thread] = []
        real = terminal.finish

        def finish(*args: Any) -> bool:
            threads.append(threading.current_thread())
            return real(*args)

        self.patch(terminal, "finish", finish)
        self.assertTrue(await self.store.finish("t", outcome.cancelled("x"), NOW + 1))
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.current_thread())

    def _conn(self) -> Any:
        """
        A connection of the test's own (the supervisor's side of the
        store), closed at cleanup.
        """
        conn = connection.connect(os.path.join(self.data_dir, "runtime.db"))
        self.addCleanup(conn.close)
        return conn
