"""
Tests for the batch submission, C{POST /api/v1/tasks/batch}
(L{execgo.server.web.api.RuntimeAPI.submit_batch},
L{execgo.server.intake.Intake.submit_batch}): each task is answered
exactly as C{POST /api/v1/tasks} with it as its whole body would be, only
what concerns the request as a whole refuses it, and the accepted tasks
are stored and queued in their order.

In memory (L{tests.apifixture.MemoryRuntime}: the real resource, runtime
and store, the SQL run inline, time a clock) for the answers, compared
with those of single submissions to a second runtime; against a real
server (L{tests.serverfixture}) for what needs the store's writer thread
and the supervisor: tasks sharing a writer hop under the queue bound, and
run in their order.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Dict, List, Optional, Sequence, Tuple

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool

from execgo.client import ExecgoClient, ServerError, SubmitResult
from execgo.core import protocol, strictjson
from execgo.core.config import RuntimeConfig
from execgo.server.web.auth import Principal, Tokens
from tests import backends
from tests.apifixture import MemoryRuntime, tmp_data_dir
from tests.serverfixture import SharedServer
from tests.test_api import APITestsBase
from tests.test_integration import GRACE, SharedServerCase, parse_time, shell, unique

BATCH = "/api/v1/tasks/batch"
COMMAND: Dict[str, Any] = {"execution": {"kind": "command", "program": "/bin/true"}}
#: An answer: its status and decoded body.
Answer = Tuple[int, Any]
Headers = Optional[Dict[bytes, List[bytes]]]


def task(task_id: str, **fields: Any) -> Dict[str, Any]:
    """
    A submission of C{/bin/true} with the id C{task_id} and C{fields}.
    """
    return {"task_id": task_id, **COMMAND, **fields}


def batch(items: Sequence[Any]) -> bytes:
    """
    The body of a batch of C{items}.
    """
    return json.dumps({"tasks": list(items)}).encode("utf-8")


class BatchTestsBase(APITestsBase):
    """
    One in-memory runtime per test (L{APITestsBase}), with the bearer
    tokens of L{tokens}, and the steps of a batch.
    """

    tokens: Optional[Tokens] = None

    def setUp(self) -> None:
        self.data_dir = tmp_data_dir(self)
        self.rt = self.runtime(self.data_dir)

    def runtime(self, data_dir: str) -> MemoryRuntime:
        """
        A started runtime over C{data_dir}, configured as this class says;
        stopped when the test ends.
        """
        config = RuntimeConfig(
            data_dir=data_dir, database_url=self.backend.database_url(self), **self.config_overrides
        )
        rt = MemoryRuntime(data_dir, config, tokens=self.tokens, **self.caps)
        rt.start()
        self.addCleanup(rt.stop)
        return rt

    def post_batch(self, items: Sequence[Any], headers: Headers = None) -> Answer:
        """
        Submit a batch of C{items}: status and decoded answer.
        """
        code, decoded, _ = self.call("POST", BATCH, batch(items), headers)
        return code, decoded

    def results(self, items: Sequence[Any], headers: Headers = None) -> List[Answer]:
        """
        Submit a batch of C{items}, which must be answered 200 with one
        result per item: each result's status and body.
        """
        code, decoded = self.post_batch(items, headers)
        self.assertEqual(code, 200, decoded)
        self.assertEqual(list(decoded), ["results"])
        results = decoded["results"]
        self.assertEqual(len(results), len(items))
        for result in results:
            self.assertEqual(list(result), ["http_status", "body"], result)
        return [(result["http_status"], result["body"]) for result in results]

    def singles(self, items: Sequence[Any], before: Sequence[Any] = (), headers: Headers = None) -> List[Answer]:
        """
        What C{POST /api/v1/tasks} answers with each item as its whole
        body, one after the other, on a second runtime configured as this
        one and first given the submissions C{before}.
        """
        other = self.runtime(tmp_data_dir(self))
        answers = []
        for item in [*before, *items]:
            code, _, content = other.request("POST", "/api/v1/tasks", json.dumps(item).encode("utf-8"), headers)
            answers.append((code, json.loads(content)))
        return answers[len(before):]

    def stored(self) -> List[str]:
        """
        The ids of the task directories of the runtime, sorted.
        """
        return sorted(os.listdir(os.path.join(self.data_dir, "tasks")))


@backends.each
class ItemTests(BatchTestsBase):
    """
    Each item answered as its own submission would be.
    """

    def test_many_accepted(self) -> None:
        """
        A batch of valid tasks answers 200 with C{SubmitTaskResponse} for
        each, in order (a generated id where none was given); every task
        is stored with the events of a submission.
        """
        items = [task(f"many-{index}") for index in range(40)] + [COMMAND]
        answers = self.results(items)
        for item, (status, body) in zip(items[:-1], answers):
            self.assertEqual(
                (status, body), (200, {"task_id": item["task_id"], "handle_id": item["task_id"], "status": "accepted"})
            )
        status, generated = answers[-1]
        self.assertEqual((status, len(generated["task_id"]), generated["status"]), (200, 36, "accepted"))
        self.assertEqual(len(self.stored()), 41)
        for task_id in ("many-0", "many-39", generated["task_id"]):
            code, events, _ = self.call("GET", f"/api/v1/tasks/{task_id}/events")
            self.assertEqual([e["event_type"] for e in events], ["submitted", "accepted", "planned"])

    def test_mixed_items_as_single_submissions(self) -> None:
        """
        Items refused for every reason a submission can be (decoding,
        validation, the plan, capacity, the late output bound, a taken
        id, a duplicate in the batch) get exactly the status and body a
        single submission of each, in the same order, gets; the valid
        ones are stored, the others leave nothing.
        """
        items: List[Any] = [
            task("b1"),
            3,
            "text",
            None,
            [],
            {},
            {"execution": {"kind": "command", "program": 3}},
            task("b2", limits={"wall_time_ms": 0}),
            task(" x"),
            task("b3", sandbox={"profile": "linux_sandbox"}, policy={"capability_mode": "strict"}),
            task("b4", limits={"memory_bytes": 2 << 30}),
            task("b5", limits={"stdout_max_bytes": 2**63}),
            task("taken"),
            task("b1", metadata={"second": "time"}),
            task("b6", control_context={"owner": " "}),
            task("b7", control_context={"labels": {"k": "a\u0000b"}}),
            task("b8", unknown=1, metadata={"a": "1"}),
        ]
        code, _ = self.submit(task("taken"))
        self.assertEqual(code, 200)
        answers = self.results(items)
        self.assertEqual(answers, self.singles(items, before=[task("taken")]))
        self.assertEqual(
            [(status, body.get("error", {}).get("code")) for status, body in answers],
            [(200, None)]
            + [(400, "invalid_input")] * 8
            + [(400, "unsupported_capability"), (400, "insufficient_resources"), (400, "invalid_input")]
            + [(409, "conflict")] * 2
            + [(400, "invalid_input")] * 2
            + [(200, None)],
        )
        self.assertEqual(
            answers[1][1]["error"]["message"], "invalid input: request body: expected an object, got an integer"
        )
        self.assertEqual(self.stored(), ["b1", "b8", "taken"])

    def test_items_independent(self) -> None:
        """
        A refused item undoes none of the others, before or after it.
        """
        answers = self.results([task("i1"), task("i1"), task("i2", limits={"wall_time_ms": 0}), task("i3")])
        self.assertEqual([status for status, _ in answers], [200, 409, 400, 200])
        self.assertEqual(self.stored(), ["i1", "i3"])

    def test_fault_of_one_item(self) -> None:
        """
        A store that fails for an item answers that item as a single
        submission would be: 500 C{internal} for a fault, logged once
        however many items it failed (as a failed commit fails all the
        writes it held), 503 for a store that is busy; the batch and its
        other items are not touched.
        """
        store = self.rt.runtime.intake.store
        submit = store.submit
        disk = sqlite3.OperationalError("disk I/O error")
        faults = {"boom": disk, "boom2": disk, "busy": sqlite3.OperationalError("database is locked")}

        def failing(new_task: Any, *args: Any) -> "defer.Deferred[None]":
            if new_task.task_id in faults:
                return defer.fail(faults[new_task.task_id])
            return submit(new_task, *args)

        self.patch(store, "submit", failing)
        answers = self.results([task("f1"), task("boom"), task("busy"), task("boom2"), task("f2")])
        self.assertEqual([status for status, _ in answers], [200, 500, 503, 500, 200])
        self.assertEqual(answers[3][1], answers[1][1])
        self.assertEqual(
            answers[1][1], {"error": {"code": "internal", "message": "internal error: sqlite error: disk I/O error"}}
        )
        self.assertEqual(answers[2][1]["error"]["code"], "internal")
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(self.stored(), ["f1", "f2"])


@backends.each
class QueueBoundTests(BatchTestsBase):
    """
    The queue bound and tenant quotas, item by item.
    """

    config_overrides = {"max_queued_tasks": 3, "tenant_quotas": ("alice=slots:0",)}

    def test_queue_fills_item_by_item(self) -> None:
        """
        Items refused by a tenant's quota, then past the queue bound, get
        the same answers as single submissions: the queue holds exactly
        its bound, the first tasks of the batch.
        """
        alice = task("q2", control_context={"tenant": "alice"})
        items = [task("q1"), alice, task("q3"), task("q4"), task("q5"), task("q6")]
        answers = self.results(items)
        self.assertEqual(answers, self.singles(items))
        self.assertEqual([status for status, _ in answers], [200, 400, 200, 200, 429, 429])
        self.assertEqual(answers[1][1]["error"]["code"], "insufficient_resources")
        self.assertEqual(answers[4][1], {"error": {"code": "resource_limit_exceeded", "message": "queue is full"}})
        self.assertEqual(list(self.rt.scheduler.queue), ["q1", "q3", "q4"])
        self.assertEqual(self.stored(), ["q1", "q3", "q4"])


class WholeRequestTests(BatchTestsBase):
    """
    What refuses the batch as a whole: the error envelope, nothing stored.
    """

    def assertRefused(self, answer: "tuple[int, Any, Dict[bytes, List[bytes]]]", status: int) -> str:
        """
        C{answer} is the envelope with C{status} and C{invalid_input} (or
        C{internal} for a 503), and nothing was stored; its message.
        """
        code, decoded, _ = answer
        self.assertEnvelope(code, decoded, status, "internal" if status == 503 else "invalid_input")
        self.assertEqual(self.stored(), [])
        self.assertEqual(list(self.rt.scheduler.queue), [])
        message: str = decoded["error"]["message"]
        return message

    def test_body_decoding(self) -> None:
        """
        A body that is not JSON, not an object, or too large is refused as
        a single submission's is (same status and message); a C{tasks}
        missing or not an array, or an item with a repeated key (which
        makes the whole body invalid JSON) is C{400 invalid_input},
        whatever the C{Content-Type}.
        """
        large = b'{"tasks": [], "pad": "' + b"x" * strictjson.MAX_BODY_BYTES + b'"}'
        for data in (b"not json", b"", b"[]", b'"tasks"', large, b'{"tasks": [{"a": 1, "a": 2}]}'):
            code, single, _ = self.call("POST", "/api/v1/tasks", data)
            message = self.assertRefused(self.call("POST", BATCH, data, {b"content-type": [b"text/plain"]}), code)
            self.assertEqual(message, single["error"]["message"], data[:40])
        for data, detail in (
            (b"{}", "tasks: missing required field"),
            (b'{"tasks": null}', "tasks: expected an array, got null"),
            (b'{"tasks": {}}', "tasks: expected an array, got an object"),
            (b'{"tasks": "x"}', "tasks: expected an array, got a string"),
        ):
            message = self.assertRefused(self.call("POST", BATCH, data), 400)
            self.assertEqual(message, f"invalid input: {detail}")

    def test_size_bounds(self) -> None:
        """
        An empty batch, or one of more than 1000 tasks, is C{400
        invalid_input} saying so.
        """
        message = self.assertRefused(self.call("POST", BATCH, batch([])), 400)
        self.assertEqual(message, "invalid input: tasks: a batch holds at least one task")
        message = self.assertRefused(self.call("POST", BATCH, batch([COMMAND] * 1001)), 400)
        self.assertEqual(message, "invalid input: tasks: a batch holds at most 1000 tasks, got 1001")

    def test_idempotency_key(self) -> None:
        """
        An C{Idempotency-Key} on a batch, whatever its value, is C{400
        invalid_input} pointing at single submissions and at the retry of
        a batch's task by its id.
        """
        for key in (b"k1", b""):
            message = self.assertRefused(
                self.call("POST", BATCH, batch([task("k")]), {b"Idempotency-Key": [key]}), 400
            )
            self.assertIn("Idempotency-Key is for single submissions", message)
            self.assertIn("409 conflict", message)

    def test_stopping(self) -> None:
        """
        While the runtime stops, a batch is C{503}.
        """
        self.rt.runtime.accepting = False
        self.assertRefused(self.call("POST", BATCH, batch([task("s")])), 503)


class LargestBatchTests(BatchTestsBase):
    """
    The bound of 1000 tasks, reached.
    """

    config_overrides = {"max_queued_tasks": 2000}

    def test_thousand_tasks(self) -> None:
        """
        A batch of exactly 1000 tasks is taken whole, each task stored and
        queued in its order.
        """
        self.assertEqual(protocol.MAX_BATCH_TASKS, 1000)
        items = [task(f"t{999 - index:03d}") for index in range(1000)]
        answers = self.results(items)
        self.assertEqual({status for status, _ in answers}, {200})
        self.assertEqual(list(self.rt.scheduler.queue), [item["task_id"] for item in items])
        self.assertEqual(len(self.stored()), 1000)


class OrderTests(BatchTestsBase):
    """
    The accepted tasks of a batch are stored, queued and dispatched in
    item order.
    """

    ids = ["m", "z", "a", "k", "b", "y"]

    def test_stored_and_queued_in_order(self) -> None:
        """
        The dispatcher's queue, and the store's order (the listing, newest
        first), follow the items, not the ids; the tasks share one
        creation time.
        """
        self.results([task(task_id) for task_id in self.ids])
        self.assertEqual(list(self.rt.scheduler.queue), self.ids)
        code, listed, _ = self.call("GET", "/api/v1/tasks")
        self.assertEqual([entry["task_id"] for entry in listed["tasks"]], self.ids[::-1])
        self.assertEqual(len({entry["created_at"] for entry in listed["tasks"]}), 1)
        state = self.rt.done(self.rt.store.scheduler_state(100))
        self.assertEqual([queued.task_id for queued in state.queued], self.ids)

    def test_dispatched_in_order(self) -> None:
        """
        With a supervisor connected, the launch orders go out in item
        order (four slots: the first four), the rest wait in order.
        """
        self.rt.link.pid = 4242
        self.rt.link.connected = True
        self.results([task(task_id) for task_id in self.ids])
        self.rt.clock.advance(0)
        launched = [task_id for order in self.rt.link.launched for task_id in order]
        self.assertEqual(launched, self.ids[:4])
        self.assertEqual(list(self.rt.scheduler.queue), self.ids[4:])


class TokenTests(BatchTestsBase):
    """
    With bearer tokens, the token's tenant and owner for every item.
    """

    config_overrides = {"tenant_quotas": ("alice=slots:4,memory:1024",)}
    tokens = Tokens(
        {
            "t0k": Principal(tenant="alice", owner="olga"),
            "adm": Principal(tenant="ops", owner="oncall", admin=True),
        }
    )
    alice = {b"authorization": [b"Bearer t0k"]}
    admin = {b"authorization": [b"Bearer adm"]}

    def test_principal_per_item(self) -> None:
        """
        Every item is submitted as the token's tenant and owner, whatever
        it claims, under that tenant's quota, as single submissions with
        the token are.
        """
        items = [
            task("p1", control_context={"tenant": "bob", "owner": "bo"}),
            task("p2"),
            task("p3", limits={"memory_bytes": 2048}),
        ]
        answers = self.results(items, self.alice)
        self.assertEqual(answers, self.singles(items, headers=self.alice))
        self.assertEqual([status for status, _ in answers], [200, 200, 400])
        self.assertEqual(answers[2][1]["error"]["code"], "insufficient_resources")
        code, listed, _ = self.call("GET", "/api/v1/tasks?tenant=alice&owner=olga", headers=self.admin)
        self.assertEqual(sorted(entry["task_id"] for entry in listed["tasks"]), ["p1", "p2"])
        code, listed, _ = self.call("GET", "/api/v1/tasks?tenant=bob", headers=self.admin)
        self.assertEqual(listed["tasks"], [])
        accepted = {"task_id": "p4", "handle_id": "p4", "status": "accepted"}
        self.assertEqual(self.results([task("p4")], self.admin), [(200, accepted)])
        code, listed, _ = self.call("GET", "/api/v1/tasks?tenant=ops&owner=oncall", headers=self.admin)
        self.assertEqual([entry["task_id"] for entry in listed["tasks"]], ["p4"])

    def test_token_required(self) -> None:
        """
        Without a token (or with an unknown one) a batch is C{401}, with
        C{WWW-Authenticate}, and nothing is stored.
        """
        for headers in (None, {b"authorization": [b"Bearer nope"]}):
            code, decoded, response_headers = self.call("POST", BATCH, batch([task("u")]), headers)
            self.assertEnvelope(code, decoded, 401, "permission_denied")
            self.assertEqual(response_headers[b"WWW-Authenticate"], [b'Bearer realm="execgo"'])
        self.assertEqual(self.stored(), [])


class RoutingTests(BatchTestsBase):
    """
    C{/api/v1/tasks/batch} is the batch for C{POST} only: the other routes
    of a task whose id is C{batch} are untouched.
    """

    def test_task_named_batch(self) -> None:
        """
        C{GET /api/v1/tasks/batch} is the status of task C{batch} (404
        until it exists), and its kill and events are its own; another
        method on the path is 405.
        """
        code, decoded, _ = self.call("GET", BATCH)
        self.assertEnvelope(code, decoded, 404, "not_found")
        self.assertEqual(decoded["error"]["message"], "task not found: batch")
        self.assertEqual(self.submit(task("batch"))[0], 200)
        code, status, _ = self.call("GET", BATCH)
        self.assertEqual((code, status["task_id"], status["status"]), (200, "batch", "accepted"))
        code, events, _ = self.call("GET", BATCH + "/events")
        self.assertEqual((code, events[0]["task_id"]), (200, "batch"))
        code, killed, _ = self.call("POST", BATCH + "/kill")
        self.assertEqual((code, killed["status"]), (200, "cancelled"))
        for method in ("PUT", "DELETE"):
            code, decoded, _ = self.call(method, BATCH)
            self.assertEnvelope(code, decoded, 405, "invalid_input")


# -- against a real server


class ServerBatchTests(SharedServerCase):
    """
    A real server (one slot, a queue of five): the tasks of a batch share
    the store writer's hops, and still meet the queue bound one by one and
    run in their order; the Twisted client's C{submit_batch} against it.
    """

    async def post_batch(self, items: Sequence[Any]) -> List[Answer]:
        """
        Submit a batch, which must be answered 200: each result.
        """
        reply = await self.api.post(BATCH, {"tasks": list(items)})
        self.assertEqual(reply.code, 200, reply.body)
        return [(result["http_status"], result["body"]) for result in reply.json()["results"]]

    async def test_queue_bound_and_order(self) -> None:
        """
        Behind a running task, a batch of seven fills the queue of five
        with its first five (the rest are C{429}, as single submissions
        would be); once the slot frees, they run one after the other in
        item order.
        """
        blocker = await self.submit(shell("sleep 30", task_id=unique("blocker")))
        await self.wait_started(blocker)
        ids = [unique(prefix) for prefix in ("m", "z", "a", "k", "b", "y", "c")]
        answers = await self.post_batch([shell(f"echo {task_id}", task_id=task_id) for task_id in ids])
        accepted = [(200, {"task_id": task_id, "handle_id": task_id, "status": "accepted"}) for task_id in ids[:5]]
        full = [(429, {"error": {"code": "resource_limit_exceeded", "message": "queue is full"}})] * 2
        self.assertEqual(answers, accepted + full)
        self.assertEqual((await self.kill(blocker)).code, 200)
        finals = [await self.wait_terminal(task_id) for task_id in ids[:5]]
        self.assertEqual(
            [(final["status"], final["stdout"]) for final in finals], [("success", f"{i}\n") for i in ids[:5]]
        )
        self.assertEqual(len({final["created_at"] for final in finals}), 1)
        for earlier, later in zip(finals, finals[1:]):
            self.assertLessEqual(parse_time(earlier["finished_at"]), parse_time(later["started_at"]))
        for task_id in ids[5:]:
            self.assertEqual((await self.api.get(f"/api/v1/tasks/{task_id}")).code, 404)

    async def test_mixed_items(self) -> None:
        """
        Valid, invalid and duplicate tasks in one batch, over HTTP: each
        its own answer, the valid ones run.
        """
        first, second = unique("mixed"), unique("mixed")
        answers = await self.post_batch(
            [
                shell("echo one", task_id=first),
                {"execution": {}},
                shell("echo again", task_id=first),
                shell("echo two", task_id=second),
            ]
        )
        self.assertEqual([status for status, _ in answers], [200, 400, 409, 200])
        self.assertEqual(answers[1][1]["error"]["message"], "invalid input: execution.kind: missing required field")
        for task_id, out in ((first, "one\n"), (second, "two\n")):
            final = await self.wait_terminal(task_id)
            self.assertEqual((final["status"], final["stdout"]), ("success", out))

    async def test_twisted_client(self) -> None:
        """
        L{ExecgoClient.submit_batch} returns, per task in order, the
        L{SubmitResult} or the very L{ServerError} that L{ExecgoClient.submit}
        gives for it; a batch refused whole raises.
        """
        from twisted.internet import reactor

        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        client = ExecgoClient(self.server.url, HTTPClient(Agent(reactor, pool=pool)), reactor)
        taken, fresh = unique("client"), unique("client")
        await client.submit(shell("true", task_id=taken))
        invalid = {"execution": {"kind": "command"}}
        outcomes = await client.submit_batch([shell("true", task_id=fresh), shell("true", task_id=taken), invalid])
        self.assertEqual(outcomes[0], SubmitResult(fresh, fresh, "accepted"))
        for outcome, request in zip(outcomes[1:], (shell("true", task_id=taken), invalid)):
            self.assertIsInstance(outcome, ServerError)
            assert isinstance(outcome, ServerError)
            try:
                await client.submit(request)
            except ServerError as raised:
                self.assertEqual(
                    (outcome.status, outcome.code, outcome.message, outcome.body, str(outcome)),
                    (raised.status, raised.code, raised.message, raised.body, str(raised)),
                )
            else:
                self.fail("submit did not raise")
        self.assertEqual([getattr(outcome, "code", None) for outcome in outcomes], [None, "conflict", "invalid_input"])
        with self.assertRaises(ServerError) as refused:
            await client.submit_batch([])
        self.assertEqual((refused.exception.status, refused.exception.code), (400, "invalid_input"))
        await self.wait_terminal(fresh)
        await self.wait_terminal(taken)


ServerBatchTests.shared = SharedServer(
    ServerBatchTests,
    GRACE + ["--max-running-tasks", "1", "--max-queued-tasks", "5", "--dispatch-poll-interval-ms", "5000"],
)
