# -*- test-case-name: tests.test_cli -*-
"""
The task subcommands of C{execgo-runtime}: C{submit}, C{status}, C{wait},
C{kill} and C{run} (with the long-poll, C{--exit-code}, C{run --follow} and
the elapsed-time line), and C{logs}: sections 4 to 9 of C{docs/cli.md}.

Registered on the group by L{execgo.cli.main}; standard library, click and
the no-I/O modules of L{execgo.client} only.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Dict, List, Optional, Tuple

import click

from execgo.cli import sync_http
from execgo.cli.core import (
    OWNER_ENV,
    UINT,
    CliEnvironment,
    CliFailure,
    api_url,
    checked,
    echo_raw,
    fail,
    get_verbatim,
    request_headers,
    server_option,
    task_url,
)
from execgo.cli.follow import binary_sink, follow_log, run_parallel, wait_for_terminal
from execgo.cli.output import (
    elapsed_line,
    render_task_status,
    summary_line,
    task_exit_code,
)
from execgo.client.protocol import (
    BATCH_PATH,
    DEFAULT_POLL_INTERVAL_MS,
    TASKS_PATH,
    encode_request,
    owner_headers,
)
from execgo.core.protocol import JSON_TYPE

STREAMS = ("stdout", "stderr")

_poll_interval_option = click.option(
    "--poll-interval-ms",
    type=UINT,
    default=DEFAULT_POLL_INTERVAL_MS,
    show_default=True,
    metavar="N",
    help="Delay between status polls when the server does not hold long-poll requests.",
)
_exit_code_option = click.option(
    "--exit-code",
    is_flag=True,
    help="Exit with the task's own exit status instead of 0: its exit code, "
    "128+N for signal N, 1 for a timeout or a failure without either.",
)


def _request_options(command: Any) -> Any:
    """
    The options C{submit} and C{run} share (C{docs/cli.md} sections 4 and 8).
    """
    for decorator in reversed(
        (
            server_option,
            click.option(
                "--file",
                "file_path",
                metavar="PATH",
                help="Read the request JSON from this file.",
            ),
            click.option(
                "--json", "json_text", metavar="TEXT", help="The request JSON, inline."
            ),
            _poll_interval_option,
            click.option(
                "--timeout-ms",
                type=UINT,
                default=None,
                metavar="N",
                help="Give up waiting after this long (run only).",
            ),
        )
    ):
        command = decorator(command)
    return command


def load_request(file_path: Optional[str], json_text: Optional[str]) -> bytes:
    """
    Read, decode and normalise a submit request (C{docs/cli.md} section 4).

    @return: the compact JSON body to send.
    """
    from execgo.core.decoding import decode_submit

    return encode_request(decode_submit(_read_json(file_path, json_text)).to_json())


def load_batch(file_path: Optional[str], json_text: Optional[str]) -> Tuple[bytes, int]:
    """
    Read, decode and normalise a batch (C{submit --batch}): C{{"tasks":
    [...]}}, or the array of requests alone; each request as
    L{load_request} normalises one.  A request that cannot be decoded
    names its place (C{tasks[i]}).

    @return: the compact JSON body to send, and the number of tasks.
    """
    from execgo.core.decoding import decode_batch, decode_submit
    from execgo.core.errors import InvalidInput

    document = _read_json(file_path, json_text)
    items = decode_batch({"tasks": document} if isinstance(document, list) else document)
    tasks = []
    for index, item in enumerate(items):
        try:
            tasks.append(decode_submit(item).to_json())
        except InvalidInput as e:
            fail("invalid input", f"tasks[{index}]: {e.detail}")
    return encode_request({"tasks": tasks}), len(tasks)


def _read_json(file_path: Optional[str], json_text: Optional[str]) -> Any:
    """
    The JSON document of C{--file} or C{--json} (exactly one of them).
    """
    if file_path is not None and json_text is not None:
        raise click.UsageError("--file and --json cannot be used together")
    if file_path is None and json_text is None:
        raise click.UsageError("exactly one of --file or --json is required")

    from execgo.core.errors import InvalidInput, PayloadTooLarge
    from execgo.core.strictjson import parse_json_body

    if file_path is not None:
        try:
            with open(file_path, "rb") as f:
                raw = f.read()
        except OSError as e:
            fail("io error", f"{e.strerror or e}: {file_path}")
    else:
        assert json_text is not None
        raw = json_text.encode("utf-8", "surrogateescape")
    try:
        return parse_json_body(raw)
    except PayloadTooLarge as e:
        raise CliFailure.from_error(e) from None
    except InvalidInput as e:
        fail("json error", e.detail)


def _submit(env: CliEnvironment, server: str, body: bytes, path: str = TASKS_PATH) -> sync_http.Response:
    """
    C{POST} the normalised request (to C{path}); return the 2xx response
    or fail.
    """
    return checked(
        env.transport(
            "POST",
            api_url(server, path),
            body=body,
            headers=request_headers({"Content-Type": JSON_TYPE}),
        )
    )


def _refused(body: bytes) -> int:
    """
    How many results of a batch's answer are not C{200}.
    """
    try:
        results = json.loads(body)["results"]
        return sum(1 for result in results if result["http_status"] != 200)
    except (ValueError, TypeError, KeyError):
        fail("internal error", "the server's answer to the batch is not a batch answer")


def _finish(
    env: CliEnvironment, status: Dict[str, Any], exit_code: bool, since: float
) -> None:
    """
    The end of C{wait} and C{run}: the elapsed time on stderr when it is a
    terminal, then the exit status (C{--exit-code}, else 0).
    """
    if env.stderr_isatty():
        click.echo(elapsed_line(env.monotonic() - since), err=True)
    if exit_code:
        code = task_exit_code(status)
        if code:
            click.get_current_context().exit(code)


def _stream_jobs(
    env: CliEnvironment,
    server: str,
    task_id: str,
    streams: Tuple[str, ...],
    offset: int,
    follow: bool,
) -> List[Callable[[], sync_http.Response]]:
    """
    One job per log in C{streams}, each copying that log to the stream of
    the same name (headers taken here, in the command's thread).
    """
    headers = request_headers(accept="*/*")
    return [
        functools.partial(
            follow_log,
            env,
            server,
            task_id,
            name,
            offset,
            follow,
            binary_sink("stdout" if name == "stdout" else "stderr"),
            headers,
        )
        for name in streams
    ]


@click.command()
@_request_options
@click.option(
    "--batch",
    is_flag=True,
    help='The request is a batch, {"tasks": [...]} or an array of requests, '
    "sent to /api/v1/tasks/batch; exit 1 unless every task is accepted.",
)
@click.pass_obj
def submit(
    env: CliEnvironment,
    server: str,
    file_path: Optional[str],
    json_text: Optional[str],
    poll_interval_ms: int,
    timeout_ms: Optional[int],
    batch: bool,
) -> None:
    """
    Submit a task (or, with --batch, many); print the server's answer.

    Exactly one of --file or --json is required. The request is decoded and
    normalised locally, then POSTed to /api/v1/tasks (/api/v1/tasks/batch).
    --poll-interval-ms and --timeout-ms are accepted for symmetry with run
    and ignored.
    """
    if not batch:
        echo_raw(_submit(env, server, load_request(file_path, json_text)).body)
        return
    body, count = load_batch(file_path, json_text)
    answer = _submit(env, server, body, BATCH_PATH).body
    echo_raw(answer)
    refused = _refused(answer)
    if refused:
        fail("refused", f"{refused} of {count} tasks were not accepted")


@click.command()
@server_option
@click.argument("task_id")
@click.pass_obj
def status(env: CliEnvironment, server: str, task_id: str) -> None:
    """
    Print the status of task TASK_ID as the server returns it.
    """
    get_verbatim(env, task_url(server, task_id))


@click.command()
@server_option
@click.option(
    "--timeout-ms",
    type=UINT,
    default=None,
    metavar="N",
    help="Give up after this long (no limit by default).",
)
@_poll_interval_option
@_exit_code_option
@click.argument("task_id")
@click.pass_obj
def wait(
    env: CliEnvironment,
    server: str,
    timeout_ms: Optional[int],
    poll_interval_ms: int,
    exit_code: bool,
    task_id: str,
) -> None:
    """
    Wait until task TASK_ID is terminal; print its final status.

    Long-polls the server (falling back to polling every --poll-interval-ms
    on a server that does not hold requests). Exits 0 for any terminal
    status (success, failed or cancelled): read "status" and "error.code"
    from the output, or use --exit-code.
    """
    started = env.monotonic()
    final = wait_for_terminal(
        env, server, task_id, timeout_ms, poll_interval_ms, started, request_headers()
    )
    click.echo(render_task_status(final), nl=False)
    _finish(env, final, exit_code, started)


@click.command()
@server_option
@click.option(
    "--owner",
    envvar=OWNER_ENV,
    show_envvar=True,
    metavar="OWNER",
    help="Send this owner in the x-execgo-owner header (trimmed; blank sends none).",
)
@click.argument("task_id")
@click.pass_obj
def kill(env: CliEnvironment, server: str, owner: Optional[str], task_id: str) -> None:
    """
    Request cancellation of task TASK_ID; print the server's answer.

    Does not wait for the task to become cancelled.
    """
    response = env.transport(
        "POST", task_url(server, task_id, "/kill"), body=b"", headers=request_headers(owner_headers(owner))
    )
    echo_raw(checked(response).body)


@click.command()
@_request_options
@_exit_code_option
@click.option(
    "--follow",
    is_flag=True,
    help="Stream the task's stdout and stderr live, then write a one-line "
    "summary on stderr instead of printing the final status.",
)
@click.pass_obj
def run(
    env: CliEnvironment,
    server: str,
    file_path: Optional[str],
    json_text: Optional[str],
    poll_interval_ms: int,
    timeout_ms: Optional[int],
    exit_code: bool,
    follow: bool,
) -> None:
    """
    Submit a task, wait until it is terminal and print its final status.

    Exactly one of --file or --json is required. Exits 0 for any terminal
    status: read "status" and "error.code" from the output, or use
    --exit-code. With --follow, stdout and stderr carry the task's own
    output as it is written, and a summary line ends stderr.
    """
    command_started = env.monotonic()
    body = load_request(file_path, json_text)
    response = _submit(env, server, body)
    try:
        answer = json.loads(response.body)
    except ValueError as e:
        fail("json error", str(e))
    task_id = answer.get("task_id") if isinstance(answer, dict) else None
    if not isinstance(task_id, str):
        fail("json error", "missing field `task_id` in the submit response")
    started = env.monotonic()
    if follow:
        jobs = _stream_jobs(env, server, task_id, STREAMS, 0, True)
        results = run_parallel(jobs, None if timeout_ms is None else timeout_ms / 1000.0)
        if results is None:
            fail("internal error", "wait timeout exceeded")
        for result in results:
            checked(result)
    final = wait_for_terminal(
        env, server, task_id, timeout_ms, poll_interval_ms, started, request_headers()
    )
    if follow:
        click.echo(summary_line(final), err=True)
    else:
        click.echo(render_task_status(final), nl=False)
    _finish(env, final, exit_code, command_started)


@click.command()
@server_option
@click.option(
    "--stream",
    type=click.Choice(["stdout", "stderr", "both"]),
    default="both",
    show_default=True,
    help="Which log to print: stdout goes to stdout, stderr to stderr.",
)
@click.option(
    "--offset",
    type=UINT,
    default=0,
    show_default=True,
    metavar="N",
    help="Start at byte N of each log.",
)
@click.option(
    "-f",
    "--follow",
    is_flag=True,
    help="Keep printing output as it is written; return once the task has "
    "ended and all of it is out.",
)
@click.argument("task_id")
@click.pass_obj
def logs(
    env: CliEnvironment, server: str, stream: str, offset: int, follow: bool, task_id: str
) -> None:
    """
    Print the output of task TASK_ID: its stdout on stdout, its stderr on
    stderr, byte for byte.

    Without --follow, prints what has been written so far. The whole log is
    printed, not only the preview the status carries.
    """
    streams = STREAMS if stream == "both" else (stream,)
    jobs = _stream_jobs(env, server, task_id, streams, offset, follow)
    if follow:
        results = run_parallel(jobs) or []
        for result in results:
            checked(result)
    else:
        for job in jobs:
            checked(job())


def register(group: click.Group) -> None:
    """
    Add this module's subcommands to C{group}.
    """
    for command in (submit, status, wait, kill, run, logs):
        group.add_command(command)
