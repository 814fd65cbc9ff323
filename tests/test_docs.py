"""
Tests that keep the documentation true.

Every fenced C{```sh} block of C{docs/api.md}, C{docs/cli.md},
C{docs/cli.zh.md}, C{docs/client.md} and C{docs/deployment.md} is run for
real, in order, with C{bash -e -o pipefail}, against a real server started
for that page (L{ServerProcess}); each must exit 0.  The blocks see
C{$EXECGO_URL} (the server's root URL), C{$EXECGO_DATA_DIR} (its data
directory, absolute) and a scratch working directory, also C{$HOME}, that
holds a copy of C{examples/}.  A block that cannot run here (systemd,
nginx, a daemonising twistd) starts with the line
C{# not run by the doc tests: <reason>} and is skipped.

The other tests check what can be checked without running anything: the
Chinese CLI reference has the same sections and the same commands as the
English one, every subcommand and option of the CLI, every route of the
API and every metric family is documented, and C{docs/client.md} shows
C{examples/watch_task.py} exactly as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Dict, List, Optional, Tuple

import attrs
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.serverfixture import (
    ServerProcess,
    clean_environ,
    repository_root,
    run_process,
)

DOCS_DIR = os.path.join(repository_root(), "docs")
EXAMPLES_DIR = os.path.join(repository_root(), "examples")
RUN_DOCS = ("api.md", "cli.md", "cli.zh.md", "client.md", "deployment.md")
NOT_RUN = "# not run by the doc tests:"
FENCE = re.compile(r"^(`{3,})\s*([\w.+-]*)\s*$")


@attrs.frozen
class Block:
    """
    One fenced code block of a document.

    @ivar line: the line number of its opening fence.
    @ivar lang: its info string (C{"sh"}, C{"json"}, ...; C{""} if none).
    """

    doc: str
    line: int
    lang: str
    text: str

    @property
    def skip_reason(self) -> Optional[str]:
        """
        Why the doc tests do not run it, or C{None} when they do.
        """
        first = self.text.split("\n", 1)[0]
        if first.startswith(NOT_RUN):
            return first[len(NOT_RUN) :].strip()
        return None


def read_doc(name: str) -> str:
    """
    The text of C{docs/<name>}.
    """
    with open(os.path.join(DOCS_DIR, name), encoding="utf-8") as f:
        return f.read()


def parse(name: str) -> Tuple[List[Block], List[str]]:
    """
    The fenced code blocks of C{docs/<name>} and its headings (the lines
    starting with C{#} outside code blocks).
    """
    blocks: List[Block] = []
    headings: List[str] = []
    fence: Optional[Tuple[str, str, int]] = None
    body: List[str] = []
    for number, line in enumerate(read_doc(name).splitlines(), 1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = (match.group(1), match.group(2), number)
                body = []
            elif line.startswith("#"):
                headings.append(line)
        elif match and match.group(1) == fence[0] and not match.group(2):
            blocks.append(Block(name, fence[2], fence[1], "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise AssertionError(f"{name}:{fence[2]}: unclosed code block")
    return blocks, headings


def sh_blocks(name: str) -> List[Block]:
    """
    The C{sh} blocks of C{docs/<name>}.
    """
    return [block for block in parse(name)[0] if block.lang == "sh"]


class StructureTests(SynchronousTestCase):
    """
    What the documents must contain, checked without running anything.
    """

    def test_blocks_parse(self) -> None:
        """
        Every document has runnable C{sh} blocks, and every skipped block
        says why.
        """
        for name in RUN_DOCS:
            blocks = sh_blocks(name)
            self.assertTrue([b for b in blocks if b.skip_reason is None], name)
            for block in blocks:
                if block.skip_reason is not None:
                    self.assertTrue(block.skip_reason, f"{name}:{block.line}: no reason given")

    def test_other_docs_say_why_not_run(self) -> None:
        """
        The documents whose commands are not run here (full-size benchmark
        and chaos runs, operator examples) put every command in an C{sh}
        block that says why it is not run, so no command in the docs is
        silently untested.
        """
        others = sorted(
            name
            for name in os.listdir(DOCS_DIR)
            if name.endswith(".md") and name not in RUN_DOCS
        )
        self.assertIn("operations.md", others)
        for name in others:
            for block in parse(name)[0]:
                if block.lang == "sh":
                    self.assertTrue(block.skip_reason, f"{name}:{block.line}: sh block not run and no reason")

    def test_chinese_in_step(self) -> None:
        """
        C{docs/cli.zh.md} has the same numbered sections and exactly the
        same commands as C{docs/cli.md}.
        """
        english_blocks, english_headings = parse("cli.md")
        chinese_blocks, chinese_headings = parse("cli.zh.md")
        self.assertEqual(
            [(b.lang, b.text) for b in chinese_blocks], [(b.lang, b.text) for b in english_blocks]
        )

        def numbers(headings: List[str]) -> List[str]:
            return [h.split()[0] + " " + h.split()[1] for h in headings if h.startswith("## ")]

        self.assertEqual(numbers(chinese_headings), numbers(english_headings))
        self.assertEqual(len(chinese_headings), len(english_headings))

    def test_cli_fully_documented(self) -> None:
        """
        Every visible subcommand and every one of its options appears in
        both CLI references.
        """
        from execgo.cli.main import cli

        for name in ("cli.md", "cli.zh.md"):
            text = read_doc(name)
            for command_name, command in cli.commands.items():
                if command.hidden:
                    continue
                self.assertIn(f"`{command_name}`", text, (name, command_name))
                for param in command.params:
                    for option in param.opts:
                        if option.startswith("--") and option != "--help":
                            self.assertIn(f"`{option}", text, (name, command_name, option))

    def test_api_fully_documented(self) -> None:
        """
        Every route of the API and every metric family is in C{docs/api.md}.
        """
        from execgo.server import metrics
        from execgo.server.web.api import RuntimeAPI

        text = read_doc("api.md")
        for rule in RuntimeAPI.app.url_map.iter_rules():
            path = re.sub(r"<(\w+:)?task_id>", "{id}", rule.rule)
            self.assertIn(f"`{path}`", text)
        with open(metrics.__file__, encoding="utf-8") as f:
            source = f.read()
        families = re.findall(r'_(?:family|histogram)\(\s*lines,\s*"(\w+)"', source)
        self.assertGreater(len(families), 10)
        for family in families:
            self.assertIn(f"`{metrics.PREFIX}{family}`", text)

    def test_client_examples_embedded(self) -> None:
        """
        C{client.md} shows C{examples/watch_task.py} and
        C{examples/asyncio_run.py} exactly.
        """
        shown = [b.text for b in parse("client.md")[0] if b.lang == "python"]
        for name in ("watch_task.py", "asyncio_run.py"):
            with open(os.path.join(EXAMPLES_DIR, name), encoding="utf-8") as f:
                self.assertIn(f.read(), shown, name)


class CommandTests(TestCase):
    """
    Every runnable C{sh} block, for real, against a real server per page.
    """

    timeout = 120

    async def run_doc(self, name: str, args: Tuple[str, ...] = ()) -> None:
        from twisted.internet import reactor

        base = os.path.abspath(self.mktemp())
        work = os.path.join(base, "work")
        os.makedirs(work)
        shutil.copytree(EXAMPLES_DIR, os.path.join(work, "examples"))
        server = ServerProcess(reactor, os.path.join(base, "data"), args)
        await server.start()
        self.addCleanup(lambda: defer.ensureDeferred(server.shutdown()))
        bin_dir = os.path.dirname(sys.executable)
        env: Dict[str, str] = clean_environ(
            {
                "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": work,
                "EXECGO_URL": server.url,
                "EXECGO_DATA_DIR": os.path.abspath(server.data_dir),
            }
        )
        ran = skipped = 0
        for block in sh_blocks(name):
            if block.skip_reason is not None:
                skipped += 1
                continue
            out, err, code = await run_process(
                reactor, ["bash", "-e", "-o", "pipefail", "-c", block.text], env, 60.0, work
            )
            self.assertEqual(
                code,
                0,
                f"{name}:{block.line} exited {code}\n--- block\n{block.text}--- stdout\n{out}"
                f"--- stderr\n{err}",
            )
            ran += 1
        self.assertEqual(ran + skipped, len(sh_blocks(name)))
        self.assertGreater(ran, 0)

    def test_api(self) -> None:
        """
        The commands of C{docs/api.md}.
        """
        return defer.ensureDeferred(self.run_doc("api.md"))

    def test_cli(self) -> None:
        """
        The commands of C{docs/cli.md}.
        """
        return defer.ensureDeferred(self.run_doc("cli.md"))

    def test_cli_zh(self) -> None:
        """
        The commands of C{docs/cli.zh.md}.
        """
        return defer.ensureDeferred(self.run_doc("cli.zh.md"))

    def test_client(self) -> None:
        """
        The commands of C{docs/client.md} (the example program included).
        """
        return defer.ensureDeferred(self.run_doc("client.md"))

    def test_deployment(self) -> None:
        """
        The commands of C{docs/deployment.md} (the backup ones).
        """
        return defer.ensureDeferred(self.run_doc("deployment.md"))


class ExampleTests(TestCase):
    """
    The example programs against a real server.
    """

    timeout = 60

    async def example(self, name: str) -> None:
        from twisted.internet import reactor

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        server = ServerProcess(reactor, os.path.join(base, "data"))
        await server.start()
        self.addCleanup(lambda: defer.ensureDeferred(server.shutdown()))
        script = os.path.join(EXAMPLES_DIR, name)
        env = clean_environ()
        out, err, code = await run_process(reactor, [sys.executable, script, server.url], env, 30.0)
        self.assertEqual((code, err), (0, "a warning\n"), out)
        lines = out.splitlines()
        self.assertEqual(lines[:2], ["hello from execgo", "done"])
        self.assertRegex(lines[2], r"^task [0-9a-f-]{36}: status=success exit_code=0 error=-$")
        out, err, code = await run_process(
            reactor, [sys.executable, script, server.url, "/bin/sh", "-c", "echo no; exit 4"],
            env, 30.0,
        )
        self.assertEqual(code, 1)
        self.assertTrue(out.startswith("no\ntask "), out)
        self.assertIn("status=failed exit_code=4 error=exit_nonzero", out)

    def test_watch_task(self) -> None:
        """
        The Twisted example streams the task's output to its own stdout and
        stderr, prints the final status, and exits 1 for a failed task.
        """
        return defer.ensureDeferred(self.example("watch_task.py"))

    def test_asyncio_run(self) -> None:
        """
        The asyncio example does the same, with the asyncio client.
        """
        return defer.ensureDeferred(self.example("asyncio_run.py"))
