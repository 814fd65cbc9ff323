# -*- test-case-name: tests.test_cli -*-
"""
The inspection subcommands of C{execgo-runtime}: C{list}, C{events},
C{info}, C{capabilities}, C{resources} and C{cluster}.

Each prints what the server answers, verbatim plus a newline, except
C{list --all} (one task a line, across every page) and C{events --follow}
(one event a line, as they happen).  Errors as for the other client
subcommands: the error body on stdout, one line on stderr, exit 1.
Registered on the group by L{execgo.cli.main}; standard library, click and
the no-I/O modules of L{execgo.client} only.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional, Tuple

import click

from execgo.cli.core import (
    UINT,
    CliEnvironment,
    api_url,
    checked,
    echo_raw,
    fail,
    get_verbatim,
    request_headers,
    server_option,
    task_url,
)
from execgo.cli.follow import binary_sink, follow_events
from execgo.client.errors import MalformedResponse
from execgo.client.protocol import TASKS_PATH, list_query
from execgo.client.views import cluster_nodes
from execgo.core.constants import ALL_STATUSES
from execgo.core.protocol import NDJSON_TYPE


def _check_label(ctx: click.Context, param: click.Parameter, values: Tuple[str, ...]) -> Tuple[str, ...]:
    for value in values:
        if value.partition(":")[0] == "" or ":" not in value:
            raise click.BadParameter(f"{value!r} is not KEY:VALUE (with a non-empty KEY)", ctx, param)
    return values


def _page(body: bytes) -> Tuple[List[Any], Optional[str]]:
    """
    The tasks and C{next_cursor} of a list page.
    """
    try:
        page = json.loads(body)
    except (ValueError, RecursionError) as e:
        fail("json error", str(e))
    if not isinstance(page, dict) or not isinstance(page.get("tasks"), list):
        fail("json error", "missing field `tasks` in the list page")
    cursor = page.get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        fail("json error", "invalid value for `next_cursor`: expected a string or null")
    return page["tasks"], cursor


@click.command("list")
@server_option
@click.option("--status", type=click.Choice(ALL_STATUSES), help="Only tasks in this status.")
@click.option("--tenant", metavar="TENANT", help="Only tasks of this tenant.")
@click.option("--owner", metavar="OWNER", help="Only tasks of this owner.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY:VALUE",
    callback=_check_label,
    help="Only tasks with this label (repeatable: all must match).",
)
@click.option("--limit", type=UINT, metavar="N", help="Tasks per page (1 to 500; server default 50).")
@click.option("--cursor", metavar="CURSOR", help="Start at this next_cursor of a previous page.")
@click.option(
    "--all",
    "all_pages",
    is_flag=True,
    help="Follow next_cursor to the last page; print one task a line (NDJSON).",
)
@click.pass_obj
def list_tasks(
    env: CliEnvironment,
    server: str,
    status: Optional[str],
    tenant: Optional[str],
    owner: Optional[str],
    labels: Tuple[str, ...],
    limit: Optional[int],
    cursor: Optional[str],
    all_pages: bool,
) -> None:
    """
    List tasks, newest first, with optional filters.

    Prints the server's page verbatim ({"tasks": [...], "next_cursor": ...});
    with --all, every task of every page, one compact JSON object a line.
    """
    headers = request_headers()
    while True:
        url = api_url(server, TASKS_PATH + list_query(status, tenant, owner, labels, limit, cursor))
        response = checked(env.transport("GET", url, body=None, headers=headers))
        if not all_pages:
            echo_raw(response.body)
            return
        tasks, cursor = _page(response.body)
        for task in tasks:
            click.echo(json.dumps(task, ensure_ascii=False, separators=(",", ":")))
        if cursor is None:
            return


@click.command()
@server_option
@click.option(
    "--after-seq",
    type=UINT,
    default=None,
    metavar="N",
    help="Only events with a seq above N.",
)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Print events one a line (NDJSON) as they happen, until the task's "
    "terminal event.",
)
@click.argument("task_id")
@click.pass_obj
def events(
    env: CliEnvironment, server: str, after_seq: Optional[int], follow: bool, task_id: str
) -> None:
    """
    Print the event log of task TASK_ID (a JSON array, verbatim).
    """
    if follow:
        headers = request_headers(accept=NDJSON_TYPE)
        sink = binary_sink("stdout")
        checked(follow_events(env, server, task_id, after_seq or 0, sink, headers))
        return
    suffix = "/events" if after_seq is None else f"/events?after_seq={after_seq}"
    get_verbatim(env, task_url(server, task_id, suffix))


@click.command()
@server_option
@click.pass_obj
def info(env: CliEnvironment, server: str) -> None:
    """
    Print the runtime's identity, version and platform.
    """
    get_verbatim(env, api_url(server, "/api/v1/runtime/info"))


@click.command()
@server_option
@click.pass_obj
def capabilities(env: CliEnvironment, server: str) -> None:
    """
    Print the host capability snapshot.
    """
    get_verbatim(env, api_url(server, "/api/v1/runtime/capabilities"))


@click.command()
@server_option
@click.pass_obj
def resources(env: CliEnvironment, server: str) -> None:
    """
    Print the resource ledger: capacity, reservations, tenants.
    """
    get_verbatim(env, api_url(server, "/api/v1/runtime/resources"))


@click.command()
@server_option
@click.option("--json", "raw", is_flag=True, help="Print the server's answer verbatim instead of a table.")
@click.pass_obj
def cluster(env: CliEnvironment, server: str, raw: bool) -> None:
    """
    Print the nodes of the cluster: id, state, running tasks, capacity,
    lease, address and labels.
    """
    response = checked(env.transport("GET", api_url(server, CLUSTER_PATH), body=None, headers=request_headers()))
    if raw:
        echo_raw(response.body)
        return
    for line in node_table(response.body):
        click.echo(line)


CLUSTER_PATH = "/api/v1/runtime/cluster"
_NODE_COLUMNS = ("NODE", "STATE", "RUNNING", "SLOTS", "LEASE EXPIRES", "ADVERTISE URL", "LABELS")


def node_table(body: bytes) -> List[str]:
    """
    The lines of the C{cluster} table from a C{/api/v1/runtime/cluster}
    body: a header, then a node a line, columns aligned; characters a
    terminal would act on are shown escaped.

    @raise MalformedResponse: when the body is not such an answer.
    """
    try:
        document = json.loads(body)
    except ValueError as e:
        raise MalformedResponse(f"not a cluster answer: {e}") from None
    rows = [
        (
            node.node_id,
            node.state,
            str(node.running_tasks),
            str(node.capacity.task_slots),
            node.lease_expires_at,
            node.advertise_url,
            ",".join(f"{key}={value}" for key, value in sorted(node.labels.items())),
        )
        for node in cluster_nodes(document)
    ]
    shown = [_NODE_COLUMNS] + [tuple(_printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(_NODE_COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in shown]


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def register(group: click.Group) -> None:
    """
    Add this module's subcommands to C{group}.
    """
    for command in (list_tasks, events, info, capabilities, resources, cluster):
        group.add_command(command)
