"""
Tests for the cluster's pure values: L{execgo.core.cluster} (node labels,
the advertised URL, the lease's bounds and timing, L{NodeLease},
L{NodeRecord} and the cluster view), the notices between nodes
(L{execgo.store.notices}), the queued task as nodes exchange it
(L{execgo.core.records.QueuedTask}) and the cluster settings of
L{execgo.core.config}.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, List, Mapping, Tuple

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core import cluster, errors
from execgo.core.cluster import (
    DEFAULT_NODE_LEASE_MS,
    MAX_LABEL_VALUE_CHARS,
    MAX_NODE_LEASE_MS,
    MIN_NODE_LEASE_MS,
    NODE_ALIVE,
    NODE_LEFT,
    NODE_LOST,
    NodeLease,
    NodeRecord,
)
from execgo.core.config import RuntimeConfig, apply_environment
from execgo.core.records import QueuedTask
from execgo.core.reservation import Reservation
from execgo.store import connection, notices
from execgo.store.backend import SQLITE, SqliteConnection
from tests.fakes import record

NOW = 1_700_000_000_000


class NodeLabelTests(SynchronousTestCase):
    """
    L{cluster.parse_node_label} and L{cluster.parse_node_labels}:
    C{--node-label KEY=VALUE}.
    """

    def test_valid(self) -> None:
        """
        A key and a value split at the first C{=}: any value of printable
        characters up to the limit (empty, with C{=}, spaces or non-ASCII
        letters), any key of 1 to 128 of the allowed characters that begins
        and ends with a letter or digit.
        """
        for spec, expected in (
            ("zone=a", ("zone", "a")),
            ("a=", ("a", "")),
            ("a=b=c", ("a", "b=c")),
            ("Z9=x y", ("Z9", "x y")),
            ("topology.kubernetes.io/zone=eu-west-1a", ("topology.kubernetes.io/zone", "eu-west-1a")),
            ("a_b-c.d/e=é ü", ("a_b-c.d/e", "é ü")),
            ("k" * 128 + "=v", ("k" * 128, "v")),
            ("k=" + "v" * MAX_LABEL_VALUE_CHARS, ("k", "v" * MAX_LABEL_VALUE_CHARS)),
        ):
            self.assertEqual(cluster.parse_node_label(spec), expected, spec)

    def test_missing_equals(self) -> None:
        """
        A label without C{=} is refused, saying which form it must have.
        """
        for spec in ("zone", "", "zone:a"):
            error = self.assertRaises(errors.InvalidInput, cluster.parse_node_label, spec)
            self.assertIn("KEY=VALUE", error.detail)

    def test_bad_keys(self) -> None:
        """
        Empty keys, keys longer than 128 characters, keys beginning or
        ending with punctuation and keys holding other characters are
        refused.
        """
        for spec in (
            "=v",
            "k" * 129 + "=v",
            "-a=v",
            "a-=v",
            ".a=v",
            "a/=v",
            "_=v",
            "a b=v",
            "a:b=v",
            "ä=v",
            "a\n=v",
            "a\x00=v",
            " a=v",
        ):
            error = self.assertRaises(errors.InvalidInput, cluster.parse_node_label, spec)
            self.assertIn("the key must be", error.detail, repr(spec))

    def test_bad_values(self) -> None:
        """
        Values longer than L{MAX_LABEL_VALUE_CHARS} or holding a control
        character (C0 or DEL) are refused.
        """
        for spec in (
            "k=" + "v" * (MAX_LABEL_VALUE_CHARS + 1),
            "k=a\x00b",
            "k=a\tb",
            "k=a\nb",
            "k=a\rb",
            "k=\x1f",
            "k=\x7f",
            "k=\x1b[31m",
        ):
            error = self.assertRaises(errors.InvalidInput, cluster.parse_node_label, spec)
            self.assertIn("printable characters", error.detail, repr(spec))

    def test_labels(self) -> None:
        """
        Every label parsed into one mapping; a repeated key keeps its last
        value; none give an empty mapping.
        """
        self.assertEqual(cluster.parse_node_labels([]), {})
        self.assertEqual(cluster.parse_node_labels(["a=1", "b=2", "a=3"]), {"a": "3", "b": "2"})
        self.assertEqual(cluster.parse_node_labels(iter(["x=y"])), {"x": "y"})

    def test_labels_one_bad(self) -> None:
        """
        One malformed label among good ones refuses them all.
        """
        self.assertRaises(errors.InvalidInput, cluster.parse_node_labels, ["a=1", "bad", "b=2"])


class LabelsMatchTests(SynchronousTestCase):
    """
    L{cluster.labels_match}: whether a node has every label a task asks
    for.
    """

    def test_match(self) -> None:
        """
        Asking for nothing matches every node; asked labels must all be
        present with the same value; extra labels on the node do not matter.
        """
        node = {"zone": "a", "gpu": "yes"}
        self.assertTrue(cluster.labels_match({}, node))
        self.assertTrue(cluster.labels_match({}, {}))
        self.assertTrue(cluster.labels_match({"zone": "a"}, node))
        self.assertTrue(cluster.labels_match({"zone": "a", "gpu": "yes"}, node))

    def test_mismatch(self) -> None:
        """
        Another value, a missing key, or one of two labels missing, do not
        match.
        """
        node = {"zone": "a", "gpu": "yes"}
        self.assertFalse(cluster.labels_match({"zone": "b"}, node))
        self.assertFalse(cluster.labels_match({"rack": "1"}, node))
        self.assertFalse(cluster.labels_match({"zone": "a", "rack": "1"}, node))
        self.assertFalse(cluster.labels_match({"zone": "a"}, {}))
        self.assertFalse(cluster.labels_match({"zone": ""}, {}))


class AdvertiseUrlTests(SynchronousTestCase):
    """
    L{cluster.check_advertise_url} and L{cluster.default_advertise_url}.
    """

    def test_valid(self) -> None:
        """
        C{http} and C{https} URLs with a host, an optional port and an
        optional trailing C{/} are accepted, the slash removed.
        """
        for url, expected in (
            ("http://10.0.0.1:8080", "http://10.0.0.1:8080"),
            ("http://10.0.0.1:8080/", "http://10.0.0.1:8080"),
            ("https://node1.example:443", "https://node1.example:443"),
            ("https://node1.example:9443/", "https://node1.example:9443"),
            ("http://[::1]:80/", "http://[::1]:80"),
            ("http://node1:65535", "http://node1:65535"),
            ("http://node1", "http://node1"),
        ):
            self.assertEqual(cluster.check_advertise_url(url), expected, url)

    def test_invalid(self) -> None:
        """
        Other schemes, no scheme or host, credentials, a path, a query, a
        fragment, port 0 and ports out of range or not numeric are refused.
        """
        for url in (
            "",
            "ftp://node1:21",
            "ws://node1:80",
            "node1:8080",
            "//node1:8080",
            "http://",
            "http://:8080",
            "http://user@node1:8080",
            "http://user:secret@node1:8080",
            "http://:secret@node1:8080",
            "http://node1:8080/api",
            "http://node1:8080//",
            "http://node1:8080/?x=1",
            "http://node1:8080?x=1",
            "http://node1:8080#top",
            "http://node1:8080/#top",
            "http://node1:0",
            "http://node1:0/",
            "http://node1:65536",
            "http://node1:port",
            "http://node1:-1",
        ):
            error = self.assertRaises(errors.InvalidInput, cluster.check_advertise_url, url)
            self.assertIn("--advertise-url", error.detail, repr(url))

    def test_credentials_message(self) -> None:
        """
        A URL with credentials is refused for them.
        """
        error = self.assertRaises(errors.InvalidInput, cluster.check_advertise_url, "http://u:p@node1:8080")
        self.assertIn("credentials", error.detail)

    def test_default(self) -> None:
        """
        Without C{--advertise-url} a node is reached at C{http://} and its
        listen address.
        """
        self.assertEqual(cluster.default_advertise_url("127.0.0.1:8080"), "http://127.0.0.1:8080")
        self.assertEqual(cluster.default_advertise_url("[::1]:9000"), "http://[::1]:9000")


class LeaseTimingTests(SynchronousTestCase):
    """
    L{cluster.check_node_lease_ms} and L{cluster.renew_interval_s}.
    """

    def test_bounds(self) -> None:
        """
        Leases from one second to one hour are accepted and returned; the
        default lies between.
        """
        self.assertEqual((MIN_NODE_LEASE_MS, MAX_NODE_LEASE_MS), (1_000, 3_600_000))
        for lease_ms in (MIN_NODE_LEASE_MS, DEFAULT_NODE_LEASE_MS, MAX_NODE_LEASE_MS):
            self.assertEqual(cluster.check_node_lease_ms(lease_ms), lease_ms)

    def test_out_of_bounds(self) -> None:
        """
        Shorter and longer leases are refused, naming the bounds and the
        value.
        """
        for lease_ms in (MIN_NODE_LEASE_MS - 1, MAX_NODE_LEASE_MS + 1, 0, -1_000):
            error = self.assertRaises(errors.InvalidInput, cluster.check_node_lease_ms, lease_ms)
            self.assertIn(f"between {MIN_NODE_LEASE_MS} and {MAX_NODE_LEASE_MS}, got {lease_ms}", error.detail)

    def test_renew_interval(self) -> None:
        """
        The holder renews three times per lease.
        """
        self.assertEqual(cluster.renew_interval_s(3_000), 1.0)
        self.assertEqual(cluster.renew_interval_s(9_000), 3.0)
        self.assertAlmostEqual(cluster.renew_interval_s(DEFAULT_NODE_LEASE_MS), 10 / 3)
        self.assertIsInstance(cluster.renew_interval_s(1_000), float)


class NodeLeaseTests(SynchronousTestCase):
    """
    L{NodeLease}: the lease holder's settings.
    """

    def test_to_json(self) -> None:
        """
        Rendered as the node id, the instance and the lease.
        """
        self.assertEqual(
            NodeLease("n1", "abc", 2_000).to_json(), {"node_id": "n1", "instance": "abc", "lease_ms": 2_000}
        )

    def test_round_trip(self) -> None:
        """
        L{NodeLease.from_json} reads back L{NodeLease.to_json}, through
        JSON text too.
        """
        lease = NodeLease("node-é", "0123456789abcdef0123456789abcdef", MAX_NODE_LEASE_MS)
        self.assertEqual(NodeLease.from_json(lease.to_json()), lease)
        self.assertEqual(NodeLease.from_json(json.loads(json.dumps(lease.to_json()))), lease)

    def test_none(self) -> None:
        """
        Settings that name no node read as C{None}.
        """
        self.assertIsNone(NodeLease.from_json(None))

    def test_malformed(self) -> None:
        """
        Missing or mistyped fields, and a lease out of bounds, are a
        C{ValueError}.
        """
        good = {"node_id": "n1", "instance": "abc", "lease_ms": 2_000}
        for changes in (
            {"node_id": None},
            {"node_id": 1},
            {"instance": None},
            {"instance": ["abc"]},
            {"lease_ms": None},
            {"lease_ms": "2000"},
            {"lease_ms": 2000.0},
            {"lease_ms": True},
            {"lease_ms": MIN_NODE_LEASE_MS - 1},
            {"lease_ms": MAX_NODE_LEASE_MS + 1},
        ):
            data = {**good, **changes}
            self.assertRaises(ValueError, NodeLease.from_json, data)
        for name in good:
            data = {key: value for key, value in good.items() if key != name}
            self.assertRaises(ValueError, NodeLease.from_json, data)
        self.assertRaises(ValueError, NodeLease.from_json, {})

    def test_out_of_bounds_message(self) -> None:
        """
        A lease out of bounds says why, as the option's check does.
        """
        error = self.assertRaises(ValueError, NodeLease.from_json, {"node_id": "n", "instance": "i", "lease_ms": 5})
        self.assertIn("--node-lease-ms must be between", str(error))


def node_record(node_id: str = "n1", **changes: Any) -> NodeRecord:
    """
    A node as the store would hold it.
    """
    values: Any = dict(
        node_id=node_id,
        advertise_url="http://10.0.0.1:8080",
        labels={"zone": "a"},
        state=NODE_ALIVE,
        started_at_ms=NOW,
        lease_expires_at_ms=NOW + 10_123,
        running_tasks=2,
        capacity=Reservation(task_slots=4, memory_bytes=1024),
    )
    values.update(changes)
    return NodeRecord(**values)


class NodeRecordTests(SynchronousTestCase):
    """
    L{NodeRecord.to_json} and L{cluster.cluster_view}: the
    C{/api/v1/runtime/cluster} body.
    """

    def test_to_json(self) -> None:
        """
        A node renders its fields in contract order, the times as RFC 3339
        UTC timestamps (milliseconds only when there are any).
        """
        rendered = node_record().to_json()
        self.assertEqual(
            list(rendered),
            [
                "node_id",
                "advertise_url",
                "labels",
                "state",
                "started_at",
                "lease_expires_at",
                "running_tasks",
                "capacity",
            ],
        )
        self.assertEqual(
            rendered,
            {
                "node_id": "n1",
                "advertise_url": "http://10.0.0.1:8080",
                "labels": {"zone": "a"},
                "state": "alive",
                "started_at": "2023-11-14T22:13:20Z",
                "lease_expires_at": "2023-11-14T22:13:30.123Z",
                "running_tasks": 2,
                "capacity": {"task_slots": 4, "memory_bytes": 1024},
            },
        )

    def test_labels_copied(self) -> None:
        """
        The rendered labels are a plain dict of their own.
        """
        labels = {"zone": "a"}
        rendered = node_record(labels=labels).to_json()
        self.assertIs(type(rendered["labels"]), dict)
        rendered["labels"]["zone"] = "b"
        self.assertEqual(labels, {"zone": "a"})

    def test_states(self) -> None:
        """
        The three states are the contract's words.
        """
        self.assertEqual((NODE_ALIVE, NODE_LOST, NODE_LEFT), ("alive", "lost", "left"))
        self.assertEqual(node_record(state=NODE_LOST).to_json()["state"], "lost")

    def test_view_sorted(self) -> None:
        """
        The view lists every node by id, whatever order they came in.
        """
        given = [node_record("n2"), node_record("a9", state=NODE_LEFT), node_record("n10"), node_record("n1")]
        view = cluster.cluster_view(given)
        self.assertEqual(list(view), ["nodes"])
        self.assertEqual([node["node_id"] for node in view["nodes"]], ["a9", "n1", "n10", "n2"])
        self.assertEqual(view["nodes"][0], given[1].to_json())

    def test_view_empty(self) -> None:
        """
        A store without nodes gives an empty list.
        """
        self.assertEqual(cluster.cluster_view([]), {"nodes": []})
        self.assertEqual(cluster.cluster_view(iter([node_record()]))["nodes"], [node_record().to_json()])


class NoticeParseTests(SynchronousTestCase):
    """
    L{notices.parse}: a received payload as a L{notices.Notice}.
    """

    def test_kinds_without_data(self) -> None:
        """
        Each kind with a task id and no data parses, data C{None}.
        """
        self.assertEqual(
            (notices.SUBMITTED, notices.CLAIMED, notices.ENDED, notices.KILLED), ("s", "c", "e", "k")
        )
        for kind in (notices.SUBMITTED, notices.CLAIMED, notices.ENDED, notices.KILLED):
            self.assertEqual(notices.parse(f"{kind} task-1"), notices.Notice(kind, "task-1"))
            self.assertIsNone(notices.parse(f"{kind} task-1").data)  # type: ignore[union-attr]

    def test_kinds_with_data(self) -> None:
        """
        Each kind with a JSON object after the id parses with it as data;
        the object may hold spaces, and an empty one is data too.
        """
        data = {"node": "n 1", "tenant": None, "reservation": {"task_slots": 1}, "origin": "é"}
        for kind in (notices.SUBMITTED, notices.CLAIMED, notices.ENDED, notices.KILLED):
            self.assertEqual(notices.parse(f"{kind} t1 {json.dumps(data)}"), notices.Notice(kind, "t1", data))
            self.assertEqual(notices.parse(f"{kind} t1 {{}}"), notices.Notice(kind, "t1", {}))

    def test_empty_data(self) -> None:
        """
        A space after the id and nothing more is a notice without data.
        """
        self.assertEqual(notices.parse("e t1 "), notices.Notice("e", "t1"))

    def test_unknown_kind(self) -> None:
        """
        Payloads of another kind are none of ours.
        """
        for payload in ("x t1", "S t1", "submitted t1", "ss t1", " s t1", "s", "", "sk t1 {}"):
            self.assertIsNone(notices.parse(payload), repr(payload))

    def test_no_task_id(self) -> None:
        """
        A kind without a task id (nothing, or an empty one) is none of ours.
        """
        for payload in ("s", "s ", "s  {}", "c  {\"node\":\"n1\"}"):
            self.assertIsNone(notices.parse(payload), repr(payload))

    def test_bad_data(self) -> None:
        """
        Data that is not JSON, or JSON that is not an object, is refused.
        """
        for data in ("{", "{'a': 1}", "nope", "[1, 2]", "1", "\"x\"", "null", "true", "NaN", "{} {}"):
            self.assertIsNone(notices.parse(f"s t1 {data}"), repr(data))


class NoticeAnnounceTests(SynchronousTestCase):
    """
    L{notices.announce}: nothing on SQLite; the payload
    L{notices.parse} reads back where the backend sends.
    """

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)

    def connect(self, backend: Any) -> sqlite3.Connection:
        """
        A SQLite connection naming C{backend} as its own, closed when the
        test ends.
        """
        factory = type("VariantConnection", (SqliteConnection,), {"backend": backend})
        conn: sqlite3.Connection = sqlite3.connect(
            os.path.join(self.data_dir, "runtime.db"), check_same_thread=False, isolation_level=None, factory=factory
        )
        self.addCleanup(conn.close)
        connection.configure(conn)
        return conn

    def test_sqlite_sends_nothing(self) -> None:
        """
        On SQLite (one node) announcing runs no statement and raises
        nothing, inside a transaction or out of one.
        """
        self.assertIsNone(SQLITE.notify)
        conn = connection.connect(os.path.join(self.data_dir, "runtime.db"))
        self.addCleanup(conn.close)
        statements: List[str] = []
        conn.set_trace_callback(statements.append)
        notices.announce(conn, notices.ENDED, "t1")
        notices.announce(conn, notices.CLAIMED, "t1", {"node": "n1"})
        self.assertEqual(statements, [])
        with connection.transaction(conn):
            notices.announce(conn, notices.SUBMITTED, "t1", {"tenant": None})
        self.assertNotIn("NOTIFY", " ".join(statements).upper())
        self.assertFalse(conn.in_transaction)

    def test_payload(self) -> None:
        """
        A backend that sends gets the channel and C{<kind> <id>}, then the
        data as compact JSON when there is some; L{notices.parse} reads
        each back.
        """
        sent: List[Tuple[Any, str, str]] = []
        conn = self.connect(attrs.evolve(SQLITE, notify=lambda c, channel, payload: sent.append((c, channel, payload))))
        data = {"node": "n1", "tenant": "é", "reservation": {"task_slots": 1}}
        notices.announce(conn, notices.KILLED, "t1")
        notices.announce(conn, notices.CLAIMED, "t2", data)
        self.assertEqual(
            sent,
            [
                (conn, "execgo", "k t1"),
                (conn, "execgo", 'c t2 {"node":"n1","tenant":"é","reservation":{"task_slots":1}}'),
            ],
        )
        self.assertEqual(notices.CHANNEL, "execgo")
        self.assertEqual(notices.parse(sent[0][2]), notices.Notice(notices.KILLED, "t1"))
        self.assertEqual(notices.parse(sent[1][2]), notices.Notice(notices.CLAIMED, "t2", data))


    def test_large_data_left_out(self) -> None:
        """
        Data that would make the payload too large for PostgreSQL (which
        refuses 8,000 bytes) is left out: the notice goes as
        C{<kind> <id>} alone.
        """
        sent: List[str] = []
        conn = self.connect(attrs.evolve(SQLITE, notify=lambda c, channel, payload: sent.append(payload)))
        notices.announce(conn, notices.SUBMITTED, "t1", {"tenant": "x" * 8000})
        notices.announce(conn, notices.SUBMITTED, "t2", {"tenant": "é" * 3950})
        self.assertEqual(sent, ["s t1", "s t2"])
        notices.announce(conn, notices.SUBMITTED, "t3", {"tenant": "x" * 7000})
        self.assertEqual(len(sent[2].encode()), len('s t3 {"tenant":""}') + 7000)


class CheckedHardeningTests(SynchronousTestCase):
    """
    Values a malformed flag or a peer could send are refused rather than
    carried on.
    """

    def test_advertise_url_characters(self) -> None:
        """
        White space, control characters, an empty query or fragment, and a
        space in the host are refused; the URL kept is
        C{scheme://host[:port]}.
        """
        for url in ("http://h:1?", "http://h:1#", " http://h:1", "http://h:1/\n", "http://h:1\t/", "http://a b:1",
                    "http://h:1/\x85"):
            self.assertRaises(errors.InvalidInput, cluster.check_advertise_url, url)
        self.assertEqual(cluster.check_advertise_url("https://Node-1.example:8443/"), "https://Node-1.example:8443")

    def test_label_value_printable(self) -> None:
        """
        A label value with a C1 control character or a line separator is
        refused.
        """
        for spec in ("a=\x85", "a=\x9b[31m", "a=x\u2028y"):
            self.assertRaises(errors.InvalidInput, cluster.parse_node_label, spec)

    def test_lease_not_an_object(self) -> None:
        """
        A C{node} setting that is not an object is a C{ValueError}.
        """
        for value in ([], "n1", 3):
            self.assertRaises(ValueError, cluster.NodeLease.from_json, value)

    def test_queued_reservation_integers(self) -> None:
        """
        A queued task whose reservation holds anything but integers, or
        whose labels are not a map, is a C{ValueError}.
        """
        base = {"tenant": None, "created_at_ms": 1, "reservation": {"task_slots": 1}}
        QueuedTask.from_json("t", base)
        for reservation in ({"task_slots": "x"}, {"task_slots": True}, {"memory_bytes": 1.5}):
            self.assertRaises(ValueError, QueuedTask.from_json, "t", {**base, "reservation": reservation})
        for labels in ([], "", 0):
            self.assertRaises(ValueError, QueuedTask.from_json, "t", {**base, "node_labels": labels})


class QueuedTaskTests(SynchronousTestCase):
    """
    L{QueuedTask}: a queued task as a node's dispatcher sees it, and as
    another node hears of it.
    """

    def test_to_json(self) -> None:
        """
        Rendered as its tenant, reservation, creation time and the node
        labels it asks for, its id aside.
        """
        task = QueuedTask("t1", "acme", Reservation(1, 64, 8), NOW, {"zone": "a"})
        self.assertEqual(
            task.to_json(),
            {
                "tenant": "acme",
                "reservation": {"task_slots": 1, "memory_bytes": 64, "pids": 8},
                "created_at_ms": NOW,
                "node_labels": {"zone": "a"},
            },
        )

    def test_round_trip(self) -> None:
        """
        L{QueuedTask.from_json} reads back L{QueuedTask.to_json}, through
        JSON text too, with or without a tenant and labels.
        """
        for task in (
            QueuedTask("t1", "acme", Reservation(1, 64, 8), NOW, {"zone": "a", "gpu": "yes"}),
            QueuedTask("t2", None, Reservation(), 0),
        ):
            self.assertEqual(QueuedTask.from_json(task.task_id, task.to_json()), task)
            self.assertEqual(QueuedTask.from_json(task.task_id, json.loads(json.dumps(task.to_json()))), task)

    def test_origin(self) -> None:
        """
        The node that accepted the task, when the data names it, is read
        back; none is C{None}; another type is a C{ValueError}.
        """
        data = {**QueuedTask("t1", None, Reservation(), NOW).to_json(), "origin": "n2"}
        self.assertEqual(QueuedTask.from_json("t1", data).origin, "n2")
        self.assertIsNone(QueuedTask.from_json("t1", {**data, "origin": None}).origin)
        self.assertRaises(ValueError, QueuedTask.from_json, "t1", {**data, "origin": 2})

    def test_labels_absent(self) -> None:
        """
        Data without node labels (or with C{null}) asks for none.
        """
        data: Mapping[str, Any] = {"tenant": None, "reservation": {"task_slots": 1}, "created_at_ms": 5}
        self.assertEqual(QueuedTask.from_json("t", data), QueuedTask("t", None, Reservation(), 5, {}))
        self.assertEqual(QueuedTask.from_json("t", {**data, "node_labels": None}).node_labels, {})

    def test_malformed(self) -> None:
        """
        A mistyped tenant, creation time, reservation or labels is a
        C{ValueError}.
        """
        good = {"tenant": "acme", "reservation": {"task_slots": 1}, "created_at_ms": NOW, "node_labels": {}}
        for changes in (
            {"tenant": 5},
            {"tenant": ["acme"]},
            {"created_at_ms": None},
            {"created_at_ms": "5"},
            {"created_at_ms": 5.0},
            {"created_at_ms": True},
            {"reservation": None},
            {"reservation": [1]},
            {"reservation": "x"},
            {"node_labels": ["zone"]},
            {"node_labels": "zone=a"},
            {"node_labels": {"zone": 1}},
            {"node_labels": {"zone": None}},
        ):
            self.assertRaises(ValueError, QueuedTask.from_json, "t1", {**good, **changes})
        for name in ("created_at_ms", "reservation"):
            data = {key: value for key, value in good.items() if key != name}
            self.assertRaises(ValueError, QueuedTask.from_json, "t1", data)

    def test_fits_node(self) -> None:
        """
        A task fits a node that has every label it asks for; one asking for
        none fits every node.
        """
        task = QueuedTask("t1", None, Reservation(), NOW, {"zone": "a", "gpu": "yes"})
        self.assertTrue(task.fits_node({"zone": "a", "gpu": "yes", "rack": "3"}))
        self.assertFalse(task.fits_node({"zone": "a"}))
        self.assertFalse(task.fits_node({"zone": "b", "gpu": "yes"}))
        self.assertFalse(task.fits_node({}))
        anywhere = QueuedTask("t2", None, Reservation(), NOW)
        self.assertTrue(anywhere.fits_node({}))
        self.assertTrue(anywhere.fits_node({"zone": "z"}))

    def test_from_record(self) -> None:
        """
        A stored task queues with its id, tenant, the reservation its
        limits make, its creation time and its placement labels.
        """
        stored = record("t1", created_at_ms=NOW, memory_bytes=64, tenant="acme", node_labels={"zone": "a"})
        self.assertEqual(
            QueuedTask.from_record(stored), QueuedTask("t1", "acme", Reservation(1, 64), NOW, {"zone": "a"})
        )


class ClusterConfigTests(SynchronousTestCase):
    """
    The cluster settings of L{RuntimeConfig}: C{--advertise-url},
    C{--node-label} and C{--node-lease-ms}, and their environment variables.
    """

    def test_defaults(self) -> None:
        """
        Without the options a node is reached at its listen address, has no
        labels and the default lease.
        """
        config = RuntimeConfig(listen_addr="0.0.0.0:9000")
        self.assertIsNone(config.advertise_url)
        self.assertEqual(config.effective_advertise_url, "http://0.0.0.0:9000")
        self.assertEqual(config.labels, {})
        self.assertEqual(config.node_lease_ms, DEFAULT_NODE_LEASE_MS)

    def test_given(self) -> None:
        """
        The advertised URL loses its trailing slash; the labels are parsed,
        a repeated key keeping its last value; all three are in the
        C{/runtime/config} body.
        """
        config = RuntimeConfig(
            advertise_url="https://node1.example:9443/",
            node_labels=("zone=a", "gpu=yes", "zone=b"),
            node_lease_ms=2_000,
        )
        self.assertEqual(config.effective_advertise_url, "https://node1.example:9443")
        self.assertEqual(config.labels, {"zone": "b", "gpu": "yes"})
        body = config.to_json("n1")
        self.assertEqual(
            (body["advertise_url"], body["node_labels"], body["node_lease_ms"]),
            ("https://node1.example:9443", {"zone": "b", "gpu": "yes"}, 2_000),
        )

    def test_bad_advertise_url(self) -> None:
        """
        A malformed C{--advertise-url} refuses the configuration.
        """
        for url in ("ftp://node1:21", "http://node1:8080/api", "http://u:p@node1:1", "http://node1:0"):
            self.assertRaises(errors.InvalidInput, RuntimeConfig, advertise_url=url)

    def test_bad_node_label(self) -> None:
        """
        A malformed C{--node-label} refuses the configuration.
        """
        for labels in (("zone",), ("zone=a", "-x=1"), ("k=\x00",)):
            self.assertRaises(errors.InvalidInput, RuntimeConfig, node_labels=labels)

    def test_node_lease_bounds(self) -> None:
        """
        C{--node-lease-ms} out of its bounds refuses the configuration; the
        bounds themselves are accepted.
        """
        for lease_ms in (0, MIN_NODE_LEASE_MS - 1, MAX_NODE_LEASE_MS + 1):
            self.assertRaises(errors.InvalidInput, RuntimeConfig, node_lease_ms=lease_ms)
        for lease_ms in (MIN_NODE_LEASE_MS, MAX_NODE_LEASE_MS):
            self.assertEqual(RuntimeConfig(node_lease_ms=lease_ms).node_lease_ms, lease_ms)

    def test_environment(self) -> None:
        """
        C{EXECGO_RUNTIME_ADVERTISE_URL} and C{EXECGO_RUNTIME_NODE_LEASE_MS}
        set what the command line did not.
        """
        environ = {
            "EXECGO_RUNTIME_ADVERTISE_URL": "http://10.1.2.3:8080/",
            "EXECGO_RUNTIME_NODE_LEASE_MS": "2500",
        }
        config = apply_environment(RuntimeConfig(), environ, frozenset())
        self.assertEqual((config.advertise_url, config.node_lease_ms), ("http://10.1.2.3:8080/", 2_500))
        self.assertEqual(config.effective_advertise_url, "http://10.1.2.3:8080")

    def test_environment_loses_to_options(self) -> None:
        """
        The options given on the command line win over the variables.
        """
        environ = {
            "EXECGO_RUNTIME_ADVERTISE_URL": "http://10.1.2.3:8080",
            "EXECGO_RUNTIME_NODE_LEASE_MS": "2500",
        }
        given = RuntimeConfig(advertise_url="http://node1:1", node_lease_ms=4_000)
        config = apply_environment(given, environ, frozenset({"advertise_url", "node_lease_ms"}))
        self.assertEqual((config.advertise_url, config.node_lease_ms), ("http://node1:1", 4_000))
        self.assertEqual(apply_environment(RuntimeConfig(), {}, frozenset()), RuntimeConfig())

    def test_environment_malformed(self) -> None:
        """
        A malformed variable, or one out of bounds, is refused.
        """
        for environ in (
            {"EXECGO_RUNTIME_NODE_LEASE_MS": "abc"},
            {"EXECGO_RUNTIME_NODE_LEASE_MS": "-2000"},
            {"EXECGO_RUNTIME_NODE_LEASE_MS": "999"},
            {"EXECGO_RUNTIME_NODE_LEASE_MS": "3600001"},
            {"EXECGO_RUNTIME_ADVERTISE_URL": "ftp://node1:21"},
            {"EXECGO_RUNTIME_ADVERTISE_URL": "http://node1:8080/api"},
        ):
            self.assertRaises(errors.InvalidInput, apply_environment, RuntimeConfig(), environ, frozenset())
        error = self.assertRaises(
            errors.InvalidInput, apply_environment, RuntimeConfig(), {"EXECGO_RUNTIME_NODE_LEASE_MS": "x"}, frozenset()
        )
        self.assertIn("EXECGO_RUNTIME_NODE_LEASE_MS", error.detail)
