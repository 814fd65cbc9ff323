# -*- test-case-name: tests.test_client -*-
"""
The errors of the runtime's clients: L{ClientError} and its kinds, raised
by the treq client (L{execgo.client.ExecgoClient}) and by the command
line's synchronous transport alike, so both report a failure the same way.
No Twisted here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from execgo.client.models import TaskStatus

__all__ = [
    "ClientError",
    "MalformedResponse",
    "ServerError",
    "StreamInterrupted",
    "TransportError",
    "WaitTimeout",
]


class ClientError(Exception):
    """
    Root of every failure reported by a client of the runtime.
    """


class TransportError(ClientError):
    """
    No complete response arrived: the connection failed, the request timed
    out, the URL was unusable, the body was larger than the client accepts,
    or a stream broke off more often than the client retries.

    @ivar message: a one-line description (what C{str} gives too).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StreamInterrupted(TransportError):
    """
    A streamed 2xx body broke off before its end, after its head arrived
    (the connection was lost or reset, or a read timed out): the caller may
    resume it.

    @ivar timed_out: C{True} when nothing arrived for the read timeout (a
        quiet stream), C{False} when the connection failed.
    """

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


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
    L{execgo.client.ExecgoClient.wait} saw no terminal status within its
    timeout.

    @ivar task_id: the task waited for.
    @ivar last_status: the last (non-terminal) status seen.
    """

    def __init__(self, task_id: str, last_status: "TaskStatus") -> None:
        super().__init__(f"wait timeout exceeded for task {task_id}")
        self.task_id = task_id
        self.last_status = last_status
