"""
Tests for the cluster's nodes in the store (L{execgo.store.nodes}): joining,
the lease (taken, renewed, given up, lost), the running tasks of lost
nodes and the nodes' view; and the cluster's side of a claim
(L{execgo.store.transitions.claim_all}: the claiming node, its own copy of
the task's files, tenant quotas across nodes) and of the collection of
task directories without a row here (L{execgo.store.gc.collect_orphans}).

Every store test class runs on each backend (L{backends.each}).
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Dict, List, Mapping, Optional

import attrs
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from execgo.core import errors, records
from execgo.core.cluster import NODE_ALIVE, NODE_LEFT, NODE_LOST, NodeInfo, NodeRecord
from execgo.core.models import ControlContext, ResourceLimits
from execgo.core.reservation import Reservation
from execgo.store import connection, eventlog, gc, nodes, taskfiles, terminal, transitions
from execgo.store.backend import SQLITE
from tests import backends
from tests.fakes import new_task
from tests.test_store import StoreTestCase

NOW = 1_700_000_000_000
LEASE_MS = 10_000
TWO_SLOTS = Reservation(task_slots=2)

#: The columns of a C{nodes} row, as L{node_row} returns them.
NODE_COLUMNS = (
    "node_id",
    "instance",
    "advertise_url",
    "labels_json",
    "capacity_json",
    "state",
    "started_at_ms",
    "lease_epoch",
    "lease_expires_at_ms",
    "updated_at_ms",
)


def node_info(
    node_id: str = "n1",
    instance: str = "i1",
    advertise_url: str = "http://10.0.0.1:8080",
    labels: Optional[Mapping[str, str]] = None,
    capacity: Reservation = TWO_SLOTS,
) -> NodeInfo:
    """
    What a node says of itself when it joins.
    """
    return NodeInfo(
        node_id=node_id,
        instance=instance,
        advertise_url=advertise_url,
        labels=dict(labels if labels is not None else {"zone": "a"}),
        capacity=capacity,
    )


class NodeStoreTestCase(StoreTestCase):
    """
    L{StoreTestCase} with helpers for node rows and claimed tasks.
    """

    def node_row(self, node_id: str = "n1") -> Optional[Dict[str, Any]]:
        """
        The stored C{nodes} row of C{node_id}, column by column, or C{None}.
        """
        found = connection.rows(
            self.conn, f"SELECT {', '.join(NODE_COLUMNS)} FROM nodes WHERE node_id = ?", (node_id,)
        )
        if not found:
            return None
        return {name: found[0][name] for name in NODE_COLUMNS}

    def state(self, node_id: str) -> str:
        """
        The stored state of a node that must exist.
        """
        row = self.node_row(node_id)
        assert row is not None
        return str(row["state"])

    def set_state(self, node_id: str, state: str) -> None:
        """
        Put a node in C{state} directly, its lease left as it is.
        """
        self.conn.execute("UPDATE nodes SET state = ? WHERE node_id = ?", (state, node_id))

    def claim_on(self, task_id: str, node_id: Optional[str], now_ms: int = NOW + 10) -> records.TaskRecord:
        """
        Insert a task and claim it on node C{node_id}; it must be claimed.
        """
        self.insert(task_id, now_ms=now_ms - 5)
        claimed = transitions.claim_all(self.conn, [task_id], 99, now_ms, None, node_id)[0]
        assert isinstance(claimed, records.TaskRecord), claimed
        self.assertEqual(claimed.status, "running")
        return claimed


@backends.each
class JoinTests(NodeStoreTestCase):
    """
    L{nodes.join}: a new member, a member started again, and an id that
    another live node holds.
    """

    def test_new_node(self) -> None:
        """
        A node the store does not know gets a row: alive, lease epoch 1,
        started now, its lease running C{lease_ms} from now, with its
        labels and capacity as JSON.
        """
        nodes.join(self.conn, node_info(labels={"zone": "a", "gpu": "yes"}), LEASE_MS, NOW)
        row = self.node_row()
        assert row is not None
        self.assertEqual(json.loads(row.pop("labels_json")), {"zone": "a", "gpu": "yes"})
        self.assertEqual(json.loads(row.pop("capacity_json")), {"task_slots": 2})
        self.assertEqual(
            row,
            {
                "node_id": "n1",
                "instance": "i1",
                "advertise_url": "http://10.0.0.1:8080",
                "state": NODE_ALIVE,
                "started_at_ms": NOW,
                "lease_epoch": 1,
                "lease_expires_at_ms": NOW + LEASE_MS,
                "updated_at_ms": NOW,
            },
        )

    def test_id_taken_by_live_node(self) -> None:
        """
        Another instance joining with the id of a node whose lease is live
        (one millisecond before it runs out) is refused with
        L{nodes.NodeIdTaken}, a conflict naming the holder's URL, and the
        row stays as it was.
        """
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)
        before = self.node_row()
        other = node_info(instance="i2", advertise_url="http://10.0.0.2:8080", labels={"zone": "b"})
        error = self.assertRaises(nodes.NodeIdTaken, nodes.join, self.conn, other, LEASE_MS, NOW + LEASE_MS - 1)
        self.assertIsInstance(error, errors.Conflict)
        self.assertIn("'n1'", error.detail)
        self.assertIn("http://10.0.0.1:8080", error.detail)
        self.assertEqual(self.node_row(), before)

    def test_same_instance_while_live(self) -> None:
        """
        The same instance joining again while its lease is live (a server
        started again beside its supervisor) replaces the URL, labels and
        capacity only: the lease, its epoch and the start stay the
        supervisor's.
        """
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)
        again = node_info(
            advertise_url="https://node1.example:9443", labels={"zone": "c"}, capacity=Reservation(4, 1024, 50)
        )
        nodes.join(self.conn, again, 99_999, NOW + 5)
        row = self.node_row()
        assert row is not None
        self.assertEqual(json.loads(row.pop("labels_json")), {"zone": "c"})
        self.assertEqual(json.loads(row.pop("capacity_json")), {"task_slots": 4, "memory_bytes": 1024, "pids": 50})
        self.assertEqual(
            row,
            {
                "node_id": "n1",
                "instance": "i1",
                "advertise_url": "https://node1.example:9443",
                "state": NODE_ALIVE,
                "started_at_ms": NOW,
                "lease_epoch": 1,
                "lease_expires_at_ms": NOW + LEASE_MS,
                "updated_at_ms": NOW + 5,
            },
        )

    def assertTakenOver(self, now_ms: int, lease_ms: int, epoch: int, instance: str = "i2") -> None:
        """
        The row of C{n1} is now that of a node of C{instance} that joined at
        C{now_ms} (C{http://10.0.0.2:8080}, zone C{b}) with a fresh lease of
        epoch C{epoch}.
        """
        row = self.node_row()
        assert row is not None
        self.assertEqual(json.loads(row.pop("labels_json")), {"zone": "b"})
        self.assertEqual(
            row,
            {
                "node_id": "n1",
                "instance": instance,
                "advertise_url": "http://10.0.0.2:8080",
                "capacity_json": row["capacity_json"],
                "state": NODE_ALIVE,
                "started_at_ms": now_ms,
                "lease_epoch": epoch,
                "lease_expires_at_ms": now_ms + lease_ms,
                "updated_at_ms": now_ms,
            },
        )

    def test_takeover_when_lease_ran_out(self) -> None:
        """
        Once the lease ran out (its expiry is now, not yet marked lost),
        another instance takes the row over: its own fields, alive, the
        next epoch, started now.
        """
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)
        other = node_info(instance="i2", advertise_url="http://10.0.0.2:8080", labels={"zone": "b"})
        nodes.join(self.conn, other, 5_000, NOW + LEASE_MS)
        self.assertTakenOver(NOW + LEASE_MS, 5_000, 2)

    def test_takeover_when_lost(self) -> None:
        """
        A row in state C{lost} is taken over by another instance even when
        its lease time has not passed yet.
        """
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)
        self.set_state("n1", NODE_LOST)
        other = node_info(instance="i2", advertise_url="http://10.0.0.2:8080", labels={"zone": "b"})
        nodes.join(self.conn, other, LEASE_MS, NOW + 1)
        self.assertTakenOver(NOW + 1, LEASE_MS, 2)

    def test_takeover_when_left(self) -> None:
        """
        A node that left is taken over by another instance, one epoch on;
        the same instance coming back after that takes the next one.
        """
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)
        self.assertTrue(nodes.leave(self.conn, "n1", 1, NOW + 1))
        other = node_info(instance="i2", advertise_url="http://10.0.0.2:8080", labels={"zone": "b"})
        nodes.join(self.conn, other, LEASE_MS, NOW + 2)
        self.assertTakenOver(NOW + 2, LEASE_MS, 2)
        self.assertTrue(nodes.leave(self.conn, "n1", 2, NOW + 3))
        nodes.join(self.conn, node_info(instance="i3", advertise_url="http://10.0.0.2:8080",
                                        labels={"zone": "b"}), LEASE_MS, NOW + 4)
        self.assertTakenOver(NOW + 4, LEASE_MS, 3, instance="i3")

    def test_same_instance_after_leaving(self) -> None:
        """
        The same instance joining after it left starts a new lease (next
        epoch, started now) rather than keeping the old one.
        """
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)
        self.assertTrue(nodes.leave(self.conn, "n1", 1, NOW + 1))
        nodes.join(self.conn, node_info(), LEASE_MS, NOW + 2)
        row = self.node_row()
        assert row is not None
        self.assertEqual(
            (row["state"], row["lease_epoch"], row["started_at_ms"], row["lease_expires_at_ms"]),
            (NODE_ALIVE, 2, NOW + 2, NOW + 2 + LEASE_MS),
        )

    def test_other_nodes_untouched(self) -> None:
        """
        Joining (and being refused) changes only the row of the node's own
        id.
        """
        nodes.join(self.conn, node_info("n2", "i9"), LEASE_MS, NOW)
        before = self.node_row("n2")
        nodes.join(self.conn, node_info(), LEASE_MS, NOW + 1)
        self.assertRaises(nodes.NodeIdTaken, nodes.join, self.conn, node_info(instance="i2"), LEASE_MS, NOW + 2)
        self.assertEqual(self.node_row("n2"), before)


@backends.each
class TakeLeaseTests(NodeStoreTestCase):
    """
    L{nodes.take_lease}: the lease holder's start and its way back.
    """

    def setUp(self) -> None:
        super().setUp()
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)

    def test_renews_live_lease(self) -> None:
        """
        The instance that holds a live lease keeps its epoch and start; the
        lease now runs C{lease_ms} from now.
        """
        self.assertEqual(nodes.take_lease(self.conn, "n1", "i1", 4_000, NOW + 100), 1)
        row = self.node_row()
        assert row is not None
        self.assertEqual(
            (row["state"], row["lease_epoch"], row["started_at_ms"], row["lease_expires_at_ms"], row["updated_at_ms"]),
            (NODE_ALIVE, 1, NOW, NOW + 4_100, NOW + 100),
        )

    def assertNewLease(self, now_ms: int, epoch: int) -> None:
        """
        The row holds a fresh lease of C{epoch}, taken at C{now_ms}.
        """
        row = self.node_row()
        assert row is not None
        self.assertEqual(
            (row["state"], row["lease_epoch"], row["started_at_ms"], row["lease_expires_at_ms"], row["updated_at_ms"]),
            (NODE_ALIVE, epoch, now_ms, now_ms + LEASE_MS, now_ms),
        )

    def test_expired(self) -> None:
        """
        A lease that ran out (its expiry is now) is taken anew: the next
        epoch, started now.
        """
        self.assertEqual(nodes.take_lease(self.conn, "n1", "i1", LEASE_MS, NOW + LEASE_MS), 2)
        self.assertNewLease(NOW + LEASE_MS, 2)

    def test_lost(self) -> None:
        """
        A node marked C{lost} takes the next epoch and is alive again.
        """
        self.assertEqual(nodes.mark_lost(self.conn, NOW + LEASE_MS), ["n1"])
        self.assertEqual(nodes.take_lease(self.conn, "n1", "i1", LEASE_MS, NOW + LEASE_MS + 1), 2)
        self.assertNewLease(NOW + LEASE_MS + 1, 2)

    def test_lost_before_expiry(self) -> None:
        """
        The C{lost} state alone (the lease time not passed) is enough for a
        new epoch.
        """
        self.set_state("n1", NODE_LOST)
        self.assertEqual(nodes.take_lease(self.conn, "n1", "i1", LEASE_MS, NOW + 1), 2)
        self.assertNewLease(NOW + 1, 2)

    def test_left(self) -> None:
        """
        A node that gave its lease up takes the next epoch.
        """
        self.assertTrue(nodes.leave(self.conn, "n1", 1, NOW + 1))
        self.assertEqual(nodes.take_lease(self.conn, "n1", "i1", LEASE_MS, NOW + 2), 2)
        self.assertNewLease(NOW + 2, 2)

    def test_other_instance(self) -> None:
        """
        Another instance gets C{None}, whether the lease is live or ran
        out, and changes nothing.
        """
        before = self.node_row()
        self.assertIsNone(nodes.take_lease(self.conn, "n1", "i2", LEASE_MS, NOW + 1))
        self.assertIsNone(nodes.take_lease(self.conn, "n1", "i2", LEASE_MS, NOW + 10 * LEASE_MS))
        self.assertEqual(self.node_row(), before)

    def test_unknown(self) -> None:
        """
        An id the store does not know gets C{None} and no row.
        """
        self.assertIsNone(nodes.take_lease(self.conn, "ghost", "i1", LEASE_MS, NOW))
        self.assertIsNone(self.node_row("ghost"))


@backends.each
class RenewTests(NodeStoreTestCase):
    """
    L{nodes.renew}: extending the lease while it is still held.
    """

    def setUp(self) -> None:
        super().setUp()
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)

    def test_held(self) -> None:
        """
        A live lease of the held epoch runs C{lease_ms} from now, every time.
        """
        self.assertTrue(nodes.renew(self.conn, "n1", 1, 3_000, NOW + 1))
        self.assertTrue(nodes.renew(self.conn, "n1", 1, 3_000, NOW + 2_999))
        row = self.node_row()
        assert row is not None
        self.assertEqual(
            (row["lease_epoch"], row["lease_expires_at_ms"], row["updated_at_ms"], row["started_at_ms"]),
            (1, NOW + 5_999, NOW + 2_999, NOW),
        )

    def test_stale_epoch(self) -> None:
        """
        The previous epoch's holder cannot renew the row's new lease.
        """
        self.assertEqual(nodes.take_lease(self.conn, "n1", "i1", LEASE_MS, NOW + LEASE_MS), 2)
        before = self.node_row()
        self.assertFalse(nodes.renew(self.conn, "n1", 1, LEASE_MS, NOW + LEASE_MS + 1))
        self.assertEqual(self.node_row(), before)
        self.assertTrue(nodes.renew(self.conn, "n1", 2, LEASE_MS, NOW + LEASE_MS + 1))

    def test_expired(self) -> None:
        """
        A lease whose expiry is now is not renewed.
        """
        before = self.node_row()
        self.assertFalse(nodes.renew(self.conn, "n1", 1, LEASE_MS, NOW + LEASE_MS))
        self.assertEqual(self.node_row(), before)

    def test_lost(self) -> None:
        """
        A node marked C{lost} (its lease time not passed) is not renewed.
        """
        self.set_state("n1", NODE_LOST)
        before = self.node_row()
        self.assertFalse(nodes.renew(self.conn, "n1", 1, LEASE_MS, NOW + 1))
        self.assertEqual(self.node_row(), before)

    def test_left_or_unknown(self) -> None:
        """
        A node that left, and an unknown one, are not renewed.
        """
        self.assertTrue(nodes.leave(self.conn, "n1", 1, NOW + 1))
        self.assertFalse(nodes.renew(self.conn, "n1", 1, LEASE_MS, NOW))
        self.assertFalse(nodes.renew(self.conn, "ghost", 1, LEASE_MS, NOW))


@backends.each
class LeaveTests(NodeStoreTestCase):
    """
    L{nodes.leave}: giving the lease up.
    """

    def setUp(self) -> None:
        super().setUp()
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)

    def test_leave_once(self) -> None:
        """
        The holder of the lease leaves once: the node is C{left}, its lease
        ending now; leaving again says it no longer held it.
        """
        self.assertTrue(nodes.leave(self.conn, "n1", 1, NOW + 7))
        row = self.node_row()
        assert row is not None
        self.assertEqual(
            (row["state"], row["lease_expires_at_ms"], row["updated_at_ms"], row["lease_epoch"]),
            (NODE_LEFT, NOW + 7, NOW + 7, 1),
        )
        self.assertFalse(nodes.leave(self.conn, "n1", 1, NOW + 8))
        self.assertEqual(self.node_row(), row)

    def test_stale_epoch(self) -> None:
        """
        A stale epoch's holder cannot make the node leave.
        """
        self.assertEqual(nodes.take_lease(self.conn, "n1", "i1", LEASE_MS, NOW + LEASE_MS), 2)
        before = self.node_row()
        self.assertFalse(nodes.leave(self.conn, "n1", 1, NOW + LEASE_MS + 1))
        self.assertEqual(self.node_row(), before)

    def test_lost(self) -> None:
        """
        A node already C{lost} does not leave (it stays C{lost}).
        """
        nodes.mark_lost(self.conn, NOW + LEASE_MS)
        self.assertFalse(nodes.leave(self.conn, "n1", 1, NOW + LEASE_MS + 1))
        row = self.node_row()
        assert row is not None
        self.assertEqual(row["state"], NODE_LOST)


@backends.each
class MarkLostTests(NodeStoreTestCase):
    """
    L{nodes.mark_lost}: alive nodes whose lease ran out become C{lost}.
    """

    def test_marks_expired_only(self) -> None:
        """
        Of three nodes, the alive one whose lease ends now is marked (and
        named); one whose lease runs on and one that left are not; a second
        call marks nothing more; the later one is marked when its lease ends.
        """
        nodes.join(self.conn, node_info("a", "ia"), LEASE_MS, NOW)
        nodes.join(self.conn, node_info("b", "ib"), LEASE_MS, NOW + 5_000)
        nodes.join(self.conn, node_info("c", "ic"), LEASE_MS, NOW)
        self.assertTrue(nodes.leave(self.conn, "c", 1, NOW + 1))
        self.assertEqual(nodes.mark_lost(self.conn, NOW + LEASE_MS - 1), [])
        self.assertEqual(nodes.mark_lost(self.conn, NOW + LEASE_MS), ["a"])
        self.assertEqual([self.state(node_id) for node_id in "abc"], [NODE_LOST, NODE_ALIVE, NODE_LEFT])
        row = self.node_row("a")
        assert row is not None
        self.assertEqual((row["updated_at_ms"], row["lease_epoch"]), (NOW + LEASE_MS, 1))
        self.assertEqual(nodes.mark_lost(self.conn, NOW + LEASE_MS), [])
        self.assertEqual(nodes.mark_lost(self.conn, NOW + LEASE_MS + 1), [])
        self.assertEqual(self.node_row("a"), row)
        self.assertEqual(nodes.mark_lost(self.conn, NOW + LEASE_MS + 5_000), ["b"])

    def test_several(self) -> None:
        """
        Every expired alive node is marked in one call.
        """
        for node_id in ("x", "y", "z"):
            nodes.join(self.conn, node_info(node_id, "i" + node_id), LEASE_MS, NOW)
        self.assertEqual(sorted(nodes.mark_lost(self.conn, NOW + 2 * LEASE_MS)), ["x", "y", "z"])
        self.assertEqual(nodes.count_by_state(self.conn), {NODE_ALIVE: 0, NODE_LOST: 3, NODE_LEFT: 0})

    def test_empty(self) -> None:
        """
        A store without nodes has none to mark.
        """
        self.assertEqual(nodes.mark_lost(self.conn, NOW), [])

    def test_not_the_watcher(self) -> None:
        """
        The node that looks never marks itself: its server handles the
        loss of its own supervisor.
        """
        nodes.join(self.conn, node_info("me", "i1"), LEASE_MS, NOW)
        nodes.join(self.conn, node_info("other", "i2"), LEASE_MS, NOW)
        self.assertEqual(nodes.mark_lost(self.conn, NOW + LEASE_MS, "me"), ["other"])
        self.assertEqual(self.state("me"), NODE_ALIVE)


@backends.each
class OrphanedTasksTests(NodeStoreTestCase):
    """
    L{nodes.orphaned_tasks}: the running tasks nothing will end but
    another node.
    """

    def test_lost_and_left(self) -> None:
        """
        The running tasks of a C{lost} and of a C{left} node, oldest first,
        are orphaned; those of an alive node, terminal ones, queued ones,
        those claimed without a node and those of an unknown node are not.
        """
        nodes.join(self.conn, node_info("alive", "i1"), LEASE_MS, NOW)
        nodes.join(self.conn, node_info("lost", "i2"), LEASE_MS, NOW - LEASE_MS)
        nodes.join(self.conn, node_info("left", "i3"), LEASE_MS, NOW)
        self.assertEqual(nodes.mark_lost(self.conn, NOW), ["lost"])
        self.assertTrue(nodes.leave(self.conn, "left", 1, NOW))
        self.claim_on("on-alive", "alive", NOW + 10)
        self.claim_on("on-lost", "lost", NOW + 30)
        self.claim_on("on-left", "left", NOW + 20)
        self.claim_on("lost-ended", "lost", NOW + 40)
        self.assertTrue(terminal.finish(self.conn, "lost-ended", records.Outcome(status="success"), NOW + 41))
        self.claim_on("no-node", None, NOW + 50)
        self.claim_on("on-ghost", "ghost", NOW + 60)
        self.insert("queued", now_ms=NOW + 70)
        self.assertEqual(nodes.orphaned_tasks(self.conn), ["on-left", "on-lost"])
        self.assertEqual(nodes.orphaned_tasks(self.conn, "lost"), ["on-left"])

    def test_none(self) -> None:
        """
        With every node alive, nothing is orphaned.
        """
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)
        self.claim_on("t1", "n1")
        self.assertEqual(nodes.orphaned_tasks(self.conn), [])


@backends.each
class ListNodesTests(NodeStoreTestCase):
    """
    L{nodes.list_nodes} and L{nodes.load_node}: the nodes as records, with
    the tasks each runs now.
    """

    def setUp(self) -> None:
        super().setUp()
        nodes.join(
            self.conn,
            node_info("a", "ia", "http://a:1", {"zone": "a", "gpu": "é"}, Reservation(3, 4096, 100)),
            LEASE_MS,
            NOW,
        )
        nodes.join(self.conn, node_info("b", "ib", "http://b:2", {}, Reservation(1)), LEASE_MS, NOW + 1)
        nodes.join(self.conn, node_info("c", "ic", "http://c:3", {"x": "y"}), LEASE_MS, NOW + 2)
        self.assertTrue(nodes.leave(self.conn, "c", 1, NOW + 3))
        for task_id in ("a1", "a2", "a3"):
            self.claim_on(task_id, "a")
        self.assertTrue(terminal.finish(self.conn, "a3", records.Outcome(status="failed"), NOW + 20))
        self.claim_on("b1", "b")
        self.claim_on("none", None)
        self.insert("queued")

    def expected(self) -> List[NodeRecord]:
        """
        The three nodes as the store holds them after L{setUp}.
        """
        return [
            NodeRecord("a", "http://a:1", {"zone": "a", "gpu": "é"}, NODE_ALIVE, NOW, NOW + LEASE_MS, 2,
                       Reservation(3, 4096, 100)),
            NodeRecord("b", "http://b:2", {}, NODE_ALIVE, NOW + 1, NOW + 1 + LEASE_MS, 1, Reservation(1)),
            NodeRecord("c", "http://c:3", {"x": "y"}, NODE_LEFT, NOW + 2, NOW + 3, 0, Reservation(2)),
        ]

    def test_list(self) -> None:
        """
        Every node is listed with its decoded labels and capacity and the
        count of its running tasks (terminal ones, queued ones and those
        claimed without a node not counted).
        """
        listed = sorted(nodes.list_nodes(self.conn), key=lambda node: node.node_id)
        self.assertEqual(listed, self.expected())
        self.assertIsInstance(listed[0].capacity, Reservation)
        self.assertEqual(dict(listed[0].labels), {"zone": "a", "gpu": "é"})

    def test_load(self) -> None:
        """
        One node loads as it is listed but for its running tasks, which it
        does not count (left at 0); an unknown one is C{None}.
        """
        for expected in self.expected():
            self.assertEqual(nodes.load_node(self.conn, expected.node_id), attrs.evolve(expected, running_tasks=0))
        self.assertIsNone(nodes.load_node(self.conn, "ghost"))

    def test_list_empty(self) -> None:
        """
        A store without nodes lists none.
        """
        for node_id in ("a", "b", "c"):
            self.conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
        self.assertEqual(nodes.list_nodes(self.conn), [])


@backends.each
class CountByStateTests(NodeStoreTestCase):
    """
    L{nodes.count_by_state}: every state, zeros included.
    """

    def test_empty(self) -> None:
        """
        A store without nodes counts zero of each state.
        """
        self.assertEqual(nodes.count_by_state(self.conn), {NODE_ALIVE: 0, NODE_LOST: 0, NODE_LEFT: 0})

    def test_mixed(self) -> None:
        """
        Each node counts in its state.
        """
        for node_id in ("a1", "a2", "lost", "left"):
            nodes.join(self.conn, node_info(node_id, "i-" + node_id), LEASE_MS, NOW)
        self.set_state("lost", NODE_LOST)
        self.assertTrue(nodes.leave(self.conn, "left", 1, NOW + 1))
        self.assertEqual(nodes.count_by_state(self.conn), {NODE_ALIVE: 2, NODE_LOST: 1, NODE_LEFT: 1})

    def test_missing_states(self) -> None:
        """
        States no node is in count zero beside the others.
        """
        nodes.join(self.conn, node_info(), LEASE_MS, NOW)
        self.assertTrue(nodes.leave(self.conn, "n1", 1, NOW + 1))
        self.assertEqual(nodes.count_by_state(self.conn), {NODE_ALIVE: 0, NODE_LOST: 0, NODE_LEFT: 1})


class NodeInstanceTests(SynchronousTestCase):
    """
    L{nodes.node_instance}: the data directory's own key.
    """

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.path = os.path.join(self.data_dir, nodes.INSTANCE_FILE)

    def test_made_once(self) -> None:
        """
        The first call makes C{node-instance}, mode 0600, holding 32 hex
        characters and a newline; the next returns the same key.
        """
        self.assertFalse(os.path.exists(self.path))
        key = nodes.node_instance(self.data_dir)
        self.assertRegex(key, r"\A[0-9a-f]{32}\Z")
        self.assertEqual(nodes.INSTANCE_FILE, "node-instance")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path, encoding="ascii") as f:
            self.assertEqual(f.read(), key + "\n")
        self.assertEqual(nodes.node_instance(self.data_dir), key)
        with open(self.path, encoding="ascii") as f:
            self.assertEqual(f.read(), key + "\n")

    def test_distinct(self) -> None:
        """
        Two data directories get two keys.
        """
        other = os.path.abspath(self.mktemp())
        os.makedirs(other)
        self.assertNotEqual(nodes.node_instance(self.data_dir), nodes.node_instance(other))

    def test_existing_key(self) -> None:
        """
        A key already in the file is returned as it is, surrounding
        whitespace aside.
        """
        with open(self.path, "w", encoding="ascii") as f:
            f.write("  given-key \n")
        self.assertEqual(nodes.node_instance(self.data_dir), "given-key")

    def test_empty_file(self) -> None:
        """
        An empty (or blank) file, left by a crash while it was made, gets a
        new key.
        """
        with open(self.path, "w", encoding="ascii") as f:
            f.write(" \n")
        key = nodes.node_instance(self.data_dir)
        self.assertRegex(key, r"\A[0-9a-f]{32}\Z")
        with open(self.path, encoding="ascii") as f:
            self.assertEqual(f.read(), key + "\n")
        self.assertEqual(nodes.node_instance(self.data_dir), key)


@backends.each
class ClaimNodeTests(NodeStoreTestCase):
    """
    L{transitions.claim_all} in a cluster: the node that claims, and its
    own copy of the files of a task another node accepted.
    """

    def test_node_id(self) -> None:
        """
        The claim records the claiming node in the row and the record it
        returns; a claim without a node records none.
        """
        self.insert("t1")
        self.insert("t2")
        claimed = transitions.claim_all(self.conn, ["t1"], 7, NOW + 1, None, "n1")[0]
        assert isinstance(claimed, records.TaskRecord)
        self.assertEqual((claimed.status, claimed.node_id), ("running", "n1"))
        self.assertEqual(self.load("t1").node_id, "n1")
        self.assertEqual(self.load("t1"), claimed)
        self.assertEqual(transitions.claim_all(self.conn, ["t2"], 7, NOW + 1)[0], self.load("t2"))
        self.assertIsNone(self.load("t2").node_id)

    def test_lease_guard(self) -> None:
        """
        On PostgreSQL, a write transaction guarded by the node's lease
        commits while the lease is held; under a stale one it fails with
        L{transitions.STALE_LEASE} and nothing of it stays.
        """
        if self.backend.backend is SQLITE:
            raise SkipTest("the guard is PostgreSQL's: a SQLite store has one node")
        nodes.join(self.conn, node_info("n1", "i1"), LEASE_MS, NOW)
        self.insert("t1")
        with connection.transaction(self.conn):
            transitions.guard_lease(self.conn, "n1", 1, NOW + 1)
            transitions.request_kill(self.conn, "t1", NOW + 1)
        self.assertTrue(self.load("t1").kill_requested)
        self.insert("t2")
        for node_id, epoch, now in (("n1", 2, NOW + 2), ("n1", 1, NOW + LEASE_MS), ("ghost", 1, NOW + 2)):
            with self.assertRaises(Exception) as caught:
                with connection.transaction(self.conn):
                    transitions.guard_lease(self.conn, node_id, epoch, now)
                    transitions.request_kill(self.conn, "t2", now)
            self.assertTrue(transitions.refused_for_lease(caught.exception), caught.exception)
            self.assertFalse(self.load("t2").kill_requested)

    def test_under_a_lease(self) -> None:
        """
        A claim made under the node's lease takes the task while that
        lease is held; under a lease run out, marked lost or of another
        epoch it raises L{transitions.StaleLease} and changes nothing.
        """
        nodes.join(self.conn, node_info("n1", "i1"), LEASE_MS, NOW)
        self.insert("t1")
        self.insert("t2")
        claimed = transitions.claim_all(self.conn, ["t1"], 7, NOW + 1, None, "n1", None, None, 1)[0]
        assert isinstance(claimed, records.TaskRecord)
        self.assertEqual(claimed.status, "running")
        for now, epoch in ((NOW + LEASE_MS, 1), (NOW + 2, 2)):
            with self.assertRaises(transitions.StaleLease):
                transitions.claim_all(self.conn, ["t2"], 7, now, None, "n1", None, None, epoch)
            self.assertEqual(self.load("t2").status, "accepted")
        nodes.mark_lost(self.conn, NOW + LEASE_MS)
        with self.assertRaises(transitions.StaleLease):
            transitions.claim_all(self.conn, ["t2"], 7, NOW + 3, None, "n1", None, None, 1)
        with self.assertRaises(transitions.StaleLease):
            transitions.claim_all(self.conn, ["t2"], 7, NOW + 3, None, "ghost", None, None, 1)
        self.assertEqual(self.load("t2").status, "accepted")

    def other_dir(self) -> str:
        """
        Another node's data directory.
        """
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    def test_files_elsewhere(self) -> None:
        """
        A task whose files are in another data directory gets its own under
        C{<data_dir>/tasks/<id>}: the workspace, empty logs and
        C{request.json} as the row keeps the request; the row and the
        record say where.  The accepting node's files are left alone.
        """
        request = {"execution": {"kind": "command", "program": "/bin/true"}, "metadata": {"k": "é"}}
        accepted = self.insert("t1", request_json=request, make_dirs=True)
        here = self.other_dir()
        claimed = transitions.claim_all(self.conn, ["t1"], 7, NOW + 1, None, "n2", here)[0]
        assert isinstance(claimed, records.TaskRecord)
        paths = taskfiles.task_paths(here, "t1", accepted.execution, None)
        self.assertEqual(paths.task_dir, os.path.join(here, "tasks", "t1"))
        self.assertEqual(claimed.paths, paths)
        self.assertEqual(self.load("t1").paths, paths)
        self.assertEqual(self.load("t1"), claimed)
        self.assertTrue(os.path.isdir(paths.workspace_dir))
        for log in (paths.stdout_path, paths.stderr_path):
            self.assertEqual(os.path.getsize(log), 0)
        with open(paths.request_path, encoding="utf-8") as f:
            self.assertEqual(json.load(f), request)
        self.assertEqual(stat.S_IMODE(os.stat(paths.request_path).st_mode), 0o600)
        self.assertTrue(os.path.isdir(accepted.paths.workspace_dir))
        self.assertNotEqual(accepted.paths.task_dir, paths.task_dir)

    def test_files_elsewhere_without_request(self) -> None:
        """
        A row without the request (an earlier version stored it) gets the
        workspace and logs, and no C{request.json}.
        """
        self.insert("t1")
        here = self.other_dir()
        claimed = transitions.claim_all(self.conn, ["t1"], 7, NOW + 1, None, "n2", here)[0]
        assert isinstance(claimed, records.TaskRecord)
        self.assertEqual(claimed.paths.task_dir, os.path.join(here, "tasks", "t1"))
        self.assertTrue(os.path.isdir(claimed.paths.workspace_dir))
        self.assertTrue(os.path.exists(claimed.paths.stdout_path))
        self.assertFalse(os.path.exists(claimed.paths.request_path))

    def test_files_here(self) -> None:
        """
        A task whose files are in this node's data directory keeps its
        paths, and nothing is made for it.
        """
        accepted = self.insert("t1")
        claimed = transitions.claim_all(self.conn, ["t1"], 7, NOW + 1, None, "n1", self.data_dir)[0]
        assert isinstance(claimed, records.TaskRecord)
        self.assertEqual((claimed.status, claimed.paths), ("running", accepted.paths))
        self.assertEqual(self.load("t1").paths, accepted.paths)
        self.assertFalse(os.path.exists(accepted.paths.task_dir))

    def test_no_files(self) -> None:
        """
        When the files cannot be made the task is not claimed
        (L{transitions.NoFiles}), changing nothing; the other tasks of the
        call are.
        """
        self.insert("t1")
        blocked = os.path.join(self.other_dir(), "file")
        with open(blocked, "w") as f:
            f.write("not a directory")
        claims = transitions.claim_all(self.conn, ["t1"], 7, NOW + 1, None, "n2", blocked)
        self.assertIsInstance(claims[0], transitions.NoFiles)
        self.assertEqual(self.load("t1").status, "accepted")
        self.assertIsNone(self.load("t1").node_id)
        self.assertNotIn("resource_reserved", [e.event_type for e in eventlog.load_events(self.conn, "t1")])


@backends.each
class ClaimQuotaTests(NodeStoreTestCase):
    """
    L{transitions.claim_all} with tenant quotas, which hold across every
    node's running tasks.
    """

    ONE_SLOT = {"t": Reservation(task_slots=1)}

    def tenant_task(self, task_id: str, tenant: Optional[str] = "t", memory: Optional[int] = None) -> None:
        """
        Insert an C{accepted} task of C{tenant}.
        """
        self.insert(task_id, control_context=ControlContext(tenant=tenant), limits=ResourceLimits(memory_bytes=memory))

    def assertQueued(self, task_id: str) -> None:
        """
        The task is still C{accepted}, without a reservation or a node.
        """
        record = self.load(task_id)
        self.assertEqual((record.status, record.reserved_at_ms, record.node_id), ("accepted", None, None))
        self.assertNotIn("resource_reserved", [e.event_type for e in eventlog.load_events(self.conn, task_id)])

    def test_full_quota(self) -> None:
        """
        With a task of the tenant running (on another node), the next is
        L{transitions.OverQuota} and stays queued; tasks of another tenant
        or of none are claimed.
        """
        self.tenant_task("running")
        self.assertIsInstance(
            transitions.claim_all(self.conn, ["running"], 1, NOW + 1, None, "other")[0], records.TaskRecord
        )
        self.tenant_task("next")
        self.tenant_task("other-tenant", "u")
        self.tenant_task("no-tenant", None)
        claims = transitions.claim_all(
            self.conn, ["next", "other-tenant", "no-tenant"], 1, NOW + 2, None, "n1", quotas=self.ONE_SLOT
        )
        self.assertIsInstance(claims[0], transitions.OverQuota)
        self.assertIn("'t'", str(claims[0]))
        self.assertQueued("next")
        self.assertEqual([getattr(c, "status", None) for c in claims[1:]], ["running", "running"])

    def test_within_one_call(self) -> None:
        """
        Of two tasks of the tenant claimed in one call under a one-slot
        quota, the first is claimed and the second is over quota.
        """
        self.tenant_task("a")
        self.tenant_task("b")
        first, second = transitions.claim_all(self.conn, ["a", "b"], 1, NOW + 1, None, "n1", quotas=self.ONE_SLOT)
        assert isinstance(first, records.TaskRecord)
        self.assertEqual((first.task_id, first.status), ("a", "running"))
        self.assertEqual(self.load("a").status, "running")
        self.assertIsInstance(second, transitions.OverQuota)
        self.assertQueued("b")

    def test_released(self) -> None:
        """
        Once the tenant's running task ended, its slot is free again.
        """
        self.tenant_task("a")
        transitions.claim_all(self.conn, ["a"], 1, NOW + 1, None, "n1", quotas=self.ONE_SLOT)
        self.tenant_task("b")
        self.assertIsInstance(
            transitions.claim_all(self.conn, ["b"], 1, NOW + 2, None, "n1", quotas=self.ONE_SLOT)[0],
            transitions.OverQuota,
        )
        self.assertTrue(terminal.finish(self.conn, "a", records.Outcome(status="success"), NOW + 3))
        claimed = transitions.claim_all(self.conn, ["b"], 1, NOW + 4, None, "n1", quotas=self.ONE_SLOT)[0]
        self.assertEqual(getattr(claimed, "status", None), "running")

    def test_memory_quota(self) -> None:
        """
        A quota's memory bounds the sum of the tenant's reservations: a task
        that would pass it is over quota, a smaller one is claimed.
        """
        quotas = {"t": Reservation(task_slots=10, memory_bytes=100)}
        self.tenant_task("a", memory=64)
        self.tenant_task("big", memory=64)
        self.tenant_task("small", memory=36)
        claims = transitions.claim_all(self.conn, ["a", "big", "small"], 1, NOW + 1, None, "n1", quotas=quotas)
        self.assertEqual(getattr(claims[0], "status", None), "running")
        self.assertIsInstance(claims[1], transitions.OverQuota)
        self.assertEqual(getattr(claims[2], "status", None), "running")
        self.assertQueued("big")


@backends.each
class CollectOrphansTests(NodeStoreTestCase):
    """
    L{gc.collect_orphans} in a cluster: a directory here whose task another
    node claimed and keeps the files of elsewhere is an orphan.
    """

    def setUp(self) -> None:
        super().setUp()
        self.tasks_dir = os.path.join(self.data_dir, "tasks")

    def task_here(self, task_id: str) -> None:
        """
        Insert a task with its directory made here, old enough to be
        collected.
        """
        task = self.insert(task_id, make_dirs=True)
        os.utime(task.paths.task_dir, (1_000, 1_000))

    def collect(self, names: List[str]) -> List[str]:
        """
        Collect C{names} as node C{n1} does; the names removed.  Nothing
        fails or waits.
        """
        removed, later, failures = gc.collect_orphans(self.conn, self.tasks_dir, names, 10_000.0, 10_000.0, 100,
                                                      node_id="n1")
        self.assertEqual((later, failures), ([], []))
        return removed

    def test_claimed_elsewhere(self) -> None:
        """
        The directory of a task another node claimed, with its files in
        that node's data directory, is removed here.
        """
        self.task_here("x")
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        claimed = transitions.claim_all(self.conn, ["x"], 1, NOW + 1, None, "other", elsewhere)[0]
        assert isinstance(claimed, records.TaskRecord)
        self.assertEqual(self.collect(["x"]), ["x"])
        self.assertFalse(os.path.exists(os.path.join(self.tasks_dir, "x")))
        self.assertTrue(os.path.isdir(claimed.paths.task_dir))
        self.assertEqual(self.load("x").status, "running")

    def test_kept(self) -> None:
        """
        Each rule that keeps a directory keeps it on its own: the task was
        claimed by this node, or by none yet (both with the row's files
        elsewhere), or by another node with its files still here; a
        directory without a row is removed beside them.
        """
        elsewhere = os.path.abspath(self.mktemp())
        for task_id in ("mine", "queued"):
            task = new_task(elsewhere, task_id)
            transitions.insert_task(self.conn, task, NOW)
            os.makedirs(os.path.join(self.tasks_dir, task_id))
            os.utime(os.path.join(self.tasks_dir, task_id), (1_000, 1_000))
        self.task_here("shared")
        os.makedirs(os.path.join(self.tasks_dir, "stray"))
        os.utime(os.path.join(self.tasks_dir, "stray"), (1_000, 1_000))
        transitions.claim_all(self.conn, ["mine"], 1, NOW + 1, None, "n1")
        transitions.claim_all(self.conn, ["shared"], 1, NOW + 1, None, "other")
        self.assertEqual(
            [(self.load(t).node_id, taskfiles.under(self.load(t).paths.task_dir, self.data_dir))
             for t in ("mine", "queued", "shared")],
            [("n1", False), (None, False), ("other", True)],
        )
        self.assertEqual(self.collect(["mine", "queued", "shared", "stray"]), ["stray"])
        for task_id in ("mine", "queued", "shared"):
            self.assertTrue(os.path.isdir(os.path.join(self.tasks_dir, task_id)), task_id)
        self.assertFalse(os.path.exists(os.path.join(self.tasks_dir, "stray")))
