# -*- test-case-name: tests.test_cli -*-
"""
Waiting and following for the synchronous CLI: the long-poll C{wait}
loop, log and event streams that resume where they broke off, and a small
runner for streams followed side by side (stdout and stderr of a task).

Standard library and click only (no Twisted): see L{execgo.cli.main}.
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
from execgo.cli.output import TERMINAL, decode_task_status

LONG_POLL_MS = 30_000
"""
The C{wait_ms} of one long-poll request (well under the transport's 60 s
read timeout and the usual 60 s of a reverse proxy).
"""

MAX_STREAM_FAILURES = 5
"""
How many times in a row a broken stream may fail to make progress (or
fail to reconnect) before the command gives up.
"""

MAX_EVENT_LINE = 16 * 1024 * 1024

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
    The C{wait} algorithm (C{docs/cli.md} section 6) over long-poll requests.

    Each request is C{GET .../tasks/{id}?wait_ms=N} with C{N} the long-poll
    time capped by what is left of the timeout, so the command returns near
    its timeout.  A server that answers a non-terminal status well before
    C{N} ms did not hold the request (a server without long-poll ignores
    the parameter): the loop then sleeps C{poll_interval_ms} before asking
    again.  The timeout is checked only after a non-terminal answer, as
    before.

    @param started: the C{env.monotonic()} reading the timeout counts from.
    @return: the decoded terminal status.
    @raise CliFailure: on a non-2xx answer (its body printed) or a timeout.
    """
    url = task_url(server, task_id)
    while True:
        wait_ms = LONG_POLL_MS
        if timeout_ms is not None:
            remaining = timeout_ms - (env.monotonic() - started) * 1000.0
            wait_ms = max(0, min(wait_ms, int(remaining)))
        before = env.monotonic()
        response = env.transport("GET", f"{url}?wait_ms={wait_ms}", body=None, headers=dict(headers))
        held_ms = (env.monotonic() - before) * 1000.0
        status = decode_task_status(checked(response).body)
        if status["status"] in TERMINAL:
            return status
        if timeout_ms is not None and (env.monotonic() - started) * 1000.0 >= timeout_ms:
            fail("internal error", "wait timeout exceeded")
        if wait_ms == 0 or held_ms < wait_ms / 2:
            env.sleep(poll_interval_ms / 1000.0)


def _backoff(failures: int) -> float:
    return min(0.25 * 2 ** (failures - 1), 2.0)


def follow_stream(
    env: CliEnvironment,
    url_for: Callable[[], str],
    on_data: Sink,
    headers: Mapping[str, str],
) -> sync_http.Response:
    """
    Read one streamed response to its end, reconnecting after a break.

    C{url_for} is called before each attempt, so it can resume from what
    C{on_data} has seen.  A stream that broke off is resumed at once; a
    reconnection that fails, or a break with no byte received (other than
    a read timeout on a quiet stream), counts as a failure and is retried
    after a short backoff, at most L{MAX_STREAM_FAILURES} times in a row.
    The first request is not retried: a server that cannot be reached
    fails the command at once, like every other request.

    @return: the final response (2xx: the stream ended normally; otherwise
        with its error body, for L{checked}).
    @raise sync_http.TransportError: the first request failed, or too
        many attempts in a row did.
    """
    failures = 0
    connected = False
    while True:
        progress = False

        def deliver(data: bytes) -> None:
            nonlocal progress
            progress = True
            on_data(data)

        try:
            return env.stream("GET", url_for(), on_data=deliver, headers=dict(headers))
        except sync_http.StreamInterrupted as e:
            connected = True
            failures = 0 if progress or e.timed_out else failures + 1
            if failures > MAX_STREAM_FAILURES:
                raise
        except sync_http.TransportError:
            if not connected:
                raise
            failures += 1
            if failures > MAX_STREAM_FAILURES:
                raise
        if failures:
            env.sleep(_backoff(failures))


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
    position = offset
    flag = "true" if follow else "false"

    def on_data(data: bytes) -> None:
        nonlocal position
        sink(data)
        position += len(data)

    def url() -> str:
        return task_url(server, task_id, f"/{stream}?offset={position}&follow={flag}")

    return follow_stream(env, url, on_data, headers)


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
    """
    last = after_seq
    pending = bytearray()

    def on_data(data: bytes) -> None:
        nonlocal last
        pending.extend(data)
        while True:
            end = pending.find(b"\n")
            if end < 0:
                break
            line = bytes(pending[: end + 1])
            del pending[: end + 1]
            if not line.strip():
                continue
            last = _seq_of(line)
            sink(line)
        if len(pending) > MAX_EVENT_LINE:
            fail("json error", f"event line longer than {MAX_EVENT_LINE} bytes")

    def url() -> str:
        pending.clear()
        return task_url(server, task_id, f"/events?after_seq={last}&follow=true")

    response = follow_stream(env, url, on_data, headers)
    if 200 <= response.status < 300 and pending.strip():
        # A server without event streams answers the plain JSON array.
        fail("json error", "the event stream ended in the middle of a line")
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
