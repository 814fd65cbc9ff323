"""
No 5xx, no traceback and nothing left on disk from anything a client
sends, through the real Klein resource, runtime and store, in memory and
synchronously (L{tests.apifixture.MemoryRuntime}): the cases found by
hand, and a hypothesis fuzz of request paths and query strings.
"""

from __future__ import annotations

import base64
import errno
import json
import os
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote_from_bytes

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from execgo.core import bounds
from execgo.core.errors import ExecgoError
from execgo.server.web.site import Utf8Paths
from tests.apifixture import MemoryRuntime, tmp_data_dir
from tests.test_api import APITestsBase

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

COMMAND: Dict[str, Any] = {"kind": "command", "program": "/bin/true"}
ERROR_CODES = {cls.code for cls in (ExecgoError, *ExecgoError.__subclasses__())}


def cursor(created: int, rowid: int) -> str:
    """
    A cursor in the runtime's own encoding, for any two numbers.
    """
    raw = f"1:{created}:{rowid}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class LogWatch:
    """
    Every log event emitted while it watches.
    """

    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []

    def __call__(self, event: Dict[str, Any]) -> None:
        self.events.append(event)

    def loud(self) -> List[Dict[str, Any]]:
        """
        The events with a failure (a traceback) or at warning level or above.
        """
        return [
            event
            for event in self.events
            if "log_failure" in event
            or event.get("isError")
            or event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)
        ]


class InputTestsBase(APITestsBase):
    """
    An in-process runtime whose log events are watched.
    """

    def setUp(self) -> None:
        self.watch = LogWatch()
        globalLogPublisher.addObserver(self.watch)
        self.addCleanup(globalLogPublisher.removeObserver, self.watch)
        super().setUp()

    def task_dirs(self) -> List[str]:
        """
        What is under C{<data_dir>/tasks}.
        """
        return sorted(os.listdir(os.path.join(self.data_dir, "tasks")))

    def refused(self, request: Dict[str, Any], field: str) -> str:
        """
        Submit C{request}: it must get C{400 invalid_input} naming
        C{field}, and leave nothing on disk; the message.
        """
        before = self.task_dirs()
        code, decoded = self.submit(request)
        self.assertEnvelope(code, decoded, 400, "invalid_input")
        message = decoded["error"]["message"]
        self.assertTrue(message.startswith(f"invalid input: {field}: "), message)
        self.assertEqual(self.task_dirs(), before)
        return message


class SubmitInputTests(InputTestsBase):
    """
    Submissions that used to fail with a 500 or at launch are refused at
    submit, naming the field and the bound, with nothing on disk.
    """

    def test_workspace_subdir(self) -> None:
        """
        A NUL (used to be a 500 and a task directory without a row) or a
        300-character component (ENAMETOOLONG) in C{workspace_subdir}.
        """
        for subdir in ("a\u0000b", "a" * 300, "ok/" + "b" * 256):
            self.refused(
                {"task_id": "w", "execution": COMMAND, "sandbox": {"workspace_subdir": subdir}},
                "sandbox.workspace_subdir",
            )
        code, decoded, _ = self.call("GET", "/api/v1/tasks/w")
        self.assertEnvelope(code, decoded, 404, "not_found")
        code, _ = self.submit({"task_id": "w", "execution": COMMAND, "sandbox": {"workspace_subdir": "a" * 255}})
        self.assertEqual(code, 200)
        self.assertEqual(self.watch.loud(), [])

    def test_nul_in_execution(self) -> None:
        """
        NUL in C{program}, C{args}, C{env} and C{interpreter} is refused
        at submit (it used to fail the task at launch).
        """
        for execution, field in (
            ({"kind": "command", "program": "/bin/\u0000true"}, "execution.program"),
            ({"kind": "command", "program": "echo", "args": ["\u0000"]}, "execution.args[0]"),
            ({"kind": "command", "program": "echo", "env": {"K": "\u0000"}}, 'execution.env["K"]'),
            ({"kind": "script", "script": "true", "interpreter": ["/bin/sh\u0000"]}, "execution.interpreter[0]"),
        ):
            message = self.refused({"execution": execution}, field)
            self.assertIn("NUL", message)

    def test_limits(self) -> None:
        """
        C{cpu_time_sec} 2^64-1 (accepted until now, then C{launch_failed})
        and one past each bound: 400 naming the field and the bound.
        """
        message = self.refused({"execution": COMMAND, "limits": {"cpu_time_sec": 2**64 - 1}}, "limits.cpu_time_sec")
        self.assertIn(str(bounds.CPU_TIME_SEC_MAX), message)
        for name, bound in (
            ("wall_time_ms", bounds.WALL_TIME_MS_MAX),
            ("memory_bytes", bounds.MEMORY_BYTES_MAX),
            ("pids_max", bounds.PIDS_MAX_MAX),
        ):
            message = self.refused({"execution": COMMAND, "limits": {name: bound + 1}}, f"limits.{name}")
            self.assertIn(f"at most {bound}", message)


class QueryAndPathTests(InputTestsBase):
    """
    Query strings and paths a client can send get the envelope.
    """

    def test_cursor_too_large(self) -> None:
        """
        A cursor of the right shape with numbers SQLite cannot hold (used
        to be a 500) is C{invalid_input}; the largest that fits is fine.
        """
        for value in (cursor(9999999999999999999, 1), cursor(1, 9999999999999999999)):
            code, decoded, _ = self.call("GET", f"/api/v1/tasks?cursor={value}")
            self.assertEnvelope(code, decoded, 400, "invalid_input")
            self.assertIn("cursor", decoded["error"]["message"])
        code, decoded, _ = self.call("GET", f"/api/v1/tasks?cursor={cursor(2**63 - 1, 2**63 - 1)}")
        self.assertEqual((code, decoded), (200, {"tasks": [], "next_cursor": None}))
        self.assertEqual(self.watch.loud(), [])

    def test_path_not_utf8(self) -> None:
        """
        A path that is not UTF-8 once percent-decoded gets 400
        C{invalid_input} as JSON (it was C{text/html}), with no token,
        and logs at most one quiet line, never a traceback.
        """
        for method, path in (
            ("GET", "/api/v1/tasks/%ff"),
            ("GET", "/api/v1/tasks/%C0%AF/events"),
            ("POST", "/api/v1/tasks/%ff/kill"),
            ("GET", "/%fe%ff"),
        ):
            before = len(self.watch.events)
            code, decoded, headers = self.call(method, path)
            self.assertEnvelope(code, decoded, 400, "invalid_input")
            self.assertEqual(headers[b"Content-Type"], [b"application/json"])
            self.assertLessEqual(len(self.watch.events) - before, 1, path)
        self.assertEqual(self.watch.loud(), [])
        self.assertEqual(self.flushLoggedErrors(), [])


class Utf8PathsTests(SynchronousTestCase):
    """
    L{Utf8Paths} on its own: what it refuses and what it hands on.
    """

    class Inner:
        """
        Stands for the Klein resource.
        """

        def render(self, request: Any) -> bytes:
            return b"inner"

    def render(self, segments: List[bytes], host: bytes = b"runtime.test") -> Tuple[bytes, Any]:
        """
        Render a request for C{segments} with Host C{host}: the body and
        the request.
        """
        request = DummyRequest(segments)
        request.getRequestHostname = lambda: host  # type: ignore[method-assign]
        return Utf8Paths(self.Inner()).render(request), request

    def test_refused(self) -> None:
        """
        A path segment or a Host that is not UTF-8: 400 and the envelope
        saying which.
        """
        for segments, host, problem in (
            ([b"api", b"v1", b"tasks", b"\xff"], b"runtime.test", "request path"),
            ([b"healthz"], b"\xc0\xaf", "Host header"),
        ):
            rendered, request = self.render(segments, host)
            self.assertEqual(request.responseCode, 400)
            error = json.loads(rendered)["error"]
            self.assertEqual(error["code"], "invalid_input")
            self.assertIn(problem, error["message"])

    def test_handed_on(self) -> None:
        """
        Anything UTF-8 (any Unicode, NUL included) goes to the app.
        """
        for segment in (b"healthz", "t\u00e9\u0000".encode("utf-8")):
            rendered, _ = self.render([segment])
            self.assertEqual(rendered, b"inner")


class ReadinessTests(APITestsBase):
    """
    C{/readyz} answers 503 while the data directory cannot be written.
    """

    def setUp(self) -> None:
        self.fault: Optional[OSError] = None
        self.probed: List[str] = []
        self.data_dir = tmp_data_dir(self)

        def probe(tasks_dir: str) -> None:
            self.probed.append(tasks_dir)
            if self.fault is not None:
                raise self.fault

        self.rt = MemoryRuntime(self.data_dir, probe=probe)
        self.rt.start()
        self.addCleanup(self.rt.stop)

    def test_unwritable(self) -> None:
        """
        Read only, full, not permitted: 503 C{internal} naming the
        directory and why; ready again once the probe succeeds.
        """
        tasks = os.path.join(self.data_dir, "tasks")
        for number in (errno.EROFS, errno.ENOSPC, errno.EPERM):
            self.fault = OSError(number, os.strerror(number))
            code, decoded, _ = self.call("GET", "/readyz")
            self.assertEnvelope(code, decoded, 503, "internal")
            self.assertEqual(
                decoded["error"]["message"],
                f"unavailable: data directory cannot be written: {tasks}: {os.strerror(number)}",
            )
        self.fault = None
        code, decoded, _ = self.call("GET", "/readyz")
        self.assertEqual((code, decoded["status"]), (200, "ready"))
        self.assertEqual(set(self.probed), {tasks})


# ---------------------------------------------------------------- fuzz

FUZZ_EXAMPLES = 300
NAMES = ("status", "tenant", "owner", "label", "limit", "cursor", "offset", "follow", "after_seq", "wait_ms")
TEMPLATES = (
    ("GET", "/api/v1/tasks/{}"),
    ("GET", "/api/v1/tasks/{}/stdout"),
    ("GET", "/api/v1/tasks/{}/stderr"),
    ("GET", "/api/v1/tasks/{}/events"),
    ("POST", "/api/v1/tasks/{}/kill"),
    ("GET", "/api/v1/tasks{}"),
    ("GET", "/{}"),
    ("GET", "/api/v1/{}"),
    ("GET", "/api/v1/runtime/{}"),
    ("DELETE", "/api/v1/tasks/{}"),
    ("GET", "/api/v1/tasks/{}/{}"),
)
# Values near the edges the parsers check.
EDGES = (
    "",
    "0",
    "-1",
    "true",
    "false",
    "1.5",
    "99999999999999999999",
    str(2**63),
    str(2**64),
    "running",
    "k:v",
    ":",
    "a" * 300,
    cursor(9999999999999999999, 1),
    cursor(0, 0),
    "MTo5OTk5",
    "%",
    "%zz",
)
# A queued task the fuzz may name; follow and wait_ms are not sent for it
# (the fake supervisor never ends it, so a follow would last forever).
KNOWN = "known"


def _encoded(raw: bytes) -> str:
    """
    Percent-encode C{raw} except the unreserved characters.
    """
    return quote_from_bytes(raw, safe="-._~")


if HAVE_HYPOTHESIS:
    TEXTS = st.one_of(
        # Bytes as integers: st.binary's cache keys compare bytes with str
        # (a BytesWarning under python -b).
        st.lists(st.integers(0, 255), max_size=16).map(lambda values: _encoded(bytes(values))),
        st.text(max_size=12).map(lambda text: _encoded(text.encode("utf-8", "surrogatepass"))),
        st.sampled_from([_encoded(edge.encode()) if "%" not in edge else edge for edge in EDGES]),
        st.just(KNOWN),
    )
    QUERIES = st.lists(st.tuples(st.sampled_from(NAMES) | TEXTS, TEXTS), max_size=4)
    REQUESTS = st.tuples(st.sampled_from(TEMPLATES), st.lists(TEXTS, min_size=2, max_size=2), QUERIES)

    def fuzz_cases() -> List[Tuple[str, str]]:
        """
        L{FUZZ_EXAMPLES} requests (method, path with query) drawn by
        hypothesis, derandomised: drawn first, then all sent to one
        runtime.
        """
        drawn: List[Tuple[str, str]] = []

        @settings(
            max_examples=FUZZ_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(REQUESTS)
        def draw(request: Any) -> None:
            (method, template), segments, query = request
            path = template.format(*segments[: template.count("{}")])
            if template == "/api/v1/tasks{}" and segments[0]:
                path = "/api/v1/tasks?" + segments[0]
            if KNOWN in path:
                query = [(name, value) for name, value in query if name not in ("follow", "wait_ms")]
            if query:
                path += ("&" if "?" in path else "?") + "&".join(f"{name}={value}" for name, value in query)
            drawn.append((method, path))

        draw()
        return drawn


class FuzzTests(InputTestsBase):
    """
    Fuzzed paths and query strings against the in-memory API.
    """

    def test_paths_and_queries(self) -> None:
        """
        Whatever the path and query: never a 5xx, every error the JSON
        envelope with a known code, and no traceback (or warning) logged.
        """
        if not HAVE_HYPOTHESIS:
            raise self.skipTest("hypothesis is not installed")
        code, _ = self.submit({"task_id": KNOWN, "execution": COMMAND})
        self.assertEqual(code, 200)
        cases = fuzz_cases()
        self.assertEqual(len(cases), FUZZ_EXAMPLES)
        for method, path in cases:
            code, response_headers, content = self.rt.request(method, path)
            self.assertLess(code, 500, f"{method} {path}: {content[:200]!r}")
            if code >= 400:
                self.assertEqual(response_headers.get(b"Content-Type"), [b"application/json"], f"{method} {path}")
                decoded = json.loads(content)
                self.assertEqual(sorted(decoded), ["error"], f"{method} {path}")
                self.assertIn(decoded["error"]["code"], ERROR_CODES, f"{method} {path}")
                self.assertIsInstance(decoded["error"]["message"], str)
            self.assertEqual(self.watch.loud(), [], f"{method} {path}")
        self.assertEqual(self.flushLoggedErrors(), [])
