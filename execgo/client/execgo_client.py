# -*- test-case-name: tests.test_client -*-
"""
An asynchronous client of the execgo runtime's HTTP API, for other Twisted
programs.

L{ExecgoClient} is a thin layer over an injected treq C{HTTPClient} (or a
C{treq.testing.StubTreq}) and an C{IReactorTime} used for polling, backoff
and request timeouts; it never touches the global reactor.  Every method
returns a L{Deferred}, so it can be awaited from a coroutine or used with
callbacks; the C{iter_*} methods return async iterators.

It covers every endpoint: submission (with an C{Idempotency-Key}, or many
tasks in one batch), status, long-poll waiting, listing, kill, the event
log and the log streams (followed live, resumed after a dropped
connection), and the runtime-wide endpoints.  Answers are typed frozen
values (L{execgo.client.models}, L{execgo.client.views}, all re-exported
here); failures are L{ClientError}s: L{ServerError} for a non-2xx answer
(with the error envelope's code and message), L{TransportError} when no
complete answer arrived, L{MalformedResponse} for a 2xx answer that is
not what the contract says, L{WaitTimeout} when L{ExecgoClient.wait}
gives up.

The calls themselves are L{execgo.client.calls.Calls}, which the asyncio
client (L{execgo.client.asyncio_client}) shares; this module supplies
their Twisted seams: the treq transport (L{execgo.client.http}) and the
injected clock with C{txaio}'s Twisted futures (L{TwistedLoop}).

This module imports only the client's own modules, the core's models,
Twisted, treq and txaio: never the server.
"""

from __future__ import annotations

from typing import Any, Optional

import txaio.tx
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from execgo.client.calls import DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_TIMEOUT, Calls
from execgo.client.http import HTTPSession
from execgo.client.protocol import DEFAULT_LONG_POLL_MS
from execgo.client.resume import DEFAULT_STREAM_RETRIES

__all__ = ["ExecgoClient", "TwistedLoop", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_REQUEST_TIMEOUT"]

class TwistedLoop:
    """
    The L{execgo.client.calls.Loop} of the Twisted client: the injected
    clock, and Deferreds made the way C{txaio} makes them for Twisted.
    """

    futures = txaio.tx.with_config()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def seconds(self) -> float:
        """
        The clock's reading.
        """
        return self._clock.seconds()

    def sleep(self, seconds: float) -> "Deferred[None]":
        """
        A Deferred that fires after C{seconds} on the clock.
        """
        return deferLater(self._clock, seconds)


class ExecgoClient(Calls):
    """
    A client of one runtime, for a Twisted program: each method (those of
    L{Calls}) returns a L{Deferred}.

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
        transport = HTTPSession(http_client, clock, token, request_timeout, max_body_bytes)
        super().__init__(base_url, transport, TwistedLoop(clock), long_poll_ms, stream_retries)
