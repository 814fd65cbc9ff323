# -*- test-case-name: tests.test_client -*-
"""
An asynchronous client of the execgo runtime's HTTP API, for other Twisted
programs.

L{ExecgoClient} is a thin layer over an injected treq C{HTTPClient} (or a
C{treq.testing.StubTreq}) and an C{IReactorTime} used for polling and request
timeouts; it never touches the global reactor.  Every method returns a
L{Deferred}, so it can be awaited from a coroutine or used with callbacks.
Results are small frozen values (L{SubmitResult}, L{TaskStatus},
L{TaskEvent}) that keep the full decoded JSON in C{raw}; the runtime-wide
endpoints return the decoded JSON object as is.

Failures are L{ClientError}s: L{ServerError} for a non-2xx answer (with the
error envelope's code and message), L{TransportError} when no complete
answer arrived (connection failure, timeout, oversized body),
L{MalformedResponse} for a 2xx answer that is not what the contract says,
L{WaitTimeout} when L{ExecgoClient.wait} gives up.

This module imports only the models, Twisted and treq: never the server.
"""

from __future__ import annotations

import json
from functools import wraps
from typing import (
    Any,
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

import attrs
from treq.content import collect
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from execgo.models import TERMINAL_STATUSES, SubmitRequest

__all__ = [
    "ClientError",
    "ServerError",
    "TransportError",
    "MalformedResponse",
    "WaitTimeout",
    "SubmitResult",
    "TaskError",
    "TaskStatus",
    "TaskEvent",
    "ExecgoClient",
    "OWNER_HEADER",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_POLL_INTERVAL_MS",
]

OWNER_HEADER = "x-execgo-owner"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_POLL_INTERVAL_MS = 500

_P = ParamSpec("_P")
_R = TypeVar("_R")


# -- errors ---------------------------------------------------------------------


class ClientError(Exception):
    """
    Root of every failure reported by L{ExecgoClient}.
    """


class TransportError(ClientError):
    """
    No complete response arrived: the connection failed, the request timed
    out, or the body was larger than the client accepts.
    """


class MalformedResponse(ClientError):
    """
    A 2xx response whose body is not what the contract describes.
    """


class ServerError(ClientError):
    """
    The runtime answered with a non-2xx status.

    @ivar status: the HTTP status code.
    @ivar code: C{error.code} of the error envelope (e.g. C{"not_found"}), or
        C{None} when the body was not an envelope.
    @ivar message: C{error.message} of the envelope, else the body text (or
        the reason phrase when the body is empty).
    @ivar body: the raw response body.
    """

    def __init__(self, status: int, code: Optional[str], message: str, body: bytes) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body

    def __str__(self) -> str:
        if self.code is None:
            return f"HTTP {self.status}: {self.message}"
        return f"HTTP {self.status} {self.code}: {self.message}"


class WaitTimeout(ClientError):
    """
    L{ExecgoClient.wait} saw no terminal status within its timeout.

    @ivar task_id: the task waited for.
    @ivar last_status: the last (non-terminal) status seen.
    """

    def __init__(self, task_id: str, last_status: "TaskStatus") -> None:
        super().__init__(f"wait timeout exceeded for task {task_id}")
        self.task_id = task_id
        self.last_status = last_status


# -- results --------------------------------------------------------------------


def _get(
    data: Mapping[str, Any],
    key: str,
    kind: Union[type, Tuple[type, ...]],
    required: bool,
) -> Any:
    """
    C{data[key]} checked against C{kind}; C{None} for an absent optional key.
    """
    value = data.get(key)
    if value is None:
        if required:
            raise MalformedResponse(f"missing field {key!r}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedResponse(f"field {key!r} has the wrong type: {value!r}")
    return value


def _object(value: Any, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedResponse(f"{what} is not a JSON object")
    return value


@attrs.frozen
class SubmitResult:
    """
    The answer to a submission (C{SubmitTaskResponse}).
    """

    task_id: str
    handle_id: str
    status: str

    @classmethod
    def from_json(cls, data: Any) -> "SubmitResult":
        """
        Read a decoded C{SubmitTaskResponse}.

        @raise MalformedResponse: if a field is missing or mistyped.
        """
        data = _object(data, "submit response")
        return cls(
            task_id=_get(data, "task_id", str, True),
            handle_id=_get(data, "handle_id", str, True),
            status=_get(data, "status", str, True),
        )


@attrs.frozen
class TaskError:
    """
    A task's C{error}: a code from the contract's ErrorCode list and a message.
    """

    code: str
    message: str


@attrs.frozen
class TaskStatus:
    """
    The main fields of a C{TaskStatusResponse}; everything else is in C{raw}.

    @ivar raw: the whole decoded status object.
    """

    task_id: str
    handle_id: str
    status: str
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    duration_ms: Optional[int] = None
    error: Optional[TaskError] = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, hash=False, repr=False)

    @property
    def terminal(self) -> bool:
        """
        Whether the task is C{success}, C{failed} or C{cancelled}.
        """
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: Any) -> "TaskStatus":
        """
        Read a decoded C{TaskStatusResponse}.

        @raise MalformedResponse: if a main field is missing or mistyped.
        """
        data = _object(data, "task status")
        error = _get(data, "error", dict, False)
        return cls(
            task_id=_get(data, "task_id", str, True),
            handle_id=_get(data, "handle_id", str, True),
            status=_get(data, "status", str, True),
            stdout=_get(data, "stdout", str, False) or "",
            stderr=_get(data, "stderr", str, False) or "",
            stdout_truncated=bool(_get(data, "stdout_truncated", bool, False)),
            stderr_truncated=bool(_get(data, "stderr_truncated", bool, False)),
            exit_code=_get(data, "exit_code", int, False),
            exit_signal=_get(data, "exit_signal", int, False),
            duration_ms=_get(data, "duration_ms", int, False),
            error=None
            if error is None
            else TaskError(
                code=_get(error, "code", str, True),
                message=_get(error, "message", str, True),
            ),
            raw=data,
        )


@attrs.frozen
class TaskEvent:
    """
    One C{EventRecord} of a task's event log.
    """

    seq: int
    task_id: str
    event_type: str
    timestamp: str
    message: Optional[str] = None
    data: Any = attrs.field(default=None, hash=False)

    @classmethod
    def from_json(cls, data: Any) -> "TaskEvent":
        """
        Read a decoded C{EventRecord}.

        @raise MalformedResponse: if a field is missing or mistyped.
        """
        data = _object(data, "event")
        return cls(
            seq=_get(data, "seq", int, True),
            task_id=_get(data, "task_id", str, True),
            event_type=_get(data, "event_type", str, True),
            timestamp=_get(data, "timestamp", str, True),
            message=_get(data, "message", str, False),
            data=data.get("data"),
        )


# -- the client -----------------------------------------------------------------


@attrs.frozen
class _Reply:
    status: int
    phrase: str
    body: bytes


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


def _cancelled(error: BaseException) -> bool:
    """
    Whether C{error} is, or wraps (C{reasons}), a L{CancelledError}.
    """
    if isinstance(error, CancelledError):
        return True
    return any(
        isinstance(reason, Failure) and reason.check(CancelledError) is not None
        for reason in getattr(error, "reasons", None) or ()
    )


def _describe(error: BaseException) -> str:
    """
    A short description of a transport failure, looking inside treq's and
    Twisted's wrappers (C{ResponseFailed}, C{RequestTransmissionFailed}).
    """
    reasons = getattr(error, "reasons", None)
    if reasons:
        inner = reasons[0]
        if isinstance(inner, Failure) and inner.value is not None:
            return _describe(inner.value)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ExecgoClient:
    """
    A client of one runtime.

    @param base_url: the runtime's root URL, e.g. C{"http://127.0.0.1:8080"};
        trailing C{/} are ignored and a path prefix is kept.
    @param http_client: a C{treq.client.HTTPClient} or a
        C{treq.testing.StubTreq}.
    @param clock: the reactor (or a C{Clock}) used for polling delays and
        request timeouts.
    @param request_timeout: seconds allowed for one request including its
        body, or C{None} for no limit.
    @param max_body_bytes: the largest response body accepted.
    """

    def __init__(
        self,
        base_url: str,
        http_client: Any,
        clock: IReactorTime,
        *,
        request_timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._http = http_client
        self._clock = clock
        self._request_timeout = request_timeout
        self._max_body_bytes = max_body_bytes

    # -- plumbing

    def _url(self, path: str) -> str:
        return self._base_url + path

    def _task_url(self, task_id: str, suffix: str = "") -> str:
        return self._url(f"/api/v1/tasks/{quote(task_id, safe='')}{suffix}")

    async def _exchange(
        self, method: str, url: str, body: Optional[bytes], headers: Headers
    ) -> _Reply:
        try:
            response = await self._http.request(method, url, data=body, headers=headers)
        except CancelledError:
            raise
        except Exception as e:
            if _cancelled(e):
                # The agent wraps our own cancellation (a timeout) in
                # ResponseNeverReceived and friends: let it be one again.
                raise CancelledError() from e
            raise TransportError(f"{method} {url} failed: {_describe(e)}") from e
        limit = self._max_body_bytes
        length = response.length
        if isinstance(length, int) and length > limit:
            raise TransportError(
                f"{method} {url}: response body of {length} bytes exceeds the "
                f"limit of {limit} bytes"
            )
        chunks: List[bytes] = []
        received = 0

        def collector(data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received > limit:
                raise TransportError(
                    f"{method} {url}: response body exceeds the limit of {limit} bytes"
                )
            chunks.append(data)

        try:
            await collect(response, collector)
        except (ClientError, CancelledError):
            raise
        except Exception as e:
            raise TransportError(
                f"{method} {url}: reading the response failed: {_describe(e)}"
            ) from e
        phrase = response.phrase
        if isinstance(phrase, bytes):
            phrase = phrase.decode("latin-1")
        return _Reply(response.code, phrase, b"".join(chunks))

    async def _request(
        self,
        method: str,
        url: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
    ) -> _Reply:
        """
        One request with its timeout; a non-2xx answer raises L{ServerError}.
        """
        # Bytes names only: Twisted caches canonical names in one dict keyed
        # by str and bytes alike, which trips BytesWarning under "python -b".
        raw_headers = Headers({b"Accept": [b"application/json"]})
        for name, value in (headers or {}).items():
            raw_headers.setRawHeaders(name.encode("ascii"), [value.encode("utf-8")])
        exchange = Deferred.fromCoroutine(self._exchange(method, url, body, raw_headers))
        timeout = self._request_timeout
        if timeout is not None:

            def timed_out(result: Any, seconds: float) -> Any:
                if isinstance(result, Failure):
                    result.trap(CancelledError)
                    raise TransportError(f"{method} {url} timed out after {seconds:g} s")
                return result

            exchange.addTimeout(timeout, self._clock, onTimeoutCancel=timed_out)
        reply = await exchange
        if not 200 <= reply.status < 300:
            raise _server_error(reply)
        return reply

    async def _get_json(self, url: str) -> Any:
        reply = await self._request("GET", url)
        return _decode(reply.body)

    # -- tasks

    @_deferred
    async def submit(self, request: Union[Mapping[str, Any], SubmitRequest]) -> SubmitResult:
        """
        C{POST /api/v1/tasks}.

        @param request: a L{SubmitRequest}, or a JSON-able mapping sent as is
            (the server applies defaults and validation).
        @return: a L{Deferred} firing with the L{SubmitResult}.
        """
        document = request.to_json() if isinstance(request, SubmitRequest) else dict(request)
        try:
            body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            # A lone surrogate cannot be UTF-8: send it as a JSON escape.
            body = json.dumps(document, separators=(",", ":")).encode("ascii")
        reply = await self._request(
            "POST", self._url("/api/v1/tasks"), body, {"Content-Type": "application/json"}
        )
        return SubmitResult.from_json(_decode(reply.body))

    @_deferred
    async def status(self, task_id: str) -> TaskStatus:
        """
        C{GET /api/v1/tasks/{id}}: a L{Deferred} firing with the L{TaskStatus}.
        """
        return TaskStatus.from_json(await self._get_json(self._task_url(task_id)))

    @_deferred
    async def events(self, task_id: str) -> List[TaskEvent]:
        """
        C{GET /api/v1/tasks/{id}/events}: a L{Deferred} firing with the events
        in C{seq} order.
        """
        document = await self._get_json(self._task_url(task_id, "/events"))
        if not isinstance(document, list):
            raise MalformedResponse("event log is not a JSON array")
        return [TaskEvent.from_json(item) for item in document]

    @_deferred
    async def kill(self, task_id: str, owner: Optional[str] = None) -> TaskStatus:
        """
        C{POST /api/v1/tasks/{id}/kill}; does not wait for the cancellation.

        @param owner: sent (trimmed) as C{x-execgo-owner} unless blank.
        @return: a L{Deferred} firing with the snapshot the server returned.
        """
        headers = {}
        owner = (owner or "").strip()
        if owner:
            headers[OWNER_HEADER] = owner
        reply = await self._request("POST", self._task_url(task_id, "/kill"), b"", headers)
        return TaskStatus.from_json(_decode(reply.body))

    async def _wait(
        self, task_id: str, timeout_ms: Optional[int], poll_interval_ms: int
    ) -> TaskStatus:
        started = self._clock.seconds()
        while True:
            status = TaskStatus.from_json(await self._get_json(self._task_url(task_id)))
            if status.terminal:
                return status
            if timeout_ms is not None and (self._clock.seconds() - started) * 1000.0 >= timeout_ms:
                raise WaitTimeout(task_id, status)
            await deferLater(self._clock, poll_interval_ms / 1000.0)

    @_deferred
    async def wait(
        self,
        task_id: str,
        timeout_ms: Optional[int] = None,
        poll_interval_ms: int = DEFAULT_POLL_INTERVAL_MS,
    ) -> TaskStatus:
        """
        Poll the task until it is terminal (the CLI's C{wait} algorithm: the
        timeout is checked only after a non-terminal answer).

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
    ) -> TaskStatus:
        """
        L{submit} then L{wait}; the wait timeout starts after the submission.
        """
        submitted = await self.submit(request)
        return await self._wait(submitted.task_id, timeout_ms, poll_interval_ms)

    # -- the runtime

    @_deferred
    async def runtime_info(self) -> Dict[str, Any]:
        """
        C{GET /api/v1/runtime/info}, decoded.
        """
        return _object(await self._get_json(self._url("/api/v1/runtime/info")), "runtime info")

    @_deferred
    async def capabilities(self) -> Dict[str, Any]:
        """
        C{GET /api/v1/runtime/capabilities}, decoded.
        """
        return _object(
            await self._get_json(self._url("/api/v1/runtime/capabilities")), "capabilities"
        )

    @_deferred
    async def config(self) -> Dict[str, Any]:
        """
        C{GET /api/v1/runtime/config}, decoded.
        """
        return _object(await self._get_json(self._url("/api/v1/runtime/config")), "config")

    @_deferred
    async def resources(self) -> Dict[str, Any]:
        """
        C{GET /api/v1/runtime/resources}, decoded.
        """
        return _object(
            await self._get_json(self._url("/api/v1/runtime/resources")), "resources"
        )

    @_deferred
    async def healthz(self) -> Dict[str, Any]:
        """
        C{GET /healthz}, decoded.
        """
        return _object(await self._get_json(self._url("/healthz")), "healthz")

    @_deferred
    async def readyz(self) -> Dict[str, Any]:
        """
        C{GET /readyz}, decoded; a storage failure is a L{ServerError} (500).
        """
        return _object(await self._get_json(self._url("/readyz")), "readyz")

    @_deferred
    async def metrics(self) -> str:
        """
        C{GET /metrics}: the Prometheus text exposition.
        """
        reply = await self._request("GET", self._url("/metrics"))
        return reply.body.decode("utf-8", "replace")


def _decode(body: bytes) -> Any:
    """
    Parse a JSON body.

    @raise MalformedResponse: if it is not JSON.
    """
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise MalformedResponse(f"response body is not JSON: {e}") from None


def _server_error(reply: _Reply) -> ServerError:
    """
    The L{ServerError} for a non-2xx reply, reading the error envelope if
    there is one.
    """
    code: Optional[str] = None
    message: Optional[str] = None
    try:
        document = json.loads(reply.body)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        if isinstance(error.get("code"), str):
            code = error["code"]
        if isinstance(error.get("message"), str):
            message = error["message"]
    if message is None:
        text = reply.body.decode("utf-8", "replace").strip()
        message = text[:1000] if text else reply.phrase
    return ServerError(reply.status, code, message, reply.body)
