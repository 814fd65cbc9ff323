"""
Run a command on an execgo runtime and stream its output as it is
written: a small asyncio program using L{execgo.client.AsyncioExecgoClient}.

Usage::

    python examples/asyncio_run.py URL [PROGRAM [ARG ...]]

e.g. C{python examples/asyncio_run.py http://127.0.0.1:8080 /bin/ls -l /}.
Without a program it runs a short shell script that writes to both
streams.  The task's stdout and stderr go to this program's stdout and
stderr; the last line (on stdout) is the final status.  The exit status
is 0 when the task succeeded, 1 when it did not, 2 when the runtime could
not be asked.  Set C{EXECGO_TOKEN} for a runtime that wants a token.
"""

import asyncio
import os
import sys

from execgo.client import AsyncioExecgoClient, ClientError

DEMO = ["/bin/sh", "-c", "echo hello from execgo; sleep 0.2; echo a warning >&2; echo done"]


async def copy(client, task_id, name, out):
    """
    Write one of the task's logs to C{out} as it is written, until the task
    has ended and every byte is out.
    """
    async for chunk in client.iter_log(task_id, name):
        out.buffer.write(chunk)
        out.buffer.flush()


async def main(url, *argv):
    """
    Submit, stream, wait, report; the exit status.
    """
    client = AsyncioExecgoClient(url, token=os.environ.get("EXECGO_TOKEN"))
    program, *args = argv or DEMO
    try:
        submitted = await client.submit({"execution": {"kind": "command", "program": program, "args": args}})
        # Both logs side by side; a dropped connection is resumed where it
        # broke off.
        await asyncio.gather(
            copy(client, submitted.task_id, "stdout", sys.stdout),
            copy(client, submitted.task_id, "stderr", sys.stderr),
        )
        final = await client.wait(submitted.task_id)
    except ClientError as e:
        # ServerError (with the server's error code), TransportError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    error = final.error.code if final.error else "-"
    print(f"task {final.task_id}: status={final.status} exit_code={final.exit_code} error={error}")
    return 0 if final.status == "success" else 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(asyncio.run(main(*sys.argv[1:])))
