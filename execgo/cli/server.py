# -*- test-case-name: tests.test_config,tests.test_integration,tests.test_supervisor -*-
"""
The server-side subcommands of C{execgo-runtime}: C{serve}, and the hidden
C{internal-supervisor} and C{internal-shim}.

Registered on the click group by L{execgo.cli.main}.  C{serve} imports Twisted
only when it runs; the hidden subcommands never do (they must start fast).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

import click

from execgo.core import errors
from execgo.core.config import SERVE_SETTINGS, UINT64_MAX, RuntimeConfig, build_config

_UINT = click.IntRange(min=0, max=UINT64_MAX)
_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _serve_options(command: Any) -> Any:
    for setting in reversed(SERVE_SETTINGS):
        flag = f"--{setting.flag}"
        if setting.kind == "bool":
            option = click.option(flag, setting.attr, is_flag=True, default=None, help=setting.help)
        elif setting.kind == "multi":
            option = click.option(
                flag, setting.attr, multiple=True, metavar=setting.metavar, help=setting.help
            )
        elif setting.kind == "uint":
            option = click.option(flag, setting.attr, type=_UINT, default=None, help=setting.help)
        elif setting.kind == "mode":
            option = click.option(
                flag,
                setting.attr,
                type=click.Choice(["adaptive", "strict"]),
                default=None,
                help=setting.help,
            )
        else:
            option = click.option(flag, setting.attr, default=None, help=setting.help)
        command = option(command)
    return command


def config_from_click(params: Dict[str, Any]) -> RuntimeConfig:
    """
    Build the configuration from click's values and the environment; a bad
    environment variable is a usage error (exit 2).
    """
    values = dict(params)
    for name in ("tenant_quotas", "sandbox_rootfs_roots"):
        if not values.get(name):
            values[name] = None
    for name in ("disable_linux_sandbox", "disable_cgroup"):
        if not values.get(name):
            values[name] = None
    try:
        return build_config(values, os.environ)
    except errors.InvalidInput as e:
        raise click.UsageError(e.detail) from None


def register(cli: click.Group) -> None:
    """
    Add C{serve}, C{internal-supervisor} and C{internal-shim} to C{cli}.
    """

    @cli.command("serve", context_settings=_CONTEXT)
    @_serve_options
    def serve(**params: Any) -> None:
        """
        Start the runtime server in the foreground.
        """
        config = config_from_click(params)
        from execgo.server.tap import run_foreground

        code = run_foreground(config, os.environ)
        sys.exit(code)

    @cli.command("internal-supervisor", hidden=True, context_settings=_CONTEXT)
    @click.option("--database", required=True)
    @click.option("--data-dir", "data_dir", required=True)
    @click.option("--idle-exit-secs", "idle_exit", type=_UINT, default=10)
    def internal_supervisor(database: str, data_dir: str, idle_exit: int) -> None:
        """
        Supervise the workloads of one data directory (started by serve,
        with the settings it wrote in the data directory).
        """
        from execgo.supervisor.daemon import run_daemon

        sys.exit(run_daemon(database, data_dir, float(idle_exit)))

    @cli.command("internal-shim", hidden=True, context_settings=_CONTEXT)
    @click.option("--database", required=True)
    @click.option("--data-dir", "data_dir", required=True)
    @click.option("--task-id", "task_id", required=True)
    @click.option("--termination-grace-ms", "grace_ms", type=_UINT, required=True)
    @click.option("--cgroup-root", "cgroup_root", required=True)
    def internal_shim(
        database: str, data_dir: str, task_id: str, grace_ms: int, cgroup_root: str
    ) -> None:
        """
        Supervise one task to completion (not meant to be run by hand).
        """
        from execgo.supervisor.shim import run_shim

        sys.exit(run_shim(database, data_dir, task_id, grace_ms, cgroup_root))


__all__: List[str] = ["register", "config_from_click"]
