"""
Three real nodes on one throwaway PostgreSQL: placement across nodes, the
same answers from every node, kill and long-poll across nodes, a tenant
quota across nodes, node labels, a node killed during a burst, a node cut
off from the database (through a TCP proxy the test controls) that fences
itself and rejoins, and a second node with an id in use.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

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
    supervisor_pids,
)
from tests.tcpproxy import TcpProxy
from tests.test_integration import IntegrationMixin

LEASE_MS = 2000
_databases = itertools.count()


def shell(script: str, **extra: Any) -> Dict[str, Any]:
    """
    A script task, with more request fields.
    """
    return {"execution": {"kind": "script", "script": script}, **extra}


def on(node: str, body: Dict[str, Any]) -> Dict[str, Any]:
    """
    C{body} placed on the node whose C{name} label is C{node}.
    """
    return {**body, "placement": {"node_labels": {"name": node}}}


class ClusterMixin(IntegrationMixin):
    """
    A fresh database and three nodes (C{n0}, C{n1}, C{n2}: two slots each,
    a 2 s lease, labels C{name=<id>} and C{zone=a|b|a}); C{n1} reaches the
    database through a L{TcpProxy}.
    """

    skip = backends.POSTGRES_BACKEND.skip
    timeout = 120
    node_args: Sequence[str] = ()

    def setUp(self) -> "defer.Deferred[None]":
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        cluster = await deferToThread(pgcluster.shared)
        name = f"execgo_cluster_{os.getpid()}_{next(_databases)}"
        self.url = await deferToThread(cluster.create_database, name)
        self.addCleanup(deferToThread, cluster.drop_database, name)
        self.proxy = TcpProxy(self._reactor(), cluster.port)
        proxy_port = await self.proxy.start()
        self.addCleanup(self.proxy.stop)
        proxied = self.url.replace(f":{cluster.port}/", f":{proxy_port}/")
        self.nodes = [self.make_node(index, proxied if index == 1 else self.url) for index in range(3)]
        # Started together: each waits for its own /healthz.
        await defer.gatherResults([defer.ensureDeferred(node.start()) for node in self.nodes], consumeErrors=True)
        self.apis = [node.client(self) for node in self.nodes]
        self.api = self.apis[0]

    def make_node(self, index: int, url: str, node_id: Optional[str] = None) -> ServerProcess:
        """
        A node (not started) on the store at C{url}.
        """
        env = clean_environ({"EXECGO_RUNTIME_DATABASE_URL": url})
        args = [
            "--runtime-id",
            node_id or f"n{index}",
            "--node-label",
            f"name=n{index}",
            "--node-label",
            f"zone={'b' if index == 1 else 'a'}",
            "--max-running-tasks",
            "2",
            "--node-lease-ms",
            str(LEASE_MS),
            "--termination-grace-ms",
            "200",
            *self.node_args,
        ]
        node = ServerProcess(self._reactor(), self.mktemp(), args, env=env)
        self.addCleanup(node.shutdown)
        return node

    async def nodes_view(self, api: ApiClient) -> Dict[str, Dict[str, Any]]:
        """
        C{/api/v1/runtime/cluster} by node id.
        """
        reply = await api.get("/api/v1/runtime/cluster")
        self.assertEqual(reply.code, 200, reply.body)
        return {node["node_id"]: node for node in reply.json()["nodes"]}

    async def all_terminal(self, task_ids: Sequence[str], timeout: float = 60.0) -> Dict[str, Dict[str, Any]]:
        """
        Wait until every task is terminal; their final states.
        """
        final: Dict[str, Dict[str, Any]] = {}
        for task_id in task_ids:
            final[task_id] = await self.wait_terminal(task_id, timeout)
        return final


class PlacementTests(ClusterMixin, TestCase):
    """
    Any node takes any request; tasks run wherever there is room; every
    node gives the same answers.
    """

    async def test_cluster_view(self) -> None:
        """
        Every node lists the three nodes alive, with their labels, addresses
        and capacity; C{execgo-runtime cluster} prints the table.
        """
        for api in self.apis:
            view = await self.nodes_view(api)
            self.assertEqual(sorted(view), ["n0", "n1", "n2"])
            for index, node_id in enumerate(["n0", "n1", "n2"]):
                entry = view[node_id]
                self.assertEqual(entry["state"], "alive")
                self.assertEqual(entry["labels"], {"name": node_id, "zone": "b" if index == 1 else "a"})
                self.assertEqual(entry["advertise_url"], self.nodes[index].url)
                self.assertEqual(entry["capacity"]["task_slots"], 2)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "execgo", "cluster", "--server", self.nodes[2].url],
            env=clean_environ(),
            reactor=self._reactor(),
        )
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertTrue(lines[0].startswith("NODE"), lines)
        self.assertEqual([line.split()[:2] for line in lines[1:]], [["n0", "alive"], ["n1", "alive"], ["n2", "alive"]])

    async def test_duplicate_id_refused(self) -> None:
        """
        A fourth runtime started with a live node's id exits with a clear
        error and changes nothing.
        """
        twin = self.make_node(3, self.url, node_id="n2")
        with self.assertRaises(ServerStartError) as caught:
            await twin.start()
        self.assertIn("node id 'n2' is held by a live node", str(caught.exception))
        view = await self.nodes_view(self.api)
        self.assertEqual(view["n2"]["advertise_url"], self.nodes[2].url)

    async def test_tasks_spread_and_answer_everywhere(self) -> None:
        """
        Six tasks submitted to one node with two slots run at once on the
        three nodes; each runs in its node's data directory; status (output
        included), events and logs are the same from every node.
        """
        ids = [await self.submit(shell("echo out; sleep 1.5")) for _ in range(6)]
        running = [await self.wait_started(task_id, api=self.apis[2]) for task_id in ids]
        by_node: Dict[str, int] = {}
        for status in running:
            by_node[status["node_id"]] = by_node.get(status["node_id"], 0) + 1
            index = int(status["node_id"][1:])
            self.assertTrue(
                status["artifacts"]["task_dir"].startswith(os.path.abspath(self.nodes[index].data_dir)), status
            )
        self.assertEqual(by_node, {"n0": 2, "n1": 2, "n2": 2})
        final = await self.all_terminal(ids)
        for task_id in ids:
            self.assertEqual(final[task_id]["status"], "success", final[task_id])
            answers = [await self.status(task_id, api) for api in self.apis]
            for answer in answers:
                self.assertEqual(answer["stdout"], "out\n", answer)
                self.assertNotIn("output_unavailable", answer)
                self.assertEqual(answer, answers[0])
            events = [await self.events(task_id, api) for api in self.apis]
            self.assertEqual(events[1], events[0])
            self.assertEqual(events[2], events[0])
            self.assertEqual([e["event_type"] for e in events[0]].count("started"), 1)
            for api in self.apis:
                reply = await api.get(f"/api/v1/tasks/{task_id}/stdout")
                self.assertEqual((reply.code, reply.body), (200, b"out\n"))

    async def test_follow_relayed(self) -> None:
        """
        A log followed on a node that does not run the task streams it as
        it is written, to the end.
        """
        task_id = await self.submit(on("n1", shell("for i in 1 2 3; do echo line$i; sleep 0.2; done")))
        await self.wait_started(task_id)
        reply = await self.apis[2].get(f"/api/v1/tasks/{task_id}/stdout?follow=true")
        self.assertEqual((reply.code, reply.body), (200, b"line1\nline2\nline3\n"))

    async def test_follow_from_queued(self) -> None:
        """
        A log followed while the task is still queued streams its output
        once another node runs it.
        """
        busy = [await self.submit(on("n2", shell("sleep 1.5"))) for _ in range(2)]
        for task_id in busy:
            await self.wait_started(task_id)
        task_id = await self.submit(on("n2", shell("echo a; sleep 0.2; echo b")))
        self.assertEqual((await self.status(task_id))["status"], "accepted")
        reply = await self.api.get(f"/api/v1/tasks/{task_id}/stdout?follow=true")
        self.assertEqual((reply.code, reply.body), (200, b"a\nb\n"))
        self.assertEqual((await self.status(task_id))["node_id"], "n2")
        await self.all_terminal(busy)

    async def test_kill_and_wait_across_nodes(self) -> None:
        """
        A long-poll on one node answers the end of a task another node
        runs, killed through the third.
        """
        task_id = await self.submit(on("n1", shell("sleep 30")))
        await self.wait_started(task_id)
        waiting = defer.ensureDeferred(self.apis[2].get(f"/api/v1/tasks/{task_id}?wait_ms=20000"))
        await sleep(self._reactor(), 0.2)
        began = self._reactor().seconds()
        killed = await self.kill(task_id)
        self.assertEqual(killed.code, 200, killed.body)
        self.assertEqual(killed.json()["node_id"], "n1")
        self.assertNotIn("output_unavailable", killed.json())
        answer = await waiting
        elapsed = self._reactor().seconds() - began
        self.assertEqual(answer.json()["status"], "cancelled", answer.body)
        self.assertLess(elapsed, 5.0)

    async def test_labels(self) -> None:
        """
        A task asking for labels runs only where they are; one no node has
        is refused under strict and waits under adaptive.
        """
        ids = [await self.submit(shell("true", placement={"node_labels": {"zone": "b"}})) for _ in range(4)]
        for final in (await self.all_terminal(ids)).values():
            self.assertEqual((final["status"], final["node_id"]), ("success", "n1"), final)
        strict = await self.api.post(
            "/api/v1/tasks",
            shell("true", placement={"node_labels": {"zone": "mars"}}, policy={"capability_mode": "strict"}),
        )
        self.assertEqual(strict.code, 400, strict.body)
        self.assertIn("placement.node_labels", strict.json()["error"]["message"])
        waiting = await self.submit(shell("true", placement={"node_labels": {"zone": "mars"}}))
        await sleep(self._reactor(), 1.0)
        self.assertEqual((await self.status(waiting))["status"], "accepted")
        await self.kill(waiting)


class QuotaTests(ClusterMixin, TestCase):
    """
    A tenant quota holds across the cluster.
    """

    node_args = ("--tenant-quota", "q=slots:2")

    async def test_quota_across_nodes(self) -> None:
        """
        Eight tasks of a tenant with two slots, submitted to all three
        nodes, never run more than two at a time.
        """
        ids = []
        for index in range(8):
            body = shell("sleep 0.4", control_context={"tenant": "q"})
            ids.append(await self.submit(body, api=self.apis[index % 3]))
        final = await self.all_terminal(ids)
        spans: List[Tuple[str, int]] = []
        for task_id in ids:
            self.assertEqual(final[task_id]["status"], "success", final[task_id])
            for event in await self.events(task_id):
                if event["event_type"] in ("resource_reserved", "resource_released"):
                    spans.append((event["timestamp"], 1 if event["event_type"] == "resource_reserved" else -1))
        held = peak = 0
        # Releases first at equal stamps: one task's end frees its slot for the next.
        for _, delta in sorted(spans, key=lambda span: (span[0], span[1])):
            held += delta
            peak = max(peak, held)
        self.assertEqual(peak, 2)


class LossTests(ClusterMixin, TestCase):
    """
    A node lost with everything it runs, and a node cut off from the
    database.
    """

    node_args = ("--max-queued-tasks", "400")

    async def test_node_killed_during_burst(self) -> None:
        """
        C{kill -9} of n2's server, supervisor and workloads during a
        300-task burst: every acknowledged task ends, exactly one C{started}
        event per started task, n2's running tasks C{node_lost}, every
        other task C{success}.
        """
        submitters = [ApiClient(self._reactor(), node.url) for node in self.nodes[:2]]
        for api in submitters:
            self.addCleanup(api.close)
        ids: List[str] = []

        async def burst(api: ApiClient, count: int) -> None:
            for _ in range(count):
                ids.append(await self.submit(shell("sleep 0.2"), api=api))

        bursts = [defer.ensureDeferred(burst(api, 149)) for api in submitters]
        await poll(self._reactor(), lambda: len(ids) >= 60, timeout=30)
        # n2 surely runs something when it dies (the burst alone may leave it
        # idle for a moment: nodes serve their own submissions first).
        on_n2 = [await self.submit(on("n2", shell("sleep 30"))) for _ in range(2)]
        for task_id in on_n2:
            await self.wait_started(task_id)
        ids += on_n2
        await self.kill_node(2)
        await defer.gatherResults(bursts)
        self.assertEqual(len(ids), 300)
        final = await self.all_terminal(ids, timeout=90)
        lost = 0
        for task_id in ids:
            status = final[task_id]
            types = await self.event_types(task_id)
            self.assertLessEqual(types.count("started"), 1, types)
            if status["status"] == "success":
                self.assertEqual(types.count("started"), 1, types)
                continue
            self.assertEqual(status["node_id"], "n2", status)
            self.assertEqual(status["error"], {"code": "internal", "message": "node_lost"}, status)
            self.assertEqual(types[-2:], ["resource_released", "failed"], types)
            lost += 1
        self.assertGreaterEqual(lost, 1)
        view = await self.nodes_view(self.api)
        self.assertEqual(view["n2"]["state"], "lost")

    async def kill_node(self, index: int) -> None:
        """
        C{kill -9} a node's server, supervisor and workloads at once.
        """
        node = self.nodes[index]
        supervisors = supervisor_pids(node.data_dir)
        await node.crash()
        for pid in supervisors:
            os.kill(pid, 9)
        await kill_leftovers(self._reactor(), node.data_dir)

    async def test_partitioned_node_fences_and_rejoins(self) -> None:
        """
        n1 cut off from the database kills its workload before its lease
        runs out; the others end the task C{node_lost}; once the database
        is reachable again n1 rejoins under a new lease and runs tasks.
        """
        task_id = await self.submit(on("n1", shell("sleep 60")))
        started = await self.wait_started(task_id)
        before = (await self.nodes_view(self.api))["n1"]
        self.proxy.partition()
        cut = self._reactor().seconds()
        await poll(self._reactor(), lambda: not process_alive(started["pid"]), timeout=10)
        self.assertLess(self._reactor().seconds() - cut, LEASE_MS / 1000.0)
        final = await self.wait_terminal(task_id, timeout=15)
        self.assertEqual(final["error"], {"code": "internal", "message": "node_lost"}, final)
        self.assertEqual((await self.nodes_view(self.api))["n1"]["state"], "lost")
        self.proxy.heal()

        async def rejoined() -> bool:
            return (await self.nodes_view(self.api))["n1"]["state"] == "alive"

        await poll(self._reactor(), rejoined, timeout=30)
        after = (await self.nodes_view(self.api))["n1"]
        self.assertGreater(after["started_at"], before["started_at"])
        again = await self.submit(on("n1", shell("true")))
        self.assertEqual((await self.wait_terminal(again, timeout=30))["status"], "success")

    async def test_server_restart_keeps_tasks(self) -> None:
        """
        Restarting a node's server alone keeps its running task, which ends
        normally; the node stays alive.
        """
        task_id = await self.submit(on("n2", shell("sleep 2")))
        await self.wait_started(task_id)
        await self.nodes[2].crash()
        await self.nodes[2].start(keep_port=True)
        final = await self.wait_terminal(task_id, timeout=20)
        self.assertEqual(final["status"], "success", final)
        self.assertEqual((await self.nodes_view(self.api))["n2"]["state"], "alive")


class CollectionTests(ClusterMixin, TestCase):
    """
    Garbage collection on a cluster: each node removes its own task files,
    and the rows go once.
    """

    node_args = ("--result-retention-secs", "1", "--gc-interval-ms", "200")

    async def test_files_and_rows_collected(self) -> None:
        """
        Tasks accepted by one node and run by the others: once past the
        retention, every row is gone from every node's view and the
        running nodes' task directories are removed.  (The accepting
        node's copies go as orphans once they are a minute old:
        C{tests.test_nodes} checks that they count as such.)
        """
        ids = [await self.submit(on(f"n{index}", shell("echo x"))) for index in (1, 2, 1, 2)]
        finals = await self.all_terminal(ids)
        dirs = [final["artifacts"]["task_dir"] for final in finals.values()]
        for path in dirs:
            self.assertTrue(os.path.isdir(path), path)

        async def collected() -> bool:
            for task_id in ids:
                for api in self.apis:
                    if (await api.get(f"/api/v1/tasks/{task_id}")).code != 404:
                        return False
            return not any(os.path.exists(path) for path in dirs)

        await poll(self._reactor(), collected, timeout=20, interval=0.2, what="rows and files collected")
