# -*- test-case-name: tests.test_client_protocol -*-
"""
Following a log or event stream to its end, without I/O: where a stream
resumes after a break (a log from the bytes received, events after the
last C{seq}), whether it resumes at once, after a backoff or not at all,
and how an event stream is cut into lines.

The treq client (L{execgo.client.http}) and the command line
(L{execgo.cli.follow}) each run the same loop over these decisions with
their own transport and sleep.  No Twisted here.
"""

from __future__ import annotations

from typing import Iterator, Optional

import attrs

from execgo.client.errors import MalformedResponse

__all__ = [
    "DEFAULT_STREAM_RETRIES",
    "MAX_EVENT_LINE",
    "EventCursor",
    "LineBuffer",
    "LogCursor",
    "Resumption",
    "backoff",
]

DEFAULT_STREAM_RETRIES = 5
"""
How many times in a row a broken stream may fail to make progress (or
fail to reconnect) before it fails.
"""

MAX_EVENT_LINE = 16 * 1024 * 1024
"""
The longest line of an event stream accepted, in bytes.
"""

LOG_NAMES = ("stdout", "stderr")


def backoff(failures: int) -> float:
    """
    The seconds to wait before the next attempt after C{failures} failed
    attempts in a row: 0.25 s doubling up to 2 s.
    """
    return min(0.25 * 2 ** (failures - 1), 2.0)


@attrs.define
class Resumption:
    """
    The retry decisions of one followed stream.

    The first request is not retried: a server that cannot be reached
    fails at once, like every other request.  A stream that broke off
    after some progress is resumed at once; a break without progress, or
    a failed reconnection, counts as a failure and is retried after a
    L{backoff}, at most C{retries} times in a row.

    A caller calls L{attempt} before each request, L{delivered} for each
    piece of the body, and L{refused} (no response head) or L{broke} (the
    body broke off) when the attempt failed; each of those two answers the
    seconds to wait before the next attempt (0.0: at once), or C{None} to
    give up.

    @ivar retries: failures in a row the stream survives.
    @ivar failures: the failures in a row so far.
    @ivar connected: whether some attempt got as far as its body.
    @ivar progress: whether the current attempt delivered anything.
    """

    retries: int = DEFAULT_STREAM_RETRIES
    failures: int = 0
    connected: bool = False
    progress: bool = False

    def attempt(self) -> None:
        """
        A new attempt begins.
        """
        self.progress = False

    def delivered(self) -> None:
        """
        The attempt delivered a piece of the body.
        """
        self.progress = True

    def refused(self) -> Optional[float]:
        """
        The attempt got no response head (no connection, a timeout).

        @return: the seconds to wait before the next attempt, or C{None}
            to give up (the first request, or one failure too many).
        """
        self.failures += 1
        if not self.connected or self.failures > self.retries:
            return None
        return backoff(self.failures)

    def broke(self, quiet: bool = False) -> Optional[float]:
        """
        The attempt's body broke off before its end.

        @param quiet: the break was a read timeout on a stream with nothing
            to say, which counts as progress.
        @return: 0.0 to resume at once (after progress), the seconds to
            wait before the next attempt, or C{None} to give up.
        """
        self.connected = True
        self.failures = 0 if self.progress or quiet else self.failures + 1
        if self.failures > self.retries:
            return None
        return backoff(self.failures) if self.failures else 0.0


@attrs.define
class LogCursor:
    """
    Where a log stream is: the offset after the bytes delivered, from
    which the next request resumes, so nothing is missed or seen twice.

    @ivar stream: C{"stdout"} or C{"stderr"}.
    @ivar offset: the byte offset of the next byte.
    @ivar follow: whether the stream follows the log until the task ends.
    """

    stream: str = attrs.field()
    offset: int = 0
    follow: bool = True

    @stream.validator
    def _known(self, attribute: "attrs.Attribute[str]", value: str) -> None:
        if value not in LOG_NAMES:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {value!r}")

    def advance(self, data: bytes) -> None:
        """
        C{data} was delivered.
        """
        self.offset += len(data)

    def suffix(self) -> str:
        """
        The path and query after the task's URL that read the log from
        L{offset}.
        """
        flag = "true" if self.follow else "false"
        return f"/{self.stream}?offset={self.offset}&follow={flag}"


class LineBuffer:
    """
    Cut a byte stream into complete lines; a partial line waits for its
    end.

    @param max_line: the longest partial line kept, in bytes.
    """

    def __init__(self, max_line: int = MAX_EVENT_LINE) -> None:
        self._max_line = max_line
        self._pending = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """
        Add C{data}; yield every line it completes that is not blank, with
        its newline.  Once they are all taken, a partial line longer than
        C{max_line} raises.

        @raise MalformedResponse: for a line that is too long.
        """
        self._pending.extend(data)
        while True:
            end = self._pending.find(b"\n")
            if end < 0:
                break
            line = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            if line.strip():
                yield line
        if len(self._pending) > self._max_line:
            raise MalformedResponse(f"event line longer than {self._max_line} bytes")

    def reset(self) -> None:
        """
        Drop a partial line (the stream is about to be resumed).
        """
        del self._pending[:]

    @property
    def partial(self) -> bool:
        """
        Whether bytes of an unfinished line are waiting for their end.
        """
        return bool(self._pending.strip())


@attrs.define
class EventCursor:
    """
    Where an event stream is: after the C{seq} of the last event delivered,
    from which the next request resumes; and the lines of the current
    attempt.

    @ivar after_seq: the C{seq} of the last event delivered (the caller
        sets it as it reads each line).
    @ivar lines: cuts the stream into lines.
    """

    after_seq: int = 0
    lines: LineBuffer = attrs.field(factory=LineBuffer)

    def suffix(self) -> str:
        """
        The path and query after the task's URL that follow the events
        after L{after_seq}; a partial line of the attempt before is dropped.
        """
        self.lines.reset()
        return f"/events?after_seq={self.after_seq}&follow=true"

    def ended(self) -> None:
        """
        The stream ended normally.

        @raise MalformedResponse: when it ended in the middle of a line (as
            the plain JSON array of a server without event streams does).
        """
        if self.lines.partial:
            raise MalformedResponse("the event stream ended in the middle of a line")
