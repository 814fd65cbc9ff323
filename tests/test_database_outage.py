"""
The runtime on PostgreSQL when the database goes away and comes back:
a real server and its supervisor on a throwaway cluster of this test's
own (L{tests.pgcluster.Cluster}), which is restarted (C{pg_ctl restart -m
fast}) or stopped and started again under them.

What must hold: nobody needs to do anything for the runtime to carry on;
a submission answered 2xx is never lost (those that meet the outage get
503); a task that ended while the database was away gets its outcome
written once it is back; C{/readyz} says why it is not ready meanwhile.
The store's password is given in the URL (through the environment) and
never shows on any process's command line or in the server's log.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from execgo.host.procinfo import supervisor_pids
from tests import backends, pgcluster
from tests.serverfixture import (
    ApiClient,
    ServerProcess,
    ServerStartError,
    clean_environ,
    kill_leftovers,
    poll,
    process_alive,
    sleep,
)
from tests.test_integration import IntegrationMixin

ROLE = "execgo_app"
PASSWORD = "pw-7f3a9c-never-shown"
DATABASE = "execgo_outage"
GRACE = ["--termination-grace-ms", "200"]


def shell(script: str) -> Dict[str, Any]:
    """
    A script task.
    """
    return {"execution": {"kind": "script", "script": script}}


class PostgresOutageTests(IntegrationMixin, TestCase):
    """
    A server on a cluster that is restarted or stopped under it.
    """

    skip = backends.POSTGRES_BACKEND.skip
    timeout = 120

    def setUp(self) -> "defer.Deferred[None]":
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        binaries = pgcluster.find_binaries()
        assert binaries is not None
        self.cluster = pgcluster.Cluster(binaries)
        self.addCleanup(deferToThread, self.cluster.destroy)
        await deferToThread(self.cluster.start)
        await deferToThread(self.cluster.add_password_role, ROLE, PASSWORD, DATABASE)
        url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.cluster.port}/{DATABASE}"
        env = clean_environ({"EXECGO_RUNTIME_DATABASE_URL": url})
        env.pop("PGPASSWORD", None)
        self.server = ServerProcess(self._reactor(), self.mktemp(), [*GRACE, "--max-running-tasks", "4"], env=env)
        self.addCleanup(self.server.shutdown)
        await self.server.start()
        self.api = self.server.client(self)

    def assert_password_unseen(self) -> None:
        """
        No command line of the server or its supervisor, and no line of the
        server's log, holds the password.
        """
        pids = [self.server.pid, *supervisor_pids(self.server.data_dir)]
        self.assertGreaterEqual(len(pids), 2, "no supervisor found")
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                self.assertNotIn(PASSWORD.encode(), f.read())
        self.assertNotIn(PASSWORD, self.server.log_text())

    async def submit_loop(self, seconds: float) -> Tuple[List[str], List[Tuple[int, str]]]:
        """
        Submit C{true} tasks back to back for C{seconds}.

        @return: the ids answered 200, and the status and code of every
            other answer.
        """
        accepted: List[str] = []
        refused: List[Tuple[int, str]] = []
        api = ApiClient(self._reactor(), self.server.url)
        self.addCleanup(api.close)
        deadline = self._reactor().seconds() + seconds
        while self._reactor().seconds() < deadline:
            reply = await api.post("/api/v1/tasks", shell("true"))
            if reply.code == 200:
                accepted.append(reply.json()["task_id"])
            else:
                refused.append((reply.code, reply.json()["error"]["code"]))
            await sleep(self._reactor(), 0.02)
        return accepted, refused

    async def test_restart_under_load(self) -> None:
        """
        C{pg_ctl restart -m fast} while tasks run and submissions arrive:
        every submission answered 200 runs to C{success}, the others were
        503; the running tasks end C{success}; the server is ready again.
        """
        running = [await self.submit(shell("sleep 1.5")) for _ in range(2)]
        for task_id in running:
            await self.wait_started(task_id)
        loop = defer.ensureDeferred(self.submit_loop(4.0))
        await sleep(self._reactor(), 0.5)
        await deferToThread(self.cluster.restart)
        accepted, refused = await loop
        self.assertTrue(accepted, "no submission was accepted")
        self.assertEqual({code for code, _ in refused} - {503}, set(), refused)
        for task_id in running + accepted:
            status = await self.wait_terminal(task_id, timeout=30)
            self.assertEqual(status["status"], "success", status)
            types = await self.event_types(task_id)
            self.assertEqual(types[-2:], ["resource_released", "finished"], types)
            self.assertEqual(types.count("finished"), 1, types)
        ready = await self.api.get("/readyz")
        self.assertEqual(ready.code, 200, ready.body)
        self.assert_password_unseen()

    async def test_outcome_written_after_outage(self) -> None:
        """
        The database is stopped while a task runs and stays away after it
        ended: C{/readyz} and submissions answer 503 meanwhile; once the
        database is back, the task's outcome is written, once.
        """
        task_id = await self.submit(shell("sleep 0.5; echo done"))
        await self.wait_started(task_id)
        await deferToThread(self.cluster.stop, "fast")

        async def not_ready() -> Any:
            reply = await self.api.get("/readyz")
            return reply if reply.code == 503 else None

        reply = await poll(self._reactor(), not_ready, timeout=10, what="/readyz to answer 503")
        self.assert_envelope(reply, 503, "internal", "unavailable: ")
        refused = await self.api.post("/api/v1/tasks", shell("true"))
        self.assert_envelope(refused, 503, "internal", "unavailable: ")
        await sleep(self._reactor(), 1.5)
        await deferToThread(self.cluster.start)
        status = await self.wait_terminal(task_id, timeout=30)
        self.assertEqual(status["status"], "success", status)
        types = await self.event_types(task_id)
        self.assertEqual(types.count("finished"), 1, types)
        reply = await self.api.get(f"/api/v1/tasks/{task_id}/stdout")
        self.assertEqual(reply.body, b"done\n")
        await poll(
            self._reactor(),
            lambda: os.path.exists(os.path.join(self.task_dir(task_id), "result.json")),
            timeout=5,
            what="result.json",
        )
        ready = await self.api.get("/readyz")
        self.assertEqual(ready.code, 200, ready.body)
        after = await self.submit(shell("true"))
        self.assertEqual((await self.wait_terminal(after, timeout=15))["status"], "success")
        self.assert_password_unseen()

    async def test_tasks_do_not_see_the_store_credentials(self) -> None:
        """
        A task's environment holds neither the store's URL nor its
        password, and it cannot read its supervisor's environment (which
        holds C{PGPASSWORD}) or its command line's password (there is
        none).
        """
        task_id = await self.submit(
            shell("env; cat /proc/$PPID/environ; tr '\\0' ' ' < /proc/$PPID/cmdline; echo; cat /proc/1/environ")
        )
        status = await self.wait_terminal(task_id)
        self.assertIn(status["status"], ("success", "failed"), status)
        out = (await self.api.get(f"/api/v1/tasks/{task_id}/stdout")).body
        err = (await self.api.get(f"/api/v1/tasks/{task_id}/stderr")).body
        self.assertIn(b"internal-supervisor", out)
        self.assertIn(b"Permission denied", err)
        for secret in (PASSWORD.encode(), b"PGPASSWORD", b"EXECGO_RUNTIME_DATABASE_URL"):
            self.assertNotIn(secret, out + err)
        self.assert_password_unseen()

    async def test_supervisor_of_another_store_refused(self) -> None:
        """
        A server started on a data directory whose supervisor still runs
        tasks on another store refuses to start, saying so (it would order
        tasks its supervisor cannot find).
        """
        task_id = await self.submit(shell("sleep 30"))
        started = await self.wait_started(task_id)
        await self.server.stop()
        other = ServerProcess(self._reactor(), self.server.data_dir, GRACE, env=clean_environ())
        with self.assertRaises(ServerStartError) as caught:
            await other.start()
        self.assertIn("runs its tasks on another store", str(caught.exception))
        self.assertIn(f"/{DATABASE}", str(caught.exception))
        self.assertNotIn(PASSWORD, str(caught.exception))
        # The refusal harmed nothing: the task still runs (ended here).
        self.assertTrue(process_alive(started["pid"]))
        self.assertIn(started["pid"], await kill_leftovers(self._reactor(), self.server.data_dir))

    async def test_password_from_a_password_file(self) -> None:
        """
        libpq's conventions hold: a URL without a password and a password
        file (C{PGPASSFILE}, as C{~/.pgpass} is) let the server and its
        supervisor in; tasks run.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        passfile = os.path.join(directory, "pgpass")
        with open(passfile, "w", encoding="utf-8") as f:
            f.write(f"127.0.0.1:{self.cluster.port}:{DATABASE}:{ROLE}:{PASSWORD}\n")
        os.chmod(passfile, 0o600)
        url = f"postgresql://{ROLE}@127.0.0.1:{self.cluster.port}/{DATABASE}"
        env = clean_environ({"EXECGO_RUNTIME_DATABASE_URL": url, "PGPASSFILE": passfile})
        env.pop("PGPASSWORD", None)
        server = ServerProcess(self._reactor(), os.path.join(directory, "data"), GRACE, env=env)
        self.addCleanup(server.shutdown)
        await server.start()
        api = server.client(self)
        task_id = await self.submit(shell("echo via-pgpass"), api=api)
        status = await self.wait_terminal(task_id, api=api)
        self.assertEqual(status["status"], "success", status)
