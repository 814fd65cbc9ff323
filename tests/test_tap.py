"""
Tests for L{execgo.server.tap}: the options of C{twistd execgo serve}
(built from the same table as C{execgo-runtime serve}) and the service
L{tap.makeService} builds from them, without starting it.
"""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from execgo.core.config import SERVE_SETTINGS, RuntimeConfig
from execgo.server import tap
from execgo.server.service import RuntimeService

#: A value each kind of setting accepts.
SAMPLES = {"str": "x", "uint": "7", "mode": "strict"}


def parsed(*argv: str) -> tap.Options:
    """
    C{twistd execgo} options parsed from C{argv}.
    """
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(SynchronousTestCase):
    """
    L{tap.Options} and L{tap.ServeOptions}.
    """

    def test_serve_is_the_default(self) -> None:
        """
        Without arguments the subcommand is C{serve}, and its configuration
        is the default one.
        """
        options = parsed()
        self.assertEqual(options.subCommand, "serve")
        self.assertEqual(options.subOptions.config({}), RuntimeConfig())

    def test_flags(self) -> None:
        """
        Each flag sets its configuration value; the repeatable ones
        collect every value, in order.
        """
        options = parsed(
            "serve",
            "--listen-addr", "0.0.0.0:9000",
            "--data-dir", "/srv/execgo",
            "--max-running-tasks", "8",
            "--default-capability-mode", "strict",
            "--disable-cgroup",
            "--tenant-quota", "a=slots:1",
            "--tenant-quota", "b=slots:2,memory:1024",
            "--sandbox-rootfs-root", "/r1",
            "--sandbox-rootfs-root", "/r2",
        )
        config = options.subOptions.config({})
        self.assertEqual(
            (config.listen_addr, config.data_dir, config.max_running_tasks, config.default_capability_mode),
            ("0.0.0.0:9000", "/srv/execgo", 8, "strict"),
        )
        self.assertIs(config.disable_cgroup, True)
        self.assertIs(config.disable_linux_sandbox, False)
        self.assertEqual(config.tenant_quotas, ("a=slots:1", "b=slots:2,memory:1024"))
        self.assertEqual(config.sandbox_rootfs_roots, ("/r1", "/r2"))

    def test_every_setting(self) -> None:
        """
        Every setting of the serve table is a flag of the plugin.
        """
        for setting in SERVE_SETTINGS:
            flag = "--" + setting.flag
            argv = [flag] if setting.kind == "bool" else [flag, SAMPLES.get(setting.kind, "x")]
            options = tap.ServeOptions()
            options.parseOptions(argv)
            self.assertTrue(options[setting.flag], setting.flag)

    def test_bad_values(self) -> None:
        """
        A number or a mode that does not parse is a usage error quoting it.
        """
        for argv in (["--max-running-tasks", "many"], ["--default-capability-mode", "lenient"]):
            error = self.assertRaises(usage.UsageError, tap.ServeOptions().parseOptions, argv)
            self.assertIn(repr(argv[1]), str(error))

    def test_environment(self) -> None:
        """
        The environment fills what no flag gives, a flag wins over it, and
        a malformed variable is a usage error.
        """
        variable = "EXECGO_RUNTIME_MAX_OUTPUT_PREVIEW_BYTES"
        self.assertEqual(parsed().subOptions.config({variable: "2048"}).max_output_preview_bytes, 2048)
        options = parsed("serve", "--max-output-preview-bytes", "4096")
        self.assertEqual(options.subOptions.config({variable: "2048"}).max_output_preview_bytes, 4096)
        error = self.assertRaises(usage.UsageError, parsed().subOptions.config, {variable: "lots"})
        self.assertIn(variable, str(error))


class MakeServiceTests(SynchronousTestCase):
    """
    L{tap.makeService}: the service, built and not started.
    """

    def test_service(self) -> None:
        """
        The runtime service for the options' configuration, not running
        and with nothing built yet (start-up waits for the reactor).
        """
        data_dir = os.path.abspath(self.mktemp())
        built = tap.makeService(parsed("serve", "--data-dir", data_dir, "--listen-addr", "127.0.0.1:18081"))
        assert isinstance(built, RuntimeService)
        self.assertEqual(built.name, "execgo")
        self.assertEqual((built.config.data_dir, built.config.listen_addr), (data_dir, "127.0.0.1:18081"))
        self.assertFalse(built.running)
        self.assertIsNone(built.runtime)
        self.assertFalse(os.path.exists(data_dir))

    def test_unparsed_options(self) -> None:
        """
        Options that were never parsed stand for C{serve} with its defaults.
        """
        built = tap.makeService(tap.Options())
        assert isinstance(built, RuntimeService)
        self.assertEqual(built.config.listen_addr, RuntimeConfig().listen_addr)

    def test_refused_configuration(self) -> None:
        """
        A configuration the service refuses is a usage error, so twistd
        fails before it daemonises.
        """
        options = parsed("serve", "--task-uid-range", "70000-70001", "--max-running-tasks", "4")
        error = self.assertRaises(usage.UsageError, tap.makeService, options)
        self.assertIn("fewer than --max-running-tasks 4", str(error))
        error = self.assertRaises(usage.UsageError, tap.makeService, parsed("serve", "--listen-addr", "nowhere"))
        self.assertIn("nowhere", str(error))
