"""
The import rules that keep the layers honest, checked by parsing the
modules with C{ast} (module-level imports, in C{try} blocks too).

The package's layers, lowest first::

    core  <-  host  <-  store  <-  control  <-  supervisor | server  <-  ...
    core  <-  client  <-  cli

A module may import its own layer and the layers below it, never one
above.  Beside that:

* C{core}, C{host}, C{store}, C{control}, C{supervisor} and C{cli} never
  reach Twisted, treq, Klein or txaio at import time: the supervisor and
  the CLI must start fast and stay small;
* C{supervisor} and C{server} are two processes and never import each
  other;
* C{client} reaches only C{core} (the models it shares with the server),
  so other programs can use it without the server's weight; C{cli} reaches
  only C{client} and C{core} (its C{serve} and supervisor commands import
  the server and the supervisor inside the command, when they run).
"""

from __future__ import annotations

import ast
import os
from typing import Dict, Set

from twisted.trial.unittest import SynchronousTestCase

import execgo

PACKAGE = os.path.dirname(os.path.abspath(execgo.__file__))
FRAMEWORKS = ("twisted", "treq", "klein", "txaio")
#: Layer name to the layers it may import (its own included).
ALLOWED = {
    "core": {"core"},
    "host": {"core", "host"},
    "store": {"core", "host", "store"},
    "control": {"core", "host", "store", "control"},
    "supervisor": {"core", "host", "store", "control", "supervisor"},
    "server": {"core", "host", "store", "control", "server"},
    "client": {"core", "client"},
    "cli": {"core", "client", "cli"},
    "package": {"package", "cli"},
}
#: Layers that run without Twisted.
PLAIN = frozenset({"core", "host", "store", "control", "supervisor", "cli"})


def layer_of(module: str) -> str:
    """
    The layer of the package module C{module} (dotted, without
    C{execgo.}): its sub-package, C{control}, or C{package} for the
    package's own C{__init__} and C{__main__}.
    """
    head = module.split(".")[0]
    return head if head in ALLOWED else "package"


def module_imports(path: str, name: str) -> Set[str]:
    """
    The modules the file C{path} (the module C{name}) imports at module
    level, in C{try} blocks too: dotted names without C{execgo.} for the
    package's own (C{from execgo.core import models} gives C{core.models}),
    else the imported name.
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
            for alias in node.names:
                found.add(alias.name[len("execgo.") :] if alias.name.startswith("execgo.") else alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "execgo" or node.module.startswith("execgo."):
                base = node.module[len("execgo.") :] if node.module != "execgo" else ""
                for alias in node.names:
                    found.add(f"{base}.{alias.name}".strip(".") if base else alias.name)
            else:
                found.add(node.module)
    return found


def import_graph(package: str) -> Dict[str, Set[str]]:
    """
    Module name (dotted, without C{execgo.}) to what it imports, for every
    module under the package directory C{package}.  A sub-package is named
    for its C{__init__}.
    """
    graph: Dict[str, Set[str]] = {}
    for directory, _, names in os.walk(package):
        relative = os.path.relpath(directory, package)
        prefix = "" if relative == "." else relative.replace(os.sep, ".") + "."
        for name in names:
            if name.endswith(".py"):
                module = (prefix + name[:-3]).removesuffix(".__init__")
                graph[module or "__init__"] = module_imports(os.path.join(directory, name), module)
    return graph


def resolve(graph: Dict[str, Set[str]], imported: str) -> Set[str]:
    """
    The package modules an import names: C{core.models} is the module,
    C{core.models.Task} is its module too, C{core} is the sub-package.
    """
    parts = imported.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in graph:
            return {candidate}
        parts.pop()
    return set()


def reached(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    """
    C{start} and every package module it imports, directly or not.
    """
    seen = {start}
    pending = [start]
    while pending:
        for imported in graph.get(pending.pop(), ()):
            for module in resolve(graph, imported) - seen:
                seen.add(module)
                pending.append(module)
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

    def test_every_module_has_a_layer(self) -> None:
        """
        Every module lies in a known layer (a new sub-package must be placed
        in L{ALLOWED}, or the rules would silently check nothing of it).
        """
        for module in self.graph:
            self.assertTrue(module in ("__init__", "__main__") or layer_of(module) != "package", module)
        for layer in set(ALLOWED) - {"package"}:
            self.assertIn(layer, {layer_of(module) for module in self.graph}, layer)

    def test_imports_point_down(self) -> None:
        """
        No module imports a module of a layer above or beside its own.
        """
        for module, imports in sorted(self.graph.items()):
            for imported in imports:
                for target in resolve(self.graph, imported):
                    self.assertIn(layer_of(target), ALLOWED[layer_of(module)], f"{module} imports {target}")

    def test_plain_layers_never_import_twisted(self) -> None:
        """
        No module of a plain layer reaches Twisted, treq, Klein or txaio
        at import time.
        """
        for module in sorted(self.graph):
            if layer_of(module) in PLAIN:
                self.assertEqual(frameworks_reached(self.graph, module), set(), module)

    def test_rules_can_fail(self) -> None:
        """
        The checker sees an import of Twisted through another module, also
        one inside a C{try}, and an import that points up.
        """
        package = self.mktemp()
        os.makedirs(os.path.join(package, "core"))
        os.makedirs(os.path.join(package, "server"))
        for name, text in (
            ("core/light", "from execgo.core import middle\n"),
            ("core/middle", "try:\n    from twisted.internet import defer\nexcept ImportError:\n    pass\n"),
            ("core/upward", "from execgo.server.thing import x\n"),
            ("server/thing", "x = 1\n"),
        ):
            with open(os.path.join(package, name + ".py"), "w") as out:
                out.write(text)
        graph = import_graph(package)
        self.assertEqual(frameworks_reached(graph, "core.light"), {"core.middle"})
        self.assertEqual(resolve(graph, "server.thing.x"), {"server.thing"})
        self.assertNotIn(layer_of("server.thing"), ALLOWED[layer_of("core.upward")])
