# -*- test-case-name: tests.test_cli -*-
"""
The C{execgo-runtime} command line (documented in C{docs/cli.md}).

L{cli} is the click group of L{execgo.cli.core} with every subcommand
added: C{submit}, C{status}, C{wait}, C{kill}, C{run} and C{logs} from
L{execgo.cli.tasks}; C{list}, C{events}, C{info}, C{capabilities} and
C{resources} from L{execgo.cli.commands}; C{serve} and the hidden
supervisor subcommands from C{execgo.cli.server}.  L{main} is the console
script.

The client subcommands are thin, synchronous HTTP clients: nothing on their
path imports Twisted or treq, and the request decoder (L{execgo.core.decoding})
is imported only when a request has to be decoded, so a C{status} call
starts and ends in a few tens of milliseconds.

Shell completion is click's: C{_EXECGO_RUNTIME_COMPLETE=bash_source
execgo-runtime} prints the bash script (C{zsh_source} and C{fish_source}
for the other shells).
"""

from __future__ import annotations

import importlib
from typing import Optional, Sequence

import click

from execgo.cli import commands, tasks
from execgo.cli.core import (
    DEFAULT_SERVER,
    OWNER_ENV,
    PROG_NAME,
    STRICT_BOOL,
    TOKEN_ENV,
    UINT,
    CliEnvironment,
    CliFailure,
    StrictBool,
    UnsignedInt,
    cli,
    env_flag,
    fail,
)
from execgo.client.protocol import DEFAULT_POLL_INTERVAL_MS, TASKS_PATH
from execgo.core.protocol import OWNER_HEADER

__all__ = [
    "DEFAULT_POLL_INTERVAL_MS",
    "DEFAULT_SERVER",
    "OWNER_ENV",
    "OWNER_HEADER",
    "PROG_NAME",
    "STRICT_BOOL",
    "TASKS_PATH",
    "TOKEN_ENV",
    "UINT",
    "CliEnvironment",
    "CliFailure",
    "StrictBool",
    "UnsignedInt",
    "cli",
    "env_flag",
    "fail",
    "main",
]


def _register_commands() -> None:
    """
    Add the client subcommands, then C{serve} and the hidden subcommands of
    C{execgo.cli.server} (C{register(cli)}) when that module exists.

    C{cli_server} imports Twisted lazily, inside its commands.
    """
    tasks.register(cli)
    commands.register(cli)
    try:
        module = importlib.import_module("execgo.cli.server")
    except ImportError as e:
        if e.name != "execgo.cli.server":
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
    except Exception as e:  # pragma: no cover - last resort, see the group's invoke
        click.echo(f"internal error: {type(e).__name__}: {e}", err=True)
        raise SystemExit(1) from None


_register_commands()
