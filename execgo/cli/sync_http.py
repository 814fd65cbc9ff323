# -*- test-case-name: tests.test_cli -*-
"""
A tiny synchronous HTTP client for the command line, on C{http.client}.

The client subcommands make one request at a time and must start fast, so
this module uses only the standard library (C{ssl} is imported only for
C{https} URLs) and never Twisted.  Every failure to get a response becomes a
L{TransportError} (the clients' one, L{execgo.client.errors}) with a
one-line message the CLI prints after C{http error: }.

L{request} reads a whole response; L{stream} hands the body of a 2xx
response to a callback piece by piece as it arrives (the log and event
streams), and tells a stream that broke off after its head
(L{StreamInterrupted}, so the caller may resume it) from a request that got
no answer at all.
"""

from __future__ import annotations

import base64
import http.client
import socket
from typing import Callable, Dict, Mapping, NamedTuple, Optional
from urllib.parse import unquote, urlsplit

from execgo.client.errors import StreamInterrupted, TransportError

DEFAULT_TIMEOUT = 60.0
"""
Seconds allowed for connecting and for each read from the server.
"""

DEFAULT_MAX_BODY = 256 * 1024 * 1024
"""
The largest response body read into memory, in bytes.
"""

DEFAULT_MAX_ERROR_BODY = 1024 * 1024
"""
The largest error body L{stream} reads into memory, in bytes.
"""

_CHUNK = 64 * 1024


class Response(NamedTuple):
    """
    A complete HTTP response.

    @ivar status: the status code, e.g. C{200}.
    @ivar reason: the reason phrase the server sent (may be empty).
    @ivar body: the whole response body.
    """

    status: int
    reason: str
    body: bytes


def _encode_unsafe(url: str) -> str:
    """
    Percent-encode the characters that cannot appear on a request line
    (controls, space, DEL and non-ASCII), and nothing else.

    Everything else, C{%} included, is kept as given, so a task id is sent
    verbatim.  C{urlsplit} would otherwise silently drop tabs and newlines.
    """
    if all(0x20 < ord(ch) < 0x7F for ch in url):
        return url
    out = []
    for ch in url:
        if 0x20 < ord(ch) < 0x7F:
            out.append(ch)
        else:
            out.extend(
                f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogateescape")
            )
    return "".join(out)


class _Target(NamedTuple):
    """
    A parsed request URL.
    """

    url: str
    scheme: str
    host: str
    port: int
    address: str
    path: str
    headers: Dict[str, str]


def _parse(url: str, headers: Optional[Mapping[str, str]]) -> _Target:
    """
    Check and split C{url}; the request headers, with basic authentication
    from credentials in the URL.

    @raise TransportError: for an invalid or unsupported URL.
    """
    url = _encode_unsafe(url)
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError as e:
        raise TransportError(f"invalid URL {url}: {e}") from None
    if scheme not in ("http", "https"):
        raise TransportError(f"unsupported URL scheme {parts.scheme!r} in {url}")
    if not host:
        raise TransportError(f"invalid URL {url}: no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    send_headers: Dict[str, str] = {}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        token = base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        send_headers["Authorization"] = f"Basic {token}"
    send_headers.update(headers or {})
    return _Target(url, scheme, host, port, address, path, send_headers)


def _connection(target: _Target, timeout: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        import ssl

        return http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
    return http.client.HTTPConnection(target.host, target.port, timeout=timeout)


_FAILURES = (OSError, http.client.HTTPException, ValueError, UnicodeError)
"""
What C{http.client} raises when no (complete) response can be had.
"""


def _translate(error: BaseException, target: _Target, timeout: float) -> TransportError:
    """
    The one-line L{TransportError} for one of L{_FAILURES}.
    """
    address = target.address
    if isinstance(error, ConnectionRefusedError):
        return TransportError(f"connection refused ({address})")
    if isinstance(error, (socket.timeout, TimeoutError)):
        return TransportError(f"timed out after {timeout:g} s ({address})")
    if isinstance(error, socket.gaierror):
        return TransportError(f"cannot resolve host {target.host}: {error.strerror}")
    if isinstance(error, http.client.InvalidURL):
        return TransportError(f"invalid URL {target.url}: {error}")
    if isinstance(error, http.client.HTTPException):
        detail = str(error) or type(error).__name__
        return TransportError(f"invalid response: {type(error).__name__}: {detail} ({address})")
    if isinstance(error, OSError):
        if type(error).__name__.startswith("SSL"):
            return TransportError(f"TLS error: {error} ({address})")
        detail = error.strerror or str(error) or type(error).__name__
        return TransportError(f"{detail} ({address})")
    # http.client rejects illegal header values and request targets with
    # ValueError subclasses (InvalidURL, ...).
    return TransportError(f"invalid request: {error}")


def _send(
    connection: http.client.HTTPConnection,
    method: str,
    target: _Target,
    body: Optional[bytes],
) -> http.client.HTTPResponse:
    """
    Send the request and read the response head.
    """
    connection.putrequest(method, target.path, skip_accept_encoding=True)
    for name, value in target.headers.items():
        connection.putheader(name, value.encode("utf-8"))
    if body is not None or method.upper() in ("POST", "PUT", "PATCH"):
        connection.putheader("Content-Length", str(len(body or b"")))
    connection.endheaders(body)
    return connection.getresponse()


def _read_all(response: http.client.HTTPResponse, max_body: int, address: str) -> bytes:
    """
    The whole body of C{response}, at most C{max_body} bytes.

    @raise TransportError: for a larger body.
    """
    if response.length is not None and response.length > max_body:
        raise TransportError(
            f"response body of {response.length} bytes exceeds the "
            f"limit of {max_body} bytes ({address})"
        )
    chunks = []
    received = 0
    while True:
        chunk = response.read(_CHUNK)
        if not chunk:
            break
        received += len(chunk)
        if received > max_body:
            raise TransportError(
                f"response body exceeds the limit of {max_body} bytes ({address})"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def request(
    method: str,
    url: str,
    body: Optional[bytes] = None,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_body: int = DEFAULT_MAX_BODY,
) -> Response:
    """
    Make one HTTP request and read the whole response.

    A C{POST} without a body is sent with C{Content-Length: 0}.  Credentials
    in the URL (C{http://user:pass@host/}) are sent as basic authentication.

    @param method: the HTTP method, e.g. C{"GET"}.
    @param url: an absolute C{http://} or C{https://} URL.
    @param body: the request body, if any.
    @param headers: extra request headers.
    @param timeout: seconds allowed to connect and for each read.
    @param max_body: the largest accepted response body, in bytes.

    @return: the response, whatever its status.
    @raise TransportError: when no complete response could be obtained.
    """
    target = _parse(url, headers)
    connection = _connection(target, timeout)
    response: Optional[http.client.HTTPResponse] = None
    try:
        try:
            response = _send(connection, method, target, body)
            data = _read_all(response, max_body, target.address)
            return Response(response.status, response.reason or "", data)
        except TransportError:
            raise
        except _FAILURES as e:
            raise _translate(e, target, timeout) from None
    finally:
        # A response to "Connection: close" owns the socket, which closing
        # the connection alone would leak when the body was not read to the end.
        if response is not None:
            response.close()
        connection.close()


def stream(
    method: str,
    url: str,
    on_data: Callable[[bytes], None],
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_error_body: int = DEFAULT_MAX_ERROR_BODY,
) -> Response:
    """
    Make one HTTP request and hand the body of a 2xx answer to C{on_data}
    as it arrives (each piece as soon as one read returns it, a chunked
    body included).

    Whatever C{on_data} raises stops the stream and propagates unchanged.

    @param on_data: called with each non-empty piece of a 2xx body.
    @param timeout: seconds allowed to connect and for each read.
    @param max_error_body: the largest non-2xx body accepted.

    @return: the response: for a 2xx status with an empty C{body} (the body
        went to C{on_data}) once the body ended normally; for any other
        status with the whole body, C{on_data} never called.
    @raise StreamInterrupted: when a 2xx body broke off before its end.
    @raise TransportError: when no response head was obtained, or for an
        oversized error body.
    """
    target = _parse(url, headers)
    connection = _connection(target, timeout)
    response: Optional[http.client.HTTPResponse] = None
    try:
        try:
            response = _send(connection, method, target, None)
            if not 200 <= response.status < 300:
                data = _read_all(response, max_error_body, target.address)
                return Response(response.status, response.reason or "", data)
        except TransportError:
            raise
        except _FAILURES as e:
            raise _translate(e, target, timeout) from None
        while True:
            try:
                data = response.read1(_CHUNK)
            except _FAILURES as e:
                error = _translate(e, target, timeout)
                raise StreamInterrupted(
                    error.message, timed_out=isinstance(e, (socket.timeout, TimeoutError))
                ) from None
            if not data:
                break
            on_data(data)
        if response.length:
            # read1 ends quietly when a Content-Length body is cut short.
            raise StreamInterrupted(
                f"connection closed with {response.length} bytes of the body "
                f"missing ({target.address})"
            )
        return Response(response.status, response.reason or "", b"")
    finally:
        if response is not None:
            response.close()
        connection.close()
