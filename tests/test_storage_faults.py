"""
Storage faults with the real server: a data directory it cannot
use, a full file system, and a store that cannot take a write.  The file
systems are small tmpfs mounts made by the test, so these run only as root
on Linux.

First, in memory: how a storage failure is classified
(L{errors.from_storage}) and what C{/readyz} answers for one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from typing import Any, Optional

from twisted.enterprise import adbapi
from twisted.internet import defer, error, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from execgo.core import errors
from tests.serverfixture import (
    SERVE_COMMAND,
    ApiClient,
    ServerProcess,
    clean_environ,
    poll,
    run_process,
)
from tests.test_api import APITestsBase
from tests.test_upkeep import fill

COMMAND = {"execution": {"kind": "command", "program": "/bin/echo", "args": ["hi"]}}


def _mount_tmpfs(path: str, options: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)


def _umount(path: str) -> None:
    subprocess.run(["umount", "-l", path], check=False)


class DriverError(Exception):
    """
    A database driver's error that carries an SQL standard C{sqlstate}, as
    client libraries for server databases raise them.
    """

    def __init__(self, message: str, sqlstate: Optional[str]) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ClassificationTests(SynchronousTestCase):
    """
    L{errors.from_storage}: a storage failure is the store's state of the
    moment (503), a full store (507) or a fault (500).
    """

    def assertClassified(self, failure: BaseException, status: int, message: str) -> None:
        """
        C{failure} becomes an error with C{status} and C{message}.
        """
        found = errors.from_storage(failure)
        self.assertEqual((found.http_status, found.message), (status, message), repr(failure))

    def test_sqlite_and_files(self) -> None:
        """
        SQLite's and the file system's errors keep their mapping: locked,
        busy, read only or not permitted 503, full 507, anything else 500.
        """
        self.assertClassified(
            sqlite3.OperationalError("database is locked"), 503, "unavailable: sqlite error: database is locked"
        )
        self.assertClassified(
            sqlite3.OperationalError("attempt to write a readonly database"),
            503,
            "unavailable: sqlite error: attempt to write a readonly database",
        )
        self.assertClassified(
            sqlite3.OperationalError("database or disk is full"),
            507,
            "io error: sqlite error: database or disk is full",
        )
        self.assertClassified(
            sqlite3.OperationalError("disk I/O error"), 500, "internal error: sqlite error: disk I/O error"
        )
        self.assertClassified(
            sqlite3.IntegrityError("UNIQUE constraint failed"), 500, "internal error: UNIQUE constraint failed"
        )
        self.assertClassified(OSError(errno.ENOSPC, "No space left"), 507, "io error: [Errno 28] No space left")
        self.assertClassified(OSError(errno.EROFS, "Read-only"), 503, "unavailable: io error: [Errno 30] Read-only")

    def test_lost_connection(self) -> None:
        """
        A pool connection that broke under a query is 503; a network
        connection lost is no storage failure and stays 500.
        """
        self.assertClassified(adbapi.ConnectionLost(), 503, "unavailable: database connection lost")
        self.assertClassified(adbapi.ConnectionLost("gone"), 503, "unavailable: database connection lost: gone")
        self.assertEqual(errors.from_storage(error.ConnectionLost()).http_status, 500)

    def test_sqlstate(self) -> None:
        """
        A driver error's C{sqlstate}: a connection exception (class 08), a
        server shutting down, too many connections, a lock not granted, a
        deadlock or a read-only transaction is 503; a full disk 507; any
        other code, or none, is not classified by it.
        """
        for code in ("08000", "08006", "57P01", "57P02", "57P03", "53300", "55P03", "40P01", "25006"):
            self.assertClassified(DriverError("no", code), 503, "unavailable: database error: no")
        self.assertClassified(DriverError("full", "53100"), 507, "io error: database error: full")
        for code in ("23505", "42601", "57014", None):
            self.assertClassified(DriverError("bad", code), 500, "internal error: bad")


class ReadinessTests(APITestsBase):
    """
    C{/readyz} when the store's initialisation fails: a store that cannot
    be used now is not ready (503, with the reason); anything else is a
    fault (500), answered as before.
    """

    def test_store_failures(self) -> None:
        """
        Locked, full or its connection lost: 503 naming why; a corrupt or
        failing store: 500 naming SQLite; ready again once it succeeds.
        """
        cases = [
            (sqlite3.OperationalError("database is locked"), 503, "unavailable: sqlite error: database is locked"),
            (
                sqlite3.OperationalError("database or disk is full"),
                503,
                "unavailable: sqlite error: database or disk is full",
            ),
            (adbapi.ConnectionLost(), 503, "unavailable: database connection lost"),
            (sqlite3.OperationalError("disk I/O error"), 500, "internal error: sqlite error: disk I/O error"),
            (
                sqlite3.DatabaseError("file is not a database"),
                500,
                "internal error: sqlite error: file is not a database",
            ),
        ]
        for failure, status, message in cases:
            self.patch(self.rt.store, "init_schema", lambda failure=failure: defer.fail(failure))
            code, decoded, _ = self.call("GET", "/readyz")
            self.assertEnvelope(code, decoded, status, "internal")
            self.assertEqual(decoded["error"]["message"], message)
        self.patch(self.rt.store, "init_schema", lambda: defer.succeed(None))
        code, decoded, _ = self.call("GET", "/readyz")
        self.assertEqual((code, decoded["status"]), (200, "ready"))


class StorageFaultTests(TestCase):
    """
    The server refuses an unusable data directory and answers storage
    failures with the envelope, never a corrupt store or a stuck task.
    """

    timeout = 60

    def setUp(self) -> None:
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            raise self.skipTest("mounting a small tmpfs needs root on Linux")
        if shutil.which("mount") is None:
            raise self.skipTest("no mount command")
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)

    def mount(self, name: str, options: str) -> str:
        """
        A tmpfs mounted at C{<root>/<name>}, unmounted at cleanup.
        """
        path = os.path.join(self.root, name)
        _mount_tmpfs(path, options)
        self.addCleanup(_umount, path)
        return path

    async def test_read_only_data_dir_refused(self) -> None:
        """
        C{serve} on a read-only file system exits 1 with one clear line on
        stderr and no traceback.
        """
        mount = self.mount("ro", "size=1m,ro")
        out, err, code = await run_process(
            reactor,
            [sys.executable, "-m", "execgo", "serve", "--listen-addr", "127.0.0.1:0", "--data-dir",
             os.path.join(mount, "data")],
            clean_environ(),
        )
        self.assertEqual(code, 1)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn("cannot use data directory", lines[0])
        self.assertIn("Read-only file system", lines[0])
        self.assertNotIn("Traceback", err + out)

    async def test_full_disk(self) -> None:
        """
        With the data directory's file system full, a submission gets 507
        with the envelope and leaves nothing behind; once space is back the
        next one runs to success, and nothing is stuck.
        """
        mount = self.mount("small", "size=4m")
        data_dir = os.path.join(mount, "data")
        server = ServerProcess(reactor, data_dir, ["--termination-grace-ms", "300"])
        await server.start()
        self.addCleanup(lambda: server.shutdown())
        api = server.client(self)
        filler = fill(mount)
        before = set(os.listdir(os.path.join(data_dir, "tasks")))
        reply = await api.post("/api/v1/tasks", json_body={"task_id": "full", **COMMAND})
        self.assertEqual(reply.code, 507, reply.body)
        self.assertEqual(sorted(reply.json()), ["error"])
        self.assertIn("No space left on device", reply.json()["error"]["message"])
        self.assertEqual(set(os.listdir(os.path.join(data_dir, "tasks"))), before)
        self.assertEqual((await api.get("/api/v1/tasks/full")).code, 404)
        os.unlink(filler)
        reply = await api.post("/api/v1/tasks", json_body={"task_id": "after", **COMMAND})
        self.assertEqual(reply.code, 200, reply.body)

        async def done() -> Any:
            status = (await api.get("/api/v1/tasks/after")).json()
            return status if status["status"] == "success" else None

        status = await poll(reactor, done, timeout=10, what="the task after the disk was freed")
        self.assertEqual(status["stdout"], "hi\n")
        with open(status["artifacts"]["result_path"]) as f:
            self.assertEqual(json.load(f)["status"], "success")
        resources = (await api.get("/api/v1/runtime/resources")).json()
        self.assertEqual(resources["active_reservations"], [])

    async def test_locked_store_is_503(self) -> None:
        """
        A store another process holds locked longer than the busy timeout
        answers a submission with 503 and the envelope, then works again
        once the lock is gone.
        """
        data_dir = os.path.join(self.root, "data")
        server = ServerProcess(reactor, data_dir)
        await server.start()
        self.addCleanup(lambda: server.shutdown())
        api: ApiClient = server.client(self)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(8)\n",
                os.path.join(data_dir, "runtime.db"),
            ],
            stdout=subprocess.PIPE,
        )
        self.addCleanup(holder.stdout.close)
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline().strip(), b"locked")
        reply = await api.post("/api/v1/tasks", json_body={"task_id": "locked", **COMMAND}, timeout=30)
        self.assertEqual(reply.code, 503, reply.body)
        self.assertEqual(reply.json()["error"]["code"], "internal")
        holder.kill()
        holder.wait()
        reply = await api.post("/api/v1/tasks", json_body={"task_id": "unlocked", **COMMAND})
        self.assertEqual(reply.code, 200, reply.body)


def _in_namespace(pid: int, *argv: str) -> None:
    """
    Run C{argv} in the mount namespace of process C{pid}.
    """
    subprocess.run(["nsenter", "-t", str(pid), "-m", *argv], check=True)


class FaultRepairTests(TestCase):
    """
    Readiness and repair with the real server: while the data directory
    cannot be written the server says it is not ready, and what a fault
    left out or behind is repaired once storage works.  The server runs in
    a private mount namespace (C{unshare -m}), so a read-only bind mount
    made there is seen by the server and its supervisor only.
    """

    timeout = 60

    def setUp(self) -> None:
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            raise self.skipTest("mounts need root on Linux")
        for tool in ("mount", "unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise self.skipTest(f"no {tool} command")
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)

    async def start(self, data_dir: str, *args: str) -> Any:
        """
        A server in its own mount namespace; its API client.
        """
        server = ServerProcess(
            reactor,
            data_dir,
            ["--termination-grace-ms", "300", *args],
            command=["unshare", "-m", "--propagation", "private", *SERVE_COMMAND],
        )
        await server.start()
        self.addCleanup(lambda: server.shutdown())
        self.server = server
        return server.client(self)

    def read_only(self, path: str) -> None:
        """
        Make C{path} read-only for the server (a bind mount in its
        namespace), until L{writable}.
        """
        _in_namespace(self.server.pid, "mount", "--bind", "-o", "ro", path, path)

    def writable(self, path: str) -> None:
        _in_namespace(self.server.pid, "umount", path)

    async def test_readyz_read_only(self) -> None:
        """
        C{/readyz} answers 503 C{internal} with the reason while
        C{<data_dir>/tasks} is read-only, and 200 once it is writable.
        """
        data_dir = os.path.join(self.root, "data")
        api = await self.start(data_dir)
        tasks = os.path.join(data_dir, "tasks")
        self.assertEqual((await api.get("/readyz")).code, 200)
        self.read_only(tasks)
        reply = await api.get("/readyz")
        self.assertEqual(reply.code, 503, reply.body)
        self.assertEqual(reply.json()["error"]["code"], "internal")
        self.assertIn(
            f"data directory cannot be written: {tasks}: Read-only file system", reply.json()["error"]["message"]
        )
        self.writable(tasks)
        self.assertEqual((await api.get("/readyz")).code, 200)
        self.assertEqual([name for name in os.listdir(tasks) if "ready" in name], [])

    async def test_readyz_full(self) -> None:
        """
        C{/readyz} answers 503 while the data directory's file system is
        full, and 200 once there is room.
        """
        mount = os.path.join(self.root, "small")
        _mount_tmpfs(mount, "size=4m")
        self.addCleanup(_umount, mount)
        api = await self.start(os.path.join(mount, "data"))
        filler = fill(mount)
        reply = await api.get("/readyz")
        self.assertEqual(reply.code, 503, reply.body)
        self.assertIn("No space left on device", reply.json()["error"]["message"])
        os.unlink(filler)
        self.assertEqual((await api.get("/readyz")).code, 200)

    async def test_result_written_once_writable(self) -> None:
        """
        A task that ends while its directory is read-only ends all the
        same, without C{result.json} (and without temporaries); once the
        directory is writable again the next GC pass writes it, equal to
        the task's status.
        """
        data_dir = os.path.join(self.root, "data")
        api = await self.start(data_dir)
        reply = await api.post(
            "/api/v1/tasks",
            json_body={"task_id": "ro", "execution": {"kind": "command", "program": "/bin/sleep", "args": ["1"]}},
        )
        self.assertEqual(reply.code, 200, reply.body)

        async def status_in(*wanted: str) -> Any:
            status = (await api.get("/api/v1/tasks/ro")).json()
            return status if status["status"] in wanted else None

        async def started() -> bool:
            status = await status_in("running")
            return status is not None and "pid" in status

        await poll(reactor, started, timeout=10, what="the task to start")
        task_dir = os.path.join(data_dir, "tasks", "ro")
        self.read_only(task_dir)
        status = await poll(
            reactor, lambda: status_in("success", "failed", "cancelled"), timeout=10, what="the task to end"
        )
        self.assertEqual(status["status"], "success", status)
        result = os.path.join(task_dir, "result.json")
        self.assertFalse(os.path.exists(result))
        self.writable(task_dir)
        await poll(reactor, lambda: os.path.exists(result), timeout=10, what="result.json")
        with open(result, encoding="utf-8") as f:
            self.assertEqual(json.load(f), (await api.get("/api/v1/tasks/ro")).json())
        self.assertEqual([name for name in os.listdir(task_dir) if ".tmp-" in name], [])

    async def test_directory_without_row_collected(self) -> None:
        """
        What a server killed between making a task directory and its row
        leaves behind is removed after the restart, by the first GC pass.
        """
        data_dir = os.path.join(self.root, "data")
        leftover = os.path.join(data_dir, "tasks", "cut-off")
        os.makedirs(os.path.join(leftover, "workspace"))
        for name in ("request.json", "stdout.log", "stderr.log"):
            open(os.path.join(leftover, name), "w").close()
        api = await self.start(data_dir)
        await poll(reactor, lambda: not os.path.exists(leftover), timeout=10, what="the leftover to go")
        self.assertEqual((await api.get("/api/v1/tasks/cut-off")).code, 404)
