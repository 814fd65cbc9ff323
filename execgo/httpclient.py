# -*- test-case-name: tests.test_cli -*-
"""
A tiny synchronous HTTP client for the command line, on C{http.client}.

The client subcommands make one request at a time and must start fast, so
this module uses only the standard library (C{ssl} is imported only for
C{https} URLs) and never Twisted.  Every failure to get a response becomes a
L{TransportError} with a one-line message the CLI prints after
C{http error: }.
"""

from __future__ import annotations

import base64
import http.client
import socket
from typing import Mapping, NamedTuple, Optional
from urllib.parse import unquote, urlsplit

DEFAULT_TIMEOUT = 60.0
"""
Seconds allowed for connecting and for each read from the server.
"""

DEFAULT_MAX_BODY = 256 * 1024 * 1024
"""
The largest response body read into memory, in bytes.
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


class TransportError(Exception):
    """
    No complete response could be obtained (connection refused, timeout,
    malformed response, invalid URL, oversized body).

    @ivar message: a one-line description without the C{http error} prefix.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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

    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"

    send_headers = {}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        token = base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        send_headers["Authorization"] = f"Basic {token}"
    for name, value in (headers or {}).items():
        send_headers[name] = value

    connection: http.client.HTTPConnection
    if scheme == "https":
        import ssl

        connection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    response: Optional[http.client.HTTPResponse] = None
    try:
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in send_headers.items():
                connection.putheader(name, value.encode("utf-8"))
            if body is not None or method.upper() in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(body or b"")))
            connection.endheaders(body)
            response = connection.getresponse()
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
                        f"response body exceeds the limit of {max_body} bytes "
                        f"({address})"
                    )
                chunks.append(chunk)
            return Response(response.status, response.reason or "", b"".join(chunks))
        except TransportError:
            raise
        except ConnectionRefusedError:
            raise TransportError(f"connection refused ({address})") from None
        except (socket.timeout, TimeoutError):
            raise TransportError(f"timed out after {timeout:g} s ({address})") from None
        except socket.gaierror as e:
            raise TransportError(f"cannot resolve host {host}: {e.strerror}") from None
        except http.client.InvalidURL as e:
            raise TransportError(f"invalid URL {url}: {e}") from None
        except http.client.HTTPException as e:
            detail = str(e) or type(e).__name__
            raise TransportError(
                f"invalid response: {type(e).__name__}: {detail} ({address})"
            ) from None
        except OSError as e:
            if type(e).__name__.startswith("SSL"):
                raise TransportError(f"TLS error: {e} ({address})") from None
            detail = e.strerror or str(e) or type(e).__name__
            raise TransportError(f"{detail} ({address})") from None
        except (ValueError, UnicodeError) as e:
            # http.client rejects illegal header values and request targets
            # with ValueError subclasses (InvalidURL, ...).
            raise TransportError(f"invalid request: {e}") from None
    finally:
        # A response to "Connection: close" owns the socket, which closing
        # the connection alone would leak when the body was not read to the end.
        if response is not None:
            response.close()
        connection.close()
