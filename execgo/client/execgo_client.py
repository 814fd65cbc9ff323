# -*- test-case-name: tests.test_client -*-
"""
An asynchronous client of the execgo runtime's HTTP API, for other Twisted
programs.

L{ExecgoClient} is a thin layer over an injected treq C{HTTPClient} (or a
C{treq.testing.StubTreq}) and an C{IReactorTime} used for polling, backoff
and request timeouts; it never touches the global reactor.  Every method
returns a L{Deferred}, so it can be awaited from a coroutine or used with
callbacks; the C{iter_*} methods return async iterators.

It covers every endpoint: submission (with an C{Idempotency-Key}), status,
long-poll waiting, listing, kill, the event log and the log streams
(followed live, resumed after a dropped connection), and the runtime-wide
endpoints.  Answers are typed frozen values (L{execgo.client.models},
L{execgo.client.views}, all re-exported here); failures are
L{ClientError}s: L{ServerError} for a non-2xx answer (with the error
envelope's code and message), L{TransportError} when no complete answer
arrived, L{MalformedResponse} for a 2xx answer that is not what the
contract says, L{WaitTimeout} when L{ExecgoClient.wait} gives up.  The
HTTP plumbing is L{execgo.client.http}, the stream pieces
L{execgo.client.streams}; what a request says and what an answer means,
the waiting and the resuming are the no-I/O core it shares with the
command line (L{execgo.client.protocol}, L{execgo.client.resume}).

This module imports only the client's own modules, the core's models,
Twisted and treq: never the server.
"""

from __future__ import annotations

from functools import wraps
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Coroutine,
    Dict,
    List,
    Mapping,
    Optional,
    ParamSpec,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from execgo.client.errors import (
    MalformedResponse,
    WaitTimeout,
)
from execgo.client.http import HTTPSession
from execgo.client.models import (
    SubmitResult,
    TaskEvent,
    TaskPage,
    TaskStatus,
    json_object,
)
from execgo.client.protocol import (
    DEFAULT_LONG_POLL_MS,
    DEFAULT_POLL_INTERVAL_MS,
    TASKS_PATH,
    LongPoll,
    decode_json,
    encode_request,
    list_query,
    owner_headers,
    wait_query,
)
from execgo.client.resume import DEFAULT_STREAM_RETRIES, EventCursor, LogCursor
from execgo.client.streams import Consumer, LineSplitter, PushIterator
from execgo.client.views import (
    CapabilitySnapshot,
    ClusterNode,
    Health,
    ResourcesView,
    RuntimeInfo,
    RuntimeSettings,
    cluster_nodes,
)
from execgo.core.models import SubmitRequest
from execgo.core.protocol import (
    IDEMPOTENCY_HEADER,
    JSON_TYPE,
    NDJSON_TYPE,
)

__all__ = ["ExecgoClient", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_REQUEST_TIMEOUT"]

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
"""
The largest (non-streamed) response body the client reads, in bytes.
"""

DEFAULT_REQUEST_TIMEOUT = 60.0
"""
The seconds one request may take, by default.
"""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _deferred(
    function: Callable[_P, Coroutine[Any, Any, _R]]
) -> Callable[_P, "Deferred[_R]"]:
    """
    Make a coroutine method return a L{Deferred} (usable with C{await} too).
    """

    @wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> "Deferred[_R]":
        return Deferred.fromCoroutine(function(*args, **kwargs))

    return wrapper


class ExecgoClient:
    """
    A client of one runtime.

    @param base_url: the runtime's root URL, e.g. C{"http://127.0.0.1:8080"};
        trailing C{/} are ignored and a path prefix is kept.
    @param http_client: a C{treq.client.HTTPClient} or a
        C{treq.testing.StubTreq}.
    @param clock: the reactor (or a C{Clock}) used for polling delays,
        backoff and request timeouts.
    @param token: a bearer token, sent as C{Authorization: Bearer <token>}
        (for a server started with C{--auth-token-file}).
    @param request_timeout: seconds allowed for one request including its
        body (plus the C{wait_ms} of a long-poll; only until the head for
        a stream), or C{None} for no limit.
    @param max_body_bytes: the largest (non-streamed) response body accepted.
    @param long_poll_ms: the C{wait_ms} of one long-poll request of
        L{wait}; 0 polls every C{poll_interval_ms} instead.
    @param stream_retries: how many times in a row a broken stream may fail
        to make progress (or to reconnect) before it fails.
    """

    def __init__(
        self,
        base_url: str,
        http_client: Any,
        clock: IReactorTime,
        *,
        token: Optional[str] = None,
        request_timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        long_poll_ms: int = DEFAULT_LONG_POLL_MS,
        stream_retries: int = DEFAULT_STREAM_RETRIES,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._clock = clock
        self._long_poll_ms = long_poll_ms
        self._http = HTTPSession(
            http_client,
            clock,
            token,
            request_timeout,
            max_body_bytes,
            stream_retries,
        )

    # -- plumbing

    def _url(self, path: str) -> str:
        return self._base_url + path

    def _task_url(self, task_id: str, suffix: str = "") -> str:
        return self._url(f"{TASKS_PATH}/{quote(task_id, safe='')}{suffix}")

    # -- tasks

    @_deferred
    async def submit(
        self,
        request: Union[Mapping[str, Any], SubmitRequest],
        idempotency_key: Optional[str] = None,
    ) -> SubmitResult:
        """
        C{POST /api/v1/tasks}.

        @param request: a L{SubmitRequest}, or a JSON-able mapping sent as is
            (the server applies defaults and validation).
        @param idempotency_key: sent as C{Idempotency-Key}: a retry with the
            same key and request gets the first answer and creates nothing.
        @return: a L{Deferred} firing with the L{SubmitResult}.
        """
        document = request.to_json() if isinstance(request, SubmitRequest) else dict(request)
        headers = {"Content-Type": JSON_TYPE}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        reply = await self._http.request("POST", self._url(TASKS_PATH), encode_request(document), headers)
        return SubmitResult.from_json(decode_json(reply.body))

    @_deferred
    async def status(self, task_id: str) -> TaskStatus:
        """
        C{GET /api/v1/tasks/{id}}: a L{Deferred} firing with the L{TaskStatus}.
        """
        return TaskStatus.from_json(await self._http.get_json(self._task_url(task_id)))

    @_deferred
    async def list_tasks(
        self,
        status: Optional[str] = None,
        tenant: Optional[str] = None,
        owner: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> TaskPage:
        """
        C{GET /api/v1/tasks}: one page of tasks, newest first, without their
        output.

        @param labels: every one must match the task's
            C{control_context.labels}.
        @param cursor: the C{next_cursor} of the previous page.
        @return: a L{Deferred} firing with the L{TaskPage}.
        """
        label_filters = [f"{key}:{value}" for key, value in (labels or {}).items()]
        query = list_query(status, tenant, owner, label_filters, limit, cursor)
        return TaskPage.from_json(await self._http.get_json(self._url(TASKS_PATH + query)))

    async def iter_tasks(self, **filters: Any) -> AsyncIterator[TaskStatus]:
        """
        Every task matching C{filters} (the arguments of L{list_tasks}
        other than C{cursor}), newest first, page after page.
        """
        cursor = filters.pop("cursor", None)
        while True:
            page = await self.list_tasks(cursor=cursor, **filters)
            for task in page.tasks:
                yield task
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    @_deferred
    async def events(self, task_id: str, after_seq: int = 0) -> List[TaskEvent]:
        """
        C{GET /api/v1/tasks/{id}/events}: a L{Deferred} firing with the events
        (those after C{after_seq}) in C{seq} order.
        """
        suffix = "/events" if not after_seq else f"/events?after_seq={after_seq}"
        document = await self._http.get_json(self._task_url(task_id, suffix))
        if not isinstance(document, list):
            raise MalformedResponse("event log is not a JSON array")
        return [TaskEvent.from_json(item) for item in document]

    @_deferred
    async def follow_events(
        self,
        task_id: str,
        after_seq: int = 0,
        on_event: Optional[Consumer[TaskEvent]] = None,
    ) -> Optional[TaskEvent]:
        """
        C{GET /api/v1/tasks/{id}/events?follow=true}: each event after
        C{after_seq} to C{on_event} as it is recorded, until the task's
        terminal event; resumed after the last event seen if the connection
        drops.

        @param on_event: called with each L{TaskEvent}; it may return a
            Deferred to hold the stream back until it fires.
        @return: a L{Deferred} firing with the last event delivered (the
            terminal one), or C{None} if there was none after C{after_seq}.
        """
        cursor = EventCursor(after_seq)
        last: Optional[TaskEvent] = None

        def on_line(line: bytes) -> Any:
            nonlocal last
            event = TaskEvent.from_json(decode_json(line))
            cursor.after_seq, last = event.seq, event
            return None if on_event is None else on_event(event)

        def url() -> str:
            return self._task_url(task_id, cursor.suffix())

        await self._http.follow(url, LineSplitter(on_line, cursor.lines), NDJSON_TYPE.encode("ascii"))
        cursor.ended()
        return last

    def iter_events(self, task_id: str, after_seq: int = 0) -> AsyncIterator[TaskEvent]:
        """
        L{follow_events} as an async iterator of L{TaskEvent}s; leave it early
        with C{await iterator.aclose()}.
        """
        return PushIterator(lambda push: self.follow_events(task_id, after_seq, push))

    @_deferred
    async def read_log(self, task_id: str, stream: str = "stdout", offset: int = 0) -> bytes:
        """
        C{GET /api/v1/tasks/{id}/<stream>?offset=N}: the log from C{offset}
        to its current end, whole (at most C{max_body_bytes}).
        """
        url = self._task_url(task_id, LogCursor(stream, offset, follow=False).suffix())
        return (await self._http.request("GET", url)).body

    @_deferred
    async def stream_log(
        self,
        task_id: str,
        stream: str = "stdout",
        offset: int = 0,
        follow: bool = True,
        on_chunk: Optional[Consumer[bytes]] = None,
    ) -> int:
        """
        C{GET /api/v1/tasks/{id}/<stream>?offset=N&follow=true}: the log's
        bytes from C{offset} to C{on_chunk} as they are written, until the
        task has ended and every byte is out (without C{follow}, to the
        log's current end).  A dropped connection is resumed from the
        bytes received, so nothing is missed or seen twice.

        @param stream: C{"stdout"} or C{"stderr"}.
        @param on_chunk: called with each piece of bytes; it may return a
            Deferred to hold the stream back until it fires.
        @return: a L{Deferred} firing with the offset reached (C{offset} plus
            the bytes delivered), from which a later call can resume.
        """
        cursor = LogCursor(stream, offset, follow)

        def on_data(data: bytes) -> Any:
            cursor.advance(data)
            return None if on_chunk is None else on_chunk(data)

        await self._http.follow(lambda: self._task_url(task_id, cursor.suffix()), on_data, b"*/*")
        return cursor.offset

    def iter_log(
        self, task_id: str, stream: str = "stdout", offset: int = 0, follow: bool = True
    ) -> AsyncIterator[bytes]:
        """
        L{stream_log} as an async iterator of byte chunks; leave it early with
        C{await iterator.aclose()}.
        """
        return PushIterator(lambda push: self.stream_log(task_id, stream, offset, follow, push))

    @_deferred
    async def kill(self, task_id: str, owner: Optional[str] = None) -> TaskStatus:
        """
        C{POST /api/v1/tasks/{id}/kill}; does not wait for the cancellation.

        @param owner: sent (trimmed) as C{x-execgo-owner} unless blank.
        @return: a L{Deferred} firing with the snapshot the server returned.
        """
        headers = owner_headers(owner)
        reply = await self._http.request("POST", self._task_url(task_id, "/kill"), b"", headers)
        return TaskStatus.from_json(decode_json(reply.body))

    async def _wait(
        self, task_id: str, timeout_ms: Optional[int], poll_interval_ms: int
    ) -> TaskStatus:
        plan = LongPoll(self._clock.seconds(), timeout_ms, poll_interval_ms, self._long_poll_ms)
        url = self._task_url(task_id)
        while True:
            wait_ms = plan.wait_ms(self._clock.seconds())
            asked = self._clock.seconds()
            document = await self._http.get_json(url + wait_query(wait_ms), wait_ms / 1000.0)
            answered = self._clock.seconds()
            status = TaskStatus.from_json(document)
            if status.terminal:
                return status
            if plan.expired(self._clock.seconds()):
                raise WaitTimeout(task_id, status)
            pause = plan.pause(wait_ms, asked, answered)
            if pause is not None:
                await deferLater(self._clock, pause)

    @_deferred
    async def wait(
        self,
        task_id: str,
        timeout_ms: Optional[int] = None,
        poll_interval_ms: int = DEFAULT_POLL_INTERVAL_MS,
    ) -> TaskStatus:
        """
        Wait until the task is terminal, with long-poll requests
        (C{?wait_ms=}, capped by what is left of the timeout), polling every
        C{poll_interval_ms} instead when the server answers without holding
        the request.  The timeout is checked only after a non-terminal
        answer (the CLI's C{wait} algorithm).

        @return: a L{Deferred} firing with the terminal L{TaskStatus}, whatever
            the outcome; or failing with L{WaitTimeout}.
        """
        return await self._wait(task_id, timeout_ms, poll_interval_ms)

    @_deferred
    async def run(
        self,
        request: Union[Mapping[str, Any], SubmitRequest],
        timeout_ms: Optional[int] = None,
        poll_interval_ms: int = DEFAULT_POLL_INTERVAL_MS,
        idempotency_key: Optional[str] = None,
    ) -> TaskStatus:
        """
        L{submit} then L{wait}; the wait timeout starts after the submission.
        """
        submitted = await self.submit(request, idempotency_key)
        return await self._wait(submitted.task_id, timeout_ms, poll_interval_ms)

    # -- the runtime

    @_deferred
    async def runtime_info(self) -> RuntimeInfo:
        """
        C{GET /api/v1/runtime/info}.
        """
        return RuntimeInfo.from_json(await self._http.get_json(self._url("/api/v1/runtime/info")))

    @_deferred
    async def capabilities(self) -> CapabilitySnapshot:
        """
        C{GET /api/v1/runtime/capabilities}.
        """
        document = await self._http.get_json(self._url("/api/v1/runtime/capabilities"))
        return CapabilitySnapshot.from_json(document)

    @_deferred
    async def config(self) -> RuntimeSettings:
        """
        C{GET /api/v1/runtime/config}.
        """
        return RuntimeSettings.from_json(await self._http.get_json(self._url("/api/v1/runtime/config")))

    @_deferred
    async def resources(self) -> ResourcesView:
        """
        C{GET /api/v1/runtime/resources}.
        """
        document = await self._http.get_json(self._url("/api/v1/runtime/resources"))
        return ResourcesView.from_json(document)

    @_deferred
    async def cluster(self) -> Tuple[ClusterNode, ...]:
        """
        C{GET /api/v1/runtime/cluster}: the nodes that share the store.
        """
        return cluster_nodes(await self._http.get_json(self._url("/api/v1/runtime/cluster")))

    @_deferred
    async def openapi(self) -> Dict[str, Any]:
        """
        C{GET /api/v1/openapi.json}: the OpenAPI document, decoded.
        """
        return json_object(await self._http.get_json(self._url("/api/v1/openapi.json")), "openapi")

    @_deferred
    async def healthz(self) -> Health:
        """
        C{GET /healthz}.
        """
        return Health.from_json(await self._http.get_json(self._url("/healthz")))

    @_deferred
    async def readyz(self) -> Health:
        """
        C{GET /readyz}; a storage failure is a L{ServerError} (500).
        """
        return Health.from_json(await self._http.get_json(self._url("/readyz")))

    @_deferred
    async def metrics(self) -> str:
        """
        C{GET /metrics}: the Prometheus text exposition.
        """
        reply = await self._http.request("GET", self._url("/metrics"))
        return reply.body.decode("utf-8", "replace")
