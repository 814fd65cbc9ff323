"""
The cluster section of the benchmark harness, run by C{benchmarks/run.py},
which hands its own module in as C{h}.

10. cluster: 1, 2 and 3 nodes on one local, durable PostgreSQL cluster
    (a fresh database each), every node with the same
    C{--max-running-tasks}; section 1's load spread over the nodes (the
    clients divided between them, each submitting to and long-polling its
    own node), its tasks/s; on three nodes, the statements and commits
    per task (C{pg_stat_statements}, C{pg_stat_database}), the p50 from a
    submit on one node to the start of the task on another (placed there
    by its labels; the store's C{created_at} to C{started_at}), and the
    p50 and worst time from a kill sent to one node of a task another
    runs until a long-poll on the third answers it C{cancelled}.

All nodes share this machine's two cores with PostgreSQL and the clients:
more nodes add slots, not cores, so the figures say what coordination
costs here, not what three machines would do.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Any, Dict, List, Tuple

from benchmarks import loadgen
from tests import pgcluster

#: The node counts measured.
NODE_COUNTS = (1, 2, 3)
#: Samples of the cross-node latencies, and in a quick run.
SAMPLES = 60
QUICK_SAMPLES = 4
DATABASE = "execgo_cluster_bench"


def spread_round(h: Any, servers: List[Any], tasks: int, clients: int) -> Tuple[float, List[str]]:
    """
    Section 1's load with its clients divided between C{servers}: tasks
    per second from the first submit to the last terminal state, and the
    problems met.
    """
    shares = [tasks // clients + (1 if i < tasks % clients else 0) for i in range(clients)]
    per_server: List[List[int]] = [shares[i :: len(servers)] for i in range(len(servers))]
    body = json.dumps(h.TRUE_TASK).encode()
    results: List[Any] = [None] * len(servers)

    def drive(index: int) -> None:
        results[index] = loadgen.run_clients(servers[index].port, per_server[index], body, h.LONG_POLL_MS)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(servers)) if per_server[i]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent: List[float] = []
    done: Dict[str, Tuple[float, Dict[str, Any]]] = {}
    problems: List[str] = []
    for result in results:
        if result is None:
            continue
        _, their_sent, their_done, their_problems = result
        sent += their_sent
        done.update(their_done)
        problems += their_problems
    failed = [doc for _, doc in done.values() if doc["status"] != "success"]
    if failed:
        problems.append(f"{len(failed)} tasks did not succeed: {h.describe_failures(failed)}")
    if len(done) != tasks:
        problems.append(f"{len(done)}/{tasks} tasks terminal")
    if not sent or not done:
        return 0.0, problems + ["nothing completed"]
    return len(done) / (max(t for t, _ in done.values()) - min(sent)), problems


def submit_to_start_ms(h: Any, servers: List[Any], count: int) -> Tuple[float, List[str]]:
    """
    The p50 from a submit on the first node to the start of the task on
    the second (placed by its label), from the store's timestamps.
    """
    client = h.Client(servers[0].port)
    gaps: List[float] = []
    problems: List[str] = []
    try:
        for _ in range(count):
            task = dict(h.TRUE_TASK, placement={"node_labels": {"name": "node1"}})
            task_id = client.submit(task)
            doc = h.wait_terminal(client, task_id, True, 0.005)
            if doc["status"] != "success" or doc.get("node_id") != "node1":
                problems.append(f"task {task_id} ended {doc['status']} on {doc.get('node_id')}")
                continue
            gaps.append(h.parse_timestamp_ms(doc["started_at"]) - h.parse_timestamp_ms(doc["created_at"]))
    finally:
        client.close()
    return (statistics.median(gaps) if gaps else 0.0), problems


def kill_to_answer_ms(h: Any, servers: List[Any], count: int) -> Tuple[float, float, List[str]]:
    """
    The p50 and worst time from a kill sent to the first node, of a task
    the second runs, until a long-poll on the third answers it cancelled.
    """
    submitter, killer = h.Client(servers[0].port), h.Client(servers[0].port)
    samples: List[float] = []
    problems: List[str] = []
    try:
        for _ in range(count):
            task = {"execution": {"kind": "command", "program": "/bin/sleep", "args": ["30"]},
                    "placement": {"node_labels": {"name": "node1"}}}
            task_id = submitter.submit(task)
            while "pid" not in submitter.status(task_id):
                time.sleep(0.002)
            answer: Dict[str, Any] = {}
            thread = threading.Thread(target=_long_poll, args=(h, servers[2].port, task_id, answer))
            thread.start()
            time.sleep(0.05)
            sent = time.perf_counter()
            killer.request("POST", f"/api/v1/tasks/{task_id}/kill", b"")
            thread.join()
            if answer.get("status") != "cancelled":
                problems.append(f"task {task_id}: long-poll answered {answer.get('status')}")
                continue
            samples.append((answer["_at"] - sent) * 1000)
    finally:
        submitter.close()
        killer.close()
    if not samples:
        return 0.0, 0.0, problems + ["no sample"]
    return statistics.median(samples), max(samples), problems


def _long_poll(h: Any, port: int, task_id: str, answer: Dict[str, Any]) -> None:
    """
    Long-poll C{task_id} on the node at C{port}; its answer and when it
    came (C{_at}) go into C{answer}.
    """
    poller = h.Client(port)
    try:
        answer.update(poller.status(task_id, 20000))
        answer["_at"] = time.perf_counter()
    finally:
        poller.close()


def counters(cluster: Any, database: str) -> Tuple[int, int]:
    """
    Statements (C{pg_stat_statements}) and commits (C{pg_stat_database}).
    """
    statements = cluster.psql("SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements", database)
    commits = cluster.psql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'", database)
    return int(statements.strip()), int(commits.strip())


def run_cluster(ctx: Any, h: Any) -> List[Any]:
    """
    Section 10 (see the module docstring).
    """
    reason = pgcluster.unavailable()
    if reason is not None:
        return h.invalid_figures("cluster", f"INVALID: {reason}")
    binaries = pgcluster.find_binaries()
    assert binaries is not None
    sizes = ctx.sizes
    samples = QUICK_SAMPLES if sizes.tasks < 100 else SAMPLES
    cluster = pgcluster.Cluster(
        binaries,
        durable=True,
        settings={"shared_preload_libraries": "'pg_stat_statements'", "pg_stat_statements.track": "top"},
    )
    rates: Dict[int, float] = {}
    problems: List[str] = []
    statements = commits = 0.0
    start_p50 = kill_p50 = kill_max = 0.0
    try:
        cluster.start()
        for count in NODE_COUNTS:
            database = f"{DATABASE}_{count}"
            url = cluster.create_database(database)
            cluster.psql("CREATE EXTENSION pg_stat_statements", database)
            queued = max(128, sizes.tasks + 64)
            servers = [
                ctx.new_server(
                    f"cluster-{count}-{index}",
                    [
                        "--max-running-tasks", str(sizes.max_running), "--max-queued-tasks", str(queued),
                        "--database-url", url, "--runtime-id", f"node{index}", "--node-label", f"name=node{index}",
                    ],
                )
                for index in range(count)
            ]
            try:
                for server in servers:
                    server.start()
                h.log(f"cluster: {count} node(s), warm-up")
                problems += spread_round(h, servers, max(sizes.warmup_tasks, sizes.clients), sizes.clients)[1]
                if count == NODE_COUNTS[-1]:
                    cluster.psql("SELECT pg_stat_statements_reset()", database)
                    before = counters(cluster, database)
                rates[count], trouble = spread_round(h, servers, sizes.tasks, sizes.clients)
                problems += trouble
                h.log(f"cluster: {count} node(s): {rates[count]:.1f} tasks/s")
                if count == NODE_COUNTS[-1]:
                    after = counters(cluster, database)
                    statements = (after[0] - before[0]) / sizes.tasks
                    commits = (after[1] - before[1]) / sizes.tasks
                    start_p50, trouble = submit_to_start_ms(h, servers, samples)
                    problems += trouble
                    kill_p50, kill_max, trouble = kill_to_answer_ms(h, servers, samples)
                    problems += trouble
            finally:
                for server in servers:
                    try:
                        server.stop()
                    except Exception as e:  # noqa: BLE001 -- the others are stopped whatever one did
                        h.log(f"stopping {server.url}: {e}")
    finally:
        cluster.destroy()
    valid = not problems
    note = f"INVALID: {problems[0]}" if problems else ""
    one = rates.get(1, 0.0)
    h.log(
        "cluster: " + ", ".join(f"{n} node(s) {rates.get(n, 0.0):.1f}" for n in NODE_COUNTS)
        + f" tasks/s; {statements:.1f} statements and {commits:.2f} commits per task on 3 nodes;"
        f" submit->start across nodes p50 {start_p50:.1f} ms; kill->long-poll p50 {kill_p50:.1f} ms, max {kill_max:.1f}"
    )
    return [
        h.figure("cluster.one_node_tasks_per_s", one, valid=valid, note=note or "one node on PostgreSQL"),
        h.figure(
            "cluster.two_nodes_tasks_per_s", rates.get(2), one, "one node /s", valid=valid,
            note=note or "same machine: slots double, cores do not",
        ),
        h.figure(
            "cluster.three_nodes_tasks_per_s", rates.get(3), one, "one node /s", valid=valid,
            note=note or "same machine: slots triple, cores do not",
        ),
        h.figure("cluster.statements_per_task", statements, valid=valid, note=note or "three nodes, one round"),
        h.figure("cluster.commits_per_task", commits, valid=valid, note=note or "three nodes, one round"),
        h.figure(
            "cluster.submit_to_start_p50_ms", start_p50, met=start_p50 <= 20, valid=valid,
            note=note or f"{samples} tasks submitted on node0, placed on node1",
        ),
        h.figure(
            "cluster.kill_to_answer_p50_ms", kill_p50, met=kill_p50 <= 150, valid=valid,
            note=note or f"{samples} kills on node0 of node1's task, long-polled on node2; worst {kill_max:.0f} ms",
        ),
    ]
