"""
Tests for tenancy as a boundary when authentication is on: a
token sees and touches only its own tenant's tasks, answered for others
exactly as for unknown ones; C{role=admin} tokens see every tenant and
alone read the views that span tenants; idempotency keys are per tenant;
without authentication nothing changes.

Most tests serve the in-memory runtime through StubTreq, synchronously
(tasks stay queued: its supervisor link is a fake); the last class runs a
real server.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Dict, List, Optional, Tuple

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.trial.util import suppress as SUPPRESS

from execgo import control
from execgo.core import errors
from execgo.core.config import RuntimeConfig
from execgo.server.snapshots import Kept
from execgo.server.web.auth import (
    Principal,
    Tokens,
    parse_tokens,
    require_admin,
    visible,
)
from tests.apifixture import MemoryRuntime, tmp_data_dir
from tests.serverfixture import ServerProcess, poll

COMMAND = {"execution": {"kind": "command", "program": "/bin/true"}}
TOKENS = """\
# two tenants, a second owner in alpha, an admin, a token without a tenant
a-token tenant=alpha owner=alice
a2-token tenant=alpha owner=anna
b-token tenant=beta owner=bob
ops-token tenant=ops owner=oncall role=admin
nt-token owner=nobody
"""
# An unknown id as long as the tasks' ids, so the bodies can be compared
# byte for byte once the id is swapped.
UNKNOWN = "zz"


def auth(token: str) -> Dict[bytes, List[bytes]]:
    """
    The C{Authorization} header of C{token}.
    """
    return {b"authorization": [f"Bearer {token}".encode()]}


def per_task_reads(task_id: str) -> List[str]:
    """
    Every read of one task: status (plain and long-poll), events (array
    and NDJSON stream), logs (plain and follow streams).
    """
    base = f"/api/v1/tasks/{task_id}"
    return [
        base,
        base + "?wait_ms=600000",
        base + "/events",
        base + "/events?follow=true",
        base + "/stdout",
        base + "/stderr",
        base + "/stdout?follow=true",
        base + "/stderr?follow=true&offset=0",
    ]


class RuleTests(SynchronousTestCase):
    """
    The token file's C{role=} and the two rules of L{execgo.server.web.auth}.
    """

    def test_role_parsed(self) -> None:
        """
        C{role=admin} makes an admin principal; a token without a role is
        not one.
        """
        tokens = parse_tokens(TOKENS)
        self.assertEqual(tokens["ops-token"], Principal("ops", "oncall", admin=True))
        self.assertEqual(tokens["a-token"], Principal("alpha", "alice"))
        self.assertFalse(tokens["a-token"].admin)
        self.assertEqual(tokens["nt-token"], Principal(None, "nobody"))

    def test_unknown_role_is_a_parse_error(self) -> None:
        """
        An unknown or empty role is a parse error naming the file and line,
        in the style of the parser's other errors.
        """
        for text, detail in (
            ("t tenant=a role=root", "unknown role 'root'"),
            ("t tenant=a role=Admin", "unknown role 'Admin'"),
            ("ok tenant=a\nt role=", "got 'role='"),
        ):
            with self.assertRaises(errors.InvalidInput) as caught:
                parse_tokens(text, "tokens.txt")
            message = caught.exception.message
            self.assertIn("tokens.txt line", message)
            self.assertIn(detail, message)
            self.assertIn("role=admin", message)

    def test_visible(self) -> None:
        """
        Without authentication every task is visible; with it, only the
        principal's own tenant's (C{None} included), unless it is an admin.
        """
        alpha = Principal("alpha", "alice")
        self.assertTrue(visible(None, "beta"))
        self.assertTrue(visible(alpha, "alpha"))
        self.assertFalse(visible(alpha, "beta"))
        self.assertFalse(visible(alpha, None))
        self.assertTrue(visible(Principal(None, "x"), None))
        self.assertFalse(visible(Principal(None, "x"), "alpha"))
        self.assertTrue(visible(Principal("ops", "o", admin=True), "beta"))

    def test_require_admin(self) -> None:
        """
        The cross-tenant views refuse a non-admin token with 403
        C{permission_denied}, and nobody without authentication.
        """
        require_admin(None, "/metrics")
        require_admin(Principal("ops", "o", admin=True), "/metrics")
        with self.assertRaises(errors.PermissionDenied) as caught:
            require_admin(Principal("alpha", "alice"), "/metrics")
        self.assertEqual((caught.exception.http_status, caught.exception.code), (403, "permission_denied"))
        self.assertIn("/metrics", caught.exception.message)


class TenancyTestsBase(SynchronousTestCase):
    """
    An in-memory runtime requiring the tokens of L{TOKENS}, with queued
    tasks C{a1} (alpha, owner alice), C{a2} (alpha, cancelled), C{b1}
    (beta) and C{n1} (no tenant).
    """

    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]

    def setUp(self) -> None:
        self.data_dir = tmp_data_dir(self)
        self.rt = MemoryRuntime(self.data_dir, RuntimeConfig(data_dir=self.data_dir), Tokens(parse_tokens(TOKENS)))
        self.rt.start()
        self.addCleanup(self.rt.stop)
        for task_id, token in (("a1", "a-token"), ("a2", "a-token"), ("b1", "b-token"), ("n1", "nt-token")):
            code, body, _ = self.call("POST", "/api/v1/tasks", {"task_id": task_id, **COMMAND}, token)
            self.assertEqual(code, 200, body)
        code, body, _ = self.call("POST", "/api/v1/tasks/a2/kill", token="a-token")
        self.assertEqual((code, body["status"]), (200, "cancelled"))

    def call(
        self, method: str, path: str, body: Any = None, token: Optional[str] = None, key: Optional[str] = None
    ) -> Tuple[int, Any, Dict[bytes, List[bytes]]]:
        """
        One request with C{token}: status, the body (decoded when JSON),
        the headers.
        """
        headers = {} if token is None else auth(token)
        if key is not None:
            headers[b"idempotency-key"] = [key.encode()]
        data = None if body is None else json.dumps(body).encode()
        code, received, content = self.rt.request(method, path, data, headers)
        kind = (received.get(b"Content-Type") or [b""])[0]
        return code, (json.loads(content) if kind.startswith(b"application/json") else content), received

    def raw(self, path: str, token: str, method: str = "GET") -> Tuple[int, bytes, bytes]:
        """
        Status, body bytes and content type of one request.
        """
        code, received, content = self.rt.request(method, path, None, auth(token))
        return code, content, (received.get(b"Content-Type") or [b""])[0]

    def listed(self, token: str, query: str = "") -> List[str]:
        """
        The ids of the list page C{token} gets for C{query}.
        """
        code, body, _ = self.call("GET", "/api/v1/tasks?limit=500" + query, token=token)
        self.assertEqual(code, 200, body)
        return sorted(entry["task_id"] for entry in body["tasks"])

    def assert_unknown(self, path: str, task_id: str, token: str, method: str = "GET") -> None:
        """
        C{path} (naming C{task_id}) answers C{token} exactly as the same
        path naming an unknown id does: 404 C{not_found}, the same body
        apart from the id, the same content type.
        """
        code, content, kind = self.raw(path, token, method)
        unknown = self.raw(path.replace(f"/{task_id}", f"/{UNKNOWN}"), token, method)
        self.assertEqual(code, 404, (path, content))
        self.assertEqual(json.loads(content)["error"]["code"], "not_found")
        self.assertEqual((code, content.replace(task_id.encode(), UNKNOWN.encode()), kind), unknown, path)


class BoundaryTests(TenancyTestsBase):
    """
    Reads, long-polls, streams and kills across the tenant boundary.
    """

    def test_own_tasks(self) -> None:
        """
        A token reads every part of its tenant's tasks (the other owner in
        the same tenant too), and kills the ones it owns.
        """
        for token in ("a-token", "a2-token"):
            for path in per_task_reads("a2"):
                code, _, _ = self.raw(path, token)
                self.assertEqual(code, 200, (token, path))
            for path in ("/api/v1/tasks/a1", "/api/v1/tasks/a1/events", "/api/v1/tasks/a1/stdout"):
                code, _, _ = self.raw(path, token)
                self.assertEqual(code, 200, (token, path))
        code, body, _ = self.call("GET", "/api/v1/tasks/n1", token="nt-token")
        self.assertEqual((code, body["task_id"]), (200, "n1"))
        code, body, _ = self.call("POST", "/api/v1/tasks/a1/kill", token="a-token")
        self.assertEqual((code, body["status"]), (200, "cancelled"))

    def test_owner_check_within_a_tenant(self) -> None:
        """
        Inside its tenant a token still needs to own a task to kill it:
        403, not 404 (the task is visible to it).
        """
        code, body, _ = self.call("POST", "/api/v1/tasks/a1/kill", token="a2-token")
        self.assertEqual((code, body["error"]["code"]), (403, "permission_denied"))

    def test_other_tenant_is_unknown(self) -> None:
        """
        Every read of another tenant's task, queued or terminal, answers
        like an unknown id: 404, same body but for the id; tokens without
        a tenant and tasks without one are a tenant like any other.
        """
        for token, task_id in (
            ("b-token", "a1"),
            ("b-token", "a2"),
            ("a-token", "b1"),
            ("nt-token", "a1"),
            ("a-token", "n1"),
        ):
            for path in per_task_reads(task_id):
                self.assert_unknown(path, task_id, token)
        self.assertEqual(len(self.rt.runtime.waiters), 0)
        self.assertEqual(len(self.rt.runtime.streams), 0)

    def test_kill_other_tenant_is_unknown(self) -> None:
        """
        A kill of another tenant's task is 404 like an unknown id (before
        the owner check, even with the owner's name in the header) and
        changes nothing.
        """
        self.assert_unknown("/api/v1/tasks/a1/kill", "a1", "b-token", "POST")
        code, body, _ = self.call("GET", "/api/v1/tasks/a1/events", token="a-token")
        self.assertEqual(code, 200)
        self.assertNotIn("kill_requested", [event["event_type"] for event in body])
        code, body, _ = self.call("GET", "/api/v1/tasks/a1", token="a-token")
        self.assertEqual(body["status"], "accepted")

    def test_long_poll_of_other_tenant(self) -> None:
        """
        A long-poll of another tenant's running task is refused at once,
        without waiting, while the owner's long-poll of it keeps waiting
        and is answered when the task ends.
        """
        runtime = self.rt.runtime
        pending = self.rt.send("GET", "/api/v1/tasks/a1?wait_ms=600000", headers=auth("a-token"))
        self.assertNoResult(pending)
        self.assertEqual(len(runtime.waiters), 1)
        self.assert_unknown("/api/v1/tasks/a1?wait_ms=600000", "a1", "b-token")
        self.assertEqual(len(runtime.waiters), 1)
        final = {"task_id": "a1", "status": "success"}
        runtime.on_supervisor_message(control.Finished("a1", final))
        code, _, content = self.rt.done(pending)
        self.assertEqual((code, json.loads(content)), (200, final))

    def test_kept_snapshot_stays_in_its_tenant(self) -> None:
        """
        A terminal snapshot the runtime keeps in memory (from the
        supervisor's report, or from a first read) is served to its
        tenant and to admins only.
        """
        runtime = self.rt.runtime
        final = {"task_id": "b1", "status": "success"}
        runtime.on_supervisor_message(control.Finished("b1", final))
        self.assertEqual(runtime.finished.kept("b1"), Kept(final, "beta"))
        self.assert_unknown("/api/v1/tasks/b1", "b1", "a-token")
        for token in ("b-token", "ops-token"):
            code, body, _ = self.call("GET", "/api/v1/tasks/b1", token=token)
            self.assertEqual((code, body), (200, final))
        code, first, _ = self.call("GET", "/api/v1/tasks/a2", token="a-token")
        self.assertEqual(runtime.finished.kept("a2"), Kept(first, "alpha"))
        self.assert_unknown("/api/v1/tasks/a2", "a2", "b-token")

    def test_admin_sees_and_kills_everything(self) -> None:
        """
        An admin token reads every part of every tenant's tasks, lists
        them all, and kills any task whatever its owner.
        """
        for task_id in ("a2", "b1", "n1"):
            for path in per_task_reads(task_id):
                if ("follow" in path or "wait_ms" in path) and task_id != "a2":
                    continue  # queued: a follow stream or a long-poll would last
                code, _, _ = self.raw(path, "ops-token")
                self.assertEqual(code, 200, path)
        ids = self.listed("ops-token")
        self.assertEqual(ids, ["a1", "a2", "b1", "n1"])
        for task_id in ("a1", "b1", "n1"):
            code, body, _ = self.call("POST", f"/api/v1/tasks/{task_id}/kill", token="ops-token")
            self.assertEqual((code, body["status"]), (200, "cancelled"), task_id)
        for path in per_task_reads("b1"):
            code, _, _ = self.raw(path, "ops-token")
            self.assertEqual(code, 200, path)


class ListingTests(TenancyTestsBase):
    """
    C{GET /api/v1/tasks} within the tenant boundary.
    """

    def test_scoped_to_own_tenant(self) -> None:
        """
        Without C{tenant=} a token lists its own tenant's tasks; with its
        own tenant the same; with another, an empty page; other filters
        still apply inside the tenant.
        """
        expectations = [
            ("a-token", "", ["a1", "a2"]),
            ("a-token", "&tenant=alpha", ["a1", "a2"]),
            ("a-token", "&tenant=beta", []),
            ("a-token", "&status=cancelled", ["a2"]),
            ("a2-token", "&owner=alice", ["a1", "a2"]),
            ("b-token", "", ["b1"]),
            ("b-token", "&tenant=alpha", []),
            ("nt-token", "", ["n1"]),
            ("nt-token", "&tenant=alpha", []),
            ("ops-token", "&tenant=beta", ["b1"]),
        ]
        for token, query, expected in expectations:
            ids = self.listed(token, query)
            self.assertEqual(ids, expected, (token, query))
        code, body, _ = self.call("GET", "/api/v1/tasks?tenant=alpha", token="b-token")
        self.assertEqual((code, body), (200, {"tasks": [], "next_cursor": None}))

    def test_paging_stays_in_tenant(self) -> None:
        """
        Pages of one tenant hold only its tasks, through every cursor.
        """
        seen: List[str] = []
        cursor = None
        while True:
            query = "/api/v1/tasks?limit=1" + ("" if cursor is None else f"&cursor={cursor}")
            code, body, _ = self.call("GET", query, token="a-token")
            self.assertEqual(code, 200)
            seen += [entry["task_id"] for entry in body["tasks"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(sorted(seen), ["a1", "a2"])


class RuntimeViewTests(TenancyTestsBase):
    """
    The views that span tenants are for admins; the others for any token.
    """

    def test_admin_only_views(self) -> None:
        """
        C{/api/v1/runtime/resources} and C{/metrics} answer 403
        C{permission_denied} to every token but an admin's, which gets
        them (every tenant included).
        """
        for path in ("/api/v1/runtime/resources", "/metrics"):
            for token in ("a-token", "b-token", "nt-token"):
                code, body, _ = self.call("GET", path, token=token)
                self.assertEqual((code, body["error"]["code"]), (403, "permission_denied"), (path, token))
                self.assertIn("role=admin", body["error"]["message"])
        code, body, _ = self.call("GET", "/api/v1/runtime/resources", token="ops-token")
        self.assertEqual(code, 200)
        self.assertIn("tenants", body)
        code, text, _ = self.call("GET", "/metrics", token="ops-token")
        self.assertEqual(code, 200)
        self.assertIn(b'tenant="beta"', text)

    def test_open_views(self) -> None:
        """
        Info, capabilities and config (nothing per tenant in them) answer
        any valid token; health, readiness and the OpenAPI document need
        none.
        """
        for view in ("info", "capabilities", "config"):
            code, _, _ = self.call("GET", f"/api/v1/runtime/{view}", token="b-token")
            self.assertEqual(code, 200, view)
        for path in ("/healthz", "/readyz", "/api/v1/openapi.json"):
            code, _, _ = self.call("GET", path)
            self.assertEqual(code, 200, path)


class IdempotencyTests(TenancyTestsBase):
    """
    C{Idempotency-Key} per tenant.
    """

    def test_same_key_two_tenants(self) -> None:
        """
        One key used by two tenants makes two tasks (whichever request
        each sent, so a tenant cannot probe another's keys); each tenant's
        retry replays its own task; another request under a tenant's own
        key is still 409.
        """
        code, first_alpha, _ = self.call("POST", "/api/v1/tasks", COMMAND, "a-token", key="shared")
        self.assertEqual(code, 200)
        other = {"execution": {"kind": "command", "program": "/bin/false"}}
        code, first_beta, _ = self.call("POST", "/api/v1/tasks", other, "b-token", key="shared")
        self.assertEqual(code, 200, first_beta)
        self.assertNotEqual(first_alpha["task_id"], first_beta["task_id"])
        for token, body, first in (("a-token", COMMAND, first_alpha), ("b-token", other, first_beta)):
            code, again, _ = self.call("POST", "/api/v1/tasks", body, token, key="shared")
            self.assertEqual((code, again), (200, first), token)
        code, reused, _ = self.call("POST", "/api/v1/tasks", other, "a-token", key="shared")
        self.assertEqual((code, reused["error"]["code"]), (409, "conflict"))
        alpha = self.listed("a-token")
        beta = self.listed("b-token")
        self.assertIn(first_alpha["task_id"], alpha)
        self.assertIn(first_beta["task_id"], beta)

    def test_same_key_within_a_tenant(self) -> None:
        """
        Two tokens of one tenant share its keys: the second one's retry is
        the first one's task when the request (owner included) is the
        same, else a conflict.
        """
        code, first, _ = self.call("POST", "/api/v1/tasks", COMMAND, "a-token", key="k")
        self.assertEqual(code, 200)
        code, again, _ = self.call("POST", "/api/v1/tasks", COMMAND, "a-token", key="k")
        self.assertEqual((code, again), (200, first))
        code, other_owner, _ = self.call("POST", "/api/v1/tasks", COMMAND, "a2-token", key="k")
        self.assertEqual((code, other_owner["error"]["code"]), (409, "conflict"))


class WithoutAuthenticationTests(SynchronousTestCase):
    """
    Without tokens the runtime stays one trust domain.
    """

    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]

    def setUp(self) -> None:
        self.data_dir = tmp_data_dir(self)
        self.rt = MemoryRuntime(self.data_dir, RuntimeConfig(data_dir=self.data_dir))
        self.rt.start()
        self.addCleanup(self.rt.stop)

    def post(self, body: Any, key: str) -> Tuple[int, Any]:
        """
        Submit C{body} with C{key}: the status and the decoded answer.
        """
        code, _, content = self.rt.request(
            "POST", "/api/v1/tasks", json.dumps(body).encode(), {b"idempotency-key": [key.encode()]}
        )
        return code, json.loads(content)

    def test_one_trust_domain(self) -> None:
        """
        Keys are shared by every tenant a body names (another tenant's
        request under a used key is 409, as before); every task, list,
        the ledger and the metrics answer anyone.
        """
        alpha = {**COMMAND, "control_context": {"tenant": "alpha"}}
        beta = {**COMMAND, "control_context": {"tenant": "beta"}}
        code, first = self.post(alpha, "k")
        self.assertEqual(code, 200)
        code, reused = self.post(beta, "k")
        self.assertEqual((code, reused["error"]["code"]), (409, "conflict"))
        for path in (
            f"/api/v1/tasks/{first['task_id']}",
            f"/api/v1/tasks/{first['task_id']}/events",
            "/api/v1/tasks?tenant=alpha",
            "/api/v1/runtime/resources",
            "/metrics",
        ):
            code, _, _ = self.rt.request("GET", path)
            self.assertEqual(code, 200, path)


class RealServerTests(TestCase):
    """
    The boundary end to end over HTTP, on a real server with a real
    workload.
    """

    timeout = 60

    async def test_boundary_over_http(self) -> None:
        """
        On a real server: beta gets 404 for alpha's running task (status,
        long-poll, a C{follow=true} stream: no byte of it) and an empty
        list for alpha, 403 for C{/metrics}; alpha follows its own stdout;
        a token given C{role=admin} by a SIGHUP reload reads C{/metrics}
        and kills alpha's task, which ends alpha's stream.
        """
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        token_file = data_dir + ".tokens"
        with open(token_file, "w") as f:
            f.write("a-token tenant=alpha owner=alice\nb-token tenant=beta owner=bob\n")
        server = ServerProcess(reactor, data_dir, ["--auth-token-file", token_file, "--termination-grace-ms", "300"])
        self.addCleanup(server.shutdown)
        await server.start()
        api = server.client(self)
        alpha, beta = {"Authorization": "Bearer a-token"}, {"Authorization": "Bearer b-token"}
        script = {"kind": "script", "script": "echo started\nexec sleep 30\n"}
        reply = await api.post("/api/v1/tasks", {"task_id": "t1", "execution": script}, headers=alpha)
        self.assertEqual(reply.code, 200, reply.body)

        async def running() -> Any:
            reply = await api.request("GET", "/api/v1/tasks/t1", headers=alpha)
            return reply.json()["status"] == "running" or None

        await poll(reactor, running, timeout=20, what="t1 running")
        unknown = await api.request("GET", "/api/v1/tasks/zz/stdout?follow=true", headers=beta)
        for path in (
            "/api/v1/tasks/t1",
            "/api/v1/tasks/t1?wait_ms=600000",
            "/api/v1/tasks/t1/stdout?follow=true",
            "/api/v1/tasks/t1/events?follow=true",
        ):
            reply = await api.request("GET", path, headers=beta, timeout=5)
            self.assertEqual(reply.code, 404, path)
            self.assertEqual(reply.json()["error"]["code"], "not_found")
        streamed = await api.request("GET", "/api/v1/tasks/t1/stdout?follow=true", headers=beta, timeout=5)
        self.assertEqual(streamed.body.replace(b"t1", b"zz"), unknown.body)
        self.assertEqual(streamed.headers["content-type"], "application/json")
        listed = await api.request("GET", "/api/v1/tasks?tenant=alpha", headers=beta)
        self.assertEqual(listed.json(), {"tasks": [], "next_cursor": None})
        metrics = await api.request("GET", "/metrics", headers=beta)
        self.assertEqual((metrics.code, metrics.json()["error"]["code"]), (403, "permission_denied"))
        killed = await api.post("/api/v1/tasks/t1/kill", headers=beta)
        self.assertEqual(killed.code, 404)

        response = await api.http.get(
            api.base_url + "/api/v1/tasks/t1/stdout?follow=true",
            headers={b"Authorization": [b"Bearer a-token"]},
            unbuffered=True,
        )
        self.assertEqual(response.code, 200)
        body: defer.Deferred[bytes] = treq.content(response)

        with open(token_file, "a") as f:
            f.write("ops-token tenant=ops owner=oncall role=admin\n")
        os.kill(server.pid, signal.SIGHUP)
        admin = {"Authorization": "Bearer ops-token"}

        async def reloaded() -> Any:
            return (await api.request("GET", "/metrics", headers=admin)).code == 200 or None

        await poll(reactor, reloaded, timeout=10, what="the reloaded admin token")
        killed = await api.post("/api/v1/tasks/t1/kill", headers=admin)
        self.assertEqual(killed.code, 200, killed.body)
        self.assertEqual(await body, b"started\n")
        final = await api.request("GET", "/api/v1/tasks/t1?wait_ms=10000", headers=alpha)
        self.assertEqual(final.json()["status"], "cancelled")
