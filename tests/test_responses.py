"""
Tests for L{execgo.server.web.responses}: large snapshots sent a slice at a time,
paced by the transport, under a reservation of the preview budget.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from execgo.core import jsonstream
from execgo.core.encoding import compact
from execgo.server.budget import SMALL_PREVIEW_BYTES, ByteBudget, HeldSnapshot
from execgo.server.web.responses import BodyProducer, send_snapshot


class _Transport:
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class _Channel:
    def __init__(self) -> None:
        self.transport = _Transport()
        self._waitingForTransport = False


class FakeRequest:
    """
    Just enough of a request: it records what is written and pauses its
    producer when C{room} bytes have been written since the last resume.
    """

    def __init__(self, room: Optional[int] = None) -> None:
        self.room = room
        self.unread = 0
        self.written: List[bytes] = []
        self.producer: Any = None
        self.channel: Any = _Channel()
        self.code: Optional[int] = None
        self.headers: Dict[bytes, bytes] = {}
        self._finish: defer.Deferred[None] = defer.Deferred()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.unread += len(data)
        if self.room is not None and self.unread >= self.room and self.producer is not None:
            self.producer.pauseProducing()

    def drain(self) -> None:
        """
        The client read everything: the transport resumes the producer.
        """
        self.unread = 0
        if self.producer is not None:
            self.producer.resumeProducing()

    def notifyFinish(self) -> "defer.Deferred[None]":
        return self._finish

    def lose(self) -> None:
        """
        The connection is gone.
        """
        self.channel = None
        self._finish.errback(Failure(ConnectionError("lost")))

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name] = value


def _big(size: int = 3 * SMALL_PREVIEW_BYTES) -> Dict[str, Any]:
    return {"task_id": "t", "status": "success", "stdout": "o" * size, "stderr": "\x00" * 100}


class BodyProducerTests(SynchronousTestCase):
    """
    L{BodyProducer} writes as fast as the transport takes it.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unpaused(self) -> None:
        """
        A transport that never pauses gets every piece at once; the
        producer unregisters and fires.
        """
        request = FakeRequest()
        producer = BodyProducer(request, iter([b"a", b"", b"bc"]), self.clock, 5.0)
        self.successResultOf(producer.start())
        self.assertEqual((request.written, request.producer), ([b"a", b"bc"], None))

    def test_paced(self) -> None:
        """
        Paused, nothing more is written until the transport resumes.
        """
        request = FakeRequest(room=2)
        producer = BodyProducer(request, iter([b"ab", b"cd", b"ef"]), self.clock, 5.0)
        done = producer.start()
        self.assertEqual(request.written, [b"ab"])
        self.clock.advance(4.0)
        request.drain()
        self.assertEqual(request.written, [b"ab", b"cd"])
        request.drain()
        self.assertNoResult(done)
        request.drain()
        self.successResultOf(done)
        self.assertEqual(b"".join(request.written), b"abcdef")

    def test_stalled_client_cut_off(self) -> None:
        """
        A client that reads nothing for the stall timeout is disconnected;
        once the loss is reported the producer ends cancelled.
        """
        request = FakeRequest(room=1)
        channel = request.channel
        producer = BodyProducer(request, iter([b"ab", b"cd"]), self.clock, 5.0)
        done = producer.start()
        self.clock.advance(4.9)
        self.assertFalse(channel.transport.aborted)
        self.clock.advance(0.2)
        self.assertTrue(channel.transport.aborted)
        self.assertNoResult(done)
        request.lose()
        self.failureResultOf(done, defer.CancelledError)
        self.assertEqual(request.written, [b"ab"])

    def test_stop_then_loss(self) -> None:
        """
        C{stopProducing} (the transport is going away) stops the writes;
        the loss reported next ends the producer.
        """
        request = FakeRequest(room=1)
        producer = BodyProducer(request, iter([b"ab", b"cd"]), self.clock, None)
        done = producer.start()
        producer.stopProducing()
        producer.resumeProducing()
        self.assertEqual(request.written, [b"ab"])
        request.lose()
        self.failureResultOf(done, defer.CancelledError)


class SendSnapshotTests(SynchronousTestCase):
    """
    L{send_snapshot}: small snapshots through the API's own body, large
    ones streamed under a reservation.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.budget = ByteBudget(10 * SMALL_PREVIEW_BYTES)

    def small(self, request: Any, value: Any) -> bytes:
        return b"small:" + compact(value)

    def send(self, request: Any, snapshot: Any) -> "defer.Deferred[bytes]":
        return defer.ensureDeferred(
            send_snapshot(request, snapshot, self.small, budget=self.budget, reactor=self.clock, stall_s=5.0)
        )

    def test_small(self) -> None:
        """
        A snapshot with small previews is the API's body; a reservation
        it carried is given back.
        """
        hold = self.successResultOf(self.budget.take(100))
        snapshot = HeldSnapshot({"status": "running", "stdout": "x"}, hold)
        body = self.successResultOf(self.send(FakeRequest(), snapshot))
        self.assertTrue(body.startswith(b"small:"))
        self.assertEqual(self.budget.free, self.budget.capacity)

    def test_large_streamed(self) -> None:
        """
        A large snapshot is written in pieces that join to its compact
        JSON, with that length announced; the reservation taken for it is
        held until the last piece is written.
        """
        snapshot = _big()
        expected = compact(snapshot)
        request = FakeRequest(room=jsonstream.SLICE_CHARS)
        sent = self.send(request, snapshot)
        self.assertEqual(self.budget.free, self.budget.capacity - 3 * SMALL_PREVIEW_BYTES - 100)
        while request.producer is not None:
            request.drain()
        self.assertEqual(self.successResultOf(sent), b"")
        self.assertEqual(b"".join(request.written), expected)
        self.assertGreater(len(request.written), 2)
        self.assertEqual(request.code, 200)
        self.assertEqual(request.headers[b"content-length"], b"%d" % len(expected))
        self.assertEqual(self.budget.free, self.budget.capacity)

    def test_carried_reservation_used(self) -> None:
        """
        A snapshot read under a reservation is sent under that one, not a
        second.
        """
        hold = self.successResultOf(self.budget.take(7 * SMALL_PREVIEW_BYTES))
        request = FakeRequest()
        self.successResultOf(self.send(request, HeldSnapshot(_big(), hold)))
        self.assertEqual(self.budget.free, self.budget.capacity)

    def test_waits_for_budget(self) -> None:
        """
        When the budget is taken, a large snapshot waits for its share
        before anything is written.
        """
        other = self.successResultOf(self.budget.take(self.budget.capacity))
        request = FakeRequest()
        sent = self.send(request, _big())
        self.assertNoResult(sent)
        self.assertEqual((request.written, request.code), ([], None))
        other.release()
        self.successResultOf(sent)
        self.assertEqual(self.budget.free, self.budget.capacity)

    def test_length_lets_the_reactor_run(self) -> None:
        """
        Computing the length of a multi-megabyte answer gives the reactor
        a turn every megabyte, before anything is sent.
        """
        snapshot = _big(400_000)
        snapshot["stdout"] = "\x00" * 400_000
        request = FakeRequest()
        sent = self.send(request, snapshot)
        self.assertNoResult(sent)
        self.assertEqual((request.code, len(self.clock.getDelayedCalls())), (None, 1))
        self.clock.advance(0)
        self.successResultOf(sent)
        self.assertEqual(b"".join(request.written), compact(snapshot))

    def test_client_gone(self) -> None:
        """
        A client that goes away mid-body gives the reservation back.
        """
        request = FakeRequest(room=1)
        sent = self.send(request, _big())
        request.lose()
        self.failureResultOf(sent, defer.CancelledError)
        self.assertEqual(self.budget.free, self.budget.capacity)
        self.assertEqual(self.clock.getDelayedCalls(), [])
