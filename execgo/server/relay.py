# -*- test-case-name: tests.test_relay -*-
"""
What only the node that runs a task has (its output: the previews of its
status, its logs), fetched from that node for a request another node
answers (L{Relay}).

The request goes to the node's C{advertise_url} with the caller's own
credentials, so that node applies the same tenancy; it carries
L{FORWARDED_HEADER}, and a node never relays a request that carries it
(no loops, whatever the store says).  Each fetch is bounded in time
(L{RELAY_TIMEOUT_S}) and its body in size.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Dict, List, Mapping, Optional, TypeVar
from urllib.parse import quote

import treq
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss

from execgo.core.cluster import NODE_ALIVE
from execgo.core.constants import JSON
from execgo.core.protocol import JSON_TYPE, LOG_OFFSET_HEADER, LOG_SIZE_HEADER

if TYPE_CHECKING:
    from execgo.server.taskstore import TaskStore

_T = TypeVar("_T")
LOG_SIZE = LOG_SIZE_HEADER.encode("ascii")
LOG_OFFSET = LOG_OFFSET_HEADER.encode("ascii")

#: Marks a request one node relays to another.
FORWARDED_HEADER = "X-Execgo-Forwarded"
#: The longest a relayed request may take, connection included.
RELAY_TIMEOUT_S = 5.0
#: The headers of the caller's request that a relayed one carries.
RELAYED_HEADERS = ("Authorization",)


class RelayFailed(Exception):
    """
    The node that runs a task could not answer for it; the message says why.
    """


class Relay:
    """
    Fetches a task's status from the node that runs it.

    @param reactor: for the timeouts and the connections.
    @param max_body_bytes: the largest answer read (larger ones fail).
    @param http: the treq client to use (a new one with a pool of
        persistent connections by default).
    """

    def __init__(self, reactor: Any, max_body_bytes: int, http: Any = None) -> None:
        self.clock: IReactorTime = reactor
        self.max_body_bytes = max_body_bytes
        if http is None:
            pool = HTTPConnectionPool(reactor, persistent=True)
            http = treq.client.HTTPClient(Agent(reactor, pool=pool, connectTimeout=RELAY_TIMEOUT_S))
        self.http = http

    async def snapshot(self, base_url: str, task_id: str, credentials: Mapping[str, str]) -> JSON:
        """
        The status snapshot of C{task_id} as the node at C{base_url} gives
        it, asked with C{credentials} (the caller's L{RELAYED_HEADERS}).

        @raise RelayFailed: when it cannot be had (unreachable, slow, not a
            200 with a status object of that task, too large).
        """
        url = f"{base_url}/api/v1/tasks/{quote(task_id, safe='')}"
        headers = _headers(credentials)
        headers[b"Accept"] = [JSON_TYPE.encode("ascii")]
        d = defer.ensureDeferred(self._get(url, headers))
        d.addTimeout(RELAY_TIMEOUT_S, self.clock)
        try:
            code, body = await d
        except defer.TimeoutError:
            raise RelayFailed(f"no answer within {RELAY_TIMEOUT_S:g} s") from None
        except RelayFailed:
            raise
        except Exception as e:
            raise RelayFailed(str(e) or type(e).__name__) from None
        if code != 200:
            raise RelayFailed(f"it answered {code}")
        try:
            snapshot = json.loads(body)
        except ValueError:
            raise RelayFailed("its answer is not JSON") from None
        if not isinstance(snapshot, dict) or snapshot.get("task_id") != task_id:
            raise RelayFailed("its answer is not this task's status")
        return snapshot

    async def stream_log(
        self,
        base_url: str,
        task_id: str,
        name: str,
        offset: int,
        follow: bool,
        credentials: Mapping[str, str],
        sink: Any,
        begun: bool = False,
    ) -> bool:
        """
        Serve the C{name} log of C{task_id} from the node at C{base_url}:
        its answer's headers (the log's size, the offset, the length of a
        plain read) begin C{sink}, a streaming response, and its body is
        written to it as it comes, paced by C{sink}'s client (the other
        node's connection is paused while C{sink} is).

        @param begun: C{sink} began already (from this node's copy of a
            task that was queued then): only the body is relayed.
        @return: whether the whole body was sent.
        @raise RelayFailed: before anything was sent to C{sink}, when the
            node cannot answer (unreachable, slow, not a 200).
        """
        query = f"?offset={offset}" + ("&follow=true" if follow else "")
        url = f"{base_url}/api/v1/tasks/{quote(task_id, safe='')}/{name}{query}"
        headers = _headers(credentials)
        d = defer.ensureDeferred(self.http.get(url, headers=headers, unbuffered=True))
        d.addTimeout(RELAY_TIMEOUT_S, self.clock)
        try:
            response = await d
        except defer.TimeoutError:
            raise RelayFailed(f"no answer within {RELAY_TIMEOUT_S:g} s") from None
        except Exception as e:
            raise RelayFailed(str(e) or type(e).__name__) from None
        if response.code != 200:
            response.deliverBody(_Discard())
            raise RelayFailed(f"it answered {response.code}")
        begin: Dict[bytes, bytes] = {b"Cache-Control": b"no-store"}
        for header in (b"Content-Type", LOG_SIZE, LOG_OFFSET):
            values = response.headers.getRawHeaders(header)
            if values:
                begin[header] = values[0]
        if not follow and isinstance(response.length, int):
            begin[b"Content-Length"] = str(response.length).encode("ascii")
        if not begun:
            sink.begin(begin)
        done: "defer.Deferred[bool]" = defer.Deferred()
        response.deliverBody(_Pipe(sink, done))
        return await done

    async def _get(self, url: str, headers: Dict[bytes, List[bytes]]) -> "tuple[int, bytes]":
        response = await self.http.get(url, headers=headers)
        limit = self.max_body_bytes
        chunks: List[bytes] = []
        received = 0

        def collector(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received > limit:
                raise RelayFailed(f"its answer is larger than {limit} bytes")
            chunks.append(data)

        await treq.collect(response, collector)
        return response.code, b"".join(chunks)


def _headers(credentials: Mapping[str, str]) -> Dict[bytes, List[bytes]]:
    """
    The headers of a relayed request: the caller's credentials and the
    forwarded mark (as bytes: Twisted's headers compare names as bytes).
    """
    headers = {name.encode("ascii"): [value.encode("latin-1")] for name, value in credentials.items()}
    headers[FORWARDED_HEADER.encode("ascii")] = [b"1"]
    return headers


class _Discard(Protocol):
    """
    Reads off a body nobody wants.
    """


class _Pipe(Protocol):
    """
    A relayed body, written to a streaming response as it arrives: the
    other node's connection is paused while the response is, and dropped
    when the response's client goes away.
    """

    def __init__(self, sink: Any, done: "defer.Deferred[bool]") -> None:
        self.sink = sink
        self.done = done
        self._pausing = False

    def dataReceived(self, data: bytes) -> None:
        # The body's transport is a push producer (pause, resume, stop).
        producer: Any = self.transport
        if self.sink.stopped:
            producer.stopProducing()
            return
        self.sink.write(data)
        if self.sink.paused and not self._pausing:
            self._pausing = True
            producer.pauseProducing()
            defer.ensureDeferred(self._resume(producer))

    async def _resume(self, producer: Any) -> None:
        await self.sink.writable()
        self._pausing = False
        if not self.sink.stopped:
            producer.resumeProducing()
        else:
            producer.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(reason.check(ResponseDone, PotentialDataLoss) is not None and not self.sink.stopped)


async def from_node(
    store: "TaskStore", node_id: str, fetch: Callable[[str], Coroutine[Any, Any, _T]]
) -> _T:
    """
    C{fetch(advertise_url)} from node C{node_id}, where a task's output is.

    @raise RelayFailed: saying why it cannot be had: the node is not
        alive, or it could not answer.
    """
    node = await store.load_node(node_id)
    if node is None or node.state != NODE_ALIVE:
        state = "unknown" if node is None else node.state
        raise RelayFailed(f"the task's output is on node {node_id}, which is {state}")
    try:
        return await fetch(node.advertise_url)
    except RelayFailed as e:
        raise RelayFailed(f"the task's output is on node {node_id}, which cannot be reached: {e}") from None


def relay_credentials(headers: Any) -> Optional[Dict[str, str]]:
    """
    What a request relayed for the caller carries of its headers (a
    C{twisted.web.http_headers.Headers}), or C{None} when the request was
    itself relayed (it is answered from here alone).
    """
    if headers.hasHeader(FORWARDED_HEADER):
        return None
    credentials: Dict[str, str] = {}
    for name in RELAYED_HEADERS:
        value = headers.getRawHeaders(name)
        if value:
            credentials[name] = value[0]
    return credentials
