# -*- test-case-name: tests.test_client,tests.test_asyncio_client -*-
"""
Every call of the runtime's HTTP API, written once, for both clients.

L{Calls} is the client the Twisted face (L{execgo.client.execgo_client})
and the asyncio face (L{execgo.client.asyncio_client}) share: each of its
methods is a coroutine over two seams the face supplies, a L{Transport}
(one HTTP exchange, or the head of a streamed answer, and its L{Body})
and a L{Loop} (the clock, sleeping, and the framework's futures as
C{txaio} gives them).  Calling a method starts it at once as the
framework's own future: a C{Deferred} under Twisted, a C{Task} under
asyncio; either can be awaited.

Streams are followed here too: a dropped stream is opened again where
it broke off, as L{execgo.client.resume} decides, so both faces resume
alike.

No Twisted and no asyncio here: only the seams.
"""

from __future__ import annotations

from functools import wraps
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Concatenate,
    Coroutine,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    ParamSpec,
    Protocol,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import quote

from execgo.client.errors import ClientError, MalformedResponse, StreamInterrupted, TransportError, WaitTimeout
from execgo.client.iterators import Consumer, LineSplitter, PushIterator
from execgo.client.models import SubmitResult, TaskEvent, TaskPage, TaskStatus, json_object
from execgo.client.protocol import (
    BATCH_PATH,
    DEFAULT_POLL_INTERVAL_MS,
    TASKS_PATH,
    LongPoll,
    Reply,
    batch_outcomes,
    decode_json,
    encode_request,
    list_query,
    owner_headers,
    submit_document,
    wait_query,
)
from execgo.client.resume import EventCursor, LogCursor, Resumption
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
from execgo.core.protocol import IDEMPOTENCY_HEADER, JSON_TYPE, NDJSON_TYPE

__all__ = ["Body", "Calls", "Loop", "Transport", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_REQUEST_TIMEOUT"]

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
_C = TypeVar("_C", bound="Calls")


class Loop(Protocol):
    """
    What the calls need of the event loop that runs them.
    """

    @property
    def futures(self) -> Any:
        """
        The C{txaio} API of the loop's framework (C{txaio.tx.with_config()}
        or C{txaio.aio.with_config(loop)}): futures made, resolved, rejected
        and cancelled the framework's way, and coroutines started as its
        futures.
        """

    def seconds(self) -> float:
        """
        The loop's clock, in seconds.
        """

    def sleep(self, seconds: float) -> Awaitable[None]:
        """
        Something to await that ends after C{seconds} on the loop's clock.
        """


class Body(Protocol):
    """
    A streamed answer whose head has arrived.
    """

    async def deliver(self, on_data: Consumer[bytes]) -> None:
        """
        Hand the body to C{on_data} a piece at a time, awaiting what it
        returns before reading on, until the body ends.

        @raise StreamInterrupted: the body broke off.
        """


class Transport(Protocol):
    """
    HTTP exchanges with one runtime, bounded and timed as the client was
    told.
    """

    async def request(
        self,
        method: str,
        url: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        extra_timeout: float = 0.0,
    ) -> Reply:
        """
        One whole exchange; a non-2xx answer raises L{ServerError}, no
        complete answer L{TransportError}.
        """

    async def open_stream(self, url: str, accept: bytes) -> Body:
        """
        Start a streamed C{GET}: its L{Body} once a 2xx head has arrived
        (the request timeout covers only that), else L{ServerError}.
        """


def _started(
    method: Callable[Concatenate[_C, _P], Coroutine[Any, Any, _R]]
) -> Callable[Concatenate[_C, _P], Awaitable[_R]]:
    """
    Make a coroutine method start when called, as its framework's future.
    """

    @wraps(method)
    def start(self: _C, *args: _P.args, **kwargs: _P.kwargs) -> Awaitable[_R]:
        return self._loop.futures.as_future(method, self, *args, **kwargs)

    return start


class Calls:
    """
    A client of one runtime, over a L{Transport} and a L{Loop}.

    @param base_url: the runtime's root URL; trailing C{/} are ignored and
        a path prefix is kept.
    @param long_poll_ms: the C{wait_ms} of one long-poll request of
        L{wait}; 0 polls every C{poll_interval_ms} instead.
    @param stream_retries: how many times in a row a broken stream may fail
        to make progress (or to reconnect) before it fails.
    """

    def __init__(
        self,
        base_url: str,
        transport: Transport,
        loop: Loop,
        long_poll_ms: int,
        stream_retries: int,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._http = transport
        self._loop = loop
        self._long_poll_ms = long_poll_ms
        self._stream_retries = stream_retries

    # -- plumbing

    def _url(self, path: str) -> str:
        return self._base_url + path

    def _task_url(self, task_id: str, suffix: str = "") -> str:
        return self._url(f"{TASKS_PATH}/{quote(task_id, safe='')}{suffix}")

    async def _get_json(self, url: str, extra_timeout: float = 0.0) -> Any:
        reply = await self._http.request("GET", url, extra_timeout=extra_timeout)
        return decode_json(reply.body)

    async def _follow(self, url_for: Callable[[], str], on_data: Consumer[bytes], accept: bytes) -> None:
        """
        Read a stream to its end, opening it again after a break as a
        L{Resumption} decides: C{url_for} is called before each attempt, so
        it can resume from what C{on_data} has seen.
        """
        resumption = Resumption(self._stream_retries)

        def deliver(data: bytes) -> Any:
            resumption.delivered()
            return on_data(data)

        while True:
            resumption.attempt()
            url = url_for()
            try:
                body = await self._http.open_stream(url, accept)
            except TransportError:
                delay = resumption.refused()
                if delay is None:
                    raise
                await self._loop.sleep(delay)
                continue
            try:
                await body.deliver(deliver)
                return
            except StreamInterrupted as e:
                delay = resumption.broke()
                if delay is None:
                    raise TransportError(f"GET {url}: the stream broke off: {e}") from e
            if delay:
                await self._loop.sleep(delay)

    # -- tasks

    @_started
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
        @return: the L{SubmitResult}.
        """
        headers = {"Content-Type": JSON_TYPE}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        body = encode_request(submit_document(request))
        reply = await self._http.request("POST", self._url(TASKS_PATH), body, headers)
        return SubmitResult.from_json(decode_json(reply.body))

    @_started
    async def submit_batch(
        self, requests: Iterable[Union[Mapping[str, Any], SubmitRequest]]
    ) -> List[Union[SubmitResult, ClientError]]:
        """
        C{POST /api/v1/tasks/batch}: many submissions in one request, each
        taken by the server as L{submit} without a key would have it taken.

        @param requests: 1 to L{execgo.core.protocol.MAX_BATCH_TASKS},
            each as L{submit} takes it.
        @return: per request, in order, what L{submit} would have given:
            its L{SubmitResult}, or the L{ServerError} (or
            L{MalformedResponse}) it would have raised, returned in its
            place, not raised.  A refused task does not undo the others;
            retry it with its own C{task_id} (a second submission of a
            task that was stored is a C{409 conflict}).
        @raise ServerError: the batch as a whole was refused (nothing was
            stored).
        """
        documents = [submit_document(request) for request in requests]
        body = encode_request({"tasks": documents})
        reply = await self._http.request("POST", self._url(BATCH_PATH), body, {"Content-Type": JSON_TYPE})
        return batch_outcomes(decode_json(reply.body), len(documents))

    @_started
    async def status(self, task_id: str) -> TaskStatus:
        """
        C{GET /api/v1/tasks/{id}}: the L{TaskStatus}.
        """
        return TaskStatus.from_json(await self._get_json(self._task_url(task_id)))

    @_started
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
        @return: the L{TaskPage}.
        """
        label_filters = [f"{key}:{value}" for key, value in (labels or {}).items()]
        query = list_query(status, tenant, owner, label_filters, limit, cursor)
        return TaskPage.from_json(await self._get_json(self._url(TASKS_PATH + query)))

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

    @_started
    async def events(self, task_id: str, after_seq: int = 0) -> List[TaskEvent]:
        """
        C{GET /api/v1/tasks/{id}/events}: the events (those after
        C{after_seq}) in C{seq} order.
        """
        suffix = "/events" if not after_seq else f"/events?after_seq={after_seq}"
        document = await self._get_json(self._task_url(task_id, suffix))
        if not isinstance(document, list):
            raise MalformedResponse("event log is not a JSON array")
        return [TaskEvent.from_json(item) for item in document]

    @_started
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

        @param on_event: called with each L{TaskEvent}; it may return
            something to await (a Deferred, a future, a coroutine) to hold
            the stream back until it is done.
        @return: the last event delivered (the terminal one), or C{None} if
            there was none after C{after_seq}.
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

        splitter = LineSplitter(on_line, cursor.lines, self._loop.futures)
        await self._follow(url, splitter, NDJSON_TYPE.encode("ascii"))
        cursor.ended()
        return last

    def iter_events(self, task_id: str, after_seq: int = 0) -> AsyncIterator[TaskEvent]:
        """
        L{follow_events} as an async iterator of L{TaskEvent}s; leave it early
        with C{await iterator.aclose()}.
        """
        return PushIterator[TaskEvent](self._loop.futures, lambda push: self.follow_events(task_id, after_seq, push))

    @_started
    async def read_log(self, task_id: str, stream: str = "stdout", offset: int = 0) -> bytes:
        """
        C{GET /api/v1/tasks/{id}/<stream>?offset=N}: the log from C{offset}
        to its current end, whole (at most C{max_body_bytes}).
        """
        url = self._task_url(task_id, LogCursor(stream, offset, follow=False).suffix())
        return (await self._http.request("GET", url)).body

    @_started
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
        @param on_chunk: called with each piece of bytes; it may return
            something to await to hold the stream back until it is done.
        @return: the offset reached (C{offset} plus the bytes delivered),
            from which a later call can resume.
        """
        cursor = LogCursor(stream, offset, follow)

        def on_data(data: bytes) -> Any:
            cursor.advance(data)
            return None if on_chunk is None else on_chunk(data)

        await self._follow(lambda: self._task_url(task_id, cursor.suffix()), on_data, b"*/*")
        return cursor.offset

    def iter_log(
        self, task_id: str, stream: str = "stdout", offset: int = 0, follow: bool = True
    ) -> AsyncIterator[bytes]:
        """
        L{stream_log} as an async iterator of byte chunks; leave it early with
        C{await iterator.aclose()}.
        """
        return PushIterator[bytes](
            self._loop.futures, lambda push: self.stream_log(task_id, stream, offset, follow, push)
        )

    @_started
    async def kill(self, task_id: str, owner: Optional[str] = None) -> TaskStatus:
        """
        C{POST /api/v1/tasks/{id}/kill}; does not wait for the cancellation.

        @param owner: sent (trimmed) as C{x-execgo-owner} unless blank.
        @return: the snapshot the server returned.
        """
        headers = owner_headers(owner)
        reply = await self._http.request("POST", self._task_url(task_id, "/kill"), b"", headers)
        return TaskStatus.from_json(decode_json(reply.body))

    async def _wait(self, task_id: str, timeout_ms: Optional[int], poll_interval_ms: int) -> TaskStatus:
        loop = self._loop
        plan = LongPoll(loop.seconds(), timeout_ms, poll_interval_ms, self._long_poll_ms)
        url = self._task_url(task_id)
        while True:
            wait_ms = plan.wait_ms(loop.seconds())
            asked = loop.seconds()
            document = await self._get_json(url + wait_query(wait_ms), wait_ms / 1000.0)
            answered = loop.seconds()
            status = TaskStatus.from_json(document)
            if status.terminal:
                return status
            if plan.expired(loop.seconds()):
                raise WaitTimeout(task_id, status)
            pause = plan.pause(wait_ms, asked, answered)
            if pause is not None:
                await loop.sleep(pause)

    @_started
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

        @return: the terminal L{TaskStatus}, whatever the outcome.
        @raise WaitTimeout: the timeout passed first.
        """
        return await self._wait(task_id, timeout_ms, poll_interval_ms)

    @_started
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

    @_started
    async def runtime_info(self) -> RuntimeInfo:
        """
        C{GET /api/v1/runtime/info}.
        """
        return RuntimeInfo.from_json(await self._get_json(self._url("/api/v1/runtime/info")))

    @_started
    async def capabilities(self) -> CapabilitySnapshot:
        """
        C{GET /api/v1/runtime/capabilities}.
        """
        return CapabilitySnapshot.from_json(await self._get_json(self._url("/api/v1/runtime/capabilities")))

    @_started
    async def config(self) -> RuntimeSettings:
        """
        C{GET /api/v1/runtime/config}.
        """
        return RuntimeSettings.from_json(await self._get_json(self._url("/api/v1/runtime/config")))

    @_started
    async def resources(self) -> ResourcesView:
        """
        C{GET /api/v1/runtime/resources}.
        """
        return ResourcesView.from_json(await self._get_json(self._url("/api/v1/runtime/resources")))

    @_started
    async def cluster(self) -> Tuple[ClusterNode, ...]:
        """
        C{GET /api/v1/runtime/cluster}: the nodes that share the store.
        """
        return cluster_nodes(await self._get_json(self._url("/api/v1/runtime/cluster")))

    @_started
    async def openapi(self) -> Dict[str, Any]:
        """
        C{GET /api/v1/openapi.json}: the OpenAPI document, decoded.
        """
        return json_object(await self._get_json(self._url("/api/v1/openapi.json")), "openapi")

    @_started
    async def healthz(self) -> Health:
        """
        C{GET /healthz}.
        """
        return Health.from_json(await self._get_json(self._url("/healthz")))

    @_started
    async def readyz(self) -> Health:
        """
        C{GET /readyz}; a storage failure is a L{ServerError} (500).
        """
        return Health.from_json(await self._get_json(self._url("/readyz")))

    @_started
    async def metrics(self) -> str:
        """
        C{GET /metrics}: the Prometheus text exposition.
        """
        reply = await self._http.request("GET", self._url("/metrics"))
        return reply.body.decode("utf-8", "replace")
