"""
Storage faults with the real server (issue 5): a data directory it cannot
use, a full file system, and a store that cannot take a write.  The file
systems are small tmpfs mounts made by the test, so these run only as root
on Linux.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.serverfixture import ApiClient, ServerProcess, clean_environ, poll, run_process

COMMAND = {"execution": {"kind": "command", "program": "/bin/echo", "args": ["hi"]}}


def _mount_tmpfs(path: str, options: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)


def _umount(path: str) -> None:
    subprocess.run(["umount", "-l", path], check=False)


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
        filler = os.path.join(mount, "filler")
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
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
