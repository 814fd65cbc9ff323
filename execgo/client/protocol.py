# -*- test-case-name: tests.test_client_protocol -*-
"""
The protocol core both clients share, without I/O: how a request is
written (the submission body, the owner header, the list query), how an
answer is read (JSON bodies, error envelopes, a batch's results), and the
decisions of the C{wait} algorithm.  The treq client
(L{execgo.client.execgo_client}) and the command line (L{execgo.cli})
each drive it with their own transport and clock; resuming streams is
L{execgo.client.resume}.

No Twisted here, so the command line can import it and still start fast.
"""

from __future__ import annotations

import json
from http.client import responses as reason_phrases
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlencode

import attrs

from execgo.client.errors import ClientError, MalformedResponse, ServerError
from execgo.client.models import SubmitResult, get_field, json_object
from execgo.core.encoding import compact
from execgo.core.models import SubmitRequest
from execgo.core.protocol import OWNER_HEADER

__all__ = [
    "BATCH_PATH",
    "DEFAULT_LONG_POLL_MS",
    "DEFAULT_POLL_INTERVAL_MS",
    "TASKS_PATH",
    "LongPoll",
    "Reply",
    "batch_outcomes",
    "decode_json",
    "encode_request",
    "list_query",
    "owner_headers",
    "server_error",
    "submit_document",
    "wait_query",
]

TASKS_PATH = "/api/v1/tasks"
"""
The path of the task collection; a task is C{TASKS_PATH/<id>}.
"""

BATCH_PATH = TASKS_PATH + "/batch"
"""
The path of a batch submission.
"""

DEFAULT_POLL_INTERVAL_MS = 500
"""
The delay between two status requests when the server did not hold the
first (a server without long-poll).
"""

DEFAULT_LONG_POLL_MS = 30_000
"""
The C{wait_ms} of one long-poll request: well under the usual 60 s read
timeout of a client or a reverse proxy.
"""


# -- writing requests


def submit_document(request: Union[Mapping[str, Any], SubmitRequest]) -> Any:
    """
    What a submission sends: a L{SubmitRequest} in its wire form, a
    mapping as it is.
    """
    return request.to_json() if isinstance(request, SubmitRequest) else dict(request)


def encode_request(document: Any) -> bytes:
    """
    A submission's body: compact JSON in raw UTF-8; a lone surrogate,
    which UTF-8 cannot carry, makes the whole body ASCII with the
    surrogate kept as a JSON escape.
    """
    try:
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(document, separators=(",", ":")).encode("ascii")


def owner_headers(owner: Optional[str]) -> Dict[str, str]:
    """
    The owner header of a kill: C{owner} trimmed, or nothing when it is
    blank or absent.
    """
    owner = (owner or "").strip()
    return {OWNER_HEADER: owner} if owner else {}


def list_query(
    status: Optional[str],
    tenant: Optional[str],
    owner: Optional[str],
    labels: Sequence[str],
    limit: Optional[int],
    cursor: Optional[str],
) -> str:
    """
    The query of C{GET /api/v1/tasks} (with its C{?}, or empty without
    filters): every value percent-encoded, C{label} repeated.

    @param labels: C{KEY:VALUE} strings, all of which must match.
    """
    query: List[Tuple[str, Any]] = [
        (name, value) for name, value in (("status", status), ("tenant", tenant), ("owner", owner)) if value is not None
    ]
    query.extend(("label", label) for label in labels)
    if limit is not None:
        query.append(("limit", limit))
    if cursor is not None:
        query.append(("cursor", cursor))
    return "?" + urlencode(query, quote_via=quote, safe="") if query else ""


def wait_query(wait_ms: int) -> str:
    """
    The query of a status request held for up to C{wait_ms}.
    """
    return f"?wait_ms={wait_ms}"


# -- reading answers


@attrs.frozen
class Reply:
    """
    A whole answer: status, reason phrase, body.
    """

    status: int
    phrase: str
    body: bytes


def decode_json(body: bytes) -> Any:
    """
    Parse a JSON body.

    @raise MalformedResponse: if it is not JSON.
    """
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise MalformedResponse(f"response body is not JSON: {e}") from None


def server_error(reply: Reply) -> ServerError:
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


def batch_outcomes(document: Any, sent: int) -> List[Union[SubmitResult, ClientError]]:
    """
    Read a C{BatchSubmitResponse}: per task, in order, what submitting it
    alone would have given, the error returned rather than raised: its
    L{SubmitResult}; the L{ServerError} of its status and body, as
    L{server_error} reads a whole answer; or L{MalformedResponse} for a
    2xx body that is not a C{SubmitTaskResponse}.

    @param sent: how many tasks the batch held.
    @raise MalformedResponse: the answer is not a C{BatchSubmitResponse}
        with one result per task.
    """
    results = json_object(document, "batch response").get("results")
    if not isinstance(results, list) or len(results) != sent:
        raise MalformedResponse(f"batch response: expected a list of {sent} results")
    return [_batch_outcome(json_object(result, "batch result")) for result in results]


def _batch_outcome(result: Dict[str, Any]) -> Union[SubmitResult, ClientError]:
    """
    One result of a batch, read as L{batch_outcomes} says.
    """
    status = get_field(result, "http_status", int, True)
    body = json_object(get_field(result, "body", dict, True), "batch result body")
    if not 200 <= status < 300:
        return server_error(Reply(status, reason_phrases.get(status, ""), compact(body)))
    try:
        return SubmitResult.from_json(body)
    except MalformedResponse as e:
        return e


# -- waiting


@attrs.frozen
class LongPoll:
    """
    The decisions of the C{wait} algorithm over long-poll requests: how
    long each request asks the server to hold it (the long-poll time,
    capped by what is left of the timeout, so a wait ends near its
    timeout), when the wait has timed out (checked only after a
    non-terminal answer), and whether to pause before the next request (a
    non-terminal answer well before C{wait_ms} comes from a server that did
    not hold the request, one without long-poll).

    A caller loops: ask with L{wait_ms}, note the clock before and after
    the answer, return a terminal status, give up when L{expired}, sleep
    L{pause} (unless C{None}), ask again.

    @ivar started: the clock reading, in seconds, the timeout counts from.
    @ivar timeout_ms: how long to wait, or C{None} for no limit.
    @ivar poll_interval_ms: the pause after an answer that was not held.
    @ivar long_poll_ms: the C{wait_ms} of one request; 0 polls instead.
    """

    started: float
    timeout_ms: Optional[int]
    poll_interval_ms: int = DEFAULT_POLL_INTERVAL_MS
    long_poll_ms: int = DEFAULT_LONG_POLL_MS

    def wait_ms(self, now: float) -> int:
        """
        The C{wait_ms} of the next request, at clock reading C{now}.
        """
        wait_ms = self.long_poll_ms
        if self.timeout_ms is not None:
            remaining = self.timeout_ms - (now - self.started) * 1000.0
            wait_ms = max(0, min(wait_ms, int(remaining)))
        return wait_ms

    def expired(self, now: float) -> bool:
        """
        Whether the timeout has passed at clock reading C{now}.
        """
        return self.timeout_ms is not None and (now - self.started) * 1000.0 >= self.timeout_ms

    def pause(self, wait_ms: int, asked: float, answered: float) -> Optional[float]:
        """
        The seconds to sleep before the next request, or C{None} to ask
        again at once.

        @param wait_ms: what the answered request asked for.
        @param asked: the clock reading when it was sent.
        @param answered: the clock reading when its answer arrived.
        """
        held_ms = (answered - asked) * 1000.0
        if wait_ms == 0 or held_ms < wait_ms / 2:
            return self.poll_interval_ms / 1000.0
        return None
