# -*- test-case-name: tests.test_cli -*-
"""
The C{execgo-runtime} command line (C{cli.md}).

The client subcommands (C{submit}, C{status}, C{wait}, C{kill}, C{run}) are
thin, synchronous HTTP clients: this module imports neither Twisted nor treq,
and imports L{execgo.validation} only when a request has to be decoded, so a
C{status} call starts and ends in a few tens of milliseconds.  C{serve} and
the hidden supervisor subcommands live in C{execgo.cli_server}, which
registers itself on L{cli} when it exists.

This is the only place where errors become exit codes and messages: usage
errors exit 2 with click's message; every runtime failure exits 1 with one
C{<category>: <detail>} line on stderr (L{CliFailure}), never a traceback.
"""

from __future__ import annotations

import importlib
import json
import re
import time
from http import HTTPStatus
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

import attrs
import click

from execgo import __version__, httpclient
from execgo.errors import ExecgoError

PROG_NAME = "execgo-runtime"
DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_POLL_INTERVAL_MS = 500
OWNER_HEADER = "x-execgo-owner"
OWNER_ENV = "EXECGO_RUNTIME_OWNER"
TASKS_PATH = "/api/v1/tasks"

_UINT_MAX = 2**64 - 1
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_TERMINAL = frozenset({"success", "failed", "cancelled"})
_STATUSES = frozenset({"accepted", "running"}) | _TERMINAL
_COMMAND_ORDER = ("serve", "submit", "status", "wait", "kill", "run")

# hyper's canonical reason phrases where Python's differ (or changed in 3.13).
_REASON_OVERRIDES = {
    413: "Payload Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Entity",
}


class CliFailure(click.ClickException):
    """
    A runtime failure: exit status 1 and one C{<category>: <detail>} line on
    stderr.

    @ivar category: the message category, e.g. C{"http error"}.
    @ivar detail: what went wrong, on one line.
    """

    exit_code = 1

    def __init__(self, category: str, detail: str) -> None:
        detail = " ".join(str(detail).split("\n")).replace("\r", " ")
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail

    @classmethod
    def from_error(cls, error: ExecgoError) -> "CliFailure":
        """
        The failure that reports a runtime L{ExecgoError} with its own prefix.
        """
        if error.prefix:
            return cls(error.prefix, error.detail)
        return cls("internal error", error.message)

    def show(self, file: Any = None) -> None:
        """
        Write the one-line message to stderr (no C{Error:} decoration).
        """
        click.echo(self.format_message(), err=True)


def fail(category: str, detail: str) -> NoReturn:
    """
    Stop the command with exit status 1 and the line C{<category>: <detail>}.

    @raise CliFailure: always.
    """
    raise CliFailure(category, detail)


class StrictBool(click.types.BoolParamType):
    """
    A boolean that is exactly C{true} or C{false} when given as text.

    Used with C{is_flag=True} and an C{envvar}: the flag on the command line
    means C{True}; the variable (read only when the flag is absent) must be
    C{true} or C{false}, anything else is a usage error.  An empty variable
    counts as absent (click's rule).
    """

    name = "true|false"

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> bool:
        """
        Accept a C{bool}, or exactly C{"true"} / C{"false"}.
        """
        if isinstance(value, bool):
            return value
        if value == "true":
            return True
        if value == "false":
            return False
        self.fail(f"{value!r} is not 'true' or 'false'", param, ctx)


STRICT_BOOL = StrictBool()


class UnsignedInt(click.ParamType):
    """
    A non-negative decimal integer that fits in 64 bits: digits only (no sign,
    no C{_}, no whitespace).
    """

    name = "uint"

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> int:
        """
        Parse C{value}, or fail with a usage error.
        """
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"[0-9]+", value, re.ASCII):
            number = int(value)
        else:
            self.fail(f"{value!r} is not a non-negative decimal integer", param, ctx)
        if number > _UINT_MAX:
            self.fail(f"{value!r} is too large (maximum {_UINT_MAX})", param, ctx)
        return number


UINT = UnsignedInt()


def env_flag(*param_decls: str, envvar: str, help: str) -> Callable[[Any], Any]:
    """
    A boolean flag option with a strict C{true}/C{false} environment variable.

    @param param_decls: the option names, e.g. C{"--disable-cgroup"}.
    @param envvar: the variable read when the flag is absent.
    @param help: the help text.
    """
    return click.option(
        *param_decls,
        is_flag=True,
        default=False,
        type=STRICT_BOOL,
        envvar=envvar,
        show_envvar=True,
        help=help,
    )


Transport = Callable[..., httpclient.Response]


@attrs.frozen
class CliEnvironment:
    """
    What the client subcommands use from the outside world; tests replace it
    through C{CliRunner.invoke(cli, ..., obj=CliEnvironment(...))}.

    @ivar transport: called as C{transport(method, url, body=..., headers=...)}
        and returns an L{httpclient.Response} or raises
        L{httpclient.TransportError}.
    @ivar monotonic: seconds on a monotonic clock.
    @ivar sleep: blocks for the given number of seconds.
    """

    transport: Transport = httpclient.request
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


class _Group(click.Group):
    """
    The top-level group: commands listed in C{cli.md} order, and every
    unexpected error turned into one C{<category>: <detail>} line.
    """

    def list_commands(self, ctx: click.Context) -> List[str]:
        """
        Known subcommands in contract order, then any others by name.
        """
        names = [name for name in _COMMAND_ORDER if name in self.commands]
        return names + sorted(set(self.commands) - set(names))

    def invoke(self, ctx: click.Context) -> Any:
        """
        Run the subcommand; map whatever escapes it to a L{CliFailure}.
        """
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ExecgoError as e:
            raise CliFailure.from_error(e) from None
        except httpclient.TransportError as e:
            raise CliFailure("http error", e.message) from None
        except OSError as e:
            raise CliFailure("io error", e.strerror or str(e)) from None
        except Exception as e:
            raise CliFailure("internal error", f"{type(e).__name__}: {e}") from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(
    __version__,
    "-V",
    "--version",
    prog_name=PROG_NAME,
    message="%(prog)s %(version)s",
    help="Print the version and exit.",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """
    ExecGo runtime: a durable task-execution server for one host, and a
    thin HTTP client for it.
    """
    ctx.ensure_object(CliEnvironment)


# -- shared pieces of the client subcommands ---------------------------------

TOKEN_ENV = "EXECGO_RUNTIME_TOKEN"
_TOKEN_KEY = "execgo.token"


def _remember_token(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> None:
    if value is not None and value.strip():
        ctx.meta[_TOKEN_KEY] = value.strip()


_server_url_option = click.option(
    "--server",
    default=DEFAULT_SERVER,
    show_default=True,
    metavar="URL",
    help="Root URL of the runtime (http:// or https://); trailing '/' is ignored.",
)
_token_option = click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    metavar="TOKEN",
    expose_value=False,
    callback=_remember_token,
    help="Bearer token, for a server started with --auth-token-file.",
)


def _server_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """
    C{--server} and C{--token}, which every client subcommand takes.
    """
    return _server_url_option(_token_option(command))


def _request_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """
    The options C{submit} and C{run} share (C{cli.md} sections 4 and 8).
    """
    for decorator in reversed(
        (
            _server_option,
            click.option(
                "--file",
                "file_path",
                metavar="PATH",
                help="Read the request JSON from this file.",
            ),
            click.option(
                "--json", "json_text", metavar="TEXT", help="The request JSON, inline."
            ),
            click.option(
                "--poll-interval-ms",
                type=UINT,
                default=DEFAULT_POLL_INTERVAL_MS,
                show_default=True,
                metavar="N",
                help="Delay between status polls (run only).",
            ),
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


def _api_url(server: str, path: str) -> str:
    """
    C{server} with every trailing C{/} stripped, then C{path}.
    """
    return server.rstrip("/") + path


def _task_url(server: str, task_id: str, suffix: str = "") -> str:
    """
    The URL of one task; the id is inserted as given.
    """
    return _api_url(server, f"{TASKS_PATH}/{task_id}{suffix}")


def _headers(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    headers = {"User-Agent": f"{PROG_NAME}/{__version__}", "Accept": "application/json"}
    ctx = click.get_current_context(silent=True)
    token = None if ctx is None else ctx.meta.get(_TOKEN_KEY)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra or {})
    return headers


def _reason(status: int, reason: str) -> str:
    """
    The canonical reason phrase of C{status}, as the contract prints it.
    """
    if status in _REASON_OVERRIDES:
        return _REASON_OVERRIDES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return reason or "<unknown status code>"


def _echo_raw(body: bytes) -> None:
    """
    The response body exactly as received, then a newline, on stdout.
    """
    click.echo(body)


def _checked(response: httpclient.Response) -> httpclient.Response:
    """
    Return a 2xx response; otherwise print its body and fail.
    """
    if 200 <= response.status < 300:
        return response
    _echo_raw(response.body)
    fail(
        "internal error",
        f"request failed with status {response.status} "
        f"{_reason(response.status, response.reason)}",
    )


def _load_request(file_path: Optional[str], json_text: Optional[str]) -> bytes:
    """
    Read, decode and normalise a submit request (C{cli.md} section 4).

    @return: the compact JSON body to send.
    """
    if file_path is not None and json_text is not None:
        raise click.UsageError("--file and --json cannot be used together")
    if file_path is None and json_text is None:
        raise click.UsageError("exactly one of --file or --json is required")

    from execgo import validation
    from execgo.errors import InvalidInput, PayloadTooLarge

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
        document = validation.parse_json_body(raw)
    except PayloadTooLarge as e:
        raise CliFailure.from_error(e) from None
    except InvalidInput as e:
        fail("json error", e.detail)
    request = validation.decode_submit(document)
    wire = request.to_json()
    try:
        return json.dumps(wire, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate escape in a string: keep it escaped as it came.
        return json.dumps(wire, separators=(",", ":")).encode("ascii")


def _submit(env: CliEnvironment, server: str, body: bytes) -> httpclient.Response:
    """
    C{POST} the normalised request; return the 2xx response or fail.
    """
    return _checked(
        env.transport(
            "POST",
            _api_url(server, TASKS_PATH),
            body=body,
            headers=_headers({"Content-Type": "application/json"}),
        )
    )


# -- the task status object, for wait/run output ------------------------------

_S, _B, _U, _I, _ANY, _MAP, _LIST = "string", "bool", "uint", "int32", "any", "map", "list"
_Schema = Tuple[Tuple[str, Any, bool], ...]

_NAMESPACES: _Schema = tuple((name, _B, False) for name in ("mount", "pid", "uts", "ipc", "net"))
_SANDBOX: _Schema = (
    ("profile", _S, True),
    ("workspace_subdir", _S, False),
    ("rootfs", _S, False),
    ("chroot", _B, True),
    ("namespaces", _NAMESPACES, False),
)
_ENFORCEMENT: _Schema = (
    ("wall_time_ms", _U, True),
    ("cpu_time_sec", _U, False),
    ("cpu_time_enforced", _B, True),
    ("memory_bytes", _U, False),
    ("memory_enforced", _B, True),
    ("pids_max", _U, False),
    ("pids_enforced", _B, True),
    ("cgroup_enforced", _B, True),
    ("oom_detection", _B, True),
)
_PLAN: _Schema = (
    ("capability_mode", _S, True),
    ("requested_sandbox", _SANDBOX, True),
    ("effective_sandbox", _SANDBOX, True),
    ("resource_enforcement", _ENFORCEMENT, True),
    ("degraded", _B, True),
    ("fallback_reasons", _LIST, False),
    ("capability_warnings", _LIST, False),
)
_ERROR: _Schema = (("code", _S, True), ("message", _S, True), ("details", _ANY, False))
_USAGE: _Schema = (
    ("duration_ms", _U, True),
    ("user_cpu_ms", _U, False),
    ("system_cpu_ms", _U, False),
    ("max_rss_bytes", _U, False),
    ("memory_peak_bytes", _U, False),
)
_RESERVATION: _Schema = (
    ("task_slots", _U, True),
    ("memory_bytes", _U, False),
    ("pids", _U, False),
)
_ARTIFACTS: _Schema = (
    ("task_dir", _S, True),
    ("request_path", _S, True),
    ("result_path", _S, True),
    ("stdout_path", _S, True),
    ("stderr_path", _S, True),
    ("script_path", _S, False),
)
TASK_STATUS_SCHEMA: _Schema = (
    ("task_id", _S, True),
    ("handle_id", _S, True),
    ("status", _S, True),
    ("created_at", _S, True),
    ("updated_at", _S, True),
    ("started_at", _S, False),
    ("finished_at", _S, False),
    ("duration_ms", _U, False),
    ("shim_pid", _U, False),
    ("pid", _U, False),
    ("pgid", _I, False),
    ("exit_code", _I, False),
    ("exit_signal", _I, False),
    ("stdout", _S, True),
    ("stderr", _S, True),
    ("stdout_truncated", _B, True),
    ("stderr_truncated", _B, True),
    ("error", _ERROR, False),
    ("usage", _USAGE, False),
    ("execution_plan", _PLAN, False),
    ("reservation", _RESERVATION, False),
    ("artifacts", _ARTIFACTS, True),
    ("metadata", _MAP, False),
)
"""
The C{TaskStatusResponse} of C{api.md} section 4.1: C{(key, kind, required)}
in wire order, where C{kind} is a scalar kind or a nested schema.
"""


class _Malformed(Exception):
    """
    The body is not a task status object.
    """


def _normalise_value(kind: Any, value: Any, where: str) -> Any:
    if isinstance(kind, tuple):
        return _normalise_object(kind, value, where)
    if kind == _ANY:
        return value
    if kind == _S:
        ok = isinstance(value, str)
    elif kind == _B:
        ok = isinstance(value, bool)
    elif kind in (_U, _I):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and kind == _U:
            ok = 0 <= value <= _UINT_MAX
        elif ok:
            ok = _INT32_MIN <= value <= _INT32_MAX
    elif kind == _LIST:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # _MAP
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        if ok:
            value = {key: value[key] for key in sorted(value)}
    if not ok:
        raise _Malformed(f"invalid value for `{where}`: expected {kind}")
    return value


def _normalise_object(schema: _Schema, value: Any, where: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise _Malformed(f"invalid type for `{where or 'body'}`: expected an object")
    out: Dict[str, Any] = {}
    for key, kind, required in schema:
        path = f"{where}.{key}" if where else key
        item = value.get(key)
        if item is None:
            if required:
                raise _Malformed(f"missing field `{path}`")
            continue
        item = _normalise_value(kind, item, path)
        if kind in (_LIST, _MAP) and not item:
            continue
        out[key] = item
    return out


def decode_task_status(body: bytes) -> Dict[str, Any]:
    """
    Decode a C{TaskStatusResponse}: keys in C{api.md} order at every level,
    unknown keys and nulls dropped, string maps sorted, empty optional lists
    and maps left out.

    @raise CliFailure: (C{json error}) when the body is not such an object.
    """
    try:
        document = json.loads(body)
        status = _normalise_object(TASK_STATUS_SCHEMA, document, "")
    except (ValueError, _Malformed) as e:
        fail("json error", str(e))
    if status["status"] not in _STATUSES:
        fail("json error", f"unknown task status {status['status']!r}")
    return status


def render_task_status(status: Dict[str, Any]) -> bytes:
    """
    Pretty JSON (2-space indentation, raw UTF-8) plus a newline.
    """
    text = json.dumps(status, indent=2, ensure_ascii=False)
    return text.encode("utf-8", "replace") + b"\n"


def _wait(
    env: CliEnvironment,
    server: str,
    task_id: str,
    timeout_ms: Optional[int],
    poll_interval_ms: int,
    started: float,
) -> None:
    """
    The polling algorithm of C{cli.md} section 6; prints the terminal status.
    """
    url = _task_url(server, task_id)
    while True:
        response = _checked(env.transport("GET", url, body=None, headers=_headers()))
        status = decode_task_status(response.body)
        if status["status"] in _TERMINAL:
            click.echo(render_task_status(status), nl=False)
            return
        if timeout_ms is not None and (env.monotonic() - started) * 1000.0 >= timeout_ms:
            fail("internal error", "wait timeout exceeded")
        env.sleep(poll_interval_ms / 1000.0)


# -- the client subcommands ----------------------------------------------------


@cli.command()
@_request_options
@click.pass_obj
def submit(
    env: CliEnvironment,
    server: str,
    file_path: Optional[str],
    json_text: Optional[str],
    poll_interval_ms: int,
    timeout_ms: Optional[int],
) -> None:
    """
    Submit a task; print the server's answer.

    Exactly one of --file or --json is required. The request is decoded and
    normalised locally, then POSTed to /api/v1/tasks. --poll-interval-ms and
    --timeout-ms are accepted for symmetry with run and ignored.
    """
    body = _load_request(file_path, json_text)
    _echo_raw(_submit(env, server, body).body)


@cli.command()
@_server_option
@click.argument("task_id")
@click.pass_obj
def status(env: CliEnvironment, server: str, task_id: str) -> None:
    """
    Print the status of task TASK_ID as the server returns it.
    """
    response = env.transport("GET", _task_url(server, task_id), body=None, headers=_headers())
    _echo_raw(_checked(response).body)


@cli.command()
@_server_option
@click.option(
    "--timeout-ms",
    type=UINT,
    default=None,
    metavar="N",
    help="Give up after this long (no limit by default).",
)
@click.option(
    "--poll-interval-ms",
    type=UINT,
    default=DEFAULT_POLL_INTERVAL_MS,
    show_default=True,
    metavar="N",
    help="Delay between status polls.",
)
@click.argument("task_id")
@click.pass_obj
def wait(
    env: CliEnvironment,
    server: str,
    timeout_ms: Optional[int],
    poll_interval_ms: int,
    task_id: str,
) -> None:
    """
    Poll task TASK_ID until it is terminal; print its final status.

    Exits 0 for any terminal status (success, failed or cancelled): read
    "status" and "error.code" from the output.
    """
    started = env.monotonic()
    _wait(env, server, task_id, timeout_ms, poll_interval_ms, started)


@cli.command()
@_server_option
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
    extra = {}
    owner = (owner or "").strip()
    if owner:
        extra[OWNER_HEADER] = owner
    response = env.transport(
        "POST", _task_url(server, task_id, "/kill"), body=b"", headers=_headers(extra)
    )
    _echo_raw(_checked(response).body)


@cli.command()
@_request_options
@click.pass_obj
def run(
    env: CliEnvironment,
    server: str,
    file_path: Optional[str],
    json_text: Optional[str],
    poll_interval_ms: int,
    timeout_ms: Optional[int],
) -> None:
    """
    Submit a task, wait until it is terminal and print its final status.

    Exactly one of --file or --json is required. Exits 0 for any terminal
    status: read "status" and "error.code" from the output.
    """
    body = _load_request(file_path, json_text)
    response = _submit(env, server, body)
    try:
        answer = json.loads(response.body)
    except ValueError as e:
        fail("json error", str(e))
    task_id = answer.get("task_id") if isinstance(answer, dict) else None
    if not isinstance(task_id, str):
        fail("json error", "missing field `task_id` in the submit response")
    started = env.monotonic()
    _wait(env, server, task_id, timeout_ms, poll_interval_ms, started)


def _register_server_commands() -> None:
    """
    Add C{serve} and the hidden supervisor subcommands from
    C{execgo.cli_server} (C{register(cli)}), when that module exists.

    C{cli_server} may import L{fail}, L{CliFailure}, L{STRICT_BOOL},
    L{env_flag} and L{UINT} from this module; it must import Twisted lazily,
    inside its commands.
    """
    try:
        module = importlib.import_module("execgo.cli_server")
    except ImportError as e:
        if e.name != "execgo.cli_server":
            raise
        return
    module.register(cli)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """
    The C{execgo-runtime} console script.
    """
    try:
        cli.main(args=argv, prog_name=PROG_NAME)
    except SystemExit:
        raise
    except Exception as e:  # pragma: no cover - last resort, see _Group.invoke
        click.echo(f"internal error: {type(e).__name__}: {e}", err=True)
        raise SystemExit(1) from None


_register_server_commands()
