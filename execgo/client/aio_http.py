# -*- test-case-name: tests.test_asyncio_client -*-
"""
The asyncio transport of L{execgo.client}: HTTP/1.1 over C{asyncio}
streams, with nothing but the standard library.

One connection per exchange (C{Connection: close}), so a body's end is
never in doubt and nothing is pooled to leak.  What it reads is bounded:
the head (L{MAX_HEAD_BYTES}), a whole body (C{max_body_bytes}), each
chunk-size line; a body is delimited by C{Transfer-Encoding: chunked},
C{Content-Length} or the connection's end, and one that stops short is a
L{StreamInterrupted} (a stream's) or a L{TransportError} (a whole
answer's).  Timeouts run on the loop's clock.

It is the L{execgo.client.calls.Transport} of L{execgo.client.asyncio_client}.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from inspect import isawaitable
from typing import AsyncIterator, Awaitable, Dict, List, Mapping, Optional, Tuple, TypeVar
from urllib.parse import urlsplit

from execgo import __version__
from execgo.client.errors import StreamInterrupted, TransportError
from execgo.client.iterators import Consumer
from execgo.client.protocol import Reply, server_error
from execgo.core.protocol import JSON_TYPE

__all__ = ["AsyncioTransport", "StreamBody", "MAX_HEAD_BYTES"]

MAX_HEAD_BYTES = 64 * 1024
"""
The largest response head (status line and headers) read.
"""

_READ_BYTES = 64 * 1024
_T = TypeVar("_T")


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _header_value(value: str) -> str:
    """
    A header value with its line breaks made spaces, as Twisted's headers
    do, so no value can add a header or end the head.
    """
    return value.replace("\r", " ").replace("\n", " ")


class _Head:
    """
    A response's status and the headers that frame its body.
    """

    def __init__(self, status: int, phrase: str, headers: Dict[str, str]) -> None:
        self.status = status
        self.phrase = phrase
        self.headers = headers

    @property
    def chunked(self) -> bool:
        encodings = self.headers.get("transfer-encoding", "")
        return encodings.rsplit(",", 1)[-1].strip().lower() == "chunked"

    @property
    def length(self) -> Optional[int]:
        text = self.headers.get("content-length")
        if text is None or self.chunked:
            return None
        if not text.strip().isdigit():
            raise TransportError(f"bad Content-Length: {text[:40]!r}")
        return int(text)


async def _read_line(reader: asyncio.StreamReader, budget: List[int]) -> bytes:
    """
    One CRLF-ended line, charged to C{budget[0]} bytes.
    """
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise TransportError("response line too long") from None
    budget[0] -= len(line)
    if budget[0] < 0:
        raise TransportError(f"response head exceeds {MAX_HEAD_BYTES} bytes")
    return line.rstrip(b"\r\n")


async def _read_head(reader: asyncio.StreamReader) -> _Head:
    """
    The status line and headers (skipping C{1xx} heads).
    """
    budget = [MAX_HEAD_BYTES]
    while True:
        status_line = (await _read_line(reader, budget)).decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise TransportError(f"not an HTTP/1.x response: {status_line[:80]!r}")
        headers: Dict[str, str] = {}
        while True:
            line = (await _read_line(reader, budget)).decode("latin-1")
            if not line:
                break
            name, _, value = line.partition(":")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        status = int(parts[1])
        if not 100 <= status < 200:
            return _Head(status, parts[2] if len(parts) > 2 else "", headers)


async def _chunks(reader: asyncio.StreamReader, head: _Head) -> AsyncIterator[bytes]:
    """
    The body's pieces as they arrive, framed as the head says.

    @raise StreamInterrupted: the connection ended (or broke) before the
        body did.
    """
    try:
        if head.chunked:
            budget = [MAX_HEAD_BYTES]
            while True:
                size_line = await _read_line(reader, budget)
                size_text = size_line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise TransportError(f"bad chunk size {size_text[:20]!r}") from None
                if size == 0:
                    while await _read_line(reader, budget):
                        pass
                    return
                while size:
                    data = await reader.read(min(size, _READ_BYTES))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", size)
                    size -= len(data)
                    yield data
                await reader.readexactly(2)
                budget = [MAX_HEAD_BYTES]
        length = head.length
        while length is None or length > 0:
            data = await reader.read(_READ_BYTES if length is None else min(length, _READ_BYTES))
            if not data:
                if length is None:
                    return
                raise asyncio.IncompleteReadError(b"", length)
            if length is not None:
                length -= len(data)
            yield data
    except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
        raise StreamInterrupted(_describe(e)) from e


class StreamBody:
    """
    A streamed answer whose head has arrived; its connection is closed
    when the body has been delivered, or has failed.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: _Head) -> None:
        self._reader = reader
        self._writer = writer
        self._head = head

    async def deliver(self, on_data: Consumer[bytes]) -> None:
        """
        Hand the body to C{on_data} a piece at a time, awaiting what it
        returns before reading on, until the body ends.

        @raise StreamInterrupted: the body broke off.
        """
        try:
            async for data in _chunks(self._reader, self._head):
                result = on_data(data)
                if result is not None and isawaitable(result):
                    await result
        finally:
            self._writer.close()


class AsyncioTransport:
    """
    HTTP exchanges with one runtime over asyncio streams.

    @param token: a bearer token sent with every request, if any.
    @param request_timeout: seconds per request (C{None}: no limit).
    @param max_body_bytes: the largest whole body read.
    @param ssl: the TLS context for C{https} URLs (the default context
        when C{None}).
    """

    def __init__(
        self,
        token: Optional[str],
        request_timeout: Optional[float],
        max_body_bytes: int,
        ssl: Optional[_ssl.SSLContext] = None,
    ) -> None:
        self._token = token
        self._request_timeout = request_timeout
        self._max_body_bytes = max_body_bytes
        self._ssl = ssl

    def _head_bytes(
        self, method: str, url: str, body: Optional[bytes], extra: Optional[Mapping[str, str]], accept: str
    ) -> Tuple[str, int, bool, bytes]:
        """
        Where to connect (host, port, TLS) and the request's head.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"{method} {url}: not an http:// or https:// URL")
        secure = parts.scheme == "https"
        try:
            port = parts.port or (443 if secure else 80)
        except ValueError:
            raise TransportError(f"{method} {url}: bad port") from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname
        authority = f"[{host}]" if ":" in host else host
        if parts.port:
            authority += f":{parts.port}"
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {authority}",
            f"Accept: {accept}",
            f"User-Agent: execgo-client/{__version__} (asyncio)",
            "Connection: close",
        ]
        if self._token:
            lines.append(f"Authorization: Bearer {_header_value(self._token)}")
        for name, value in (extra or {}).items():
            lines.append(f"{_header_value(name)}: {_header_value(value)}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        return host, port, secure, head

    async def _exchange(
        self, method: str, url: str, body: Optional[bytes], headers: Optional[Mapping[str, str]], accept: str
    ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter, _Head]:
        """
        Connect, send the request, read the response's head.
        """
        host, port, secure, head = self._head_bytes(method, url, body, headers, accept)
        context = (self._ssl or _ssl.create_default_context()) if secure else None
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=context, limit=MAX_HEAD_BYTES)
        except OSError as e:
            raise TransportError(f"{method} {url} failed: {_describe(e)}") from e
        try:
            writer.write(head + (body or b""))
            await writer.drain()
            return reader, writer, await _read_head(reader)
        except BaseException as e:
            writer.close()
            if isinstance(e, (OSError, asyncio.IncompleteReadError)):
                raise TransportError(f"{method} {url} failed: {_describe(e)}") from e
            raise

    async def _read_all(self, method: str, url: str, reader: asyncio.StreamReader, head: _Head) -> bytes:
        limit = self._max_body_bytes
        length = head.length
        if length is not None and length > limit:
            raise TransportError(
                f"{method} {url}: response body of {length} bytes exceeds the limit of {limit} bytes"
            )
        pieces: List[bytes] = []
        received = 0
        try:
            async for data in _chunks(reader, head):
                received += len(data)
                if received > limit:
                    raise TransportError(f"{method} {url}: response body exceeds the limit of {limit} bytes")
                pieces.append(data)
        except StreamInterrupted as e:
            raise TransportError(f"{method} {url}: reading the response failed: {e}") from e
        return b"".join(pieces)

    async def _timed(self, work: Awaitable[_T], method: str, url: str, extra: float = 0.0) -> _T:
        """
        C{work}, failing with L{TransportError} after the request timeout
        (plus C{extra} seconds).
        """
        if self._request_timeout is None:
            return await work
        seconds = self._request_timeout + extra
        try:
            return await asyncio.wait_for(work, seconds)
        except asyncio.TimeoutError:
            raise TransportError(f"{method} {url} timed out after {seconds:g} s") from None

    async def request(
        self,
        method: str,
        url: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        extra_timeout: float = 0.0,
    ) -> Reply:
        """
        One request with its timeout; a non-2xx answer raises
        L{ServerError}.
        """
        if body is None and method == "POST":
            body = b""

        async def exchange() -> Reply:
            reader, writer, head = await self._exchange(method, url, body, headers, JSON_TYPE)
            try:
                return Reply(head.status, head.phrase, await self._read_all(method, url, reader, head))
            finally:
                writer.close()

        reply = await self._timed(exchange(), method, url, extra_timeout)
        if not 200 <= reply.status < 300:
            raise server_error(reply)
        return reply

    async def open_stream(self, url: str, accept: bytes) -> StreamBody:
        """
        Start a streamed C{GET}: its body once a 2xx head has arrived (the
        request timeout covers only that), else L{ServerError}.
        """
        reader, writer, head = await self._timed(
            self._exchange("GET", url, None, None, accept.decode("ascii")), "GET", url
        )
        if 200 <= head.status < 300:
            return StreamBody(reader, writer, head)
        try:
            body = await self._timed(self._read_all("GET", url, reader, head), "GET", url)
        finally:
            writer.close()
        raise server_error(Reply(head.status, head.phrase, body))
