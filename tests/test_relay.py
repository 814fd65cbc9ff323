"""
L{execgo.server.relay}: a task's status fetched from the node that runs
it, through a real treq client against an in-memory resource
(L{treq.testing.StubTreq}), and what a relayed request carries.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from execgo.server.relay import FORWARDED_HEADER, Relay, RelayFailed, relay_credentials


class _Node(Resource):
    """
    A node's API as the relay sees it: C{GET /api/v1/tasks/<id>} answers
    C{answer} with C{code}, recording the headers it was sent.
    """

    isLeaf = True

    def __init__(self, code: int = 200, answer: Any = None) -> None:
        super().__init__()
        self.code = code
        self.answer = answer
        self.seen: List[Dict[str, Optional[str]]] = []

    def render_GET(self, request: Any) -> bytes:
        headers = request.requestHeaders
        self.seen.append(
            {
                "path": request.path.decode(),
                "authorization": (headers.getRawHeaders("Authorization") or [None])[0],
                "forwarded": (headers.getRawHeaders(FORWARDED_HEADER) or [None])[0],
            }
        )
        request.setResponseCode(self.code)
        return json.dumps(self.answer).encode()


class RelayTests(SynchronousTestCase):
    """
    L{Relay.snapshot}.
    """

    def relay(self, node: _Node, max_body_bytes: int = 1 << 20) -> Relay:
        """
        A relay whose requests the in-memory C{node} answers.
        """
        return Relay(reactor=None, max_body_bytes=max_body_bytes, http=StubTreq(node))

    def snapshot(self, relay: Relay, task_id: str = "t1", credentials: Optional[Dict[str, str]] = None) -> Any:
        """
        L{Relay.snapshot} without its timeout (no reactor here): the
        answer, or the L{RelayFailed} it raised.
        """
        relay.clock = _NoTimeout()
        d = defer.ensureDeferred(relay.snapshot("http://node", task_id, credentials or {}))
        failures: List[Any] = []
        d.addErrback(failures.append)
        if failures:
            return failures[0].value
        return self.successResultOf(d)

    def test_answer_and_headers(self) -> None:
        """
        The node's status comes back as it answered; the request carried
        the caller's credentials and the forwarded mark, to the task's
        path (its id quoted).
        """
        node = _Node(answer={"task_id": "a b", "status": "running", "stdout": "hi"})
        answer = self.snapshot(self.relay(node), "a b", {"Authorization": "Bearer tok"})
        self.assertEqual(answer, {"task_id": "a b", "status": "running", "stdout": "hi"})
        self.assertEqual(node.seen, [{"path": "/api/v1/tasks/a%20b", "authorization": "Bearer tok", "forwarded": "1"}])

    def test_refusals(self) -> None:
        """
        Not a 200, not JSON, another task's status or a body over the bound
        is a L{RelayFailed} saying which.
        """
        cases = [
            (_Node(404, {"error": {}}), "answered 404"),
            (_Node(200, ["not", "an", "object"]), "not this task's status"),
            (_Node(200, {"task_id": "other"}), "not this task's status"),
        ]
        for node, said in cases:
            failure = self.snapshot(self.relay(node))
            self.assertIsInstance(failure, RelayFailed)
            self.assertIn(said, str(failure))
        big = self.snapshot(self.relay(_Node(answer={"task_id": "t1", "stdout": "x" * 5000}), max_body_bytes=1000))
        self.assertIsInstance(big, RelayFailed)
        self.assertIn("larger than 1000 bytes", str(big))


class _NoTimeout:
    """
    A clock for C{Deferred.addTimeout} whose timeouts never fire.
    """

    def callLater(self, delay: float, call: Any, *args: Any, **kwargs: Any) -> Any:
        return _Never()


class _Never:
    def active(self) -> bool:
        return True

    def cancel(self) -> None:
        pass


class CredentialsTests(SynchronousTestCase):
    """
    L{relay_credentials}.
    """

    def test_authorization_only(self) -> None:
        """
        Only the caller's C{Authorization} goes with a relayed request.
        """
        headers = Headers({"Authorization": ["Bearer t"], "Cookie": ["c"], "X-Execgo-Owner": ["o"]})
        self.assertEqual(relay_credentials(headers), {"Authorization": "Bearer t"})
        self.assertEqual(relay_credentials(Headers()), {})

    def test_relayed_request_not_relayed(self) -> None:
        """
        A request that carries the forwarded mark is answered from here
        alone, whoever set it.
        """
        self.assertIsNone(relay_credentials(Headers({FORWARDED_HEADER: ["1"], "Authorization": ["Bearer t"]})))
