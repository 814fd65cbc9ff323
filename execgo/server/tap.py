# -*- test-case-name: tests.test_tap,tests.test_plugin,tests.test_config,tests.test_integration -*-
"""
The twistd plugin's options and service, and the foreground runner behind
C{execgo-runtime serve}: the only server code that reaches the global
reactor.

C{twistd -n execgo serve --listen-addr ... --data-dir ...} takes the same
flags (built from the same L{SERVE_SETTINGS} table) and runs the same
L{RuntimeService}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Mapping

from twisted.application import service
from twisted.python import usage

from execgo.core import errors
from execgo.core.config import (
    SERVE_SETTINGS,
    RuntimeConfig,
    build_config,
    parse_mode,
    parse_uint_env,
)


def _uint(value: str) -> int:
    try:
        return parse_uint_env("value", value)
    except errors.InvalidInput as e:
        raise ValueError(e.detail) from None


def _mode(value: str) -> str:
    try:
        return parse_mode(value)
    except errors.InvalidInput as e:
        raise ValueError(e.detail) from None


class ServeOptions(usage.Options):
    """
    C{twistd execgo serve} options: the flags of C{execgo-runtime serve}.
    """

    optFlags: List[List[Any]] = [
        [s.flag, None, s.help] for s in SERVE_SETTINGS if s.kind == "bool"
    ]
    optParameters: List[List[Any]] = [
        [s.flag, None, None, s.help, {"uint": _uint, "mode": _mode}.get(s.kind)]
        for s in SERVE_SETTINGS
        if s.kind in ("str", "uint", "mode")
    ]

    def __init__(self) -> None:
        super().__init__()
        self["tenant-quota"] = []
        self["sandbox-rootfs-root"] = []
        self["node-label"] = []

    def opt_tenant_quota(self, spec: str) -> None:
        """
        NAME=slots:N[,memory:BYTES][,pids:N], repeatable.
        """
        self["tenant-quota"].append(spec)

    def opt_sandbox_rootfs_root(self, directory: str) -> None:
        """
        A directory chroot root filesystems must lie under, repeatable.
        """
        self["sandbox-rootfs-root"].append(directory)

    def opt_node_label(self, label: str) -> None:
        """
        KEY=VALUE describing this node, repeatable.
        """
        self["node-label"].append(label)

    def config(self, environ: Mapping[str, str]) -> RuntimeConfig:
        """
        The runtime configuration these options and C{environ} describe.
        """
        values: Dict[str, Any] = {}
        for setting in SERVE_SETTINGS:
            value = self.get(setting.flag)
            if setting.kind == "bool":
                value = True if value else None
            elif setting.kind == "multi":
                value = value or None
            values[setting.attr] = value
        try:
            return build_config(values, environ)
        except errors.InvalidInput as e:
            raise usage.UsageError(e.detail) from None


class Options(usage.Options):
    """
    C{twistd execgo}: one subcommand, C{serve}.
    """

    subCommands = [["serve", None, ServeOptions, "Run the execgo runtime server."]]
    defaultSubCommand = "serve"


def makeService(options: Options) -> service.IService:
    """
    The runtime service for twistd (the global reactor is reached here).
    """
    from twisted.internet import reactor

    from execgo.server.service import RuntimeService

    # Options that were never parsed have no subOptions at all.
    serve_options = getattr(options, "subOptions", None)
    if serve_options is None:
        serve_options = ServeOptions()
        serve_options.parseOptions([])
    try:
        config = serve_options.config(os.environ)
        runtime_service = RuntimeService(reactor, config, os.environ)
    except errors.ExecgoError as e:
        raise usage.UsageError(e.message) from None

    def failed(failure: Any) -> None:
        sys.stderr.write(_failure_line(failure) + "\n")
        reactor.stop()

    runtime_service.started.addErrback(failed)
    return runtime_service


def _failure_line(failure: Any) -> str:
    value = failure.value
    if isinstance(value, errors.Internal) and ": " in value.detail:
        return value.detail
    if isinstance(value, errors.ExecgoError):
        return value.message
    return f"internal error: {value}"


def run_foreground(config: RuntimeConfig, environ: Mapping[str, str]) -> int:
    """
    Run the server on the global reactor until SIGTERM or SIGINT.

    @return: the process exit code: 1 when start-up failed, else 0.
    """
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from execgo.server.logs import make_observer
    from execgo.server.service import RuntimeService

    try:
        runtime_service = RuntimeService(reactor, config, environ)
    except errors.ExecgoError as e:
        sys.stderr.write(e.message + "\n")
        return 1
    globalLogBeginner.beginLoggingTo(
        [make_observer(sys.stdout, environ)], discardBuffer=True, redirectStandardIO=False
    )
    exit_code = [0]

    def failed(failure: Any) -> None:
        exit_code[0] = 1
        sys.stderr.write(_failure_line(failure) + "\n")
        sys.stderr.flush()
        reactor.stop()

    runtime_service.started.addErrback(failed)
    runtime_service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", runtime_service.stopService)
    reactor.run()
    return exit_code[0]
