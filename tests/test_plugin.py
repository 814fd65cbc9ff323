"""
Tests for the twistd plugin dropin (C{twisted/plugins/execgo_plugin.py}):
twistd finds it, it names L{execgo.server.tap}, and it stays a dropin that
costs nothing to scan.
"""

from __future__ import annotations

import ast
import os

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

import execgo
import twisted.plugins
from execgo.server import tap

#: The directory of the dropin, next to the package (as installed too).
DROPINS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(execgo.__file__))), "twisted", "plugins")
DROPIN = os.path.join(DROPINS, "execgo_plugin.py")


class PluginTests(SynchronousTestCase):
    """
    The C{execgo} service maker.
    """

    def setUp(self) -> None:
        # Installed, the dropin's directory is on twisted.plugins' path;
        # from a checkout it is when the checkout is the working directory.
        if DROPINS not in twisted.plugins.__path__:
            self.patch(twisted.plugins, "__path__", [*twisted.plugins.__path__, DROPINS])

    def test_discovered(self) -> None:
        """
        C{getPlugins(IServiceMaker)} finds exactly one C{execgo} maker, and
        it hands twistd the options and service of L{execgo.server.tap}.
        """
        makers = [maker for maker in getPlugins(IServiceMaker) if maker.tapname == "execgo"]
        self.assertEqual(len(makers), 1)
        [maker] = makers
        self.assertEqual(maker.module, "execgo.server.tap")
        self.assertIs(maker.options, tap.Options)
        self.assertIs(maker.makeService, tap.makeService)
        self.assertTrue(maker.description)

    def test_light(self) -> None:
        """
        The dropin is an import of Twisted's C{ServiceMaker} and one
        assignment: execgo is imported only when twistd runs the plugin,
        not when it scans for plugins.  Beside it there is no
        C{__init__.py} (C{twisted/plugins} is Twisted's package).
        """
        with open(DROPIN, encoding="utf-8") as source:
            tree = ast.parse(source.read(), DROPIN)
        statements = [node for node in tree.body if not isinstance(node, ast.Expr)]
        self.assertEqual([type(node) for node in statements], [ast.ImportFrom, ast.Assign])
        self.assertEqual(statements[0].module, "twisted.application.service")
        self.assertFalse(os.path.exists(os.path.join(DROPINS, "__init__.py")))
