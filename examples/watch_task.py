"""
Submit a task to an execgo runtime, stream its output as it is written, and
print its final status: a small Twisted program using L{execgo.client}.

Usage::

    python examples/watch_task.py URL [PROGRAM [ARG ...]]

e.g. C{python examples/watch_task.py http://127.0.0.1:8080 /bin/ls -l /}.
Without a program it runs a short shell script that writes to both
streams.  The task's stdout and stderr go to this program's stdout and
stderr; the last line (on stdout) is the final status.  The exit status
is 0 when the task succeeded, 1 when it did not, 2 when the runtime could
not be asked.
"""

import sys

from treq.client import HTTPClient
from twisted.internet import defer, task
from twisted.web.client import Agent, HTTPConnectionPool

from execgo.client import ClientError, ExecgoClient

DEMO = ["/bin/sh", "-c", "echo hello from execgo; sleep 0.2; echo a warning >&2; echo done"]


def writer(stream):
    """
    A callback writing each chunk to C{stream}'s binary buffer at once.
    """

    def write(data):
        stream.buffer.write(data)
        stream.buffer.flush()

    return write


async def main(reactor, url, *argv):
    """
    Submit, stream, wait, report; exit 1 unless the task succeeded.
    """
    pool = HTTPConnectionPool(reactor)
    client = ExecgoClient(url, HTTPClient(Agent(reactor, pool=pool)), reactor)
    program, *args = argv or DEMO
    try:
        submitted = await client.submit(
            {"execution": {"kind": "command", "program": program, "args": args}}
        )
        # Both logs side by side, each until the task has ended and every
        # byte is out; a dropped connection is resumed where it broke off.
        streams = defer.gatherResults(
            [
                client.stream_log(submitted.task_id, "stdout", on_chunk=writer(sys.stdout)),
                client.stream_log(submitted.task_id, "stderr", on_chunk=writer(sys.stderr)),
            ],
            consumeErrors=True,
        )
        await streams.addErrback(lambda failure: failure.value.subFailure)  # the first error
        final = await client.wait(submitted.task_id)
    except ClientError as e:
        # ServerError (with the server's error code), TransportError, ...
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        await pool.closeCachedConnections()
    error = final.error.code if final.error else "-"
    print(f"task {final.task_id}: status={final.status} exit_code={final.exit_code} error={error}")
    if final.status != "success":
        raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
