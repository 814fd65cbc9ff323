"""
Tests for L{execgo.cli.main} (the client subcommands of C{docs/cli.md}) and
L{execgo.cli.sync_http}.

The CLI runs under C{click.testing.CliRunner} with its HTTP transport,
stream transport and clock replaced through L{CliEnvironment}, so every
request it would send is recorded and no test sleeps or opens a socket;
the L{execgo.cli.sync_http} tests talk to small servers on a loopback socket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence

import attrs
import click
from click.testing import CliRunner, Result
from twisted.trial.unittest import SynchronousTestCase

from execgo import __version__
from execgo.cli import sync_http
from execgo.cli.main import (
    STRICT_BOOL,
    UINT,
    CliEnvironment,
    CliFailure,
    cli,
    env_flag,
    fail,
)
from execgo.cli.output import summary_line, task_exit_code
from execgo.cli.sync_http import Response
from execgo.client.errors import StreamInterrupted, TransportError
from execgo.client.resume import MAX_EVENT_LINE
from tests.fakes import Attempt, FakeWorld, held, ok

SERVER = "http://127.0.0.1:8080"
TASKS = f"{SERVER}/api/v1/tasks"

MINIMAL = '{"execution":{"kind":"command","program":"/bin/true"}}'
MINIMAL_NORMALISED = (
    b'{"execution":{"kind":"command","program":"/bin/true","args":[],"env":{}},'
    b'"limits":{"wall_time_ms":300000,"stdout_max_bytes":4194304,'
    b'"stderr_max_bytes":4194304},"sandbox":{"profile":"process","chroot":false},'
    b'"metadata":{}}'
)
SUBMITTED = b'{"task_id":"t1","handle_id":"t1","status":"accepted"}'
NOT_FOUND = b'{"error":{"code":"not_found","message":"task not found: nope"}}'

# A terminal status in wire order, with an error and metadata.
TERMINAL_STATUS: Dict[str, Any] = {
    "task_id": "t1",
    "handle_id": "t1",
    "status": "failed",
    "created_at": "2026-04-23T10:00:00.120Z",
    "updated_at": "2026-04-23T10:00:00.512Z",
    "started_at": "2026-04-23T10:00:00.301Z",
    "finished_at": "2026-04-23T10:00:00.512Z",
    "duration_ms": 205,
    "shim_pid": 41001,
    "pid": 41003,
    "pgid": 41003,
    "exit_code": 3,
    "stdout": "h\u00e9llo \u2713\n",
    "stderr": "",
    "stdout_truncated": False,
    "stderr_truncated": False,
    "error": {"code": "exit_nonzero", "message": "process exited with code 3"},
    "usage": {"duration_ms": 205, "user_cpu_ms": 1, "system_cpu_ms": 2, "max_rss_bytes": 3407872},
    "execution_plan": {
        "capability_mode": "adaptive",
        "requested_sandbox": {"profile": "process", "chroot": False},
        "effective_sandbox": {"profile": "process", "chroot": False},
        "resource_enforcement": {
            "wall_time_ms": 300000,
            "cpu_time_enforced": False,
            "memory_enforced": False,
            "pids_enforced": False,
            "cgroup_enforced": False,
            "oom_detection": False,
        },
        "degraded": False,
        "capability_warnings": ["no sandbox"],
    },
    "reservation": {"task_slots": 1},
    "artifacts": {
        "task_dir": "/d/tasks/t1",
        "request_path": "/d/tasks/t1/request.json",
        "result_path": "/d/tasks/t1/result.json",
        "stdout_path": "/d/tasks/t1/stdout.log",
        "stderr_path": "/d/tasks/t1/stderr.log",
    },
    "metadata": {"a": "1", "b": "2"},
}


def pretty(value: Any) -> bytes:
    """
    What C{wait}/C{run} print for C{value}: 2-space JSON, raw UTF-8, newline.
    """
    return json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def status_body(status: str, **changes: Any) -> bytes:
    """
    A compact status body for task C{t1} in state C{status}.
    """
    value = dict(TERMINAL_STATUS, status=status, **changes)
    if status not in ("failed", "cancelled"):
        value.pop("error")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class CliTestMixin:
    """
    Run the CLI against a L{FakeWorld}.
    """

    def invoke(
        self,
        args: Sequence[str],
        world: Optional[FakeWorld] = None,
        env: Optional[Mapping[str, Optional[str]]] = None,
    ) -> Result:
        """
        Run C{execgo-runtime <args>} with C{EXECGO_RUNTIME_OWNER} unset unless
        C{env} sets it.
        """
        world = world if world is not None else FakeWorld()
        environ: Dict[str, Optional[str]] = {"EXECGO_RUNTIME_OWNER": None}
        environ.update(env or {})
        return CliRunner().invoke(
            cli,
            list(args),
            obj=world.environment(),
            env=environ,
            prog_name="execgo-runtime",
        )

    def assertFailure(self, result: Result, line: str, stdout: bytes = b"") -> None:
        """
        The command exited 1 with exactly C{line} on stderr and C{stdout} on
        stdout.
        """
        self.assertEqual((result.exit_code, result.stderr), (1, line + "\n"), result.output)  # type: ignore[attr-defined]
        self.assertEqual(result.stdout_bytes, stdout)  # type: ignore[attr-defined]
        self.assertIsInstance(result.exception, SystemExit)  # type: ignore[attr-defined]

    def assertUsageError(self, result: Result, needle: str) -> None:
        """
        The command exited 2 with click's message containing C{needle} and a
        usage hint on stderr, nothing on stdout.
        """
        self.assertEqual(result.exit_code, 2, result.output)  # type: ignore[attr-defined]
        self.assertIn(needle, result.stderr)  # type: ignore[attr-defined]
        self.assertIn("Usage: execgo-runtime", result.stderr)  # type: ignore[attr-defined]
        self.assertEqual(result.stdout_bytes, b"")  # type: ignore[attr-defined]


class GlobalBehaviourTests(CliTestMixin, SynchronousTestCase):
    """
    Help, version and usage errors (C{docs/cli.md} section 1).
    """

    def test_top_level_help(self) -> None:
        """
        C{-h} and C{--help} print help listing the client subcommands on
        stdout and exit 0.
        """
        for flag in ("-h", "--help"):
            result = self.invoke([flag])
            self.assertEqual(result.exit_code, 0)
            self.assertIn("Usage: execgo-runtime", result.stdout)
            for name in ("submit", "status", "wait", "kill", "run"):
                self.assertIn(f"  {name} ", result.stdout)
            self.assertNotIn("internal-shim", result.stdout)
            self.assertEqual(result.stderr, "")

    def test_subcommand_help(self) -> None:
        """
        Every client subcommand accepts C{-h} and C{--help}.
        """
        for name in ("submit", "status", "wait", "kill", "run"):
            for flag in ("-h", "--help"):
                result = self.invoke([name, flag])
                self.assertEqual(result.exit_code, 0, (name, flag, result.output))
                self.assertTrue(
                    result.stdout.startswith(f"Usage: execgo-runtime {name} "), result.stdout
                )

    def test_help_documents_owner_variable(self) -> None:
        """
        The help of C{kill} names C{EXECGO_RUNTIME_OWNER}.
        """
        self.assertIn("EXECGO_RUNTIME_OWNER", self.invoke(["kill", "-h"]).stdout)

    def test_version(self) -> None:
        """
        C{-V} and C{--version} print C{execgo-runtime <version>} and exit 0.
        """
        for flag in ("-V", "--version"):
            result = self.invoke([flag])
            self.assertEqual(
                (result.exit_code, result.stdout), (0, f"execgo-runtime {__version__}\n")
            )

    def test_unknown_option(self) -> None:
        """
        An unknown option is a usage error: exit 2, no request.
        """
        world = FakeWorld()
        self.assertUsageError(self.invoke(["status", "--bogus", "x"], world), "--bogus")
        self.assertEqual(world.calls, [])

    def test_unknown_subcommand(self) -> None:
        """
        An unknown subcommand is a usage error.
        """
        self.assertUsageError(self.invoke(["frobnicate"]), "frobnicate")

    def test_missing_argument(self) -> None:
        """
        A missing TASK_ID is a usage error for status, wait and kill.
        """
        for name in ("status", "wait", "kill"):
            self.assertUsageError(self.invoke([name]), "TASK_ID")

    def test_numeric_options_are_decimal_uints(self) -> None:
        """
        Numeric options accept only non-negative decimal integers that fit in
        64 bits; anything else is a usage error and nothing is sent.
        """
        world = FakeWorld()
        for bad in ("-1", "1.5", "+5", "1_0", "0x10", " 5", "", "abc", str(2**64)):
            for option in ("--timeout-ms", "--poll-interval-ms"):
                result = self.invoke(["wait", f"{option}={bad}", "t1"], world)
                self.assertUsageError(result, option)
        self.assertEqual(world.calls, [])

    def test_largest_uint_accepted(self) -> None:
        """
        2**64-1 is a valid numeric option value.
        """
        world = FakeWorld([ok(status_body("success"))])
        result = self.invoke(["wait", "--timeout-ms", str(2**64 - 1), "t1"], world)
        self.assertEqual(result.exit_code, 0, result.output)

    def test_options_after_positional(self) -> None:
        """
        Options may follow the positional argument, and C{--name=value} works.
        """
        world = FakeWorld([ok(b"{}")])
        result = self.invoke(["status", "t1", "--server=http://h:1"], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(world.calls[0].url, "http://h:1/api/v1/tasks/t1")

    def test_transport_error(self) -> None:
        """
        A server that cannot be reached gives one C{http error} line, exit 1.
        """
        world = FakeWorld([TransportError("connection refused (127.0.0.1:8080)")])
        self.assertFailure(
            self.invoke(["status", "t1"], world),
            "http error: connection refused (127.0.0.1:8080)",
        )

    def test_unexpected_error_is_one_line(self) -> None:
        """
        Even an unexpected exception ends as one C{internal error} line and
        exit 1, never a traceback.
        """
        world = FakeWorld([RuntimeError("boom\nsecond line")])
        result = self.invoke(["status", "t1"], world)
        self.assertFailure(result, "internal error: RuntimeError: boom second line")
        self.assertNotIn("Traceback", result.output)


class ServerUrlTests(CliTestMixin, SynchronousTestCase):
    """
    C{--server} handling (C{docs/cli.md} section 2).
    """

    def url_for(self, server: str, task_id: str = "t1") -> str:
        world = FakeWorld([ok(b"{}")])
        result = self.invoke(["status", "--server", server, task_id], world)
        self.assertEqual(result.exit_code, 0, result.output)
        return world.calls[0].url

    def test_default(self) -> None:
        """
        Without C{--server} the CLI talks to C{http://127.0.0.1:8080}.
        """
        self.assertEqual(self.url_for(SERVER), f"{TASKS}/t1")
        world = FakeWorld([ok(b"{}")])
        self.invoke(["status", "t1"], world)
        self.assertEqual(world.calls[0].url, f"{TASKS}/t1")

    def test_trailing_slashes_stripped(self) -> None:
        """
        Every trailing C{/} of the server URL is stripped.
        """
        self.assertEqual(self.url_for("http://h:8080/"), "http://h:8080/api/v1/tasks/t1")
        self.assertEqual(self.url_for("http://h:8080//"), "http://h:8080/api/v1/tasks/t1")

    def test_prefix_kept(self) -> None:
        """
        A path prefix in the server URL is kept; https is accepted.
        """
        self.assertEqual(
            self.url_for("https://h/prefix/"), "https://h/prefix/api/v1/tasks/t1"
        )

    def test_task_id_verbatim(self) -> None:
        """
        The task id is inserted as given, without percent-encoding.
        """
        self.assertEqual(self.url_for(SERVER, "a%2Fb.c"), f"{TASKS}/a%2Fb.c")


class SubmitTests(CliTestMixin, SynchronousTestCase):
    """
    C{submit} (C{docs/cli.md} section 4).
    """

    def test_json(self) -> None:
        """
        C{--json} is decoded, normalised and POSTed compactly; the response
        body is printed verbatim plus a newline.
        """
        world = FakeWorld([ok(SUBMITTED)])
        result = self.invoke(["submit", "--json", MINIMAL], world)
        self.assertEqual((result.exit_code, result.stderr), (0, ""))
        self.assertEqual(result.stdout_bytes, SUBMITTED + b"\n")
        [call] = world.calls
        self.assertEqual((call.method, call.url, call.body), ("POST", TASKS, MINIMAL_NORMALISED))
        self.assertEqual(call.headers["Content-Type"], "application/json")

    def test_file(self) -> None:
        """
        C{--file} reads the request from a file.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(MINIMAL)
        world = FakeWorld([ok(SUBMITTED)])
        result = self.invoke(["submit", "--file", path], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(world.calls[0].body, MINIMAL_NORMALISED)

    def test_normalisation(self) -> None:
        """
        Unknown keys are dropped at every level, absent optional fields are
        left out, and given values are kept; server-side validation rules
        (here a blank program) are not applied locally.
        """
        request = {
            "bogus": 1,
            "task_id": "x1",
            "execution": {"kind": "command", "program": " ", "junk": [1], "env": {"B": "2", "A": "1"}},
            "limits": {"wall_time_ms": 5, "memory_bytes": None, "what": 1},
            "policy": {"capability_mode": "strict"},
            "metadata": {"k": "v"},
        }
        world = FakeWorld([ok(SUBMITTED)])
        result = self.invoke(["submit", "--json", json.dumps(request)], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(
            json.loads(world.calls[0].body),
            {
                "task_id": "x1",
                "execution": {"kind": "command", "program": " ", "args": [], "env": {"A": "1", "B": "2"}},
                "limits": {"wall_time_ms": 5, "stdout_max_bytes": 4194304, "stderr_max_bytes": 4194304},
                "sandbox": {"profile": "process", "chroot": False},
                "policy": {"capability_mode": "strict"},
                "metadata": {"k": "v"},
            },
        )

    def test_batch(self) -> None:
        """
        C{--batch} takes C{{"tasks": [...]}} or the array alone, normalises
        each request and POSTs one batch; the answer is printed verbatim and
        the exit status is 0 only when every task was accepted.
        """
        accepted = b'{"results":[{"http_status":200,"body":' + SUBMITTED + b"}]}"
        for document in (f"[{MINIMAL}]", f'{{"tasks":[{MINIMAL}],"other":1}}'):
            world = FakeWorld([ok(accepted)])
            result = self.invoke(["submit", "--batch", "--json", document], world)
            self.assertEqual((result.exit_code, result.stderr), (0, ""))
            self.assertEqual(result.stdout_bytes, accepted + b"\n")
            [call] = world.calls
            self.assertEqual((call.method, call.url), ("POST", TASKS + "/batch"))
            self.assertEqual(call.body, b'{"tasks":[' + MINIMAL_NORMALISED + b"]}")
        refused = b'{"results":[{"http_status":200,"body":{}},{"http_status":429,"body":{}}]}'
        world = FakeWorld([ok(refused)])
        result = self.invoke(["submit", "--batch", "--json", f"[{MINIMAL},{MINIMAL}]"], world)
        self.assertEqual((result.exit_code, result.stderr), (1, "refused: 1 of 2 tasks were not accepted\n"))
        self.assertEqual(result.stdout_bytes, refused + b"\n")

    def test_batch_refused_locally(self) -> None:
        """
        A batch whose envelope or one of whose requests cannot be decoded,
        and an answer that is not a batch answer, exit 1 with one line; in
        the first two cases nothing is sent.
        """
        for document, line in (
            ("[]", "invalid input: tasks: a batch holds at least one task\n"),
            ('{"task":[]}', "invalid input: tasks: missing required field\n"),
            (
                f'[{MINIMAL},{{"execution":1}}]',
                "invalid input: tasks[1]: execution: expected an object, got an integer\n",
            ),
        ):
            world = FakeWorld()
            result = self.invoke(["submit", "--batch", "--json", document], world)
            self.assertEqual((result.exit_code, result.stderr), (1, line), document)
            self.assertEqual(world.calls, [])
        world = FakeWorld([ok(SUBMITTED)])
        result = self.invoke(["submit", "--batch", "--json", f"[{MINIMAL}]"], world)
        self.assertEqual(result.exit_code, 1)
        self.assertEqual(result.stderr, "internal error: the server's answer to the batch is not a batch answer\n")

    def test_non_ascii_sent_as_utf8(self) -> None:
        """
        Non-ASCII text is sent as raw UTF-8, not escaped.
        """
        world = FakeWorld([ok(SUBMITTED)])
        text = '{"execution":{"kind":"command","program":"/bin/echo","args":["\u00e9"]}}'
        self.invoke(["submit", "--json", text], world)
        self.assertIn('"args":["\u00e9"]'.encode("utf-8"), world.calls[0].body)

    def test_both_or_neither(self) -> None:
        """
        Giving both C{--file} and C{--json}, or neither, is a usage error and
        nothing is sent.
        """
        world = FakeWorld()
        self.assertUsageError(
            self.invoke(["submit", "--json", MINIMAL, "--file", "x.json"], world), "--json"
        )
        self.assertUsageError(self.invoke(["submit"], world), "--json")
        self.assertEqual(world.calls, [])

    def test_bad_json(self) -> None:
        """
        Text that is not JSON exits 1 with one C{json error} line before any
        request.
        """
        world = FakeWorld()
        result = self.invoke(["submit", "--json", "{not json"], world)
        self.assertEqual(result.exit_code, 1)
        self.assertTrue(result.stderr.startswith("json error: "), result.stderr)
        self.assertEqual(result.stderr.count("\n"), 1)
        self.assertEqual((result.stdout_bytes, world.calls), (b"", []))

    def test_schema_error(self) -> None:
        """
        JSON of the wrong shape exits 1 with one C{invalid input} line before
        any request.
        """
        world = FakeWorld()
        negative = '{"execution":{"kind":"command","program":"/bin/true"},"limits":{"wall_time_ms":-1}}'
        for text in ('{"task_id":"x"}', "[]", negative):
            result = self.invoke(["submit", "--json", text], world)
            self.assertEqual(result.exit_code, 1, text)
            self.assertTrue(result.stderr.startswith("invalid input: "), result.stderr)
            self.assertEqual(result.stderr.count("\n"), 1)
        self.assertEqual(world.calls, [])

    def test_unreadable_file(self) -> None:
        """
        A file that cannot be read exits 1 with one C{io error} line.
        """
        world = FakeWorld()
        path = os.path.join(self.mktemp(), "missing.json")
        result = self.invoke(["submit", "--file", path], world)
        self.assertFailure(result, f"io error: No such file or directory: {path}")
        self.assertEqual(world.calls, [])

    def test_error_status(self) -> None:
        """
        A non-2xx answer prints the body verbatim on stdout and exits 1 with
        the canonical status line on stderr.
        """
        envelope = b'{"error":{"code":"invalid_input","message":"invalid input: x"}}'
        for status, line in (
            (400, "400 Bad Request"),
            (409, "409 Conflict"),
            (413, "413 Payload Too Large"),
            (422, "422 Unprocessable Entity"),
            (429, "429 Too Many Requests"),
            (599, "599 Odd"),
        ):
            world = FakeWorld([Response(status, "Odd", envelope)])
            result = self.invoke(["submit", "--json", MINIMAL], world)
            self.assertFailure(
                result, f"internal error: request failed with status {line}", envelope + b"\n"
            )

    def test_wait_options_ignored(self) -> None:
        """
        C{--poll-interval-ms} and C{--timeout-ms} are accepted and ignored:
        one request, no sleep.
        """
        world = FakeWorld([ok(SUBMITTED)])
        result = self.invoke(
            ["submit", "--json", MINIMAL, "--timeout-ms", "0", "--poll-interval-ms", "1"], world
        )
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual((len(world.calls), world.sleeps), (1, []))


class StatusAndKillTests(CliTestMixin, SynchronousTestCase):
    """
    C{status} and C{kill} (C{docs/cli.md} sections 5 and 7).
    """

    def test_status_verbatim(self) -> None:
        """
        C{status} GETs the task and prints the body byte for byte (unknown
        keys, order and invalid UTF-8 untouched) plus a newline.
        """
        body = b'{"z":1,"task_id":"t1","bad":"\xff"}'
        world = FakeWorld([ok(body)])
        result = self.invoke(["status", "t1"], world)
        self.assertEqual((result.exit_code, result.stdout_bytes), (0, body + b"\n"))
        self.assertEqual((world.calls[0].method, world.calls[0].url), ("GET", f"{TASKS}/t1"))

    def test_status_not_found(self) -> None:
        """
        An unknown task prints the envelope and exits 1.
        """
        world = FakeWorld([Response(404, "Not Found", NOT_FOUND)])
        self.assertFailure(
            self.invoke(["status", "nope"], world),
            "internal error: request failed with status 404 Not Found",
            NOT_FOUND + b"\n",
        )

    def test_kill_without_owner(self) -> None:
        """
        C{kill} POSTs an empty body to C{.../kill} without an owner header.
        """
        world = FakeWorld([ok(b'{"status":"cancelled"}')])
        result = self.invoke(["kill", "t1"], world)
        self.assertEqual((result.exit_code, result.stdout_bytes), (0, b'{"status":"cancelled"}\n'))
        [call] = world.calls
        self.assertEqual((call.method, call.url, call.body), ("POST", f"{TASKS}/t1/kill", b""))
        self.assertNotIn("x-execgo-owner", call.headers)

    def owner_header(self, args: Sequence[str], env: Optional[Mapping[str, Optional[str]]] = None) -> Optional[str]:
        world = FakeWorld([ok(b"{}")])
        result = self.invoke(["kill", *args, "t1"], world, env)
        self.assertEqual(result.exit_code, 0, result.output)
        return world.calls[0].headers.get("x-execgo-owner")

    def test_owner_trimmed(self) -> None:
        """
        C{--owner} is trimmed and sent as C{x-execgo-owner}.
        """
        self.assertEqual(self.owner_header(["--owner", "  alice \t"]), "alice")

    def test_owner_env(self) -> None:
        """
        C{EXECGO_RUNTIME_OWNER} is used when C{--owner} is absent; the option
        wins when both are given.
        """
        self.assertEqual(self.owner_header([], {"EXECGO_RUNTIME_OWNER": " bob "}), "bob")
        self.assertEqual(
            self.owner_header(["--owner", "carol"], {"EXECGO_RUNTIME_OWNER": "bob"}), "carol"
        )

    def test_blank_owner(self) -> None:
        """
        A blank owner, from the option or the variable, sends no header.
        """
        self.assertIsNone(self.owner_header(["--owner", "   "]))
        self.assertIsNone(self.owner_header(["--owner", ""]))
        self.assertIsNone(self.owner_header([], {"EXECGO_RUNTIME_OWNER": "  "}))

    def test_kill_forbidden(self) -> None:
        """
        A 403 prints the envelope and exits 1.
        """
        envelope = b'{"error":{"code":"permission_denied","message":"permission denied: x"}}'
        world = FakeWorld([Response(403, "Forbidden", envelope)])
        self.assertFailure(
            self.invoke(["kill", "--owner", "eve", "t1"], world),
            "internal error: request failed with status 403 Forbidden",
            envelope + b"\n",
        )


class WaitTests(CliTestMixin, SynchronousTestCase):
    """
    C{wait} (C{docs/cli.md} section 6).
    """

    def test_terminal_pretty(self) -> None:
        """
        A terminal status is pretty-printed (2-space indentation, raw UTF-8)
        and exits 0 even though the task failed.
        """
        world = FakeWorld([ok(status_body("failed"))])
        result = self.invoke(["wait", "t1"], world)
        self.assertEqual((result.exit_code, result.stderr), (0, ""))
        self.assertEqual(result.stdout_bytes, pretty(TERMINAL_STATUS))
        self.assertIn("h\u00e9llo \u2713".encode("utf-8"), result.stdout_bytes)
        self.assertIn(b'\n  "task_id": "t1",\n', result.stdout_bytes)

    def test_key_order_and_unknown_keys(self) -> None:
        """
        The printed status has keys in contract order at every level, no
        unknown keys, no nulls, sorted metadata, whatever the server sent.
        """
        scrambled = {key: TERMINAL_STATUS[key] for key in reversed(list(TERMINAL_STATUS))}
        scrambled["zzz"] = 1
        scrambled["exit_signal"] = None
        scrambled["metadata"] = {"b": "2", "a": "1"}
        plan = dict(reversed(list(TERMINAL_STATUS["execution_plan"].items())))
        plan["resource_enforcement"] = dict(
            plan["resource_enforcement"], mechanisms={"memory_bytes": "cgroup_v1"}
        )
        plan["extra"] = {"x": 1}
        scrambled["execution_plan"] = plan
        scrambled["error"] = {"message": "process exited with code 3", "code": "exit_nonzero"}
        world = FakeWorld([ok(json.dumps(scrambled).encode())])
        result = self.invoke(["wait", "t1"], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(result.stdout_bytes, pretty(TERMINAL_STATUS))

    def test_polls_until_terminal(self) -> None:
        """
        Against a server that answers long-poll requests at once (one
        without long-poll), non-terminal answers are followed by a sleep of
        the poll interval and another request.
        """
        world = FakeWorld(
            [ok(status_body("accepted")), ok(status_body("running")), ok(status_body("success"))]
        )
        result = self.invoke(["wait", "t1"], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual([c.url for c in world.calls], [f"{TASKS}/t1?wait_ms=30000"] * 3)
        self.assertEqual(world.sleeps, [0.5, 0.5])
        world = FakeWorld([ok(status_body("running")), ok(status_body("cancelled"))])
        self.invoke(["wait", "--poll-interval-ms", "20", "t1"], world)
        self.assertEqual(world.sleeps, [0.02])

    def test_timeout(self) -> None:
        """
        Past the timeout, a non-terminal answer ends the wait: nothing on
        stdout, C{internal error: wait timeout exceeded}, exit 1.
        """
        world = FakeWorld([ok(status_body("running"))])
        result = self.invoke(["wait", "--timeout-ms", "1000", "--poll-interval-ms", "400", "t1"], world)
        self.assertFailure(result, "internal error: wait timeout exceeded")
        self.assertEqual((len(world.calls), world.sleeps), (4, [0.4, 0.4, 0.4]))

    def test_zero_timeout(self) -> None:
        """
        C{--timeout-ms 0} returns after the first non-terminal answer.
        """
        world = FakeWorld([ok(status_body("running"))])
        result = self.invoke(["wait", "--timeout-ms", "0", "t1"], world)
        self.assertFailure(result, "internal error: wait timeout exceeded")
        self.assertEqual((len(world.calls), world.sleeps), (1, []))
        self.assertEqual(world.calls[0].url, f"{TASKS}/t1?wait_ms=0")

    def test_timeout_checked_after_non_terminal_only(self) -> None:
        """
        A terminal answer wins even when it arrives after the timeout.
        """
        world = FakeWorld([ok(status_body("success"))], request_seconds=5.0)
        result = self.invoke(["wait", "--timeout-ms", "1000", "t1"], world)
        self.assertEqual(result.exit_code, 0, result.output)

    def test_clock_starts_before_first_request(self) -> None:
        """
        The time the first request takes counts against the timeout.
        """
        world = FakeWorld([ok(status_body("running"))], request_seconds=2.0)
        result = self.invoke(["wait", "--timeout-ms", "1500", "t1"], world)
        self.assertFailure(result, "internal error: wait timeout exceeded")
        self.assertEqual(len(world.calls), 1)

    def test_error_status(self) -> None:
        """
        A non-2xx answer while polling prints the body verbatim and exits 1.
        """
        world = FakeWorld([ok(status_body("running")), Response(404, "Not Found", NOT_FOUND)])
        self.assertFailure(
            self.invoke(["wait", "t1"], world),
            "internal error: request failed with status 404 Not Found",
            NOT_FOUND + b"\n",
        )

    def test_transport_error_no_retry(self) -> None:
        """
        A transport error while polling exits 1 at once.
        """
        world = FakeWorld([ok(status_body("running")), TransportError("connection refused (h:1)")])
        self.assertFailure(self.invoke(["wait", "t1"], world), "http error: connection refused (h:1)")
        self.assertEqual(len(world.calls), 2)

    def test_malformed_status(self) -> None:
        """
        A 2xx body that is not a task status exits 1 with a C{json error}.
        """
        bad_bodies = [
            b"not json",
            b"[]",
            status_body("running", task_id=None),
            status_body("sleeping"),
            status_body("success", exit_code="3"),
            status_body("success", pid=-1),
            status_body("success", stdout_truncated=1),
        ]
        for body in bad_bodies:
            result = self.invoke(["wait", "t1"], FakeWorld([ok(body)]))
            self.assertEqual(result.exit_code, 1, body)
            self.assertTrue(result.stderr.startswith("json error: "), result.stderr)
            self.assertEqual((result.stderr.count("\n"), result.stdout_bytes), (1, b""))


class RunTests(CliTestMixin, SynchronousTestCase):
    """
    C{run} (C{docs/cli.md} section 8).
    """

    def test_submit_then_wait(self) -> None:
        """
        C{run} POSTs the normalised request, then polls the returned task id
        and prints only the final status.
        """
        submitted = b'{"task_id":"gen-1","handle_id":"gen-1","status":"accepted"}'
        world = FakeWorld([ok(submitted), ok(status_body("running")), ok(status_body("success"))])
        result = self.invoke(["run", "--json", MINIMAL], world)
        self.assertEqual(result.exit_code, 0, result.output)
        expected = dict(TERMINAL_STATUS, status="success")
        del expected["error"]
        self.assertEqual(result.stdout_bytes, pretty(expected))
        self.assertEqual(
            [(c.method, c.url) for c in world.calls],
            [
                ("POST", TASKS),
                ("GET", f"{TASKS}/gen-1?wait_ms=30000"),
                ("GET", f"{TASKS}/gen-1?wait_ms=30000"),
            ],
        )
        self.assertEqual(world.calls[0].body, MINIMAL_NORMALISED)

    def test_clock_starts_after_submission(self) -> None:
        """
        The submission does not count against the wait timeout.
        """
        world = FakeWorld([ok(SUBMITTED), ok(status_body("running"))], request_seconds=2.0)
        result = self.invoke(["run", "--json", MINIMAL, "--timeout-ms", "3000"], world)
        self.assertFailure(result, "internal error: wait timeout exceeded")
        self.assertEqual(len(world.calls), 3)

    def test_submit_rejected(self) -> None:
        """
        A rejected submission prints the envelope and exits 1 without polling.
        """
        envelope = b'{"error":{"code":"resource_limit_exceeded","message":"queue is full"}}'
        world = FakeWorld([Response(429, "Too Many Requests", envelope)])
        self.assertFailure(
            self.invoke(["run", "--json", MINIMAL], world),
            "internal error: request failed with status 429 Too Many Requests",
            envelope + b"\n",
        )
        self.assertEqual(len(world.calls), 1)

    def test_submit_answer_without_task_id(self) -> None:
        """
        A 2xx submit answer without a task id exits 1 with a C{json error}.
        """
        result = self.invoke(["run", "--json", MINIMAL], FakeWorld([ok(b'{"status":"accepted"}')]))
        self.assertEqual(result.exit_code, 1)
        self.assertTrue(result.stderr.startswith("json error: "), result.stderr)

    def test_bad_input_sends_nothing(self) -> None:
        """
        C{run} decodes like C{submit}: bad input exits 1 with no request, and
        both/neither inputs are usage errors.
        """
        world = FakeWorld()
        self.assertEqual(self.invoke(["run", "--json", "{"], world).exit_code, 1)
        self.assertUsageError(self.invoke(["run"], world), "--json")
        self.assertEqual(world.calls, [])


class LongPollTests(CliTestMixin, SynchronousTestCase):
    """
    C{wait} and C{run} long-poll (C{docs/cli.md} section 6): each request
    carries C{wait_ms} capped by what is left of the timeout, and a server
    that holds the request is asked again without sleeping.
    """

    def test_held_requests_do_not_sleep(self) -> None:
        """
        Against a server that holds each request for its C{wait_ms}, the
        next request follows at once.
        """
        running = status_body("running")
        world = FakeWorld(
            [
                lambda w, c: held(w, c, running),
                lambda w, c: held(w, c, running),
                ok(status_body("success")),
            ]
        )
        result = self.invoke(["wait", "t1"], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(world.sleeps, [])
        self.assertEqual([c.url for c in world.calls], [f"{TASKS}/t1?wait_ms=30000"] * 3)

    def test_wait_capped_by_timeout(self) -> None:
        """
        C{wait_ms} never asks for more than what is left of the timeout, so
        the command ends near it: with a holding server, 45 s become one
        request of 30 s and one of 15 s, then the timeout.
        """
        running = status_body("running")
        world = FakeWorld([lambda w, c: held(w, c, running)])
        result = self.invoke(["wait", "--timeout-ms", "45000", "t1"], world)
        self.assertFailure(result, "internal error: wait timeout exceeded")
        self.assertEqual(
            [c.url for c in world.calls],
            [f"{TASKS}/t1?wait_ms=30000", f"{TASKS}/t1?wait_ms=15000"],
        )
        self.assertEqual((world.now - 1000.0, world.sleeps), (45.0, []))

    def test_short_timeout_one_request(self) -> None:
        """
        A timeout shorter than the long-poll time is the C{wait_ms} of the
        first request, and its non-terminal answer ends the wait.
        """
        world = FakeWorld([lambda w, c: held(w, c, status_body("accepted"))])
        result = self.invoke(["wait", "--timeout-ms", "1200", "t1"], world)
        self.assertFailure(result, "internal error: wait timeout exceeded")
        self.assertEqual([c.url for c in world.calls], [f"{TASKS}/t1?wait_ms=1200"])

    def test_run_long_polls(self) -> None:
        """
        C{run} waits with the same long-poll requests after submitting.
        """
        world = FakeWorld(
            [ok(SUBMITTED), lambda w, c: held(w, c, status_body("running")), ok(status_body("success"))]
        )
        result = self.invoke(["run", "--json", MINIMAL, "--timeout-ms", "60000"], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(
            [c.url for c in world.calls[1:]],
            [f"{TASKS}/t1?wait_ms=30000", f"{TASKS}/t1?wait_ms=30000"],
        )
        self.assertEqual(world.sleeps, [])


class ExitCodeTests(CliTestMixin, SynchronousTestCase):
    """
    C{--exit-code} on C{wait} and C{run}, and L{task_exit_code}.
    """

    CASES = (
        ({"status": "success", "exit_code": 0}, 0),
        ({"status": "failed", "exit_code": 3, "error": {"code": "exit_nonzero"}}, 3),
        ({"status": "failed", "exit_code": 300, "error": {"code": "exit_nonzero"}}, 44),
        ({"status": "failed", "exit_code": 256, "error": {"code": "exit_nonzero"}}, 1),
        ({"status": "failed", "exit_signal": 9, "error": {"code": "memory_limit_exceeded"}}, 137),
        ({"status": "cancelled", "exit_signal": 15, "error": {"code": "cancelled"}}, 143),
        ({"status": "cancelled", "exit_code": 0, "error": {"code": "cancelled"}}, 1),
        ({"status": "cancelled", "error": {"code": "cancelled"}}, 1),
        ({"status": "failed", "exit_signal": 15, "error": {"code": "timeout"}}, 1),
        ({"status": "failed", "exit_code": 2, "error": {"code": "timeout"}}, 1),
        ({"status": "failed", "error": {"code": "launch_failed"}}, 1),
    )

    def test_mapping(self) -> None:
        """
        Success is 0; a timeout 1; else the exit code (mod 256), 128 plus
        the signal, or 1 when neither says how the task failed.
        """
        for status, code in self.CASES:
            self.assertEqual(task_exit_code(status), code, status)

    def status_body(self, status: Dict[str, Any]) -> bytes:
        value = dict(TERMINAL_STATUS)
        for key in ("exit_code", "exit_signal", "error"):
            value.pop(key, None)
        value.update(status)
        if "error" in value:
            value["error"] = dict(value["error"], message="m")
        return json.dumps(value).encode()

    def test_wait_exit_code(self) -> None:
        """
        With C{--exit-code}, C{wait} still prints the pretty status but exits
        with the task's code; without it, 0.
        """
        for status, code in self.CASES:
            body = self.status_body(status)
            result = self.invoke(["wait", "--exit-code", "t1"], FakeWorld([ok(body)]))
            self.assertEqual((result.exit_code, result.stderr), (code, ""), status)
            self.assertTrue(result.stdout.startswith('{\n  "task_id": "t1",'), result.stdout)
            result = self.invoke(["wait", "t1"], FakeWorld([ok(body)]))
            self.assertEqual(result.exit_code, 0, status)

    def test_run_exit_code(self) -> None:
        """
        C{run --exit-code} exits with the task's code.
        """
        body = self.status_body({"status": "failed", "exit_code": 7, "error": {"code": "exit_nonzero"}})
        result = self.invoke(["run", "--exit-code", "--json", MINIMAL], FakeWorld([ok(SUBMITTED), ok(body)]))
        self.assertEqual(result.exit_code, 7, result.output)

    def test_errors_still_exit_1(self) -> None:
        """
        A wait timeout or an HTTP error exits 1 with or without
        C{--exit-code}.
        """
        world = FakeWorld([ok(status_body("running"))])
        result = self.invoke(["wait", "--exit-code", "--timeout-ms", "0", "t1"], world)
        self.assertFailure(result, "internal error: wait timeout exceeded")


class ElapsedTests(CliTestMixin, SynchronousTestCase):
    """
    C{wait} and C{run} write the elapsed time on stderr only when it is a
    terminal.
    """

    def test_wait_on_terminal(self) -> None:
        """
        With stderr a terminal, a final C{elapsed N.NNNs} line follows the
        status; stdout is unchanged.
        """
        world = FakeWorld([ok(status_body("running")), ok(status_body("success"))], tty=True)
        world.request_seconds = 0.25
        result = self.invoke(["wait", "--poll-interval-ms", "1000", "t1"], world)
        self.assertEqual((result.exit_code, result.stderr), (0, "elapsed 1.500s\n"))
        self.assertTrue(result.stdout.startswith("{\n"))

    def test_not_when_piped(self) -> None:
        """
        With stderr not a terminal, nothing is written there.
        """
        world = FakeWorld([ok(status_body("success"))], request_seconds=0.25)
        result = self.invoke(["wait", "t1"], world)
        self.assertEqual((result.exit_code, result.stderr), (0, ""))

    def test_run_counts_the_submission(self) -> None:
        """
        C{run} reports the time since the command started, submission
        included.
        """
        world = FakeWorld([ok(SUBMITTED), ok(status_body("success"))], request_seconds=0.5, tty=True)
        result = self.invoke(["run", "--json", MINIMAL], world)
        self.assertEqual(result.stderr, "elapsed 1.000s\n")

    def test_default_checks_real_stderr(self) -> None:
        """
        The default C{stderr_isatty} asks the process's stderr: not a
        terminal under C{CliRunner}, so no elapsed line.
        """
        self.assertEqual(CliEnvironment().stderr_isatty(), sys.stderr.isatty())
        world = FakeWorld([ok(status_body("success"))])
        environment = attrs.evolve(world.environment(), stderr_isatty=CliEnvironment().stderr_isatty)
        result = CliRunner().invoke(cli, ["wait", "t1"], obj=environment)
        self.assertEqual((result.exit_code, result.stderr), (0, ""))


class RunFollowTests(CliTestMixin, SynchronousTestCase):
    """
    C{run --follow}: the task's output live, then a summary on stderr.
    """

    def test_streams_then_summary(self) -> None:
        """
        The task's stdout goes to stdout and its stderr to stderr as the
        streams deliver them; then the final status is fetched and a one
        line summary ends stderr; the exit status is 0.
        """
        world = FakeWorld(
            [ok(SUBMITTED), ok(status_body("failed"))],
            streams={
                "stdout": [Attempt((b"hel", b"lo\n"))],
                "stderr": [Attempt((b"warn\n",))],
            },
        )
        result = self.invoke(["run", "--follow", "--json", MINIMAL], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(result.stdout_bytes, b"hello\n")
        self.assertEqual(
            result.stderr,
            "warn\ntask t1 failed error=exit_nonzero exit_code=3 duration_ms=205\n",
        )
        self.assertEqual(world.urls("stdout"), ["t1/stdout?offset=0&follow=true"])
        self.assertEqual(world.urls("stderr"), ["t1/stderr?offset=0&follow=true"])
        self.assertEqual(world.calls[-1].url, f"{TASKS}/t1?wait_ms=30000")

    def test_exit_code(self) -> None:
        """
        C{--follow --exit-code} exits with the task's own code.
        """
        world = FakeWorld(
            [ok(SUBMITTED), ok(status_body("failed"))],
            streams={"stdout": [Attempt()], "stderr": [Attempt()]},
        )
        result = self.invoke(["run", "--follow", "--exit-code", "--json", MINIMAL], world)
        self.assertEqual(result.exit_code, 3, result.output)

    def test_stream_error(self) -> None:
        """
        A stream answered with an error prints its body once and exits 1.
        """
        world = FakeWorld(
            [ok(SUBMITTED)],
            streams={
                "stdout": [Attempt(end=Response(404, "Not Found", NOT_FOUND))],
                "stderr": [Attempt()],
            },
        )
        result = self.invoke(["run", "--follow", "--json", MINIMAL], world)
        self.assertFailure(
            result,
            "internal error: request failed with status 404 Not Found",
            NOT_FOUND + b"\n",
        )

    def test_timeout(self) -> None:
        """
        With C{--timeout-ms}, streams still open when it passes end the
        command: C{wait timeout exceeded}, exit 1.
        """
        release = threading.Event()
        self.addCleanup(release.set)
        world = FakeWorld(
            [ok(SUBMITTED)],
            streams={"stdout": [Attempt(block=release)], "stderr": [Attempt(block=release)]},
        )
        result = self.invoke(["run", "--follow", "--timeout-ms", "0", "--json", MINIMAL], world)
        self.assertFailure(result, "internal error: wait timeout exceeded")


class LogsTests(CliTestMixin, SynchronousTestCase):
    """
    C{logs}: a task's output, whole or followed.
    """

    def test_both_streams(self) -> None:
        """
        By default both logs are fetched once (C{follow=false}): stdout's
        bytes to stdout and stderr's to stderr, untouched.
        """
        world = FakeWorld(
            streams={"stdout": [Attempt((b"out \xff\n",))], "stderr": [Attempt((b"err\n",))]}
        )
        result = self.invoke(["logs", "t1"], world)
        self.assertEqual((result.exit_code, result.stdout_bytes), (0, b"out \xff\n"))
        self.assertEqual(result.stderr, "err\n")
        self.assertEqual(world.urls("stdout"), ["t1/stdout?offset=0&follow=false"])
        self.assertEqual(world.urls("stderr"), ["t1/stderr?offset=0&follow=false"])
        self.assertEqual(world.stream_calls[0].headers["Accept"], "*/*")

    def test_one_stream_offset_follow(self) -> None:
        """
        C{--stream}, C{--offset} and C{-f} select the log, the first byte
        and following.
        """
        world = FakeWorld(streams={"stderr": [Attempt((b"tail",))]})
        result = self.invoke(["logs", "--stream", "stderr", "--offset", "12", "-f", "t1"], world)
        self.assertEqual((result.exit_code, result.stderr, result.stdout), (0, "tail", ""))
        self.assertEqual(world.urls("stderr"), ["t1/stderr?offset=12&follow=true"])
        world = FakeWorld(streams={"stdout": [Attempt()], "stderr": [Attempt()]})
        self.assertEqual(self.invoke(["logs", "--follow", "t1"], world).exit_code, 0)
        self.assertEqual(world.urls("stdout"), ["t1/stdout?offset=0&follow=true"])

    def test_unknown_task(self) -> None:
        """
        A 404 prints the envelope and exits 1.
        """
        world = FakeWorld(streams={"stdout": [Attempt(end=Response(404, "Not Found", NOT_FOUND))]})
        self.assertFailure(
            self.invoke(["logs", "--stream", "stdout", "nope"], world),
            "internal error: request failed with status 404 Not Found",
            NOT_FOUND + b"\n",
        )

    def test_bad_stream(self) -> None:
        """
        An unknown C{--stream} is a usage error.
        """
        self.assertUsageError(self.invoke(["logs", "--stream", "both2", "t1"]), "--stream")

    def test_resume_after_break(self) -> None:
        """
        A stream that breaks off is resumed at once from the bytes received,
        so nothing is printed twice or missed.
        """
        world = FakeWorld(
            streams={
                "stdout": [
                    Attempt((b"abc",), StreamInterrupted("connection reset (h:1)")),
                    Attempt((b"de",), StreamInterrupted("connection reset (h:1)")),
                    Attempt((b"f\n",)),
                ]
            }
        )
        result = self.invoke(["logs", "--stream", "stdout", "-f", "--offset", "2", "t1"], world)
        self.assertEqual((result.exit_code, result.stdout_bytes), (0, b"abcdef\n"))
        self.assertEqual(
            world.urls("stdout"),
            [
                "t1/stdout?offset=2&follow=true",
                "t1/stdout?offset=5&follow=true",
                "t1/stdout?offset=7&follow=true",
            ],
        )
        self.assertEqual(world.sleeps, [])

    def test_quiet_stream_reconnects(self) -> None:
        """
        Read timeouts on a quiet stream never exhaust the retries.
        """
        quiet = [Attempt(end=StreamInterrupted("timed out", timed_out=True))] * 12
        world = FakeWorld(streams={"stdout": quiet + [Attempt((b"x",))]})
        result = self.invoke(["logs", "--stream", "stdout", "-f", "t1"], world)
        self.assertEqual((result.exit_code, result.stdout_bytes), (0, b"x"))
        self.assertEqual(len(world.stream_calls), 13)

    def test_retries_bounded(self) -> None:
        """
        Breaks without progress, and failed reconnections, are retried with
        a growing backoff at most five times in a row; then the last error
        ends the command.
        """
        broken = Attempt(end=StreamInterrupted("connection reset (h:1)"))
        refused = Attempt(end=TransportError("connection refused (h:1)"))
        world = FakeWorld(streams={"stdout": [broken, refused, broken, refused, broken, refused]})
        result = self.invoke(["logs", "--stream", "stdout", "-f", "t1"], world)
        self.assertFailure(result, "http error: connection refused (h:1)")
        self.assertEqual(world.sleeps, [0.25, 0.5, 1.0, 2.0, 2.0])

    def test_first_request_not_retried(self) -> None:
        """
        A server that cannot be reached at all fails at once.
        """
        world = FakeWorld(streams={"stdout": [Attempt(end=TransportError("connection refused (h:1)"))]})
        result = self.invoke(["logs", "--stream", "stdout", "-f", "t1"], world)
        self.assertFailure(result, "http error: connection refused (h:1)")
        self.assertEqual(len(world.stream_calls), 1)

    def test_token_on_streams(self) -> None:
        """
        C{--token} (or C{EXECGO_RUNTIME_TOKEN}) is sent on stream requests,
        which run in their own threads.
        """
        world = FakeWorld(streams={"stdout": [Attempt()], "stderr": [Attempt()]})
        result = self.invoke(["logs", "-f", "t1"], world, {"EXECGO_RUNTIME_TOKEN": "s3cret"})
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(
            [c.headers["Authorization"] for c in world.stream_calls], ["Bearer s3cret"] * 2
        )


EVENT_1 = b'{"seq":1,"task_id":"t1","event_type":"submitted","timestamp":"2026-04-23T10:00:00Z"}\n'
EVENT_7 = b'{"seq":7,"task_id":"t1","event_type":"finished","timestamp":"2026-04-23T10:00:01Z"}\n'


class EventsTests(CliTestMixin, SynchronousTestCase):
    """
    C{events}: the event log, whole or followed.
    """

    def test_verbatim(self) -> None:
        """
        Without C{--follow}, the JSON array is printed verbatim; C{--after-seq}
        becomes the query parameter.
        """
        body = b"[" + EVENT_1.strip() + b"]"
        world = FakeWorld([ok(body)])
        result = self.invoke(["events", "t1"], world)
        self.assertEqual((result.exit_code, result.stdout_bytes), (0, body + b"\n"))
        self.assertEqual(world.calls[0].url, f"{TASKS}/t1/events")
        world = FakeWorld([ok(b"[]")])
        self.invoke(["events", "--after-seq", "5", "t1"], world)
        self.assertEqual(world.calls[0].url, f"{TASKS}/t1/events?after_seq=5")

    def test_follow_lines(self) -> None:
        """
        With C{--follow}, each complete NDJSON line is printed as it comes,
        whatever the chunk boundaries; a break resumes after the last seq.
        """
        world = FakeWorld(
            streams={
                "events": [
                    Attempt((EVENT_1[:10], EVENT_1[10:] + EVENT_7[:5]), StreamInterrupted("reset")),
                    Attempt((EVENT_7,)),
                ]
            }
        )
        result = self.invoke(["events", "-f", "--after-seq", "0", "t1"], world)
        self.assertEqual((result.exit_code, result.stdout_bytes), (0, EVENT_1 + EVENT_7))
        self.assertEqual(
            world.urls("events"),
            ["t1/events?after_seq=0&follow=true", "t1/events?after_seq=1&follow=true"],
        )
        self.assertEqual(world.stream_calls[0].headers["Accept"], "application/x-ndjson")

    def test_malformed_line(self) -> None:
        """
        A line that is not an event exits 1 with a C{json error}.
        """
        world = FakeWorld(streams={"events": [Attempt((b'{"seq":"x"}\n',))]})
        result = self.invoke(["events", "--follow", "t1"], world)
        self.assertFailure(result, "json error: event line without an integer `seq`")

    def test_not_a_stream(self) -> None:
        """
        A server without event streams answers the JSON array, which ends
        without a newline: a C{json error}, not a silent success.
        """
        world = FakeWorld(streams={"events": [Attempt((b"[" + EVENT_1.strip() + b"]",))]})
        result = self.invoke(["events", "--follow", "t1"], world)
        self.assertFailure(result, "json error: the event stream ended in the middle of a line")

    def test_line_too_long(self) -> None:
        """
        A partial line longer than the limit exits 1 with a C{json error},
        after the complete lines before it were printed.
        """
        world = FakeWorld(streams={"events": [Attempt((EVENT_1 + b"x" * (MAX_EVENT_LINE + 1),))]})
        result = self.invoke(["events", "--follow", "t1"], world)
        self.assertFailure(result, f"json error: event line longer than {MAX_EVENT_LINE} bytes", EVENT_1)


PAGE_1 = b'{"tasks":[{"task_id":"b","status":"running"},{"task_id":"a","status":"success"}],"next_cursor":"c1"}'
PAGE_2 = b'{"tasks":[{"task_id":"\xc3\xa9","status":"failed"}],"next_cursor":null}'


class ListTests(CliTestMixin, SynchronousTestCase):
    """
    C{list}: pages of tasks.
    """

    def test_page_verbatim(self) -> None:
        """
        Without filters, C{GET /api/v1/tasks}; the page printed verbatim.
        """
        world = FakeWorld([ok(PAGE_1)])
        result = self.invoke(["list"], world)
        self.assertEqual((result.exit_code, result.stdout_bytes), (0, PAGE_1 + b"\n"))
        self.assertEqual(world.calls[0].url, TASKS)

    def test_filters(self) -> None:
        """
        Every filter becomes a percent-encoded query parameter, C{label}
        repeated, in a fixed order.
        """
        world = FakeWorld([ok(PAGE_2)])
        result = self.invoke(
            [
                "list", "--status", "failed", "--tenant", "team a", "--owner", "bob",
                "--label", "env:prod", "--label", "k:v:w", "--limit", "10", "--cursor", "x/y=",
            ],
            world,
        )
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(
            world.calls[0].url,
            f"{TASKS}?status=failed&tenant=team%20a&owner=bob&label=env%3Aprod"
            "&label=k%3Av%3Aw&limit=10&cursor=x%2Fy%3D",
        )

    def test_usage_errors(self) -> None:
        """
        An unknown status and a label without C{:} are usage errors.
        """
        self.assertUsageError(self.invoke(["list", "--status", "done"]), "--status")
        self.assertUsageError(self.invoke(["list", "--label", "env"]), "KEY:VALUE")
        self.assertUsageError(self.invoke(["list", "--label", ":prod"]), "KEY:VALUE")

    def test_all_pages(self) -> None:
        """
        C{--all} follows C{next_cursor} and prints one task a line.
        """
        world = FakeWorld([ok(PAGE_1), ok(PAGE_2)])
        result = self.invoke(["list", "--all", "--limit", "2"], world)
        self.assertEqual(result.exit_code, 0, result.output)
        self.assertEqual(
            result.stdout_bytes,
            b'{"task_id":"b","status":"running"}\n{"task_id":"a","status":"success"}\n'
            b'{"task_id":"\xc3\xa9","status":"failed"}\n',
        )
        self.assertEqual(
            [c.url for c in world.calls], [f"{TASKS}?limit=2", f"{TASKS}?limit=2&cursor=c1"]
        )

    def test_errors(self) -> None:
        """
        An error answer prints the envelope and exits 1; a page that is not
        one under C{--all} is a C{json error}.
        """
        envelope = b'{"error":{"code":"invalid_input","message":"invalid input: limit"}}'
        world = FakeWorld([Response(400, "Bad Request", envelope)])
        self.assertFailure(
            self.invoke(["list", "--limit", "0"], world),
            "internal error: request failed with status 400 Bad Request",
            envelope + b"\n",
        )
        result = self.invoke(["list", "--all"], FakeWorld([ok(b'{"next_cursor":null}')]))
        self.assertFailure(result, "json error: missing field `tasks` in the list page")


class RuntimeCommandTests(CliTestMixin, SynchronousTestCase):
    """
    C{info}, C{capabilities} and C{resources}.
    """

    def test_verbatim(self) -> None:
        """
        Each GETs its endpoint and prints the body verbatim plus a newline.
        """
        for name, path in (
            ("info", "/api/v1/runtime/info"),
            ("capabilities", "/api/v1/runtime/capabilities"),
            ("resources", "/api/v1/runtime/resources"),
        ):
            world = FakeWorld([ok(b'{"runtime_id":"n"}')])
            result = self.invoke([name, "--server", "http://h:1/p/"], world)
            self.assertEqual((result.exit_code, result.stdout), (0, '{"runtime_id":"n"}\n'))
            self.assertEqual((world.calls[0].method, world.calls[0].url), ("GET", f"http://h:1/p{path}"))

    def test_error(self) -> None:
        """
        An error answer (here a missing token) prints the body and exits 1.
        """
        envelope = b'{"error":{"code":"permission_denied","message":"unauthorized: unknown token"}}'
        world = FakeWorld([Response(401, "Unauthorized", envelope)])
        self.assertFailure(
            self.invoke(["info"], world),
            "internal error: request failed with status 401 Unauthorized",
            envelope + b"\n",
        )

    def test_help_lists_new_commands(self) -> None:
        """
        The top-level help lists the subcommands in C{docs/cli.md} order:
        C{logs}, C{events}, C{list}, C{info}, C{capabilities} and
        C{resources} after the task subcommands.
        """
        text = self.invoke(["--help"]).stdout
        names = ["submit", "status", "wait", "kill", "run", "logs", "events", "list", "info",
                 "capabilities", "resources"]
        positions = [text.index(f"  {name} ") for name in names]
        self.assertEqual(positions, sorted(positions))


class CompletionTests(CliTestMixin, SynchronousTestCase):
    """
    Shell completion through click's C{_EXECGO_RUNTIME_COMPLETE}.
    """

    def test_scripts(self) -> None:
        """
        C{bash_source}, C{zsh_source} and C{fish_source} print a script
        that completes C{execgo-runtime}.
        """
        for shell, needle in (
            ("bash", "complete -o nosort -F _execgo_runtime_completion execgo-runtime"),
            ("zsh", "compdef _execgo_runtime_completion execgo-runtime"),
            ("fish", "complete --no-files --command execgo-runtime"),
        ):
            result = self.invoke([], env={"_EXECGO_RUNTIME_COMPLETE": f"{shell}_source"})
            self.assertEqual(result.exit_code, 0, result.output)
            self.assertIn(needle, result.stdout)

    def test_completes_subcommands(self) -> None:
        """
        Completing C{execgo-runtime l} offers the subcommands starting with
        C{l}.
        """
        result = self.invoke(
            [],
            env={"_EXECGO_RUNTIME_COMPLETE": "bash_complete", "COMP_WORDS": "execgo-runtime l",
                 "COMP_CWORD": "1"},
        )
        self.assertEqual(result.stdout.split(), ["plain,logs", "plain,list"])


class OutputTests(SynchronousTestCase):
    """
    L{summary_line}.
    """

    def test_summary(self) -> None:
        """
        The summary names the task, its status, and the error code, exit
        details and duration it has.
        """
        self.assertEqual(
            summary_line({"task_id": "t", "status": "success", "exit_code": 0, "duration_ms": 5}),
            "task t success exit_code=0 duration_ms=5",
        )
        self.assertEqual(
            summary_line({"task_id": "t", "status": "cancelled", "error": {"code": "cancelled"},
                          "exit_signal": 15}),
            "task t cancelled error=cancelled exit_signal=15",
        )


class ParamTypeTests(SynchronousTestCase):
    """
    The parameter types and helpers C{execgo.cli.server} reuses.
    """

    def setUp(self) -> None:
        @click.command()
        @env_flag("--disable-thing", envvar="EXECGO_TEST_DISABLE_THING", help="Disable it.")
        @click.option("--count", type=UINT, default=3)
        def command(disable_thing: bool, count: int) -> None:
            click.echo(f"{disable_thing!r} {count}")

        @click.command()
        def failing() -> None:
            fail("io error", "disk\nfull")

        self.command = command
        self.failing = failing

    def run_command(self, args: Sequence[str], value: Optional[str]) -> Result:
        return CliRunner().invoke(self.command, list(args), env={"EXECGO_TEST_DISABLE_THING": value})

    def test_env_flag(self) -> None:
        """
        The variable must be exactly C{true} or C{false}; unset or empty
        means off; the flag on the command line wins.
        """
        self.assertEqual(self.run_command([], None).output, "False 3\n")
        self.assertEqual(self.run_command([], "").output, "False 3\n")
        self.assertEqual(self.run_command([], "true").output, "True 3\n")
        self.assertEqual(self.run_command([], "false").output, "False 3\n")
        self.assertEqual(self.run_command(["--disable-thing"], "false").output, "True 3\n")
        self.assertEqual(self.run_command(["--disable-thing"], "bogus").output, "True 3\n")
        for bad in ("TRUE", "1", "yes", "on", " true"):
            result = self.run_command([], bad)
            self.assertEqual(result.exit_code, 2, bad)
            self.assertIn("EXECGO_TEST_DISABLE_THING", result.stderr)

    def test_strict_bool_convert(self) -> None:
        """
        L{STRICT_BOOL} passes booleans through and parses only the two words.
        """
        self.assertIs(STRICT_BOOL.convert(True, None, None), True)
        self.assertIs(STRICT_BOOL.convert("false", None, None), False)
        self.assertRaises(click.BadParameter, STRICT_BOOL.convert, "False", None, None)

    def test_uint(self) -> None:
        """
        L{UINT} accepts decimal digits up to 2**64-1 only.
        """
        self.assertEqual(self.run_command(["--count", "0"], None).output, "False 0\n")
        self.assertEqual(UINT.convert(str(2**64 - 1), None, None), 2**64 - 1)
        for bad in (str(2**64), "-0", "1e3", "٣"):
            self.assertRaises(click.BadParameter, UINT.convert, bad, None, None)

    def test_fail(self) -> None:
        """
        L{fail} ends the command with exit 1 and exactly one line on stderr.
        """
        result = CliRunner().invoke(self.failing, [])
        self.assertEqual((result.exit_code, result.stderr), (1, "io error: disk full\n"))
        self.assertEqual(CliFailure("a", "b").format_message(), "a: b")


class _OneShotServer:
    """
    A loopback server that accepts one connection, records the request and
    writes a canned answer.
    """

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.received = b""
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            connection.settimeout(10)
            while b"\r\n\r\n" not in self.received:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                self.received += chunk
            head, _, rest = self.received.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                    while len(rest) < length:
                        rest += connection.recv(65536)
                    self.received = head + b"\r\n\r\n" + rest
            connection.sendall(self.answer)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


class HttpClientTests(SynchronousTestCase):
    """
    L{sync_http.request} against a loopback socket.
    """

    def serve(self, answer: bytes) -> _OneShotServer:
        server = _OneShotServer(answer)
        self.addCleanup(server.close)
        return server

    def test_get(self) -> None:
        """
        A GET sends the target verbatim with a Host header and returns status,
        reason and body.
        """
        server = self.serve(b"HTTP/1.1 404 Nope\r\nContent-Length: 5\r\n\r\nhello")
        response = sync_http.request(
            "GET", f"http://127.0.0.1:{server.port}/p/api/v1/tasks/a%2Fb", headers={"X-A": "b"}
        )
        self.assertEqual(response, Response(404, "Nope", b"hello"))
        server.close()
        request_line, _, headers = server.received.partition(b"\r\n")
        self.assertEqual(request_line, b"GET /p/api/v1/tasks/a%2Fb HTTP/1.1")
        self.assertIn(f"Host: 127.0.0.1:{server.port}".encode(), headers)
        self.assertIn(b"X-A: b", headers)

    def test_post_without_body(self) -> None:
        """
        A POST with an empty body sends C{Content-Length: 0}; a chunked answer
        is read whole.
        """
        server = self.serve(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        response = sync_http.request("POST", f"http://127.0.0.1:{server.port}/k", body=b"")
        self.assertEqual(response.body, b"abcde")
        server.close()
        self.assertIn(b"Content-Length: 0\r\n", server.received)

    def test_post_body(self) -> None:
        """
        A POST sends its body with its length.
        """
        server = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        sync_http.request("POST", f"http://127.0.0.1:{server.port}/t", body=b'{"a":1}')
        server.close()
        self.assertTrue(server.received.endswith(b'Content-Length: 7\r\n\r\n{"a":1}'), server.received)

    def test_unsafe_characters_encoded(self) -> None:
        """
        Spaces, controls and non-ASCII in the URL are percent-encoded; other
        characters are kept.
        """
        server = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        sync_http.request("GET", f"http://127.0.0.1:{server.port}/t/a b\t\u00e9%41")
        server.close()
        self.assertTrue(server.received.startswith(b"GET /t/a%20b%09%C3%A9%41 HTTP/1.1\r\n"))

    def test_body_limit(self) -> None:
        """
        A body above C{max_body} is a L{TransportError}, with or without a
        declared length.
        """
        for answer in (
            b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 20,
        ):
            server = self.serve(answer)
            error = self.assertRaises(
                TransportError,
                sync_http.request,
                "GET",
                f"http://127.0.0.1:{server.port}/",
                max_body=10,
            )
            self.assertIn("exceeds the limit of 10 bytes", error.message)

    def test_connection_refused(self) -> None:
        """
        A closed port gives C{connection refused (host:port)}.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        error = self.assertRaises(
            TransportError, sync_http.request, "GET", f"http://127.0.0.1:{port}/x"
        )
        self.assertEqual(error.message, f"connection refused (127.0.0.1:{port})")

    def test_bad_urls(self) -> None:
        """
        Unsupported schemes, missing hosts and bad ports are transport errors.
        """
        for url, needle in (
            ("ftp://h/x", "unsupported URL scheme 'ftp'"),
            ("/api/v1/tasks", "unsupported URL scheme ''"),
            ("http:///x", "no host"),
            ("http://h:99999/x", "invalid URL"),
        ):
            error = self.assertRaises(TransportError, sync_http.request, "GET", url)
            self.assertIn(needle, error.message)

    def test_malformed_response(self) -> None:
        """
        A response that is not HTTP is a transport error.
        """
        server = self.serve(b"garbage\r\n\r\n")
        error = self.assertRaises(
            TransportError, sync_http.request, "GET", f"http://127.0.0.1:{server.port}/"
        )
        self.assertIn("invalid response", error.message)


class _StreamingServer:
    """
    A loopback server that answers one request with C{head}, then each of
    C{parts} in turn, waiting before each later part until the client has
    received something since the previous one (L{proceed}); a part that is
    not waited for within five seconds makes the server hang up instead.
    """

    def __init__(self, head: bytes, parts: Sequence[bytes], close_early: bool = False) -> None:
        self.head = head
        self.parts = list(parts)
        self.close_early = close_early
        self.proceed = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        with connection:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                received += chunk
            connection.sendall(self.head)
            for index, part in enumerate(self.parts):
                if index and not self.proceed.wait(5):
                    return
                self.proceed.clear()
                connection.sendall(part)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


class HttpStreamTests(SynchronousTestCase):
    """
    L{sync_http.stream} against a loopback socket.
    """

    def serve(self, head: bytes, parts: Sequence[bytes]) -> _StreamingServer:
        server = _StreamingServer(head, parts)
        self.addCleanup(server.close)
        return server

    def test_chunks_as_they_arrive(self) -> None:
        """
        Each chunk of a chunked body reaches C{on_data} before the server
        sends the next (which it does only once the client got the
        previous one).
        """
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
        server = self.serve(head, [b"3\r\nabc\r\n", b"2\r\nde\r\n", b"0\r\n\r\n"])
        pieces: List[bytes] = []

        def on_data(data: bytes) -> None:
            pieces.append(data)
            server.proceed.set()

        response = sync_http.stream(
            "GET", f"http://127.0.0.1:{server.port}/s", on_data, headers={"Accept": "*/*"}
        )
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(pieces, [b"abc", b"de"])

    def test_error_body(self) -> None:
        """
        A non-2xx answer is returned whole, C{on_data} never called.
        """
        server = self.serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope", [])
        pieces: List[bytes] = []
        response = sync_http.stream("GET", f"http://127.0.0.1:{server.port}/s", pieces.append)
        self.assertEqual((response, pieces), (Response(404, "Not Found", b"nope"), []))

    def test_broken_chunked_body(self) -> None:
        """
        A chunked body cut off before its last chunk is a
        L{StreamInterrupted}, after the bytes that did arrive.
        """
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        server = self.serve(head, [b"3\r\nabc\r\n"])
        pieces: List[bytes] = []
        error = self.assertRaises(
            StreamInterrupted,
            sync_http.stream,
            "GET",
            f"http://127.0.0.1:{server.port}/s",
            pieces.append,
        )
        self.assertEqual((pieces, error.timed_out), ([b"abc"], False))
        self.assertIn("invalid response: IncompleteRead", error.message)

    def test_short_content_length(self) -> None:
        """
        A body shorter than its C{Content-Length} is a L{StreamInterrupted}.
        """
        server = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", [])
        pieces: List[bytes] = []
        error = self.assertRaises(
            StreamInterrupted, sync_http.stream, "GET", f"http://127.0.0.1:{server.port}/s",
            pieces.append,
        )
        self.assertIn("7 bytes of the body missing", error.message)

    def test_read_timeout(self) -> None:
        """
        A stream that stays quiet past the read timeout is a timed-out
        L{StreamInterrupted}.
        """
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        server = self.serve(head, [b"1\r\na\r\n", b"0\r\n\r\n"])
        error = self.assertRaises(
            StreamInterrupted, sync_http.stream, "GET", f"http://127.0.0.1:{server.port}/s",
            lambda data: None, timeout=0.2,
        )
        self.assertTrue(error.timed_out)
        server.proceed.set()

    def test_consumer_error_propagates(self) -> None:
        """
        What C{on_data} raises stops the stream and propagates unchanged.
        """
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
        server = self.serve(head, [b"abc"])

        def on_data(data: bytes) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        self.assertRaises(
            BrokenPipeError, sync_http.stream, "GET", f"http://127.0.0.1:{server.port}/s", on_data
        )

    def test_no_answer(self) -> None:
        """
        No response head at all is a plain L{TransportError}.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        error = self.assertRaises(
            TransportError, sync_http.stream, "GET", f"http://127.0.0.1:{port}/s", lambda d: None
        )
        self.assertNotIsInstance(error, StreamInterrupted)
        self.assertEqual(error.message, f"connection refused (127.0.0.1:{port})")


class ProcessTests(SynchronousTestCase):
    """
    The real entry point, in a fresh interpreter.
    """

    def run_cli(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [sys.executable, "-c", "from execgo.cli.main import main; main()", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_light_imports(self) -> None:
        """
        Importing the CLI pulls in neither Twisted, treq nor the validation
        layer, so client subcommands start fast.
        """
        code = (
            "import sys, execgo.cli.main; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'treq', 'klein'}), "
            "'execgo.core.decoding' in sys.modules)"
        )
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        self.assertEqual(output, "[] False\n")

    def test_unreachable_server(self) -> None:
        """
        C{main} against a closed port exits 1 with exactly one
        C{http error} line and nothing on stdout.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        done = self.run_cli("status", "--server", f"http://127.0.0.1:{port}/", "t1")
        self.assertEqual(
            (done.returncode, done.stdout, done.stderr),
            (1, "", f"http error: connection refused (127.0.0.1:{port})\n"),
        )

    def test_version(self) -> None:
        """
        C{main} prints the version and exits 0.
        """
        done = self.run_cli("--version")
        self.assertEqual((done.returncode, done.stdout), (0, f"execgo-runtime {__version__}\n"))

    def test_completion_script(self) -> None:
        """
        The console script prints its bash completion script when
        C{_EXECGO_RUNTIME_COMPLETE=bash_source} is set, as C{docs/cli.md}
        documents.
        """
        script = os.path.join(os.path.dirname(sys.executable), "execgo-runtime")
        argv = [script] if os.path.exists(script) else [
            sys.executable, "-c", "from execgo.cli.main import main; main()"
        ]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, _EXECGO_RUNTIME_COMPLETE="bash_source"),
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("_execgo_runtime_completion()", done.stdout)
        self.assertIn("complete -o nosort -F _execgo_runtime_completion execgo-runtime", done.stdout)
