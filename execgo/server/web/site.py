# -*- test-case-name: tests.test_api_input,tests.test_api -*-
"""
The HTTP plumbing under the API's routes: the site and its requests, which
bound their bodies and are counted while in flight (L{APISite},
L{BoundedRequest}); the gate that refuses paths that are not UTF-8
before Klein sees them (L{Utf8Paths}); and the small readers and writers
the routes share (query arguments, the body, the owner header, a JSON
answer).

The routes themselves, and the mapping of errors to answers, are
L{execgo.server.web.api}'s.
"""

from __future__ import annotations

import io
from typing import Any, Optional, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from execgo.core import encoding, errors, protocol
from execgo.core.strictjson import MAX_BODY_BYTES
from execgo.server.web import responses

log = Logger()

JSON_TYPE = protocol.JSON_TYPE.encode("ascii")
OWNER_HEADER = protocol.OWNER_HEADER.encode("ascii")


def answer_json(request: IRequest, value: Any, code: int = 200) -> bytes:
    """
    Answer C{value} as compact JSON with its length (not chunked).
    """
    body = encoding.compact(value)
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def owner_from(request: IRequest) -> Optional[str]:
    """
    The trimmed owner header; empty, missing or not visible ASCII counts as
    no owner.
    """
    raw = request.getHeader(OWNER_HEADER)
    if raw is None:
        return None
    value = raw.strip(b" \t")
    if not value or any(byte < 0x20 or byte > 0x7E for byte in value):
        return None
    return value.decode("ascii")


def streaming(request: IRequest) -> responses.StreamingRequest:
    """
    C{request} as the consumer a body sent a piece at a time registers
    with.
    """
    # Klein hands a route the request the site made (a BoundedRequest, so a
    # twisted.web Request, which is one); it types it as IRequest, which
    # leaves out registerProducer and notifyFinish.
    return cast(responses.StreamingRequest, request)


def uint_arg(request: IRequest, name: bytes, ceiling: int) -> int:
    """
    A non-negative integer query argument (0 when absent), capped at
    C{ceiling}; anything else is C{invalid_input}.
    """
    values = request.args.get(name)
    if not values:
        return 0
    text = values[-1]
    if not text.isdigit() or len(text) > 20:
        raise errors.InvalidInput(f"{name.decode()}: expected a non-negative integer")
    return min(int(text), ceiling)


def bool_arg(request: IRequest, name: bytes) -> bool:
    """
    A C{true}/C{false} query argument (C{False} when absent); anything
    else is C{invalid_input}.
    """
    values = request.args.get(name)
    if not values:
        return False
    text = values[-1]
    if text not in (b"true", b"false"):
        raise errors.InvalidInput(f"{name.decode()}: expected true or false")
    return text == b"true"


def request_body(request: IRequest) -> bytes:
    """
    The body a L{BoundedRequest} kept; L{errors.PayloadTooLarge} when the
    client sent more than L{MAX_BODY_BYTES}.
    """
    if getattr(request, "body_too_large", False):
        raise errors.PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise errors.PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
    return data


class BoundedRequest(server.Request):
    """
    A request that keeps at most L{MAX_BODY_BYTES} of its body in memory
    and remembers whether it was longer, so oversized bodies get a 413
    without being buffered.
    """

    body_too_large = False

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > MAX_BODY_BYTES:
            self.body_too_large = True
        # Twisted declares Request.content as a bare None (no annotation),
        # so mypy takes None for its type; it is the body's file.
        self.content = io.BytesIO()  # type: ignore[assignment]

    def process(self) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, APISite):
            site.track(self)
        super().process()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        if self.content is not None and self.content.tell() + len(data) > MAX_BODY_BYTES:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class Utf8Paths(Resource):
    """
    Refuse a request whose path or host is not UTF-8 once percent-decoded
    (C{/api/v1/tasks/%ff}) with C{400 invalid_input} and the envelope.

    Klein decodes both before routing and answers such a request itself,
    with a C{text/html} body and a logged traceback per request (anyone
    can send them, with no token); this check runs first and logs one
    line at debug level.
    """

    isLeaf = True

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        problem = None
        if not all(_is_utf8(segment) for segment in (*request.prepath, *request.postpath)):
            problem = "the request path is not valid percent-encoded UTF-8"
        elif not _is_utf8(request.getRequestHostname()):
            problem = "the Host header is not valid UTF-8"
        if problem is None:
            return self._inner.render(request)
        log.debug(
            "refused a request: {problem}: {uri}",
            problem=problem,
            uri=request.uri.decode("ascii", "backslashreplace")[:256],
        )
        error = errors.InvalidInput(problem)
        return answer_json(request, error.envelope(), error.http_status)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class APISite(server.Site):
    """
    A site whose requests bound their bodies (L{BoundedRequest}) and which
    knows its requests in flight, so a stop can wait for them.

    It never parses form submissions: every body here is JSON, and Twisted
    would otherwise run each POST's C{Content-Type} through the C{email}
    package (about a tenth of a submission's CPU).
    """

    requestFactory = BoundedRequest
    noisy = False

    def __init__(self, resource: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)
        self.inflight: "set[BoundedRequest]" = set()

    def track(self, request: BoundedRequest) -> None:
        """
        Count C{request} as in flight until it finishes (or its client
        goes away).
        """
        self.inflight.add(request)
        request.notifyFinish().addBoth(lambda _: self.inflight.discard(request))

    def settled(self) -> "defer.Deferred[None]":
        """
        Fires once every request now in flight has finished or lost its
        client.  A finished response may still sit in its transport's
        buffer: L{Listener.close_all} waits for that.
        """
        finishing = [request.notifyFinish() for request in self.inflight]
        return defer.DeferredList(finishing, consumeErrors=True).addCallback(lambda _: None)

    def log(self, request: Any) -> None:
        """
        No per-request access log: the log holds the runtime's own records.
        """
