"""
Tests for the no-I/O core the treq client and the command line share:
L{execgo.client.protocol} (requests, answers, the C{wait} decisions),
L{execgo.client.resume} (resuming streams) and L{execgo.client.errors};
and that none of them, nor the face of L{execgo.client}, loads Twisted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import List, Optional

from twisted.trial.unittest import SynchronousTestCase

from execgo.client.errors import (
    ClientError,
    MalformedResponse,
    ServerError,
    StreamInterrupted,
    TransportError,
)
from execgo.client.models import SubmitResult
from execgo.client.protocol import (
    LongPoll,
    Reply,
    batch_outcomes,
    decode_json,
    encode_request,
    list_query,
    owner_headers,
    server_error,
    submit_document,
    wait_query,
)
from execgo.client.resume import EventCursor, LineBuffer, LogCursor, Resumption, backoff
from execgo.core.models import ExecutionSpec, SubmitRequest
from execgo.core.protocol import OWNER_HEADER


class RequestTests(SynchronousTestCase):
    """
    How requests are written.
    """

    def test_encode_request(self) -> None:
        """
        A submission is compact JSON in raw UTF-8; a lone surrogate makes
        the body ASCII with the surrogate escaped.
        """
        self.assertEqual(encode_request({"a": ["\u00e9", 1]}), '{"a":["\u00e9",1]}'.encode("utf-8"))
        body = encode_request({"a": "\ud800\u00e9"})
        self.assertEqual(body, b'{"a":"\\ud800\\u00e9"}')
        self.assertEqual(json.loads(body), {"a": "\ud800\u00e9"})

    def test_owner_headers(self) -> None:
        """
        The owner is trimmed; a blank or absent owner sends no header.
        """
        self.assertEqual(owner_headers("  alice \t"), {OWNER_HEADER: "alice"})
        self.assertEqual(owner_headers("  "), {})
        self.assertEqual(owner_headers(None), {})

    def test_list_query(self) -> None:
        """
        Filters in a fixed order, percent-encoded, C{label} repeated; no
        filter, no query.
        """
        self.assertEqual(list_query(None, None, None, (), None, None), "")
        self.assertEqual(
            list_query("running", "team a", "bob", ["env:prod", "k:v:w"], 2, "c/1"),
            "?status=running&tenant=team%20a&owner=bob&label=env%3Aprod&label=k%3Av%3Aw&limit=2&cursor=c%2F1",
        )
        self.assertEqual(wait_query(0), "?wait_ms=0")


class AnswerTests(SynchronousTestCase):
    """
    How answers are read.
    """

    def test_decode_json(self) -> None:
        """
        A JSON body is decoded; anything else is a L{MalformedResponse}.
        """
        self.assertEqual(decode_json(b'{"a":1}'), {"a": 1})
        error = self.assertRaises(MalformedResponse, decode_json, b"<html>")
        self.assertIn("response body is not JSON", str(error))
        self.assertRaises(MalformedResponse, decode_json, b"[" * 100_000)

    def test_envelope(self) -> None:
        """
        An error envelope gives the L{ServerError} its code and message.
        """
        body = b'{"error":{"code":"conflict","message":"conflict: task t1 exists"}}'
        error = server_error(Reply(409, "Conflict", body))
        self.assertEqual((error.status, error.code, error.message, error.body), (409, "conflict",
                         "conflict: task t1 exists", body))
        self.assertEqual(str(error), "HTTP 409 conflict: conflict: task t1 exists")
        self.assertIsInstance(error, ClientError)

    def test_no_envelope(self) -> None:
        """
        Without an envelope the message is the body's text (at most 1000
        characters), or the reason phrase for an empty body.
        """
        error = server_error(Reply(500, "Internal Server Error", b" database is locked\n"))
        self.assertEqual((error.code, error.message), (None, "database is locked"))
        self.assertEqual(str(error), "HTTP 500: database is locked")
        self.assertEqual(server_error(Reply(404, "Not Found", b"")).message, "Not Found")
        self.assertEqual(len(server_error(Reply(502, "Bad Gateway", b"x" * 5000)).message), 1000)
        half = server_error(Reply(400, "Bad Request", b'{"error":{"code":7}}'))
        self.assertEqual((half.code, half.message), (None, '{"error":{"code":7}}'))


class BatchTests(SynchronousTestCase):
    """
    How a batch is written and its results read.
    """

    def test_submit_document(self) -> None:
        """
        A submission sends a L{SubmitRequest} in its wire form, a mapping
        as it is (a copy).
        """
        request = SubmitRequest(execution=ExecutionSpec(kind="command", program="/bin/true"), task_id="t1")
        self.assertEqual(submit_document(request), request.to_json())
        mapping = {"execution": {"kind": "script"}, "extra": 1}
        self.assertEqual(submit_document(mapping), mapping)
        self.assertIsNot(submit_document(mapping), mapping)

    def test_outcomes(self) -> None:
        """
        Each result becomes what submitting its task alone would have
        given: a L{SubmitResult} for a 2xx with a C{SubmitTaskResponse};
        for another status, the L{ServerError} L{server_error} makes of the
        same answer (its body as the server would have sent it); for a
        2xx whose body is not a C{SubmitTaskResponse}, L{MalformedResponse}.
        """
        envelope = {"error": {"code": "conflict", "message": "conflict: task already exists: \u00e9"}}
        document = {
            "results": [
                {"http_status": 200, "body": {"task_id": "a", "handle_id": "a", "status": "accepted"}},
                {"http_status": 409, "body": envelope},
                {"http_status": 200, "body": {"task_id": "b"}},
            ]
        }
        accepted, conflict, malformed = batch_outcomes(document, 3)
        self.assertEqual(accepted, SubmitResult("a", "a", "accepted"))
        assert isinstance(conflict, ServerError)
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        expected = server_error(Reply(409, "Conflict", body))
        self.assertEqual(
            (conflict.status, conflict.code, conflict.message, conflict.body, str(conflict)),
            (expected.status, expected.code, expected.message, expected.body, str(expected)),
        )
        self.assertIsInstance(malformed, MalformedResponse)
        self.assertIn("handle_id", str(malformed))

    def test_malformed_answer(self) -> None:
        """
        An answer that is not one result per task, each with an integer
        status and an object body, is a L{MalformedResponse}.
        """
        good = {"http_status": 200, "body": {"task_id": "a", "handle_id": "a", "status": "accepted"}}
        for document, sent in (
            ([], 1),
            ({}, 1),
            ({"results": {}}, 1),
            ({"results": [good]}, 2),
            ({"results": [good, good]}, 1),
            ({"results": [3]}, 1),
            ({"results": [{"body": good["body"]}]}, 1),
            ({"results": [{"http_status": "200", "body": good["body"]}]}, 1),
            ({"results": [{"http_status": 200, "body": []}]}, 1),
            ({"results": [{"http_status": 409}]}, 1),
        ):
            self.assertRaises(MalformedResponse, batch_outcomes, document, sent)


class LongPollTests(SynchronousTestCase):
    """
    The decisions of the C{wait} algorithm.
    """

    def test_wait_ms_capped_by_timeout(self) -> None:
        """
        Each request asks for the long-poll time, or what is left of the
        timeout when that is less, never below 0.
        """
        plan = LongPoll(started=100.0, timeout_ms=45_000, long_poll_ms=30_000)
        self.assertEqual(plan.wait_ms(100.0), 30_000)
        self.assertEqual(plan.wait_ms(120.0), 25_000)
        self.assertEqual(plan.wait_ms(150.0), 0)
        self.assertEqual(LongPoll(started=0.0, timeout_ms=None).wait_ms(1e6), 30_000)

    def test_expired(self) -> None:
        """
        The timeout has passed once the elapsed time reaches it; without a
        timeout never.
        """
        plan = LongPoll(started=10.0, timeout_ms=1500)
        self.assertEqual([plan.expired(now) for now in (10.0, 11.4, 11.5)], [False, False, True])
        self.assertFalse(LongPoll(started=0.0, timeout_ms=None).expired(1e9))
        self.assertTrue(LongPoll(started=0.0, timeout_ms=0).expired(0.0))

    def test_pause(self) -> None:
        """
        An answer held for at least half its C{wait_ms} is followed at once;
        one that came back sooner (or asked for no hold) by the poll
        interval.
        """
        plan = LongPoll(started=0.0, timeout_ms=None, poll_interval_ms=200)
        self.assertIsNone(plan.pause(30_000, 0.0, 15.0))
        self.assertEqual(plan.pause(30_000, 0.0, 14.9), 0.2)
        self.assertEqual(plan.pause(0, 0.0, 10.0), 0.2)
        self.assertEqual(LongPoll(0.0, None, poll_interval_ms=0).pause(0, 0.0, 0.0), 0.0)


class ResumptionTests(SynchronousTestCase):
    """
    When a followed stream resumes, and when it gives up.
    """

    def test_backoff(self) -> None:
        """
        The backoff doubles from 0.25 s up to 2 s.
        """
        self.assertEqual([backoff(n) for n in range(1, 7)], [0.25, 0.5, 1.0, 2.0, 2.0, 2.0])

    def test_first_request_not_retried(self) -> None:
        """
        A first request that gets no head gives up at once.
        """
        resumption = Resumption(retries=5)
        resumption.attempt()
        self.assertIsNone(resumption.refused())

    def test_progress_resumes_at_once(self) -> None:
        """
        A break after progress resumes at once, however many failures came
        before; a quiet read timeout counts as progress.
        """
        resumption = Resumption(retries=2)
        resumption.attempt()
        self.assertEqual(resumption.broke(), 0.25)
        resumption.attempt()
        resumption.delivered()
        self.assertEqual(resumption.broke(), 0.0)
        resumption.attempt()
        self.assertEqual(resumption.broke(quiet=True), 0.0)
        self.assertEqual(resumption.failures, 0)

    def test_failures_bounded(self) -> None:
        """
        Breaks without progress and failed reconnections count together;
        one more than C{retries} in a row gives up.
        """
        resumption = Resumption(retries=3)
        delays: List[Optional[float]] = []
        resumption.attempt()
        delays.append(resumption.broke())
        resumption.attempt()
        delays.append(resumption.refused())
        resumption.attempt()
        delays.append(resumption.broke())
        resumption.attempt()
        delays.append(resumption.refused())
        self.assertEqual(delays, [0.25, 0.5, 1.0, None])

    def test_break_then_refused(self) -> None:
        """
        A break proves the server was reached: a failed reconnection after
        it is retried.
        """
        resumption = Resumption(retries=5)
        resumption.attempt()
        self.assertEqual(resumption.broke(), 0.25)
        resumption.attempt()
        self.assertEqual(resumption.refused(), 0.5)


class CursorTests(SynchronousTestCase):
    """
    Where streams resume.
    """

    def test_log_cursor(self) -> None:
        """
        A log resumes from the bytes delivered; an unknown log name is a
        L{ValueError}.
        """
        cursor = LogCursor("stderr", 3, follow=True)
        self.assertEqual(cursor.suffix(), "/stderr?offset=3&follow=true")
        cursor.advance(b"hello")
        self.assertEqual(cursor.suffix(), "/stderr?offset=8&follow=true")
        self.assertEqual(LogCursor("stdout", follow=False).suffix(), "/stdout?offset=0&follow=false")
        error = self.assertRaises(ValueError, LogCursor, "stdin")
        self.assertEqual(str(error), "stream must be 'stdout' or 'stderr', not 'stdin'")

    def test_event_cursor(self) -> None:
        """
        Events resume after the last C{seq} noted; resuming drops a partial
        line; a stream that ends in the middle of a line is a
        L{MalformedResponse}.
        """
        cursor = EventCursor(after_seq=2)
        self.assertEqual(cursor.suffix(), "/events?after_seq=2&follow=true")
        self.assertEqual(list(cursor.lines.feed(b'{"seq":3}\n{"se')), [b'{"seq":3}\n'])
        cursor.after_seq = 3
        self.assertRaises(MalformedResponse, cursor.ended)
        self.assertEqual(cursor.suffix(), "/events?after_seq=3&follow=true")
        cursor.ended()

    def test_lines(self) -> None:
        """
        Complete lines come out with their newline, blank ones skipped; a
        partial line waits for its end.
        """
        lines = LineBuffer()
        self.assertEqual(list(lines.feed(b"a\n\n  \nb")), [b"a\n"])
        self.assertTrue(lines.partial)
        self.assertEqual(list(lines.feed(b"c\n")), [b"bc\n"])
        self.assertFalse(lines.partial)
        self.assertEqual(list(lines.feed(b" \n ")), [])
        self.assertFalse(lines.partial)

    def test_line_too_long(self) -> None:
        """
        A partial line longer than the limit raises, but only after the
        complete lines before it were taken.
        """
        lines = LineBuffer(max_line=4)
        taken: List[bytes] = []
        error = self.assertRaises(MalformedResponse, lambda: taken.extend(lines.feed(b"ok\n12345")))
        self.assertEqual(taken, [b"ok\n"])
        self.assertEqual(str(error), "event line longer than 4 bytes")
        self.assertEqual(list(LineBuffer(max_line=4).feed(b"1234")), [])


class ErrorTests(SynchronousTestCase):
    """
    One hierarchy for both clients.
    """

    def test_transport_errors(self) -> None:
        """
        A L{TransportError} carries its one-line message; a
        L{StreamInterrupted} is one, and says whether it was a quiet read
        timeout.
        """
        error = TransportError("connection refused (h:1)")
        self.assertEqual((error.message, str(error)), ("connection refused (h:1)",) * 2)
        self.assertIsInstance(error, ClientError)
        interrupted = StreamInterrupted("timed out (h:1)", timed_out=True)
        self.assertIsInstance(interrupted, TransportError)
        self.assertTrue(interrupted.timed_out)
        self.assertFalse(StreamInterrupted("reset").timed_out)
        self.assertFalse(issubclass(ServerError, TransportError))


class ImportTests(SynchronousTestCase):
    """
    The no-I/O core is light.
    """

    def test_no_twisted(self) -> None:
        """
        Importing the face of L{execgo.client} and its no-I/O modules loads
        neither Twisted nor treq; the treq client is loaded when first
        named, and even then the global reactor is not installed.
        """
        code = (
            "import sys, execgo.client, execgo.client.protocol, execgo.client.resume, execgo.client.errors; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'treq'})); "
            "from execgo.client import ExecgoClient; "
            "print(ExecgoClient.__module__, 'treq' in sys.modules, 'twisted.internet.reactor' in sys.modules)"
        )
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        self.assertEqual(output, "[]\nexecgo.client.execgo_client True False\n")

    def test_unknown_name(self) -> None:
        """
        A name the face does not have is an L{AttributeError}.
        """
        import execgo.client

        self.assertRaises(AttributeError, getattr, execgo.client, "NoSuchThing")
