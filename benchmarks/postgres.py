"""
The PostgreSQL section of the benchmark harness, run by
C{benchmarks/run.py}, which hands its own module in as C{h}.

 9. postgres: two servers alike but for their store, one on SQLite in its
    data directory, one on a local PostgreSQL cluster started for the
    run (C{initdb} from the host's binaries, with PostgreSQL's durable
    defaults: C{fsync} and C{synchronous_commit} on); the throughput run
    of section 1 on each, alternating (the median of the rounds of each
    is compared), then C{pg_stat_statements} and C{pg_stat_database}
    count the statements and commits one round made per task, and
    sequential submits give each store's submit p50.

Needs PostgreSQL's binaries (see C{tests/pgcluster.py}); without them the
section's figures are invalid, saying why.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Dict, List, Tuple

from benchmarks import loadgen
from tests import pgcluster

#: Throughput rounds per store (alternating), and in a quick run.
ROUNDS = 3
QUICK_ROUNDS = 1
#: Sequential submits timed per store.
SUBMITS = 300
QUICK_SUBMITS = 20
DATABASE = "execgo_bench"


def throughput_round(h: Any, server: Any, tasks: int, clients: int) -> Tuple[float, List[str]]:
    """
    One throughput run (section 1's load, submitted in batches) against
    C{server}: tasks per second from the first submit to the last
    terminal state, and the problems met (any makes the figure invalid).
    """
    shares = [tasks // clients + (1 if i < tasks % clients else 0) for i in range(clients)]
    body = json.dumps(h.TRUE_TASK).encode()
    order, sent, done, problems = loadgen.run_clients(server.port, shares, body, h.LONG_POLL_MS, batch=h.SUBMIT_BATCH)
    failed = [doc for _, doc in done.values() if doc["status"] != "success"]
    if failed:
        problems = problems + [f"{len(failed)} tasks did not succeed: {h.describe_failures(failed)}"]
    if len(done) != tasks:
        problems = problems + [f"{len(done)}/{tasks} tasks terminal"]
    if not sent or not done:
        return 0.0, problems + ["nothing completed"]
    span = max(t for t, _ in done.values()) - min(sent)
    return len(done) / span, problems


def submit_p50_ms(h: Any, server: Any, count: int) -> Tuple[float, List[str]]:
    """
    The p50 of C{count} sequential submits on one keep-alive connection
    (the tasks then run to their end before this returns).
    """
    client = h.Client(server.port)
    samples: List[float] = []
    ids: List[str] = []
    try:
        for _ in range(count):
            before = time.perf_counter()
            ids.append(client.submit(h.TRUE_TASK))
            samples.append(time.perf_counter() - before)
        docs = [h.wait_terminal(client, task_id, True, 0.005) for task_id in ids]
    finally:
        client.close()
    failed = [doc for doc in docs if doc["status"] != "success"]
    problems = [f"{len(failed)} submitted tasks did not succeed"] if failed else []
    return statistics.median(samples) * 1000, problems


def counters(cluster: Any) -> Tuple[int, int]:
    """
    The statements the benchmark database ran (C{pg_stat_statements},
    top level, every connection) and its commits (C{pg_stat_database}).
    """
    statements = cluster.psql("SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements", DATABASE)
    commits = cluster.psql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{DATABASE}'", DATABASE)
    return int(statements.strip()), int(commits.strip())


def run_postgres(ctx: Any, h: Any) -> List[Any]:
    """
    Section 9: the same runtime on PostgreSQL and on SQLite (see the
    module docstring).
    """
    reason = pgcluster.unavailable()
    if reason is not None:
        return h.invalid_figures("postgres", f"INVALID: {reason}")
    binaries = pgcluster.find_binaries()
    assert binaries is not None
    quick = ctx.sizes.tasks < 100
    rounds = QUICK_ROUNDS if quick else ROUNDS
    submits = QUICK_SUBMITS if quick else SUBMITS
    sizes = ctx.sizes
    cluster = pgcluster.Cluster(
        binaries,
        durable=True,
        settings={"shared_preload_libraries": "'pg_stat_statements'", "pg_stat_statements.track": "top"},
    )
    servers: List[Any] = []
    try:
        cluster.start()
        url = cluster.create_database(DATABASE)
        cluster.psql("CREATE EXTENSION pg_stat_statements", DATABASE)
        queued = max(128, sizes.tasks + 64)
        args = ["--max-running-tasks", str(sizes.max_running), "--max-queued-tasks", str(queued)]
        lite = ctx.new_server("store-sqlite", args)
        pg = ctx.new_server("store-postgres", [*args, "--database-url", url])
        servers = [lite, pg]
        for server in servers:
            server.start()
        h.log("postgres: warm-up on both stores")
        problems: List[str] = []
        for server in servers:
            problems += throughput_round(h, server, max(sizes.warmup_tasks, sizes.clients), sizes.clients)[1]
        rates: Dict[str, List[float]] = {"sqlite": [], "postgresql": []}
        for index in range(rounds):
            pair = [("sqlite", lite), ("postgresql", pg)]
            for name, server in pair if index % 2 == 0 else pair[::-1]:
                rate, trouble = throughput_round(h, server, sizes.tasks, sizes.clients)
                rates[name].append(rate)
                problems += trouble
                h.log(f"postgres: round {index + 1}, {name}: {rate:.1f} tasks/s")
        cluster.psql("SELECT pg_stat_statements_reset()", DATABASE)
        statements_before, commits_before = counters(cluster)
        counted, trouble = throughput_round(h, pg, sizes.tasks, sizes.clients)
        problems += trouble
        statements_after, commits_after = counters(cluster)
        statements = (statements_after - statements_before) / sizes.tasks
        commits = (commits_after - commits_before) / sizes.tasks
        lite_p50, trouble = submit_p50_ms(h, lite, submits)
        problems += trouble
        pg_p50, trouble = submit_p50_ms(h, pg, submits)
        problems += trouble
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 -- the cluster goes whatever one stop did
                h.log(f"stopping {server.url}: {e}")
        cluster.destroy()
    valid = not problems
    note = f"INVALID: {problems[0]}" if problems else ""
    pg_rate, lite_rate = statistics.median(rates["postgresql"]), statistics.median(rates["sqlite"])
    ratio = pg_rate / lite_rate if lite_rate else 0.0
    h.log(
        f"postgres: {pg_rate:.1f} vs {lite_rate:.1f} tasks/s (ratio {ratio:.2f}), submit p50 {pg_p50:.2f}"
        f" vs {lite_p50:.2f} ms, {statements:.1f} statements and {commits:.2f} commits per task"
    )
    rounds_note = (
        f"medians of {rounds} alternating rounds of {sizes.tasks} tasks: postgresql "
        + "/".join(f"{r:.0f}" for r in rates["postgresql"])
        + ", sqlite "
        + "/".join(f"{r:.0f}" for r in rates["sqlite"])
    )
    return [
        h.figure(
            "postgres.tasks_per_s", pg_rate, lite_rate, "same on SQLite /s",
            met=ratio >= 0.8, valid=valid, note=note or rounds_note,
        ),
        h.figure(
            "postgres.submit_p50_ms", pg_p50, lite_p50, "same on SQLite ms",
            met=pg_p50 <= 10, valid=valid, note=note or f"{submits} sequential submits",
        ),
        h.figure(
            "postgres.statements_per_task", statements, valid=valid,
            note=note or f"one round of {sizes.tasks} tasks at {counted:.0f} tasks/s; round trips are at most these",
        ),
        h.figure("postgres.commits_per_task", commits, valid=valid, note=note or "pg_stat_database.xact_commit"),
    ]
