"""
Tests for the optional bearer-token authentication (L{execgo.server.web.auth}, the API
guard, the CLI's C{--token}, and SIGHUP reloads of a real server).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Dict, List, Optional

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.trial.util import suppress as SUPPRESS

from execgo.core import errors
from execgo.core.config import RuntimeConfig
from execgo.server.web.auth import Principal, Tokens, bearer, parse_tokens
from tests.apifixture import MemoryRuntime, tmp_data_dir
from tests.fakes import FakeWorld, ok
from tests.serverfixture import ServerProcess, poll
from tests.test_cli import CliTestMixin

COMMAND = {"execution": {"kind": "command", "program": "/bin/true"}}
TOKENS = "# tokens\n\nalpha tenant=acme owner=alice\nbeta tenant=acme owner=bob  # a comment\n"


class ParseTests(SynchronousTestCase):
    """
    L{parse_tokens} and L{bearer}.
    """

    def test_parse(self) -> None:
        """
        Comments and blank lines are skipped; each token maps to its tenant
        and owner.
        """
        self.assertEqual(
            parse_tokens(TOKENS),
            {"alpha": Principal("acme", "alice"), "beta": Principal("acme", "bob")},
        )

    def test_errors(self) -> None:
        """
        A malformed field, an unknown key or a repeated token names its line.
        """
        for text in ("t tenant", "t colour=red", "t tenant=", "t owner=a\nt owner=b"):
            with self.assertRaises(errors.InvalidInput) as caught:
                parse_tokens(text, "f")
            self.assertIn("f line", caught.exception.message)

    def test_bearer(self) -> None:
        """
        Only C{Bearer <token>} headers carry a token (scheme case-insensitive).
        """
        self.assertEqual(bearer(b"Bearer abc"), "abc")
        self.assertEqual(bearer(b"bearer  abc "), "abc")
        for header in (None, b"", b"Basic abc", b"Bearer", b"Bearer   "):
            self.assertIsNone(bearer(header))

    def test_unknown_token(self) -> None:
        """
        An unknown or missing token is 401 with code C{permission_denied}.
        """
        tokens = Tokens(parse_tokens(TOKENS))
        for header in (None, b"Bearer nope"):
            with self.assertRaises(errors.Unauthorized) as caught:
                tokens.authenticate(header)
            self.assertEqual((caught.exception.http_status, caught.exception.code), (401, "permission_denied"))
        self.assertEqual(tokens.authenticate(b"Bearer alpha"), Principal("acme", "alice"))


def auth(token: str) -> Dict[bytes, List[bytes]]:
    return {b"authorization": [f"Bearer {token}".encode()]}


class GuardedAPITests(SynchronousTestCase):
    """
    The API with authentication on, in memory.
    """

    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]

    def setUp(self) -> None:
        self.data_dir = tmp_data_dir(self)
        self.rt = MemoryRuntime(self.data_dir, RuntimeConfig(data_dir=self.data_dir), Tokens(parse_tokens(TOKENS)))
        self.rt.start()
        self.addCleanup(self.rt.stop)

    def call(self, method: str, path: str, data: Optional[bytes] = None, headers: Any = None) -> Any:
        """
        One request: status, the body (decoded when JSON), the headers.
        """
        code, response_headers, content = self.rt.request(method, path, data, headers)
        return code, (json.loads(content) if content and content[:1] in b"{[" else content), response_headers

    def test_token_required(self) -> None:
        """
        Every endpoint but C{/healthz} and C{/readyz} answers 401 with the
        envelope and a C{WWW-Authenticate} header without a valid token.
        """
        for method, path in [
            ("POST", "/api/v1/tasks"),
            ("GET", "/api/v1/tasks/x"),
            ("POST", "/api/v1/tasks/x/kill"),
            ("GET", "/api/v1/tasks/x/events"),
            ("GET", "/api/v1/runtime/info"),
            ("GET", "/api/v1/runtime/capabilities"),
            ("GET", "/api/v1/runtime/config"),
            ("GET", "/api/v1/runtime/resources"),
            ("GET", "/metrics"),
        ]:
            for headers in (None, auth("nope")):
                code, body, response_headers = self.call(method, path, headers=headers)
                self.assertEqual(code, 401, (method, path))
                self.assertEqual(body["error"]["code"], "permission_denied")
                self.assertIn(b"WWW-Authenticate", response_headers)
        for path in ("/healthz", "/readyz"):
            code, _, _ = self.call("GET", path)
            self.assertEqual(code, 200)

    def test_token_overrides_body_and_gates_kill(self) -> None:
        """
        The token's tenant and owner replace the body's; a kill needs the
        token of the task's owner, whatever the owner header says.
        """
        request = {"task_id": "t", **COMMAND, "control_context": {"tenant": "other", "owner": "mallory"}}
        code, body, _ = self.call("POST", "/api/v1/tasks", json.dumps(request).encode(), auth("alpha"))
        self.assertEqual(code, 200, body)
        with open(os.path.join(self.data_dir, "tasks", "t", "request.json")) as f:
            context = json.load(f)["control_context"]
        self.assertEqual((context["tenant"], context["owner"]), ("acme", "alice"))
        headers = auth("beta")
        headers[b"x-execgo-owner"] = [b"alice"]
        code, body, _ = self.call("POST", "/api/v1/tasks/t/kill", headers=headers)
        self.assertEqual((code, body["error"]["code"]), (403, "permission_denied"))
        code, body, _ = self.call("POST", "/api/v1/tasks/t/kill", headers=auth("alpha"))
        self.assertEqual((code, body["status"]), (200, "cancelled"))


class CliTokenTests(CliTestMixin, SynchronousTestCase):
    """
    C{--token} and C{EXECGO_RUNTIME_TOKEN} on the client subcommands.
    """

    def test_token_option_and_env(self) -> None:
        """
        The token goes out as a bearer C{Authorization} header; the option
        wins over the variable; no token, no header.
        """
        cases = [
            (["status", "--token", "alpha", "x"], {}, "Bearer alpha"),
            (["status", "x"], {"EXECGO_RUNTIME_TOKEN": "beta"}, "Bearer beta"),
            (["status", "--token", "alpha", "x"], {"EXECGO_RUNTIME_TOKEN": "beta"}, "Bearer alpha"),
            (["status", "x"], {}, None),
        ]
        for args, env, expected in cases:
            world = FakeWorld([ok(b'{"task_id":"x"}')])
            result = self.invoke(args, world, env={"EXECGO_RUNTIME_TOKEN": None, **env})
            self.assertEqual(result.exit_code, 0, result.output)
            self.assertEqual(world.calls[0].headers.get("Authorization"), expected)


class ReloadTests(TestCase):
    """
    A real server re-reads its token file on SIGHUP.
    """

    timeout = 40

    async def test_sighup_reload(self) -> None:
        """
        A token added to the file works after SIGHUP; a broken file keeps
        the tokens in force.
        """
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        token_file = os.path.join(data_dir + ".tokens")
        with open(token_file, "w") as f:
            f.write("alpha tenant=acme owner=alice\n")
        server = ServerProcess(reactor, data_dir, ["--auth-token-file", token_file])
        await server.start()
        self.addCleanup(lambda: server.shutdown())
        api = server.client(self)
        headers = {"Authorization": "Bearer gamma"}
        self.assertEqual((await api.request("GET", "/api/v1/runtime/info", headers=headers)).code, 401)
        with open(token_file, "w") as f:
            f.write("alpha tenant=acme owner=alice\ngamma tenant=acme owner=carol\n")
        os.kill(server.pid, signal.SIGHUP)

        async def accepted() -> Any:
            return (await api.request("GET", "/api/v1/runtime/info", headers=headers)).code == 200 or None

        await poll(reactor, accepted, timeout=10, what="the reloaded token")
        with open(token_file, "w") as f:
            f.write("broken line here\n")
        os.kill(server.pid, signal.SIGHUP)
        await _pause(0.3)
        self.assertEqual((await api.request("GET", "/api/v1/runtime/info", headers=headers)).code, 200)


async def _pause(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
