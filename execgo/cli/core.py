# -*- test-case-name: tests.test_cli -*-
"""
The core of the C{execgo-runtime} command line: the click group (with no
subcommands: L{execgo.cli.main} adds them), the parameter types, the outside
world the client subcommands use (L{CliEnvironment}), and the helpers they
share.  The subcommand modules import from here, never from L{execgo.cli.main},
so any of them can be imported first.

This is the only place where errors become exit codes and messages: usage
errors exit 2 with click's message; every runtime failure exits 1 with one
C{<category>: <detail>} line on stderr (L{CliFailure}), never a traceback.
Standard library, click and the no-I/O modules of L{execgo.client} only.
"""

from __future__ import annotations

import re
import sys
import time
from http import HTTPStatus
from typing import Any, Callable, Dict, List, NoReturn, Optional

import attrs
import click

from execgo import __version__
from execgo.cli import sync_http
from execgo.cli.output import MalformedStatus
from execgo.client.errors import MalformedResponse, TransportError
from execgo.client.protocol import TASKS_PATH
from execgo.core.constants import UINT64_MAX
from execgo.core.errors import ExecgoError
from execgo.core.protocol import JSON_TYPE

PROG_NAME = "execgo-runtime"
DEFAULT_SERVER = "http://127.0.0.1:8080"
OWNER_ENV = "EXECGO_RUNTIME_OWNER"
TOKEN_ENV = "EXECGO_RUNTIME_TOKEN"

_COMMAND_ORDER = (
    "serve",
    "submit",
    "status",
    "wait",
    "kill",
    "run",
    "logs",
    "events",
    "list",
    "info",
    "capabilities",
    "resources",
    "cluster",
)
_TOKEN_KEY = "execgo.token"

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
        if number > UINT64_MAX:
            self.fail(f"{value!r} is too large (maximum {UINT64_MAX})", param, ctx)
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


Transport = Callable[..., sync_http.Response]
StreamTransport = Callable[..., sync_http.Response]


def stderr_is_terminal() -> bool:
    """
    Whether the standard error stream is a terminal.
    """
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


@attrs.frozen
class CliEnvironment:
    """
    What the client subcommands use from the outside world; tests replace it
    through C{CliRunner.invoke(cli, ..., obj=CliEnvironment(...))}.

    @ivar transport: called as C{transport(method, url, body=..., headers=...)}
        and returns an L{sync_http.Response} or raises L{TransportError}.
    @ivar stream: called as C{stream(method, url, on_data=..., headers=...)}
        like L{sync_http.stream}: hands a 2xx body to C{on_data} as it
        arrives, may raise L{execgo.client.errors.StreamInterrupted}.  It
        may be called from more than one thread at once (C{logs}, C{run
        --follow}).
    @ivar monotonic: seconds on a monotonic clock.
    @ivar sleep: blocks for the given number of seconds.
    @ivar stderr_isatty: whether stderr is a terminal (the elapsed-time line
        is written only then).
    """

    transport: Transport = sync_http.request
    stream: StreamTransport = sync_http.stream
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stderr_isatty: Callable[[], bool] = stderr_is_terminal


class _Group(click.Group):
    """
    The top-level group: commands listed in C{docs/cli.md} order, and
    every unexpected error turned into one C{<category>: <detail>} line.
    """

    def list_commands(self, ctx: click.Context) -> List[str]:
        """
        Known subcommands in C{docs/cli.md} order, then any others by name.
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
        except TransportError as e:
            raise CliFailure("http error", e.message) from None
        except (MalformedStatus, MalformedResponse) as e:
            raise CliFailure("json error", str(e)) from None
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

    Shell completion: eval "$(_EXECGO_RUNTIME_COMPLETE=bash_source
    execgo-runtime)" (zsh_source and fish_source for the other shells).
    """
    ctx.ensure_object(CliEnvironment)


# -- shared pieces of the client subcommands ---------------------------------


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


def server_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """
    C{--server} and C{--token}, which every client subcommand takes.
    """
    return _server_url_option(_token_option(command))


def api_url(server: str, path: str) -> str:
    """
    C{server} with every trailing C{/} stripped, then C{path}.
    """
    return server.rstrip("/") + path


def task_url(server: str, task_id: str, suffix: str = "") -> str:
    """
    The URL of one task; the id is inserted as given.
    """
    return api_url(server, f"{TASKS_PATH}/{task_id}{suffix}")


def request_headers(extra: Optional[Dict[str, str]] = None, accept: str = JSON_TYPE) -> Dict[str, str]:
    """
    The headers of a request: user agent, C{Accept}, the bearer token given
    with C{--token} (read from the current click context, so call this in
    the command's own thread), then C{extra}.
    """
    headers = {"User-Agent": f"{PROG_NAME}/{__version__}", "Accept": accept}
    ctx = click.get_current_context(silent=True)
    token = None if ctx is None else ctx.meta.get(_TOKEN_KEY)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra or {})
    return headers


def reason_phrase(status: int, reason: str) -> str:
    """
    The canonical reason phrase of C{status}, as the contract prints it.
    """
    if status in _REASON_OVERRIDES:
        return _REASON_OVERRIDES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return reason or "<unknown status code>"


def echo_raw(body: bytes) -> None:
    """
    The response body exactly as received, then a newline, on stdout.
    """
    click.echo(body)


def checked(response: sync_http.Response) -> sync_http.Response:
    """
    Return a 2xx response; otherwise print its body and fail with
    C{internal error: request failed with status <code> <reason>}.
    """
    if 200 <= response.status < 300:
        return response
    echo_raw(response.body)
    fail(
        "internal error",
        f"request failed with status {response.status} "
        f"{reason_phrase(response.status, response.reason)}",
    )


def get_verbatim(env: CliEnvironment, url: str) -> None:
    """
    C{GET url} and print the 2xx body verbatim plus a newline (or the error
    body, and fail).
    """
    response = env.transport("GET", url, body=None, headers=request_headers())
    echo_raw(checked(response).body)
