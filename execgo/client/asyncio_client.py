# -*- test-case-name: tests.test_asyncio_client -*-
"""
A client of the execgo runtime's HTTP API for asyncio programs.

L{AsyncioExecgoClient} is the same client as the Twisted one
(L{execgo.client.calls.Calls}: the same methods, typed answers and
errors, the same waiting and stream resumption) on asyncio's seams: the
standard library's streams for HTTP (L{execgo.client.aio_http}), the
running loop's clock, and asyncio futures as C{txaio} makes them.  Every
method starts an asyncio C{Task} when called, to be awaited; the
C{iter_*} methods return async iterators for C{async for}.

Nothing here imports Twisted.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from typing import Any, Optional

import txaio.aio

from execgo.client.aio_http import AsyncioTransport
from execgo.client.calls import DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_TIMEOUT, Calls
from execgo.client.protocol import DEFAULT_LONG_POLL_MS
from execgo.client.resume import DEFAULT_STREAM_RETRIES

__all__ = ["AsyncioExecgoClient", "AsyncioLoop", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_REQUEST_TIMEOUT"]

class AsyncioLoop:
    """
    The L{execgo.client.calls.Loop} of the asyncio client: the running
    event loop (the one each call is made from, so a client may be built
    before the loop runs), its clock, and its futures as C{txaio} makes
    them.
    """

    @property
    def futures(self) -> Any:
        """
        C{txaio}'s API bound to the running loop.
        """
        return txaio.aio.with_config(asyncio.get_running_loop())

    def seconds(self) -> float:
        """
        The running loop's clock.
        """
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        """
        Sleep C{seconds} on the running loop.
        """
        await asyncio.sleep(seconds)


class AsyncioExecgoClient(Calls):
    """
    A client of one runtime, for an asyncio program: each method (those of
    L{Calls}) returns an asyncio C{Task}; await it.

    Its arguments are those of
    L{execgo.client.execgo_client.ExecgoClient} (C{base_url}, C{token},
    C{request_timeout}, C{max_body_bytes}, C{long_poll_ms},
    C{stream_retries}), without an HTTP client or a clock, and:

    @param ssl: the TLS context for an C{https} runtime (the system's
        default context when C{None}).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: Optional[str] = None,
        request_timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        long_poll_ms: int = DEFAULT_LONG_POLL_MS,
        stream_retries: int = DEFAULT_STREAM_RETRIES,
        ssl: Optional[_ssl.SSLContext] = None,
    ) -> None:
        transport = AsyncioTransport(token, request_timeout, max_body_bytes, ssl)
        super().__init__(base_url, transport, AsyncioLoop(), long_poll_ms, stream_retries)
