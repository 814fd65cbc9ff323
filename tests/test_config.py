"""
Tests for L{execgo.core.config}: the derived runtime id, the listen address,
environment variables and the C{/runtime/config} rendering.
"""

from __future__ import annotations

import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from execgo.core import errors
from execgo.core.config import (
    DEFAULT_CGROUP_ROOT,
    SERVE_SETTINGS,
    RuntimeConfig,
    apply_environment,
    build_config,
    derive_runtime_id,
    parse_bool_env,
    parse_listen_addr,
    parse_mode,
    parse_uint_env,
)


class DeriveRuntimeIdTests(SynchronousTestCase):
    """
    L{derive_runtime_id}: C{<host>-<listen address>}, with unsafe characters
    replaced.
    """

    def test_contract_example(self) -> None:
        """
        With C{HOSTNAME} unset and the default address the id is
        C{execgo-runtime-127.0.0.1-8080}.
        """
        self.assertEqual(
            derive_runtime_id(None, "127.0.0.1:8080"), "execgo-runtime-127.0.0.1-8080"
        )

    def test_blank_hostname(self) -> None:
        """
        An empty or whitespace-only C{HOSTNAME} counts as unset.
        """
        for blank in ("", " ", "\t\n"):
            self.assertEqual(derive_runtime_id(blank, "h:1"), "execgo-runtime-h-1")

    def test_hostname(self) -> None:
        """
        A set C{HOSTNAME} is used, keeping letters, digits, C{-}, C{_} and
        C{.}.
        """
        self.assertEqual(derive_runtime_id("node_A-1.b", "0.0.0.0:80"), "node_A-1.b-0.0.0.0-80")

    def test_odd_characters(self) -> None:
        """
        Every other character, non-ASCII and whitespace included, becomes
        C{-} in both parts, one dash per character.
        """
        self.assertEqual(derive_runtime_id("my host!", "[::1]:80"), "my-host-----1--80")
        self.assertEqual(derive_runtime_id("h\u00e9/x", "a:1"), "h--x-a-1")
        self.assertEqual(derive_runtime_id(" pad ", "a:1"), "-pad--a-1")

    def test_effective_runtime_id(self) -> None:
        """
        A configured id wins, used as given; otherwise it is derived from the
        environment's C{HOSTNAME}.
        """
        self.assertEqual(
            RuntimeConfig(runtime_id="a b").effective_runtime_id({"HOSTNAME": "h"}), "a b"
        )
        self.assertEqual(
            RuntimeConfig(listen_addr="1.2.3.4:5").effective_runtime_id({"HOSTNAME": "h"}),
            "h-1.2.3.4-5",
        )
        self.assertEqual(
            RuntimeConfig().effective_runtime_id({}), "execgo-runtime-127.0.0.1-8080"
        )


class ParseListenAddrTests(SynchronousTestCase):
    """
    L{parse_listen_addr}.
    """

    def test_valid(self) -> None:
        """
        C{HOST:PORT} and C{[v6]:PORT} split into host and integer port.
        """
        self.assertEqual(parse_listen_addr("127.0.0.1:8080"), ("127.0.0.1", 8080))
        self.assertEqual(parse_listen_addr("localhost:0"), ("localhost", 0))
        self.assertEqual(parse_listen_addr("[::1]:65535"), ("::1", 65535))

    def test_invalid(self) -> None:
        """
        Missing parts, a bad port or an unbracketed IPv6 host are
        L{errors.InvalidInput}.
        """
        for value in ("", "noport", ":80", "h:", "h:x", "h:65536", "h:-1", "h:+80", "::1:80", "h: 80"):
            error = self.assertRaises(errors.InvalidInput, parse_listen_addr, value)
            self.assertTrue(error.message.startswith("invalid input: "), error.message)

    def test_non_ascii_digits(self) -> None:
        """
        A port of non-ASCII digits is refused.
        """
        self.assertRaises(errors.InvalidInput, parse_listen_addr, "h:\u0668\u0660")



class EnvValueTests(SynchronousTestCase):
    """
    L{parse_bool_env}, L{parse_uint_env} and L{parse_mode}.
    """

    def test_bool_exact(self) -> None:
        """
        Exactly C{true} and C{false}; anything else names the variable.
        """
        self.assertIs(parse_bool_env("V", "true"), True)
        self.assertIs(parse_bool_env("V", "false"), False)
        for bad in ("True", "FALSE", "1", "0", "yes", "", " true"):
            error = self.assertRaises(errors.InvalidInput, parse_bool_env, "V", bad)
            self.assertIn("V", error.message)

    def test_uint(self) -> None:
        """
        Unsigned 64-bit ASCII decimal integers only.
        """
        self.assertEqual(parse_uint_env("V", "0"), 0)
        self.assertEqual(parse_uint_env("V", "18446744073709551615"), 2**64 - 1)
        for bad in ("18446744073709551616", "-1", "1.5", "", " 1", "+1", "1e3", "\u0663"):
            error = self.assertRaises(errors.InvalidInput, parse_uint_env, "V", bad)
            self.assertIn("V", error.message)

    def test_mode(self) -> None:
        """
        C{adaptive} or C{strict}, exact and lowercase.
        """
        self.assertEqual(parse_mode("strict"), "strict")
        self.assertEqual(parse_mode("adaptive"), "adaptive")
        for bad in ("Strict", "ADAPTIVE", "", "lax"):
            self.assertRaises(errors.InvalidInput, parse_mode, bad)


class EnvironmentTests(SynchronousTestCase):
    """
    L{apply_environment} and L{build_config}: the option wins over the
    environment.
    """

    env = {
        "EXECGO_RUNTIME_ID": "env-id",
        "EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE": "strict",
        "EXECGO_RUNTIME_DISABLE_LINUX_SANDBOX": "true",
        "EXECGO_RUNTIME_DISABLE_CGROUP": "false",
        "EXECGO_RUNTIME_CAPACITY_MEMORY_BYTES": "1024",
        "EXECGO_RUNTIME_CAPACITY_PIDS": "64",
    }

    def test_defaults(self) -> None:
        """
        No options and no environment give the contract defaults.
        """
        config = build_config({}, {})
        self.assertEqual(config, RuntimeConfig())
        self.assertEqual(
            (config.listen_addr, config.data_dir, config.max_running_tasks,
             config.max_queued_tasks, config.termination_grace_ms,
             config.result_retention_secs, config.gc_interval_ms,
             config.dispatch_poll_interval_ms, config.cgroup_root,
             config.default_capability_mode, config.disable_linux_sandbox,
             config.disable_cgroup, config.capacity_memory_bytes, config.capacity_pids,
             config.tenant_quotas, config.runtime_id),
            ("127.0.0.1:8080", "data", 4, 128, 5000, 604800, 1000, 250,
             "/sys/fs/cgroup/execgo-runtime", "adaptive", False, False, None, None, (), None),
        )

    def test_environment_used(self) -> None:
        """
        Each variable fills its setting when the option is absent.
        """
        config = build_config({"runtime_id": None, "disable_cgroup": None}, self.env)
        self.assertEqual(config.runtime_id, "env-id")
        self.assertEqual(config.default_capability_mode, "strict")
        self.assertTrue(config.disable_linux_sandbox)
        self.assertFalse(config.disable_cgroup)
        self.assertEqual((config.capacity_memory_bytes, config.capacity_pids), (1024, 64))

    def test_option_wins(self) -> None:
        """
        A given option is kept whatever its variable says, even a malformed
        variable.
        """
        env = dict(self.env, EXECGO_RUNTIME_CAPACITY_PIDS="junk", EXECGO_RUNTIME_DISABLE_CGROUP="yes")
        config = build_config(
            {
                "runtime_id": "opt-id",
                "default_capability_mode": "adaptive",
                "disable_linux_sandbox": False,
                "disable_cgroup": True,
                "capacity_memory_bytes": 5,
                "capacity_pids": 6,
            },
            env,
        )
        self.assertEqual(config.runtime_id, "opt-id")
        self.assertEqual(config.default_capability_mode, "adaptive")
        self.assertFalse(config.disable_linux_sandbox)
        self.assertTrue(config.disable_cgroup)
        self.assertEqual((config.capacity_memory_bytes, config.capacity_pids), (5, 6))

    def test_malformed_variables(self) -> None:
        """
        A malformed variable is L{errors.InvalidInput} naming it.
        """
        for name, value in (
            ("EXECGO_RUNTIME_DISABLE_CGROUP", "1"),
            ("EXECGO_RUNTIME_DISABLE_LINUX_SANDBOX", "TRUE"),
            ("EXECGO_RUNTIME_CAPACITY_MEMORY_BYTES", "-5"),
            ("EXECGO_RUNTIME_CAPACITY_PIDS", "1.0"),
            ("EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE", "Strict"),
        ):
            error = self.assertRaises(errors.InvalidInput, build_config, {}, {name: value})
            self.assertIn(name, error.message)
            self.assertTrue(error.message.startswith("invalid input: "))

    def test_only_documented_variables(self) -> None:
        """
        Settings without a variable ignore look-alike variables; the id
        variable is used verbatim, even empty.
        """
        config = build_config(
            {},
            {
                "EXECGO_RUNTIME_LISTEN_ADDR": "0.0.0.0:1",
                "EXECGO_RUNTIME_DATA_DIR": "/x",
                "EXECGO_RUNTIME_MAX_RUNNING_TASKS": "9",
                "EXECGO_RUNTIME_ID": "",
            },
        )
        self.assertEqual(
            (config.listen_addr, config.data_dir, config.max_running_tasks, config.runtime_id),
            ("127.0.0.1:8080", "data", 4, ""),
        )

    def test_apply_environment_given(self) -> None:
        """
        L{apply_environment} skips exactly the settings named as given.
        """
        base = RuntimeConfig(capacity_pids=3)
        config = apply_environment(base, self.env, frozenset({"capacity_pids"}))
        self.assertEqual(config.capacity_pids, 3)
        self.assertEqual(config.capacity_memory_bytes, 1024)

    def test_tenant_quotas_tuple(self) -> None:
        """
        Repeated tenant quotas are kept, in order, as a tuple.
        """
        config = build_config({"tenant_quotas": ["a=slots:1", "b=slots:2"]}, {})
        self.assertEqual(config.tenant_quotas, ("a=slots:1", "b=slots:2"))

    def test_settings_table(self) -> None:
        """
        Every setting names a config attribute; exactly the six
        contract variables, the two of the task identity, the preview
        ceiling's, the store's and the two of the node are attached to
        their settings.
        """
        names = {field.name for field in attrs.fields(RuntimeConfig)}
        for setting in SERVE_SETTINGS:
            self.assertIn(setting.attr, names)
        self.assertEqual(
            {s.flag: s.envvar for s in SERVE_SETTINGS if s.envvar},
            {
                "runtime-id": "EXECGO_RUNTIME_ID",
                "default-capability-mode": "EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE",
                "disable-linux-sandbox": "EXECGO_RUNTIME_DISABLE_LINUX_SANDBOX",
                "disable-cgroup": "EXECGO_RUNTIME_DISABLE_CGROUP",
                "capacity-memory-bytes": "EXECGO_RUNTIME_CAPACITY_MEMORY_BYTES",
                "capacity-pids": "EXECGO_RUNTIME_CAPACITY_PIDS",
                "task-uid-range": "EXECGO_RUNTIME_TASK_UID_RANGE",
                "task-user": "EXECGO_RUNTIME_TASK_USER",
                "max-output-preview-bytes": "EXECGO_RUNTIME_MAX_OUTPUT_PREVIEW_BYTES",
                "database-url": "EXECGO_RUNTIME_DATABASE_URL",
                "advertise-url": "EXECGO_RUNTIME_ADVERTISE_URL",
                "node-lease-ms": "EXECGO_RUNTIME_NODE_LEASE_MS",
            },
        )


class ToJsonTests(SynchronousTestCase):
    """
    L{RuntimeConfig.to_json} (the body of C{/api/v1/runtime/config}) and the
    derived paths.
    """

    def test_keys_and_order(self) -> None:
        """
        Every contract key, in order, with the configured (possibly
        relative) data directory; not the sandbox flag, overrides or quotas;
        then the task identity and the allowed rootfs roots; then the
        preview ceiling and the listener's limits; then the store's engine
        (never its URL); then how the node is reached, described and
        leased.
        """
        config = RuntimeConfig(
            disable_cgroup=True, disable_linux_sandbox=True, capacity_pids=5,
            tenant_quotas=("a=slots:1",), default_capability_mode="strict",
        )
        out = config.to_json("rid")
        self.assertEqual(
            list(out.items()),
            [
                ("runtime_id", "rid"),
                ("listen_addr", "127.0.0.1:8080"),
                ("data_dir", "data"),
                ("max_running_tasks", 4),
                ("max_queued_tasks", 128),
                ("termination_grace_ms", 5000),
                ("result_retention_secs", 604800),
                ("gc_interval_ms", 1000),
                ("dispatch_poll_interval_ms", 250),
                ("cgroup_root", DEFAULT_CGROUP_ROOT),
                ("default_capability_mode", "strict"),
                ("cgroup_enabled", False),
                ("task_uid_range", None),
                ("task_user", None),
                ("sandbox_rootfs_roots", []),
                ("max_output_preview_bytes", 16777216),
                ("request_header_timeout_ms", 10000),
                ("idle_connection_timeout_ms", 60000),
                ("max_connections", 0),
                ("database", "sqlite"),
                ("advertise_url", "http://127.0.0.1:8080"),
                ("node_labels", {}),
                ("node_lease_ms", 10000),
            ],
        )
        self.assertIs(RuntimeConfig().to_json("r")["cgroup_enabled"], True)

    def test_paths(self) -> None:
        """
        The store lives in the absolute data directory.
        """
        config = RuntimeConfig(data_dir="rel")
        self.assertEqual(config.data_dir_abs, os.path.abspath("rel"))
        self.assertEqual(config.database_path, os.path.join(os.path.abspath("rel"), "runtime.db"))


class PreviewAndListenerSettingsTests(SynchronousTestCase):
    """
    C{--max-output-preview-bytes} (with its variable) and the listener's
    limits, through L{build_config} and both option parsers.
    """

    def test_defaults(self) -> None:
        """
        16 MiB of preview, a 10 s request timeout, a 60 s idle timeout and a
        derived connection cap (0).
        """
        config = build_config({}, {})
        self.assertEqual(
            (
                config.max_output_preview_bytes,
                config.request_header_timeout_ms,
                config.idle_connection_timeout_ms,
                config.max_connections,
            ),
            (16777216, 10000, 60000, 0),
        )

    def test_environment_and_option(self) -> None:
        """
        C{EXECGO_RUNTIME_MAX_OUTPUT_PREVIEW_BYTES} sets the ceiling when
        the option is absent; the option wins over it.
        """
        env = {"EXECGO_RUNTIME_MAX_OUTPUT_PREVIEW_BYTES": "4096"}
        self.assertEqual(build_config({}, env).max_output_preview_bytes, 4096)
        self.assertEqual(build_config({"max_output_preview_bytes": 100}, env).max_output_preview_bytes, 100)

    def test_malformed_or_out_of_range(self) -> None:
        """
        A variable that is not a number, and a ceiling of 0 or above
        2^63-1 (from either source), are refused.
        """
        for env in ({"EXECGO_RUNTIME_MAX_OUTPUT_PREVIEW_BYTES": "lots"},
                    {"EXECGO_RUNTIME_MAX_OUTPUT_PREVIEW_BYTES": "0"}):
            self.assertRaises(errors.InvalidInput, build_config, {}, env)
        for value in (0, 2**63):
            error = self.assertRaises(errors.InvalidInput, build_config, {"max_output_preview_bytes": value}, {})
            self.assertIn("--max-output-preview-bytes", error.detail)

    def test_twistd_options(self) -> None:
        """
        The twistd plugin takes the four flags (built from the same table).
        """
        from execgo.server.tap import ServeOptions

        options = ServeOptions()
        options.parseOptions([
            "--max-output-preview-bytes", "1048576",
            "--request-header-timeout-ms", "2000",
            "--idle-connection-timeout-ms", "0",
            "--max-connections", "300",
        ])
        config = options.config({})
        self.assertEqual(
            (config.max_output_preview_bytes, config.request_header_timeout_ms,
             config.idle_connection_timeout_ms, config.max_connections),
            (1048576, 2000, 0, 300),
        )

    def test_click_options(self) -> None:
        """
        C{execgo-runtime serve} takes the four flags too.
        """
        import click

        from execgo.cli.server import config_from_click, register

        group = click.Group()
        register(group)
        serve = group.commands["serve"]
        context = serve.make_context("serve", [
            "--max-output-preview-bytes", "2048", "--request-header-timeout-ms", "5",
            "--idle-connection-timeout-ms", "7", "--max-connections", "9",
        ])
        config = config_from_click(dict(context.params))
        self.assertEqual(
            (config.max_output_preview_bytes, config.request_header_timeout_ms,
             config.idle_connection_timeout_ms, config.max_connections),
            (2048, 5, 7, 9),
        )
