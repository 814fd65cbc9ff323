"""
Tests for L{execgo.store.idempotency} and the C{Idempotency-Key} header of
C{POST /api/v1/tasks}: key validation, the stored key and request hash,
retries, conflicts, the race between concurrent first submissions, the
queue bound, GC, and old stores.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import attrs
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.trial.util import suppress as SUPPRESS

from execgo.core import errors, outcome, records
from execgo.core.config import RuntimeConfig
from execgo.core.models import ControlContext
from execgo.store import connection, gc, idempotency, schema, terminal, transitions
from tests import backends
from tests.apifixture import InProcessRuntime, tmp_data_dir
from tests.fakes import new_task, old_store

NOW = 1_700_000_000_000
COMMAND = {"execution": {"kind": "command", "program": "/bin/true"}}
REUSED_TEXT = "idempotency key reused with a different request"


class ParseKeyTests(SynchronousTestCase):
    """
    L{idempotency.parse_key}.
    """

    def test_valid(self) -> None:
        """
        One value of 1 to 255 visible ASCII characters is the key;
        no header is no key.
        """
        self.assertIsNone(idempotency.parse_key(None))
        self.assertIsNone(idempotency.parse_key([]))
        self.assertEqual(idempotency.parse_key([b"k"]), "k")
        self.assertEqual(idempotency.parse_key([b"~" * 255]), "~" * 255)
        punctuation = "a!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
        self.assertEqual(idempotency.parse_key([punctuation.encode("ascii")]), punctuation)

    def test_invalid(self) -> None:
        """
        Empty, too long, with spaces, controls or non-ASCII, or given
        twice: L{errors.InvalidInput}.
        """
        bad = ([b""], [b"x" * 256], [b"a b"], [b"a\tb"], ["é".encode("utf-8")], [b"\x7f"], [b"a", b"b"])
        for values in bad:
            with self.assertRaises(errors.InvalidInput, msg=repr(values)):
                idempotency.parse_key(values)

    def test_hash_is_canonical(self) -> None:
        """
        The request hash ignores key order and differs for any change.
        """
        self.assertEqual(
            idempotency.request_hash({"a": 1, "b": [1, 2]}), idempotency.request_hash({"b": [1, 2], "a": 1})
        )
        self.assertNotEqual(idempotency.request_hash({"a": 1}), idempotency.request_hash({"a": 2}))


class KeyStoreTestCase(SynchronousTestCase):
    """
    A fresh store with a task directory, on the class's backend (SQLite
    unless L{backends.each} says otherwise).
    """

    backend = backends.SQLITE_BACKEND

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.data_dir, "tasks"))
        self.conn = self.backend.connect(self, self.data_dir)
        schema.init_schema(self.conn)


@backends.each
class StoreTests(KeyStoreTestCase):
    """
    The key in the store: the unique column, L{idempotency.check} and the
    insert race.
    """

    def insert(self, task_id: str, key: Optional[str], digest: Optional[str]) -> None:
        """
        Insert a task with this key and request hash.
        """
        task = attrs.evolve(new_task(self.data_dir, task_id), idempotency_key=key, idempotency_hash=digest)
        transitions.insert_task(self.conn, task, NOW)

    def test_check(self) -> None:
        """
        An unknown key passes; a stored key with the same hash is a
        L{idempotency.Replay} of its task, with another hash a
        L{idempotency.KeyReused} 409.
        """
        idempotency.check(self.conn, "k", "h")
        self.insert("t1", "k", "h")
        with self.assertRaises(idempotency.Replay) as caught:
            idempotency.check(self.conn, "k", "h")
        self.assertEqual(caught.exception.task_id, "t1")
        with self.assertRaises(idempotency.KeyReused) as reused:
            idempotency.check(self.conn, "k", "other")
        self.assertEqual(reused.exception.http_status, 409)
        self.assertEqual(reused.exception.code, "conflict")
        self.assertEqual(reused.exception.message, f"conflict: {idempotency.REUSED}")

    def test_losing_insert(self) -> None:
        """
        A second insert with a stored key (the loser of a race) stores
        nothing and says which task won; tasks without keys never collide.
        """
        self.insert("t1", "k", "h")
        with self.assertRaises(idempotency.Replay) as caught:
            self.insert("t2", "k", "h")
        self.assertEqual(caught.exception.task_id, "t1")
        self.assertRaises(idempotency.KeyReused, self.insert, "t3", "k", "other")
        self.insert("t4", None, None)
        self.insert("t5", None, None)
        ids = [row[0] for row in self.conn.execute("SELECT task_id FROM tasks ORDER BY rowid")]
        self.assertEqual(ids, ["t1", "t4", "t5"])
        orphans = self.conn.execute("SELECT COUNT(*) FROM task_events WHERE task_id = 't2'").fetchone()[0]
        self.assertEqual(orphans, 0)

    def test_gc_frees_the_key(self) -> None:
        """
        A key lives as long as its task.
        """
        self.insert("t1", "k", "h")
        terminal.finish(self.conn, "t1", outcome.cancelled("x"), NOW)
        gc.delete_task(self.conn, "t1")
        idempotency.check(self.conn, "k", "other")
        self.insert("t2", "k", "other")


class ScopeTestCase(KeyStoreTestCase):
    """
    A store to put keys in within their scope.
    """

    def insert(
        self, task_id: str, key: str, digest: str, scope: records.Scope, tenant: Optional[str] = None
    ) -> None:
        """
        Insert a task of C{tenant} with this key, hash and scope.
        """
        task = attrs.evolve(
            new_task(self.data_dir, task_id, control_context=ControlContext(tenant=tenant)),
            idempotency_key=key,
            idempotency_hash=digest,
            idempotency_scope=scope,
        )
        transitions.insert_task(self.conn, task, NOW)


@backends.each
class ScopeTests(ScopeTestCase):
    """
    Keys within their scope (L{records.Scope}) in the store.
    """

    def test_tenants_have_their_own_keys(self) -> None:
        """
        One key in two tenants' scopes makes two tasks; each tenant's
        retry replays its own; the open scope (no authentication) sees
        every key, as before keys had scopes.
        """
        alpha, beta = records.tenant_scope("alpha"), records.tenant_scope("beta")
        self.insert("a1", "k", "ha", alpha, "alpha")
        self.insert("b1", "k", "hb", beta, "beta")
        with self.assertRaises(idempotency.Replay) as caught:
            self.insert("a2", "k", "ha", alpha, "alpha")
        self.assertEqual(caught.exception.task_id, "a1")
        self.assertRaises(idempotency.KeyReused, idempotency.check, self.conn, "k", "other", beta)
        idempotency.check(self.conn, "k", "ha", records.tenant_scope(None))
        with self.assertRaises(idempotency.Replay) as open_replay:
            idempotency.check(self.conn, "k", "hb")
        self.assertEqual(open_replay.exception.task_id, "b1")
        self.assertRaises(idempotency.KeyReused, idempotency.check, self.conn, "k", "other")

    def test_open_keys_count_for_their_tenant(self) -> None:
        """
        A key stored without authentication counts, with authentication,
        for the tenant of its task only.
        """
        self.insert("o1", "k", "h", records.OPEN_SCOPE, "alpha")
        with self.assertRaises(idempotency.Replay):
            idempotency.check(self.conn, "k", "h", records.tenant_scope("alpha"))
        idempotency.check(self.conn, "k", "h", records.tenant_scope("beta"))
        self.insert("b1", "k", "h", records.tenant_scope("beta"), "beta")


class ScopeMigrationTests(ScopeTestCase):
    """
    SQLite stores written before keys had scopes, or before keys (a
    PostgreSQL store has had scoped keys from its first version).
    """

    def unscope(self) -> None:
        """
        Turn the store back into the layout of the version before scopes:
        no scope column, keys unique across the runtime.
        """
        self.conn.execute("DROP INDEX idx_tasks_idempotency_scope")
        self.conn.execute("ALTER TABLE tasks DROP COLUMN idempotency_scope")
        self.conn.execute(
            "CREATE UNIQUE INDEX idx_tasks_idempotency ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL"
        )

    def indexes(self) -> Dict[str, List[str]]:
        """
        The key indexes of C{tasks} and their columns.
        """
        names = [row[1] for row in self.conn.execute("PRAGMA index_list(tasks)") if "idempotency" in row[1]]
        return {name: [row[2] for row in self.conn.execute(f"PRAGMA index_info({name})")] for name in names}

    def test_migration(self) -> None:
        """
        Starting on a store of the version before scopes puts its keys in
        the open scope and swaps the index, in one transaction, and again
        changes nothing; its keys keep answering retries with and without
        authentication (for their task's tenant), and other tenants may
        reuse them.
        """
        self.insert("old-alpha", "k1", "h1", records.OPEN_SCOPE, "alpha")
        self.insert("old-none", "k2", "h2", records.OPEN_SCOPE)
        self.unscope()
        self.assertEqual(self.indexes(), {"idx_tasks_idempotency": ["idempotency_key"]})
        for _ in range(2):
            schema.init_schema(self.conn)
            self.assertEqual(
                self.indexes(), {"idx_tasks_idempotency_scope": ["idempotency_key", "idempotency_scope"]}
            )
            scopes = dict(self.conn.execute("SELECT task_id, idempotency_scope FROM tasks"))
            self.assertEqual(scopes, {"old-alpha": "", "old-none": ""})
        alpha, untenanted = records.tenant_scope("alpha"), records.tenant_scope(None)
        self.assertRaises(idempotency.Replay, idempotency.check, self.conn, "k1", "h1")
        self.assertRaises(idempotency.Replay, idempotency.check, self.conn, "k1", "h1", alpha)
        self.assertRaises(idempotency.Replay, idempotency.check, self.conn, "k2", "h2", untenanted)
        self.insert("new-beta", "k1", "h1", records.tenant_scope("beta"), "beta")
        self.assertRaises(idempotency.Replay, self.insert, "dup", "k1", "h1", records.OPEN_SCOPE)

    def test_migration_after_downgrade(self) -> None:
        """
        Keys an earlier version stored (without a scope, next to its own
        index) after the column was added are put in the open scope too.
        """
        self.insert("t1", "k", "h", records.OPEN_SCOPE)
        self.conn.execute("UPDATE tasks SET idempotency_scope = NULL")
        self.conn.execute(
            "CREATE UNIQUE INDEX idx_tasks_idempotency ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL"
        )
        schema.init_schema(self.conn)
        self.assertEqual(list(self.conn.execute("SELECT idempotency_scope FROM tasks")), [("",)])
        self.assertNotIn("idx_tasks_idempotency", self.indexes())

    def test_old_store_gets_the_columns(self) -> None:
        """
        A store from before keys gets the key columns and the unique index
        (of keys within their scope).
        """
        conn = old_store(self, os.path.join(self.data_dir, "old.db"))
        connection.configure(conn)
        schema.init_schema(conn)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
        self.assertTrue({"idempotency_key", "idempotency_hash", "idempotency_scope"} <= columns)
        indexes = conn.execute("PRAGMA index_list(tasks)").fetchall()
        unique = [row for row in indexes if row[1] == "idx_tasks_idempotency_scope"]
        self.assertEqual(len(unique), 1)
        self.assertEqual(unique[0][2], 1)


class SubmitTestsBase(TestCase):
    """
    One in-process runtime per test (its tasks stay queued).
    """

    timeout = 60
    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]
    config_overrides: Dict[str, Any] = {}

    def setUp(self) -> "defer.Deferred[None]":
        self.data_dir = tmp_data_dir(self)
        config = RuntimeConfig(data_dir=self.data_dir, **self.config_overrides)
        self.rt = InProcessRuntime(self.data_dir, config)
        self.addCleanup(lambda: defer.ensureDeferred(self.rt.stop()))
        return defer.ensureDeferred(self.rt.start())

    async def post(self, request: Dict[str, Any], key: Optional[str] = None) -> Tuple[int, Any]:
        """
        Submit C{request}, with C{key} as C{Idempotency-Key} if given: the
        status code and the decoded body.
        """
        headers = None if key is None else {b"Idempotency-Key": [key.encode("latin-1")]}
        body = json.dumps(request).encode()
        code, _, content = await self.rt.request("POST", "/api/v1/tasks", body, headers)
        return code, json.loads(content)

    async def task_ids(self) -> List[str]:
        """
        The ids of every stored task, newest first.
        """
        code, _, content = await self.rt.request("GET", "/api/v1/tasks?limit=500")
        self.assertEqual(code, 200)
        return [task["task_id"] for task in json.loads(content)["tasks"]]

    def task_dirs(self) -> List[str]:
        """
        The task directories on disk.
        """
        return sorted(os.listdir(os.path.join(self.data_dir, "tasks")))


class SubmitTests(SubmitTestsBase):
    """
    C{POST /api/v1/tasks} with C{Idempotency-Key}.
    """

    async def test_retry_returns_the_first_task(self) -> None:
        """
        The same key and body again (key order and defaults aside) answers
        200 with the same ids and creates nothing.
        """
        code, first = await self.post(COMMAND, "key-1")
        self.assertEqual(code, 200)
        self.assertEqual(first["status"], "accepted")
        equivalent = {"execution": {"program": "/bin/true", "kind": "command", "args": []}, "metadata": {}}
        for body in (COMMAND, equivalent):
            code, again = await self.post(body, "key-1")
            self.assertEqual((code, again), (200, first))
        self.assertEqual(await self.task_ids(), [first["task_id"]])
        self.assertEqual(self.task_dirs(), [first["task_id"]])

    async def test_different_body_conflicts(self) -> None:
        """
        The same key with another request is 409 C{conflict}; other keys
        and no key are independent.
        """
        code, first = await self.post(COMMAND, "key-1")
        self.assertEqual(code, 200)
        code, decoded = await self.post({"execution": {"kind": "command", "program": "/bin/false"}}, "key-1")
        self.assertEqual(code, 409)
        self.assertEqual(
            decoded,
            {"error": {"code": "conflict", "message": "conflict: " + REUSED_TEXT}},
        )
        code, other = await self.post(COMMAND, "key-2")
        code2, plain = await self.post(COMMAND)
        self.assertEqual((code, code2), (200, 200))
        self.assertEqual(len({first["task_id"], other["task_id"], plain["task_id"]}), 3)
        self.assertEqual(len(await self.task_ids()), 3)

    async def test_explicit_id(self) -> None:
        """
        A retry of a submission with an explicit id is not a duplicate-id
        conflict; a new key with that id is.
        """
        request = {"task_id": "mine", **COMMAND}
        accepted = {"task_id": "mine", "handle_id": "mine", "status": "accepted"}
        self.assertEqual(await self.post(request, "k"), (200, accepted))
        self.assertEqual((await self.post(request, "k"))[0], 200)
        code, decoded = await self.post(request, "k2")
        self.assertEqual((code, decoded["error"]["code"]), (409, "conflict"))
        self.assertIn("task already exists", decoded["error"]["message"])

    async def test_bad_key(self) -> None:
        """
        A malformed key is 400 C{invalid_input} and stores nothing, also
        one whose bytes are not UTF-8.
        """
        for key in ("", "has space", "x" * 256, "\xd7", "caf\xe9"):
            code, decoded = await self.post(COMMAND, key)
            self.assertEqual((code, decoded["error"]["code"]), (400, "invalid_input"), key)
            self.assertIn("Idempotency-Key", decoded["error"]["message"])
        self.assertEqual(await self.task_ids(), [])

    async def test_concurrent_first_submissions(self) -> None:
        """
        Submissions with one key sent together create one task, and every
        one of them gets its id; with an explicit id too.
        """
        for request, key in ((COMMAND, "race"), ({"task_id": "raced", **COMMAND}, "race-id")):
            url = "http://runtime.test/api/v1/tasks"
            body = json.dumps(request).encode()
            pending = [
                self.rt.treq.request("POST", url, data=body, headers={b"Idempotency-Key": [key.encode()]})
                for _ in range(4)
            ]
            responses = await self.rt.settle(defer.gatherResults(pending))
            answers = []
            for response in responses:
                self.assertEqual(response.code, 200)
                answers.append(json.loads(await self.rt.settle(response.content())))
            self.assertEqual(len({answer["task_id"] for answer in answers}), 1, answers)
        ids = await self.task_ids()
        self.assertEqual(len(ids), 2)
        self.assertIn("raced", ids)
        self.assertEqual(sorted(self.task_dirs()), sorted(ids))

    async def test_gc_frees_the_key(self) -> None:
        """
        Once GC has collected the task, its key makes a new task.
        """
        code, first = await self.post(COMMAND, "k")
        code, _, _ = await self.rt.request("POST", f"/api/v1/tasks/{first['task_id']}/kill")
        self.assertEqual(code, 200)
        await self.rt.store.gc(self.rt.runtime.now_ms() + 1, 10)
        code, second = await self.post(COMMAND, "k")
        self.assertEqual(code, 200)
        self.assertNotEqual(second["task_id"], first["task_id"])


class QueueFullTests(SubmitTestsBase):
    """
    A retry is answered before the queue bound is checked.
    """

    config_overrides = {"max_queued_tasks": 1}

    async def test_retry_when_full(self) -> None:
        """
        With the queue full a new submission is 429, but the retry of the
        accepted one still answers 200 with its id.
        """
        code, first = await self.post(COMMAND, "k")
        self.assertEqual(code, 200)
        code, decoded = await self.post(COMMAND, "other")
        self.assertEqual((code, decoded["error"]["code"]), (429, "resource_limit_exceeded"))
        self.assertEqual(await self.post(COMMAND, "k"), (200, first))
