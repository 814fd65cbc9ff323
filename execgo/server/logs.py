# -*- test-case-name: tests.test_logs -*-
"""
Structured JSON-lines logging on top of C{twisted.logger}.

Each event becomes one line: C{timestamp}, C{level} (C{INFO}, C{WARN}, ...),
C{target} (the logger's namespace), C{message}, and the event's own fields.
The level comes from C{EXECGO_RUNTIME_LOG}, else C{RUST_LOG}, in
C{target=level} directive syntax (C{info} by default).
"""

from __future__ import annotations

import json
import time
from typing import IO, Any, Callable, Dict, Mapping, Tuple, cast

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

from execgo.store.wire import format_ns

_LEVELS = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
    "off": None,
}
_NAMES = {
    LogLevel.debug: "DEBUG",
    LogLevel.info: "INFO",
    LogLevel.warn: "WARN",
    LogLevel.error: "ERROR",
    LogLevel.critical: "ERROR",
}


def parse_filter(spec: str) -> Tuple[Any, Dict[str, Any]]:
    """
    Parse C{level} / C{target=level} directives separated by commas.

    @return: the default level (C{None} means off) and per-target levels.
        Unknown words are ignored, as a log filter should never stop a
        server from starting.
    """
    default: Any = LogLevel.info
    targets: Dict[str, Any] = {}
    for directive in spec.split(","):
        directive = directive.strip()
        if not directive:
            continue
        target, sep, level = directive.rpartition("=")
        level = level.strip().lower()
        if level not in _LEVELS:
            continue
        if sep:
            targets[target.strip()] = _LEVELS[level]
        else:
            default = _LEVELS[level]
    return default, targets


def filter_from_environment(environ: Mapping[str, str]) -> Tuple[Any, Dict[str, Any]]:
    """
    The filter from C{EXECGO_RUNTIME_LOG}, falling back to C{RUST_LOG}.
    """
    spec = environ.get("EXECGO_RUNTIME_LOG")
    if spec is None:
        spec = environ.get("RUST_LOG", "info")
    return parse_filter(spec)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Write each event as one JSON line.
    """

    def __init__(self, out: IO[str], clock: Callable[[], int] = time.time_ns) -> None:
        self.out = out
        self.clock = clock

    def _event_ns(self, event: Dict[str, Any]) -> int:
        log_time = event.get("log_time")
        if log_time is None:
            return self.clock()
        # Round through microseconds: the float cannot carry nanoseconds.
        return round(log_time * 1_000_000) * 1000

    def __call__(self, event: Dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        line: Dict[str, Any] = {
            "timestamp": format_ns(self._event_ns(event)),
            "level": _NAMES.get(level, "INFO"),
            "target": event.get("log_namespace", "execgo"),
            "message": _message(event),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in ("format", "system", "isError", "message", "time"):
                continue
            if type(value) not in _PLAIN:
                try:
                    json.dumps(value)
                except (TypeError, ValueError):
                    value = repr(value)
            line[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            line["error"] = failure.getErrorMessage()
        try:
            self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass


def _message(event: Dict[str, Any]) -> str:
    """
    The event's message: its format as is when that has no fields (such as
    the per-task C{task dispatched}), else Twisted's formatting.
    """
    text = event.get("log_format")
    if isinstance(text, str) and "{" not in text and "}" not in text:
        return text
    return formatEvent(event)


_PLAIN = (str, int, bool, type(None))
_RANK = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3, LogLevel.critical: 4}
_QUIET_NAMESPACES = ("twisted", "log_legacy", "execgo.server.web.api.APISite")


def _threshold(namespace: str, default: Any, targets: Mapping[str, Any]) -> Any:
    """
    The lowest level written for C{namespace} (C{None}: nothing): the most
    specific target directive, else the default, with Twisted's own chatter
    (factories starting, ports opening) never below C{warn}.
    """
    match = max(
        (t for t in targets if namespace == t or namespace.startswith(t + ".")), key=len, default=None
    )
    if match is not None:
        return targets[match]
    if default is None:
        return None
    if namespace.startswith(_QUIET_NAMESPACES):
        return default if _RANK[default] >= _RANK[LogLevel.warn] else LogLevel.warn
    return default


def make_observer(out: IO[str], environ: Mapping[str, str]) -> ILogObserver:
    """
    The JSON-lines observer behind the environment's level filter.
    """
    default, targets = filter_from_environment(environ)
    writer = JSONLinesObserver(out)
    thresholds: Dict[str, Any] = {}

    def observe(event: Dict[str, Any]) -> None:
        namespace = event.get("log_namespace", "")
        if namespace not in thresholds:
            thresholds[namespace] = _threshold(namespace, default, targets)
        level = thresholds[namespace]
        if level is None:
            return
        if _RANK.get(event.get("log_level", LogLevel.info), 1) >= _RANK[level]:
            writer(event)

    # A plain function is an observer (twisted.logger calls any callable);
    # ILogObserver is how Twisted's signatures name one.
    return cast(ILogObserver, observe)
