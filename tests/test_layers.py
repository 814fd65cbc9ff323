"""
The import rules that keep the layers honest, checked by parsing the
modules with C{ast} (module-level imports, followed through C{execgo}'s
own modules):

* everything the supervisor, the single-task shim and the CLI import runs
  without Twisted (they must start fast and stay small): only the server's
  modules and the Twisted client may import Twisted, treq, Klein or txaio;
* the client and the CLI never reach the server's or the supervisor's
  modules, so other programs can use the client without the server's
  weight.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Set

from twisted.trial.unittest import SynchronousTestCase

import execgo

PACKAGE = os.path.dirname(os.path.abspath(execgo.__file__))
FRAMEWORKS = ("twisted", "treq", "klein", "txaio")
#: The server's modules: they run on the reactor.
SERVER = frozenset(
    {
        "api",
        "batching",
        "budget",
        "listener",
        "logs",
        "responses",
        "runtime",
        "scheduler",
        "service",
        "snapshots",
        "store",
        "streams",
        "supervisor_link",
        "tap",
        "upkeep",
        "waiters",
    }
)
#: The supervisor's modules (standard library only).
SUPERVISOR = frozenset({"supervisor", "shim", "launcher", "sandbox", "cgroups", "taskdb"})
#: The Twisted client for other programs.
TWISTED_CLIENT = frozenset({"client", "client_http", "client_streams"})


def module_imports(path: str) -> Set[str]:
    """
    The modules a file imports at module level (in C{try} blocks too):
    C{execgo.<name>} for the package's own, else the imported name.
    """
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), path)
    found: Set[str] = set()
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.Try):
            statements.extend(node.body)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "execgo":
                found.update(f"execgo.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def import_graph(package: str) -> Dict[str, Set[str]]:
    """
    Module name (without C{execgo.}) to what it imports, for every module
    of the package directory C{package}.
    """
    return {
        name[:-3]: module_imports(os.path.join(package, name))
        for name in os.listdir(package)
        if name.endswith(".py")
    }


def reached(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    """
    C{start} and every package module it imports, directly or not.
    """
    seen = {start}
    pending = [start]
    while pending:
        for imported in graph.get(pending.pop(), ()):
            parts = imported.split(".")
            if parts[0] == "execgo" and len(parts) > 1 and parts[1] in graph and parts[1] not in seen:
                seen.add(parts[1])
                pending.append(parts[1])
    return seen


def frameworks_reached(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    """
    The package modules reached from C{start} that import Twisted, treq,
    Klein or txaio.
    """
    return {
        module
        for module in reached(graph, start)
        if any(imported.split(".")[0] in FRAMEWORKS for imported in graph[module])
    }


class LayerTests(SynchronousTestCase):
    """
    The rules, over the real package.
    """

    def setUp(self) -> None:
        self.graph = import_graph(PACKAGE)

    def test_known_modules(self) -> None:
        """
        The module lists above name real modules (a rename must update
        them, or the rules would silently check nothing).
        """
        for name in SERVER | SUPERVISOR | TWISTED_CLIENT:
            self.assertIn(name, self.graph)

    def test_only_the_server_and_its_client_import_twisted(self) -> None:
        """
        No module outside the server and the Twisted client reaches
        Twisted, treq, Klein or txaio at import time.
        """
        for name in sorted(set(self.graph) - SERVER - TWISTED_CLIENT):
            self.assertEqual(frameworks_reached(self.graph, name), set(), name)

    def test_client_and_cli_stay_apart(self) -> None:
        """
        The client and the CLI reach no module of the server or the
        supervisor.
        """
        for name in sorted(self.graph):
            if name.startswith(("client", "cli")) or name == "httpclient":
                self.assertEqual(reached(self.graph, name) & (SERVER | SUPERVISOR), set(), name)

    def test_rules_can_fail(self) -> None:
        """
        The checker sees an import of Twisted through another module, also
        one inside a C{try}.
        """
        package = self.mktemp()
        os.makedirs(package)
        for name, text in (
            ("light", "from execgo import middle\n"),
            ("middle", "try:\n    from twisted.internet import defer\nexcept ImportError:\n    pass\n"),
        ):
            with open(os.path.join(package, name + ".py"), "w") as out:
                out.write(text)
        graph = import_graph(package)
        self.assertEqual(frameworks_reached(graph, "light"), {"middle"})
