"""
Tests for L{execgo.server.logs}: the level filter directives and the JSON-lines
observer.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any, Dict, List, Mapping

from twisted.logger import Logger, LogLevel
from twisted.python.reflect import qual
from twisted.trial.unittest import SynchronousTestCase

from execgo.server.logs import (
    JSONLinesObserver,
    filter_from_environment,
    make_observer,
    parse_filter,
)
from execgo.server.web.site import APISite

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z\Z")


def lines(out: io.StringIO) -> List[Dict[str, Any]]:
    """
    The JSON objects written so far, one per line.
    """
    return [json.loads(line) for line in out.getvalue().splitlines()]


class ParseFilterTests(SynchronousTestCase):
    """
    L{parse_filter}: C{level} and C{target=level} directives.
    """

    def test_default_info(self) -> None:
        """
        An empty specification means C{info}.
        """
        self.assertEqual(parse_filter(""), (LogLevel.info, {}))
        self.assertEqual(parse_filter(" , ,"), (LogLevel.info, {}))

    def test_levels(self) -> None:
        """
        Each level word maps to a Twisted level, case-insensitively;
        C{trace} is C{debug} and C{off} is C{None}.
        """
        cases = {
            "trace": LogLevel.debug,
            "debug": LogLevel.debug,
            "INFO": LogLevel.info,
            " Warn ": LogLevel.warn,
            "warning": LogLevel.warn,
            "error": LogLevel.error,
            "off": None,
        }
        for spec, level in cases.items():
            self.assertEqual(parse_filter(spec), (level, {}), spec)

    def test_targets(self) -> None:
        """
        C{target=level} directives set per-target levels next to the
        default; the last default wins.
        """
        self.assertEqual(
            parse_filter("debug, execgo.server.web.api = WARN,execgo.server.scheduler=off,error"),
            (LogLevel.error, {"execgo.server.web.api": LogLevel.warn, "execgo.server.scheduler": None}),
        )

    def test_unknown_ignored(self) -> None:
        """
        Unknown level words are ignored rather than failing start-up.
        """
        self.assertEqual(parse_filter("verbose,execgo=loud"), (LogLevel.info, {}))
        self.assertEqual(parse_filter("verbose,debug"), (LogLevel.debug, {}))


class FilterFromEnvironmentTests(SynchronousTestCase):
    """
    L{filter_from_environment}: C{EXECGO_RUNTIME_LOG}, else C{RUST_LOG}.
    """

    def test_precedence(self) -> None:
        """
        The runtime variable wins over C{RUST_LOG}; C{RUST_LOG} is the
        fallback; C{info} when neither is set.
        """
        self.assertEqual(
            filter_from_environment({"EXECGO_RUNTIME_LOG": "error", "RUST_LOG": "debug"})[0],
            LogLevel.error,
        )
        self.assertEqual(filter_from_environment({"RUST_LOG": "debug"})[0], LogLevel.debug)
        self.assertEqual(filter_from_environment({}), (LogLevel.info, {}))


class JSONLinesObserverTests(SynchronousTestCase):
    """
    L{JSONLinesObserver} writes one JSON object per event.
    """

    def setUp(self) -> None:
        self.out = io.StringIO()
        self.log = Logger(namespace="execgo.server.scheduler", observer=JSONLinesObserver(self.out))

    def test_fields(self) -> None:
        """
        A line carries timestamp, level, target, the formatted message and
        the structured fields; nothing of Twisted's own keys.
        """
        self.log.info("task {task_id} dispatched", task_id="t1", shim_pid=42)
        [line] = lines(self.out)
        self.assertEqual(list(line)[:4], ["timestamp", "level", "target", "message"])
        self.assertRegex(line["timestamp"], RFC3339)
        self.assertEqual(line["level"], "INFO")
        self.assertEqual(line["target"], "execgo.server.scheduler")
        self.assertEqual(line["message"], "task t1 dispatched")
        self.assertEqual((line["task_id"], line["shim_pid"]), ("t1", 42))
        self.assertFalse([key for key in line if key.startswith("log_")])
        self.assertTrue(self.out.getvalue().endswith("}\n"))

    def test_messages(self) -> None:
        """
        A format without fields is the message as is; one with fields or
        escaped braces is formatted by Twisted.
        """
        self.log.info("task dispatched", task_id="t1")
        self.log.info("a {{literal}} brace")
        self.log.info("a }} and {n}", n=1)
        self.assertEqual(
            [line["message"] for line in lines(self.out)],
            ["task dispatched", "a {literal} brace", "a } and 1"],
        )

    def test_levels(self) -> None:
        """
        Levels are named C{DEBUG}, C{INFO}, C{WARN}, C{ERROR}.
        """
        self.log.debug("d")
        self.log.warn("w")
        self.log.error("e")
        self.log.critical("c")
        self.assertEqual([line["level"] for line in lines(self.out)], ["DEBUG", "WARN", "ERROR", "ERROR"])

    def test_unserialisable_field(self) -> None:
        """
        A field JSON cannot encode is written as its C{repr}.
        """
        self.log.info("x", thing=object(), text="\u00e9")
        [line] = lines(self.out)
        self.assertTrue(line["thing"].startswith("<object object"))
        self.assertEqual(line["text"], "\u00e9")
        self.assertIn("\u00e9", self.out.getvalue())

    def test_failure(self) -> None:
        """
        A logged failure adds its message as C{error}.
        """
        try:
            raise ValueError("bad thing")
        except ValueError:
            self.log.failure("dispatcher iteration failed")
        [line] = lines(self.out)
        self.assertEqual(line["level"], "ERROR")
        self.assertEqual(line["message"], "dispatcher iteration failed")
        self.assertEqual(line["error"], "bad thing")

    def test_closed_output(self) -> None:
        """
        A closed output stream does not make logging raise.
        """
        self.out.close()
        self.log.info("lost")

    def test_exact_timestamp(self) -> None:
        """
        An event time is rendered exactly: C{...30.125} seconds is
        C{.125Z}, not a float artefact such as C{.124999936Z}.
        """
        observer = JSONLinesObserver(self.out)
        observer({"log_format": "x", "log_time": 1776939330.125, "log_level": LogLevel.info})
        self.assertEqual(lines(self.out)[0]["timestamp"], "2026-04-23T10:15:30.125Z")



class MakeObserverTests(SynchronousTestCase):
    """
    L{make_observer}: the JSON observer behind the environment's filter.
    """

    def emit(self, environ: Mapping[str, str]) -> List[Dict[str, Any]]:
        """
        Log one event of each level from three namespaces through the
        observer for C{environ}; return what was written.
        """
        out = io.StringIO()
        observer = make_observer(out, environ)
        for namespace in ("execgo.server.scheduler", "execgo.server.web.api", "twisted.internet"):
            log = Logger(namespace=namespace, observer=observer)
            for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical):
                log.emit(level, "{ns} {lvl}", ns=namespace, lvl=level.name)
        return lines(out)

    def messages(self, environ: Mapping[str, str]) -> List[str]:
        """
        The messages that got through.
        """
        return [line["message"] for line in self.emit(environ)]

    def test_default_info(self) -> None:
        """
        By default C{info} and above are written; Twisted's own namespace
        only from C{warn}.
        """
        messages = self.messages({})
        self.assertIn("execgo.server.web.api info", messages)
        self.assertNotIn("execgo.server.web.api debug", messages)
        self.assertNotIn("twisted.internet info", messages)
        self.assertIn("twisted.internet warn", messages)

    def test_level(self) -> None:
        """
        C{warn} drops C{info}; C{debug} lets it through.
        """
        self.assertNotIn("execgo.server.scheduler info", self.messages({"EXECGO_RUNTIME_LOG": "warn"}))
        self.assertIn("execgo.server.scheduler warn", self.messages({"EXECGO_RUNTIME_LOG": "warn"}))
        self.assertIn("execgo.server.scheduler debug", self.messages({"RUST_LOG": "debug"}))

    def test_target(self) -> None:
        """
        A target directive raises or lowers one namespace only.
        """
        messages = self.messages({"EXECGO_RUNTIME_LOG": "warn,execgo.server.scheduler=debug"})
        self.assertIn("execgo.server.scheduler debug", messages)
        self.assertNotIn("execgo.server.web.api info", messages)
        self.assertIn("execgo.server.web.api warn", messages)

    def test_off(self) -> None:
        """
        C{off} writes nothing at all.
        """
        self.assertEqual(self.emit({"EXECGO_RUNTIME_LOG": "off"}), [])

    def test_off_with_target(self) -> None:
        """
        C{off} with one target enabled writes only that target.
        """
        messages = self.messages({"EXECGO_RUNTIME_LOG": "off,execgo.server.scheduler=info"})
        self.assertIn("execgo.server.scheduler info", messages)
        self.assertEqual([m for m in messages if not m.startswith("execgo.server.scheduler")], [])


    def test_directive_over_quiet_namespace(self) -> None:
        """
        A directive naming one of Twisted's chatty namespaces, or a
        namespace around it, sets its level below C{warn} too; the most
        specific directive wins.
        """
        out = io.StringIO()
        observer = make_observer(
            out, {"EXECGO_RUNTIME_LOG": "execgo.server.web.site=debug,twisted=info,twisted.web=error"}
        )
        for namespace in ("execgo.server.web.site.APISite", "twisted.internet.tcp", "twisted.web.server"):
            log = Logger(namespace=namespace, observer=observer)
            for level in (LogLevel.debug, LogLevel.info, LogLevel.warn):
                log.emit(level, "{ns} {lvl}", ns=namespace, lvl=level.name)
        self.assertEqual(
            [line["message"] for line in lines(out)],
            [
                "execgo.server.web.site.APISite debug",
                "execgo.server.web.site.APISite info",
                "execgo.server.web.site.APISite warn",
                "twisted.internet.tcp info",
                "twisted.internet.tcp warn",
            ],
        )

    def test_site_quiet_by_default(self) -> None:
        """
        The API site's own chatter counts as Twisted's: C{warn} and above
        only, even at C{debug}.  Twisted logs for a factory under its
        class's qualified name, so the site's namespace follows the module
        L{APISite} lives in.
        """
        out = io.StringIO()
        observer = make_observer(out, {"EXECGO_RUNTIME_LOG": "debug"})
        log = Logger(namespace=qual(APISite), observer=observer)
        log.info("Starting factory")
        log.warn("trouble")
        self.assertEqual([line["message"] for line in lines(out)], ["trouble"])

    def test_twisted_never_below_default(self) -> None:
        """
        A default above C{warn} also applies to Twisted's own namespace: the
        C{warn} floor for it only ever makes it quieter.
        """
        messages = self.messages({"EXECGO_RUNTIME_LOG": "error"})
        self.assertNotIn("execgo.server.web.api warn", messages)
        self.assertIn("twisted.internet error", messages)
        self.assertNotIn("twisted.internet warn", messages)

