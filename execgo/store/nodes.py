# -*- test-case-name: tests.test_nodes -*-
"""
The cluster's nodes in the store: joining, the lease, leaving, and the
view every node gives of them (L{execgo.core.cluster}).

A node's row is its membership: the server writes what the node says of
itself when it starts (L{join}), refusing to when another node with the
same id holds a live lease; the node's supervisor holds the lease
(L{take_lease}, L{renew}) and gives it up when it leaves (L{leave}).  A
node whose lease ran out is marked C{lost} by whichever node sees it
first (L{mark_lost}).  Each change is one conditional statement, so nodes
that race each other on a row agree on its outcome.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from typing import Any, Dict, List, Optional

from execgo.core import errors
from execgo.core.cluster import NODE_ALIVE, NODE_LEFT, NODE_LOST, NodeInfo, NodeRecord
from execgo.core.constants import STATUS_RUNNING
from execgo.core.reservation import Reservation
from execgo.store.backend import backend_of
from execgo.store.connection import dumps, rows, transaction

_COLUMNS = (
    "node_id, instance, advertise_url, labels_json, capacity_json, state,"
    " started_at_ms, lease_epoch, lease_expires_at_ms, updated_at_ms"
)


#: The data directory's own key (L{execgo.core.cluster.NodeInfo.instance}).
INSTANCE_FILE = "node-instance"


def node_instance(data_dir: str) -> str:
    """
    The data directory's own random key, made the first time (blocking):
    a node started again on it is the same node.
    """
    path = os.path.join(data_dir, INSTANCE_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        with open(path, encoding="ascii") as existing:
            key = existing.read().strip()
        if key:
            return key
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
    key = secrets.token_hex(16)
    try:
        os.write(fd, key.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


class NodeIdTaken(errors.Conflict):
    """
    Another live node holds the id a runtime was started with.
    """


def join(conn: sqlite3.Connection, node: NodeInfo, lease_ms: int, now_ms: int) -> None:
    """
    Record C{node} as a member: a new row, or the row of this id taken
    over (its descriptive fields replaced) when it is this node's own (the
    same data directory, L{NodeInfo.instance}: a server started again) or
    no live node holds it.  A node that is not alive gets a fresh lease
    of C{lease_ms} (its supervisor renews it from then on); the lease of
    a live node of the same instance is left to its supervisor.

    @raise NodeIdTaken: when another instance holds a live lease on the id.
    """
    labels, capacity = dumps(dict(node.labels)), dumps(node.capacity.to_json())
    with transaction(conn):
        select = f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?" + backend_of(conn).for_update
        found = rows(conn, select, (node.node_id,))
        if not found:
            conn.execute(
                f"INSERT INTO nodes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (node.node_id, node.instance, node.advertise_url, labels, capacity, NODE_ALIVE, now_ms, 1,
                 now_ms + lease_ms, now_ms),
            )
            return
        row = found[0]
        live = row["state"] == NODE_ALIVE and row["lease_expires_at_ms"] > now_ms
        if live and row["instance"] != node.instance:
            raise NodeIdTaken(
                f"node id {node.node_id!r} is held by a live node at {row['advertise_url']}"
                f" (another data directory); give this runtime another --runtime-id"
            )
        if live:
            conn.execute(
                "UPDATE nodes SET advertise_url = ?, labels_json = ?, capacity_json = ?, updated_at_ms = ?"
                " WHERE node_id = ?",
                (node.advertise_url, labels, capacity, now_ms, node.node_id),
            )
            return
        conn.execute(
            "UPDATE nodes SET instance = ?, advertise_url = ?, labels_json = ?, capacity_json = ?, state = ?,"
            " started_at_ms = ?, lease_epoch = lease_epoch + 1, lease_expires_at_ms = ?, updated_at_ms = ?"
            " WHERE node_id = ?",
            (node.instance, node.advertise_url, labels, capacity, NODE_ALIVE, now_ms, now_ms + lease_ms, now_ms,
             node.node_id),
        )


def take_lease(conn: sqlite3.Connection, node_id: str, instance: str, lease_ms: int, now_ms: int) -> Optional[int]:
    """
    The lease holder's start, and its way back after losing the lease:
    renew the lease if this instance still holds it live, or take a new
    one (the next epoch, C{started_at} now) if it ran out, was marked
    C{lost} or was given up.

    @return: the epoch held, or C{None} when the id belongs to another
        instance now (or has no row: the server did not join).
    """
    with transaction(conn):
        found = rows(
            conn,
            "SELECT instance, state, lease_epoch, lease_expires_at_ms FROM nodes WHERE node_id = ?"
            + backend_of(conn).for_update,
            (node_id,),
        )
        if not found or found[0]["instance"] != instance:
            return None
        row = found[0]
        epoch = int(row["lease_epoch"])
        if row["state"] == NODE_ALIVE and row["lease_expires_at_ms"] > now_ms:
            conn.execute(
                "UPDATE nodes SET lease_expires_at_ms = ?, updated_at_ms = ? WHERE node_id = ?",
                (now_ms + lease_ms, now_ms, node_id),
            )
            return epoch
        conn.execute(
            "UPDATE nodes SET state = ?, started_at_ms = ?, lease_epoch = ?, lease_expires_at_ms = ?,"
            " updated_at_ms = ? WHERE node_id = ?",
            (NODE_ALIVE, now_ms, epoch + 1, now_ms + lease_ms, now_ms, node_id),
        )
        return epoch + 1


def renew(conn: sqlite3.Connection, node_id: str, epoch: int, lease_ms: int, now_ms: int) -> bool:
    """
    Extend the lease of epoch C{epoch} to C{now_ms + lease_ms}, if it is
    still held: alive, of that epoch and not run out.

    @return: whether it was (C{False}: the lease is lost; take a new one).
    """
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE nodes SET lease_expires_at_ms = ?, updated_at_ms = ?"
            " WHERE node_id = ? AND lease_epoch = ? AND state = ? AND lease_expires_at_ms > ?",
            (now_ms + lease_ms, now_ms, node_id, epoch, NODE_ALIVE, now_ms),
        )
        return cursor.rowcount == 1


def leave(conn: sqlite3.Connection, node_id: str, epoch: int, now_ms: int) -> bool:
    """
    Give up the lease of epoch C{epoch} (a node that stops cleanly):
    the node is C{left}.

    @return: whether the lease was still held.
    """
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE nodes SET state = ?, lease_expires_at_ms = ?, updated_at_ms = ?"
            " WHERE node_id = ? AND lease_epoch = ? AND state = ?",
            (NODE_LEFT, now_ms, now_ms, node_id, epoch, NODE_ALIVE),
        )
        return cursor.rowcount == 1


def mark_lost(conn: sqlite3.Connection, now_ms: int, watcher: Optional[str] = None) -> List[str]:
    """
    Mark every alive node whose lease ran out before C{now_ms} C{lost}, but
    the C{watcher}'s own: a node whose server lives handles the loss of its
    supervisor itself (it fails its tasks and starts another, which takes
    a new lease).

    @return: the ids of the nodes this call marked.
    """
    with transaction(conn):
        expired = [
            row[0]
            for row in rows(
                conn,
                "SELECT node_id FROM nodes WHERE state = ? AND lease_expires_at_ms <= ?" + backend_of(conn).for_update,
                (NODE_ALIVE, now_ms),
            )
            if row[0] != watcher
        ]
        for node_id in expired:
            conn.execute(
                "UPDATE nodes SET state = ?, updated_at_ms = ? WHERE node_id = ?", (NODE_LOST, now_ms, node_id)
            )
        return expired


def orphaned_tasks(conn: sqlite3.Connection, watcher: Optional[str] = None) -> List[str]:
    """
    The running tasks of nodes that are C{lost} or C{left}, but the
    C{watcher}'s own (as L{mark_lost}): nothing will ever write their end
    but another node (L{execgo.core.outcome.node_lost}).
    """
    return [
        row[0]
        for row in rows(
            conn,
            "SELECT task_id, node_id FROM tasks WHERE status = ? AND node_id IN"
            " (SELECT node_id FROM nodes WHERE state IN (?, ?)) ORDER BY created_at_ms",
            (STATUS_RUNNING, NODE_LOST, NODE_LEFT),
        )
        if row[1] != watcher
    ]


def count_by_state(conn: sqlite3.Connection) -> Dict[str, int]:
    """
    How many nodes are in each state (every state named, 0 included).
    """
    counts = {NODE_ALIVE: 0, NODE_LOST: 0, NODE_LEFT: 0}
    for state, count in rows(conn, "SELECT state, COUNT(*) FROM nodes GROUP BY state"):
        counts[state] = int(count)
    return counts


def list_nodes(conn: sqlite3.Connection) -> List[NodeRecord]:
    """
    Every node the store knows, with the tasks each runs now.
    """
    running = {
        row[0]: int(row[1])
        for row in rows(
            conn,
            "SELECT node_id, COUNT(*) FROM tasks WHERE status = ? AND node_id IS NOT NULL GROUP BY node_id",
            (STATUS_RUNNING,),
        )
    }
    return [_record(row, running.get(row["node_id"], 0)) for row in rows(conn, f"SELECT {_COLUMNS} FROM nodes")]


def load_node(conn: sqlite3.Connection, node_id: str) -> Optional[NodeRecord]:
    """
    One node, or C{None} when the store does not know it (its
    C{running_tasks} left at 0: what a relay needs is where it is and
    whether it lives).
    """
    found = rows(conn, f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?", (node_id,))
    return _record(found[0], 0) if found else None


def _record(row: Any, running_tasks: int) -> NodeRecord:
    return NodeRecord(
        node_id=row["node_id"],
        advertise_url=row["advertise_url"],
        labels=json.loads(row["labels_json"]),
        state=row["state"],
        started_at_ms=int(row["started_at_ms"]),
        lease_expires_at_ms=int(row["lease_expires_at_ms"]),
        running_tasks=running_tasks,
        capacity=Reservation.from_json(json.loads(row["capacity_json"])),
    )
