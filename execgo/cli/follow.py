# -*- test-case-name: tests.test_cli -*-
"""
Waiting and following for the synchronous CLI: the long-poll C{wait}
loop, log and event streams that resume where they broke off, and a small
runner for streams followed side by side (stdout and stderr of a task).

The decisions (how long to hold a request, when to give up, where and
when to resume a stream) are the treq client's too: they are its no-I/O
core, L{execgo.client.protocol} and L{execgo.client.resume}, driven here
with the blocking transport and sleep of L{CliEnvironment}.  Standard
library, click and those modules only (no Twisted): see L{execgo.cli.main}.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence

from execgo.cli import sync_http
from execgo.cli.core import CliEnvironment, checked, fail, task_url
from execgo.cli.output import decode_task_status
from execgo.client.errors import StreamInterrupted, TransportError
from execgo.client.protocol import LongPoll, wait_query
from execgo.client.resume import (
    DEFAULT_STREAM_RETRIES,
    EventCursor,
    LogCursor,
    Resumption,
)
from execgo.core.constants import TERMINAL_STATUSES

Sink = Callable[[bytes], None]


def wait_for_terminal(
    env: CliEnvironment,
    server: str,
    task_id: str,
    timeout_ms: Optional[int],
    poll_interval_ms: int,
    started: float,
    headers: Mapping[str, str],
) -> Dict[str, Any]:
    """
    The C{wait} algorithm (C{docs/cli.md} section 6) over long-poll
    requests, as L{LongPoll} decides: each request is C{GET
    .../tasks/{id}?wait_ms=N}, with C{N} capped by what is left of the
    timeout; after an answer the server did not hold, the loop sleeps
    C{poll_interval_ms} before asking again.  The timeout is checked only
    after a non-terminal answer.

    @param started: the C{env.monotonic()} reading the timeout counts from.
    @return: the decoded terminal status.
    @raise CliFailure: on a non-2xx answer (its body printed) or a timeout.
    """
    plan = LongPoll(started, timeout_ms, poll_interval_ms)
    url = task_url(server, task_id)
    while True:
        wait_ms = plan.wait_ms(env.monotonic())
        asked = env.monotonic()
        response = env.transport("GET", url + wait_query(wait_ms), body=None, headers=dict(headers))
        answered = env.monotonic()
        status = decode_task_status(checked(response).body)
        if status["status"] in TERMINAL_STATUSES:
            return status
        if plan.expired(env.monotonic()):
            fail("internal error", "wait timeout exceeded")
        pause = plan.pause(wait_ms, asked, answered)
        if pause is not None:
            env.sleep(pause)


def follow_stream(
    env: CliEnvironment,
    url_for: Callable[[], str],
    on_data: Sink,
    headers: Mapping[str, str],
) -> sync_http.Response:
    """
    Read one streamed response to its end, reconnecting after a break as a
    L{Resumption} decides (a read timeout on a quiet stream counts as
    progress).  C{url_for} is called before each attempt, so it can resume
    from what C{on_data} has seen.

    @return: the final response (2xx: the stream ended normally; otherwise
        with its error body, for L{checked}).
    @raise TransportError: the first request failed, or too many attempts
        in a row did.
    """
    resumption = Resumption(DEFAULT_STREAM_RETRIES)

    def deliver(data: bytes) -> None:
        resumption.delivered()
        on_data(data)

    while True:
        resumption.attempt()
        try:
            return env.stream("GET", url_for(), on_data=deliver, headers=dict(headers))
        except StreamInterrupted as e:
            delay = resumption.broke(quiet=e.timed_out)
            if delay is None:
                raise
        except TransportError:
            delay = resumption.refused()
            if delay is None:
                raise
        if delay:
            env.sleep(delay)


def follow_log(
    env: CliEnvironment,
    server: str,
    task_id: str,
    stream: str,
    offset: int,
    follow: bool,
    sink: Sink,
    headers: Mapping[str, str],
) -> sync_http.Response:
    """
    C{GET .../tasks/{id}/<stream>?offset=N&follow=true|false}, every byte
    to C{sink} as it arrives, resumed from the bytes received so far after
    a break (so nothing is missed and nothing is seen twice).

    @param stream: C{"stdout"} or C{"stderr"}.
    @return: the final response (see L{follow_stream}); the caller checks
        its status.
    """
    cursor = LogCursor(stream, offset, follow)

    def on_data(data: bytes) -> None:
        sink(data)
        cursor.advance(data)

    return follow_stream(env, lambda: task_url(server, task_id, cursor.suffix()), on_data, headers)


def follow_events(
    env: CliEnvironment,
    server: str,
    task_id: str,
    after_seq: int,
    sink: Sink,
    headers: Mapping[str, str],
) -> sync_http.Response:
    """
    C{GET .../tasks/{id}/events?after_seq=N&follow=true}: each complete
    NDJSON line to C{sink} as it arrives (verbatim, with its newline),
    resumed after the last C{seq} seen after a break.

    @raise CliFailure: (C{json error}) for a line that is not an event.
    @raise MalformedResponse: for a line too long, or a stream that ended
        in the middle of a line (reported as a C{json error} too).
    """
    cursor = EventCursor(after_seq)

    def on_data(data: bytes) -> None:
        for line in cursor.lines.feed(data):
            cursor.after_seq = _seq_of(line)
            sink(line)

    response = follow_stream(env, lambda: task_url(server, task_id, cursor.suffix()), on_data, headers)
    if 200 <= response.status < 300:
        cursor.ended()
    return response


def _seq_of(line: bytes) -> int:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError) as e:
        fail("json error", f"invalid event line: {e}")
    seq = event.get("seq") if isinstance(event, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool):
        fail("json error", "event line without an integer `seq`")
    return seq


def binary_sink(name: Literal["stdout", "stderr"]) -> Sink:
    """
    Write bytes to the process's C{stdout} or C{stderr} as they come (to
    the binary buffer under the text stream, after flushing the latter so
    that output keeps its order).
    """

    def write(data: bytes) -> None:
        stream = getattr(sys, name)
        stream.flush()
        buffer = getattr(stream, "buffer", None)
        if buffer is None:
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()
            return
        buffer.write(data)
        buffer.flush()

    return write


class _Job(threading.Thread):
    def __init__(self, function: Callable[[], Any], done: "queue.Queue[_Job]") -> None:
        super().__init__(daemon=True, name="execgo-cli-stream")
        self.function = function
        self.done = done
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self.function()
        except BaseException as e:
            self.error = e
        finally:
            self.done.put(self)


def run_parallel(
    jobs: Sequence[Callable[[], Any]], timeout: Optional[float] = None
) -> Optional[List[Any]]:
    """
    Run C{jobs} side by side, each in a daemon thread.

    @param timeout: seconds (real time) to wait for all of them, or C{None}.
    @return: their results in order; C{None} when the timeout passed first
        (the threads are abandoned).
    @raise BaseException: the first error a job raised, as soon as it does.
    """
    if len(jobs) == 1 and timeout is None:
        return [jobs[0]()]
    done: "queue.Queue[_Job]" = queue.Queue()
    threads = [_Job(job, done) for job in jobs]
    for thread in threads:
        thread.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in threads:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            finished = done.get(timeout=remaining)
        except queue.Empty:
            return None
        if finished.error is not None:
            raise finished.error
    return [thread.result for thread in threads]
