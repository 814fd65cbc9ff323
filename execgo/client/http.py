# -*- test-case-name: tests.test_client -*-
"""
The Twisted transport of L{execgo.client}: one L{HTTPSession} per client
sends requests through the injected treq client, bounds what it reads,
applies the request timeout on the injected clock, turns error answers
into L{ServerError}s, and hands streamed bodies over as they arrive
(L{TreqBody}).  It is the L{execgo.client.calls.Transport} of the
Twisted client; resuming a broken stream is the calls' own.
"""

from __future__ import annotations

from typing import Any, Coroutine, Dict, List, Mapping, Optional, TypeVar

from treq.content import collect
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from execgo.client.errors import ClientError, TransportError
from execgo.client.iterators import Consumer
from execgo.client.protocol import Reply, server_error
from execgo.client.streams import BodyReceiver
from execgo.core.protocol import JSON_TYPE

_R = TypeVar("_R")

__all__ = ["HTTPSession", "TreqBody"]


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


class HTTPSession:
    """
    Requests to one runtime.

    @param client: a treq C{HTTPClient}, the C{treq} module, or a
        C{treq.testing.StubTreq}.
    @param clock: for timeouts and backoff.
    @param token: a bearer token sent with every request, if any.
    @param request_timeout: seconds per request (C{None}: no limit).
    @param max_body_bytes: the largest whole body read.
    """

    def __init__(
        self,
        client: Any,
        clock: IReactorTime,
        token: Optional[str],
        request_timeout: Optional[float],
        max_body_bytes: int,
    ) -> None:
        self._client = client
        self._clock = clock
        self._token = token
        self._request_timeout = request_timeout
        self._max_body_bytes = max_body_bytes

    def headers(self, extra: Optional[Mapping[str, str]], accept: bytes) -> Headers:
        """
        The request headers: C{Accept}, the bearer token, then C{extra}.
        """
        # Bytes names only: Twisted caches canonical names in one dict keyed
        # by str and bytes alike, which trips BytesWarning under "python -b".
        headers = Headers({b"Accept": [accept]})
        if self._token:
            headers.setRawHeaders(b"Authorization", [b"Bearer " + self._token.encode("utf-8")])
        for name, value in (extra or {}).items():
            headers.setRawHeaders(name.encode("ascii"), [value.encode("utf-8")])
        return headers

    async def send(
        self, method: str, url: str, body: Optional[bytes], headers: Headers, unbuffered: bool
    ) -> Any:
        """
        Send a request; the response once its head has arrived.
        """
        try:
            return await self._client.request(
                method, url, data=body, headers=headers, unbuffered=unbuffered, reactor=self._clock
            )
        except CancelledError:
            raise
        except Exception as e:
            if _cancelled(e):
                # The agent wraps our own cancellation (a timeout) in
                # ResponseNeverReceived and friends: let it be one again.
                raise CancelledError() from e
            raise TransportError(f"{method} {url} failed: {_describe(e)}") from e

    async def read(self, method: str, url: str, response: Any) -> Reply:
        """
        Read a whole response body, at most C{max_body_bytes}.
        """
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
        return Reply(response.code, phrase, b"".join(chunks))

    def timed(
        self, work: Coroutine[Any, Any, _R], method: str, url: str, extra: float = 0.0
    ) -> "Deferred[_R]":
        """
        C{work} as a Deferred that fails with L{TransportError} after the
        request timeout (plus C{extra} seconds).
        """
        d = Deferred.fromCoroutine(work)
        if self._request_timeout is not None:
            seconds = self._request_timeout + extra

            def timed_out(result: Any, _: float) -> Any:
                if isinstance(result, Failure):
                    result.trap(CancelledError)
                    raise TransportError(f"{method} {url} timed out after {seconds:g} s")
                return result

            d.addTimeout(seconds, self._clock, onTimeoutCancel=timed_out)
        return d

    async def request(
        self,
        method: str,
        url: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        extra_timeout: float = 0.0,
    ) -> Reply:
        """
        One request with its timeout; a non-2xx answer raises L{ServerError}.
        """

        async def exchange() -> Reply:
            raw = self.headers(headers, JSON_TYPE.encode("ascii"))
            response = await self.send(method, url, body, raw, False)
            return await self.read(method, url, response)

        reply = await self.timed(exchange(), method, url, extra_timeout)
        if not 200 <= reply.status < 300:
            raise server_error(reply)
        return reply

    async def open_stream(self, url: str, accept: bytes) -> "TreqBody":
        """
        Start a streamed C{GET}: its body once a 2xx head has arrived (the
        request timeout covers only that), else L{ServerError}.
        """
        headers = self.headers(None, accept)
        response = await self.timed(self.send("GET", url, None, headers, True), "GET", url)
        if not 200 <= response.code < 300:
            reply = await self.timed(self.read("GET", url, response), "GET", url)
            raise server_error(reply)
        return TreqBody(response)


class TreqBody:
    """
    A streamed answer from treq, delivered through a L{BodyReceiver}.
    """

    def __init__(self, response: Any) -> None:
        self._response = response

    async def deliver(self, on_data: Consumer[bytes]) -> None:
        """
        Hand the body to C{on_data} as it arrives, until it ends.

        @raise StreamInterrupted: the body broke off.
        """
        receiver = BodyReceiver(on_data)
        self._response.deliverBody(receiver)
        await receiver.finished
