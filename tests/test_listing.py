"""
Tests for L{execgo.store.listing} and C{GET /api/v1/tasks}: query parsing and
cursors, the SQL against a real store (order, ties, filters, index use,
the label table and its back-fill), and the endpoint end to end through
the in-process runtime.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.trial.util import suppress as SUPPRESS

from execgo.core import errors
from execgo.core.models import ControlContext
from execgo.store import gc, listing, schema, transitions
from execgo.store.listing import ListQuery
from tests import backends
from tests.apifixture import InProcessRuntime, tmp_data_dir
from tests.fakes import new_task

NOW = 1_700_000_000_000
OUTPUT_KEYS = ("stdout", "stderr", "stdout_truncated", "stderr_truncated")


class CursorTests(SynchronousTestCase):
    """
    L{listing.encode_cursor} and L{listing.decode_cursor}.
    """

    def test_round_trip(self) -> None:
        """
        A cursor is URL-safe text that decodes to the position it encodes.
        """
        for position in [(0, 1), (NOW, 42), ((1 << 62), (1 << 62) + 7)]:
            cursor = listing.encode_cursor(*position)
            self.assertRegex(cursor, r"^[A-Za-z0-9_-]+$")
            self.assertEqual(listing.decode_cursor(cursor), position)

    def test_rejects_foreign_text(self) -> None:
        """
        Text no encoder made is L{errors.InvalidInput}.
        """
        for text in ["", "!!", "a" * 65, "MTox", "bm9wZQ", "MToxOjI6Mw", "MjoxOjI", "x=y"]:
            with self.assertRaises(errors.InvalidInput, msg=text):
                listing.decode_cursor(text)


class ParseQueryTests(SynchronousTestCase):
    """
    L{listing.parse_query}.
    """

    def test_defaults(self) -> None:
        """
        No arguments: no filter, 50 entries, from the newest.
        """
        self.assertEqual(listing.parse_query({}), ListQuery())
        self.assertEqual(ListQuery().limit, 50)

    def test_everything(self) -> None:
        """
        Every argument is read; labels split at the first colon, in order;
        unknown arguments are ignored.
        """
        cursor = listing.encode_cursor(5, 6)
        query = listing.parse_query(
            {
                b"status": [b"running"],
                b"tenant": [b"t"],
                b"owner": [b"o"],
                b"label": [b"a:1", b"b:x:y", b"c:"],
                b"limit": [b"500"],
                b"cursor": [cursor.encode()],
                b"other": [b"ignored", b"twice"],
            }
        )
        self.assertEqual(
            query,
            ListQuery(
                status="running",
                tenant="t",
                owner="o",
                labels=(("a", "1"), ("b", "x:y"), ("c", "")),
                limit=500,
                after=(5, 6),
            ),
        )

    def test_bad_values(self) -> None:
        """
        Unknown statuses, limits outside 1..500 or not integers, labels
        without a colon or a key, empty or repeated single values, bad
        UTF-8, bad cursors and too many labels are all
        L{errors.InvalidInput}.
        """
        bad: List[Dict[bytes, List[bytes]]] = [
            {b"status": [b"done"]},
            {b"status": [b"running", b"accepted"]},
            {b"status": [b""]},
            {b"limit": [b"0"]},
            {b"limit": [b"501"]},
            {b"limit": [b"-1"]},
            {b"limit": [b"1.5"]},
            {b"limit": [b"ten"]},
            {b"limit": ["\u0661".encode("utf-8")]},
            {b"label": [b"novalue"]},
            {b"label": [b":v"]},
            {b"tenant": [b""]},
            {b"owner": [b"\xff"]},
            {b"cursor": [b"garbage!"]},
            {b"label": [b"k:v"] * (listing.MAX_LABELS + 1)},
        ]
        for args in bad:
            with self.assertRaises(errors.InvalidInput, msg=repr(args)):
                listing.parse_query(args)


class ListingTestCase(SynchronousTestCase):
    """
    A fresh store on the class's backend (SQLite unless L{backends.each}
    says otherwise), and helpers to fill and list it.
    """

    backend = backends.SQLITE_BACKEND

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.conn = self.backend.connect(self, self.data_dir)
        schema.init_schema(self.conn)

    def insert(self, task_id: str, now_ms: int = NOW, **context: Any) -> None:
        """
        Insert an accepted task with this control context.
        """
        control = ControlContext(**context) if context else None
        transitions.insert_task(self.conn, new_task(self.data_dir, task_id, control_context=control), now_ms)

    def ids(self, query: ListQuery) -> List[str]:
        """
        The ids of every page of C{query}, following the cursors.
        """
        out: List[str] = []
        for _ in range(100):
            page = listing.list_page(self.conn, query, NOW)
            out += [entry["task_id"] for entry in page["tasks"]]
            if page["next_cursor"] is None:
                return out
            query = ListQuery(
                status=query.status,
                tenant=query.tenant,
                owner=query.owner,
                labels=query.labels,
                limit=query.limit,
                after=listing.decode_cursor(page["next_cursor"]),
            )
        raise AssertionError("too many pages")

@backends.each
class StoreListingTests(ListingTestCase):
    """
    L{listing.list_page} on a real store, on every backend.
    """

    def test_ties_in_insertion_order(self) -> None:
        """
        Tasks created in the same millisecond come newest-inserted first,
        and pages cut between them lose and repeat nothing.
        """
        for n in range(7):
            self.insert(f"t{n}", NOW)
        self.insert("older", NOW - 1)
        self.insert("newer", NOW + 1)
        expected = ["newer"] + [f"t{n}" for n in reversed(range(7))] + ["older"]
        for limit in (1, 2, 3, 50):
            self.assertEqual(self.ids(ListQuery(limit=limit)), expected)

    def test_filters(self) -> None:
        """
        Tenant, owner, status and labels filter by exact match, labels all
        together (AND).
        """
        self.insert("a", NOW, tenant="acme", owner="ann", labels={"env": "prod", "team": "x"})
        self.insert("b", NOW + 1, tenant="acme", owner="bob", labels={"env": "dev"})
        self.insert("c", NOW + 2, tenant="other", owner="ann", labels={"env": "prod"})
        self.insert("d", NOW + 3)
        self.conn.execute("UPDATE tasks SET status = 'running' WHERE task_id IN ('a', 'c')")
        cases = [
            (ListQuery(), ["d", "c", "b", "a"]),
            (ListQuery(tenant="acme"), ["b", "a"]),
            (ListQuery(tenant="ACME"), []),
            (ListQuery(owner="ann"), ["c", "a"]),
            (ListQuery(tenant="acme", owner="ann"), ["a"]),
            (ListQuery(status="running"), ["c", "a"]),
            (ListQuery(status="accepted", tenant="acme"), ["b"]),
            (ListQuery(labels=(("env", "prod"),)), ["c", "a"]),
            (ListQuery(labels=(("env", "prod"), ("team", "x"))), ["a"]),
            (ListQuery(labels=(("team", "x"), ("env", "dev"))), []),
            (ListQuery(labels=(("env", "prod"),), tenant="other", status="running"), ["c"]),
            (ListQuery(status="success"), []),
        ]
        for query, expected in cases:
            self.assertEqual(self.ids(query), expected, query)
            self.assertEqual(self.ids(attr_limit(query, 1)), expected, query)

    def test_entries_without_output(self) -> None:
        """
        Entries are status snapshots without the four output keys.
        """
        self.insert("a")
        entry = listing.list_page(self.conn, ListQuery(), NOW)["tasks"][0]
        self.assertEqual(entry["task_id"], "a")
        self.assertEqual(entry["status"], "accepted")
        self.assertIn("artifacts", entry)
        for key in OUTPUT_KEYS:
            self.assertNotIn(key, entry)

    def test_labels_table_follows_tasks(self) -> None:
        """
        Labels are indexed on insert and deleted with their task.
        """
        self.insert("a", labels={"k": "v", "x": "y"})
        self.assertEqual(
            sorted(self.conn.execute("SELECT key, value FROM task_labels WHERE task_id = 'a'")),
            [("k", "v"), ("x", "y")],
        )
        self.conn.execute("UPDATE tasks SET status = 'success' WHERE task_id = 'a'")
        gc.delete_task(self.conn, "a")
        self.assertEqual(self.conn.execute("SELECT COUNT(*) FROM task_labels").fetchone()[0], 0)


class SqliteListingTests(ListingTestCase):
    """
    What listing asks of SQLite itself: its query plans, and the label
    table of a store written before it existed (a PostgreSQL store has
    had it from its first version).
    """

    def test_every_query_uses_an_index_in_order(self) -> None:
        """
        No filter combination sorts or scans: each is answered by walking
        an index in page order.
        """
        combos = []
        for labels in ((), (("k", "v"),), (("k", "v"), ("j", "w"))):
            for status in (None, "running"):
                for tenant in (None, "t"):
                    for owner in (None, "o"):
                        for after in (None, (1, 2)):
                            combos.append(
                                ListQuery(
                                    status=status, tenant=tenant, owner=owner, labels=labels, after=after
                                )
                            )
        for query in combos:
            sql, params = listing.page_sql(query)
            plan = " | ".join(row[3] for row in self.conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            self.assertNotIn("TEMP B-TREE", plan, query)
            for step in plan.split(" | "):
                if step.startswith(("SCAN", "SEARCH")):
                    self.assertIn(" USING ", step, query)
                if step.startswith("SCAN"):
                    self.assertEqual(step, "SCAN t USING INDEX idx_tasks_created", query)

    def test_backfill_for_an_old_store(self) -> None:
        """
        A store from before the label table gets it, filled once from the
        stored control contexts, when its schema is initialised.
        """
        self.insert("a", NOW, labels={"k": "v"})
        self.insert("b", NOW + 1, tenant="t")
        self.insert("c", NOW + 2, labels={"k": "v", "z": "1"})
        self.conn.execute("DROP TABLE task_labels")
        schema.init_schema(self.conn)
        self.assertEqual(self.ids(ListQuery(labels=(("k", "v"),))), ["c", "a"])
        self.assertEqual(self.ids(ListQuery(labels=(("z", "1"),))), ["c"])
        schema.init_schema(self.conn)
        self.assertEqual(self.conn.execute("SELECT COUNT(*) FROM task_labels").fetchone()[0], 3)



def attr_limit(query: ListQuery, limit: int) -> ListQuery:
    """
    C{query} with another page size.
    """
    return ListQuery(
        status=query.status,
        tenant=query.tenant,
        owner=query.owner,
        labels=query.labels,
        limit=limit,
        after=query.after,
    )


COMMAND = {"execution": {"kind": "command", "program": "/bin/true"}}


class ListEndpointTests(TestCase):
    """
    C{GET /api/v1/tasks} through the in-process runtime (tasks stay
    queued: the supervisor link is a fake).
    """

    timeout = 60
    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]

    def setUp(self) -> "defer.Deferred[None]":
        self.rt = InProcessRuntime(tmp_data_dir(self))
        self.addCleanup(lambda: defer.ensureDeferred(self.rt.stop()))
        return defer.ensureDeferred(self.rt.start())

    async def submit(self, task_id: str, **context: Any) -> None:
        """
        Submit a task with this control context.
        """
        request: Dict[str, Any] = {"task_id": task_id, **COMMAND}
        if context:
            request["control_context"] = context
        code, _, content = await self.rt.request("POST", "/api/v1/tasks", json.dumps(request).encode())
        self.assertEqual(code, 200, content)

    async def page(self, expect: int = 200, **args: Any) -> Any:
        """
        C{GET /api/v1/tasks} with these arguments (a list repeats one),
        expecting status C{expect}; the decoded body.
        """
        pairs: List[Any] = []
        for name, value in args.items():
            for item in value if isinstance(value, list) else [value]:
                pairs.append((name, item))
        path = "/api/v1/tasks" + ("?" + urlencode(pairs) if pairs else "")
        code, headers, content = await self.rt.request("GET", path)
        self.assertEqual(code, expect, content)
        if expect == 200:
            self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        return json.loads(content)

    async def test_filters_and_order(self) -> None:
        """
        Newest first; tenant, owner, label and status filters; entries
        without output keys; C{next_cursor} null on the last page.
        """
        await self.submit("a", tenant="acme", owner="ann", labels={"env": "prod"})
        await self.submit("b", tenant="acme", labels={"env": "dev"})
        await self.submit("c", owner="ann", labels={"env": "prod", "tier": "1"})
        code, _, _ = await self.rt.request("POST", "/api/v1/tasks/b/kill")
        self.assertEqual(code, 200)
        page = await self.page()
        self.assertEqual([t["task_id"] for t in page["tasks"]], ["c", "b", "a"])
        self.assertIsNone(page["next_cursor"])
        self.assertEqual(sorted(page), ["next_cursor", "tasks"])
        for entry in page["tasks"]:
            for key in OUTPUT_KEYS:
                self.assertNotIn(key, entry)
        checks = [
            ({"tenant": "acme"}, ["b", "a"]),
            ({"owner": "ann"}, ["c", "a"]),
            ({"label": "env:prod"}, ["c", "a"]),
            ({"label": ["env:prod", "tier:1"]}, ["c"]),
            ({"status": "cancelled"}, ["b"]),
            ({"status": "accepted", "tenant": "acme"}, ["a"]),
            ({"status": "running"}, []),
        ]
        for args, expected in checks:
            page = await self.page(**args)
            self.assertEqual([t["task_id"] for t in page["tasks"]], expected, args)
            self.assertIsNone(page["next_cursor"])

    async def test_stable_cursor(self) -> None:
        """
        Pages follow each other without loss or repetition while new tasks
        are submitted between them; the new tasks show on a fresh first
        page.
        """
        for n in range(10):
            await self.submit(f"old{n}")
        seen: List[str] = []
        page = await self.page(limit=3)
        while True:
            seen += [t["task_id"] for t in page["tasks"]]
            if page["next_cursor"] is None:
                break
            await self.submit(f"new{len(seen)}")
            page = await self.page(limit=3, cursor=page["next_cursor"])
        self.assertEqual(seen, [f"old{n}" for n in reversed(range(10))])
        first = await self.page(limit=500)
        self.assertEqual(len(first["tasks"]), 13)
        self.assertTrue(first["tasks"][0]["task_id"].startswith("new"))

    async def test_limit(self) -> None:
        """
        C{limit} bounds the page; a full last page still says whether
        more follow.
        """
        for n in range(4):
            await self.submit(f"t{n}")
        page = await self.page(limit=2)
        self.assertEqual(len(page["tasks"]), 2)
        self.assertIsInstance(page["next_cursor"], str)
        page = await self.page(limit=2, cursor=page["next_cursor"])
        self.assertEqual([t["task_id"] for t in page["tasks"]], ["t1", "t0"])
        self.assertIsNone(page["next_cursor"])
        self.assertEqual(len((await self.page(limit=500))["tasks"]), 4)
        self.assertEqual(len((await self.page(limit=1))["tasks"]), 1)

    async def test_bad_parameters(self) -> None:
        """
        Bad parameters are 400 with the C{invalid_input} envelope.
        """
        for args in [
            {"limit": 0},
            {"limit": 501},
            {"limit": "x"},
            {"status": "done"},
            {"label": "nocolon"},
            {"cursor": "%%%"},
            {"cursor": listing.encode_cursor(1, 2)[:-2] + "!!"},
        ]:
            decoded = await self.page(expect=400, **args)
            self.assertEqual(decoded["error"]["code"], "invalid_input", args)
            self.assertTrue(decoded["error"]["message"].startswith("invalid input: "))

    async def test_empty_store(self) -> None:
        """
        Nothing stored: an empty last page.
        """
        self.assertEqual(await self.page(), {"tasks": [], "next_cursor": None})

