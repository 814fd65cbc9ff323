# -*- test-case-name: tests.test_logs -*-
"""
Structured JSON-lines logging on top of C{twisted.logger}.

Each event becomes one line: C{timestamp}, C{level} (C{INFO}, C{WARN}, ...),
C{target} (the logger's namespace), C{message}, and the event's own fields.
The level comes from C{EXECGO_RUNTIME_LOG}, else C{RUST_LOG}, in
C{target=level} directive syntax (C{info} by default), and is applied by
Twisted's L{FilteringLogObserver} and L{LogLevelFilterPredicate}.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any, Callable, Dict, Mapping, Tuple

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
)
from zope.interface import implementer

from execgo.core.timestamps import format_ns

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
#: Twisted's own chatter (factories starting, ports opening, the site's
#: requests): never written below C{warn} unless a directive names it.
_QUIET_NAMESPACES = ("twisted", "log_legacy", "execgo.server.web.site.APISite")
# Twisted's predicate knows levels, not silence: in the predicate that
# says which namespaces are off, one level stands for off, another for on.
_OFF = LogLevel.critical
_ON = LogLevel.debug


def _covers(target: str, namespace: str) -> bool:
    """
    Whether a directive for C{target} applies to C{namespace}.
    """
    return namespace == target or namespace.startswith(target + ".")


def level_predicate(default: Any, targets: Mapping[str, Any]) -> LogLevelFilterPredicate:
    """
    Twisted's level filter for a parsed filter (L{parse_filter}): the most
    specific target directive for a namespace, else the default, with
    Twisted's own namespaces never below C{warn}.  Namespaces that are off
    (C{None}) are left to L{silence_predicate}.
    """
    default_level = LogLevel.info if default is None else default
    predicate = LogLevelFilterPredicate(default_level)
    if default is not None:
        floor = max(default_level, LogLevel.warn)
        for namespace in _QUIET_NAMESPACES:
            # A directive naming the namespace or one around it wins.
            if not any(_covers(target, namespace) for target in targets):
                predicate.setLogLevelForNamespace(namespace, floor)
    for target, level in targets.items():
        # An empty target would set Twisted's default: it names no namespace.
        if target and level is not None:
            predicate.setLogLevelForNamespace(target, level)
    return predicate


@implementer(ILogFilterPredicate)
class _Silence:
    """
    Drop every event of a namespace that is off: Twisted's namespace
    lookup over L{_OFF} and L{_ON}.
    """

    def __init__(self, switches: LogLevelFilterPredicate) -> None:
        self.switches = switches

    def __call__(self, event: Dict[str, Any]) -> Any:
        """
        C{PredicateResult.no} when the event's namespace is off, else
        C{maybe} (the level filter decides).
        """
        namespace = event.get("log_namespace", "")
        if self.switches.logLevelForNamespace(namespace) is _OFF:
            return PredicateResult.no
        return PredicateResult.maybe


def silence_predicate(default: Any, targets: Mapping[str, Any]) -> ILogFilterPredicate:
    """
    The predicate dropping what a parsed filter turns off (C{None}): the
    most specific target directive for a namespace, else the default.
    """
    switches = LogLevelFilterPredicate(_OFF if default is None else _ON)
    for target, level in targets.items():
        if target:
            switches.setLogLevelForNamespace(target, _OFF if level is None else _ON)
    return _Silence(switches)


def make_observer(out: IO[str], environ: Mapping[str, str]) -> ILogObserver:
    """
    The JSON-lines observer behind the environment's filter, applied by
    Twisted's L{FilteringLogObserver}.
    """
    default, targets = filter_from_environment(environ)
    return FilteringLogObserver(
        JSONLinesObserver(out),
        [silence_predicate(default, targets), level_predicate(default, targets)],
    )
