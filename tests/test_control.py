"""
Tests for L{execgo.control}: the control channel's private directory,
its socket, the one-supervisor lock, peer credentials and the settings
file.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any, Tuple

from twisted.trial.unittest import SynchronousTestCase

from execgo import control
from execgo.host import privileges


def settings(**changes: object) -> control.SupervisorSettings:
    """
    Supervisor settings with test values.
    """
    values: dict = dict(
        grace_ms=250,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cgroup_root="/sys/fs/cgroup/execgo-test",
        identity=privileges.TaskIdentity(kind=privileges.RANGE, owner_uid=0, owner_gid=0, first=10, last=19),
        rootfs_roots=("/srv/rootfs",),
    )
    values.update(changes)
    return control.SupervisorSettings(**values)


class RunDirTests(SynchronousTestCase):
    """
    L{control.prepare_run_dir}.
    """

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)

    def test_private(self) -> None:
        """
        Created mode 0700; an existing one is set back to 0700.
        """
        path = control.prepare_run_dir(self.data_dir)
        self.assertEqual(path, os.path.join(self.data_dir, "run"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)
        os.chmod(path, 0o777)
        control.prepare_run_dir(self.data_dir)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)

    def test_not_ours_refused(self) -> None:
        """
        A directory of another uid (or a link, or a file) is not used.
        """
        path = control.run_dir(self.data_dir)
        os.symlink("/tmp", path)
        self.assertRaises(control.ChannelError, control.prepare_run_dir, self.data_dir)
        os.unlink(path)
        if os.geteuid() == 0:
            os.mkdir(path)
            os.chown(path, 65534, 65534)
            error = self.assertRaises(control.ChannelError, control.prepare_run_dir, self.data_dir)
            self.assertIn("65534", str(error))


class SocketTests(SynchronousTestCase):
    """
    The listener, long paths, the lock and peer credentials.
    """

    def setUp(self) -> None:
        # Deep enough that the socket path is longer than sun_path holds.
        self.data_dir = os.path.abspath(os.path.join(self.mktemp(), "d" * 60, "e" * 60))
        os.makedirs(self.data_dir)
        control.prepare_run_dir(self.data_dir)

    def test_long_path_listener(self) -> None:
        """
        A socket path over the C{sun_path} limit is bound and reached
        through a descriptor of its directory; the socket is mode 0600.
        """
        path = control.socket_path(self.data_dir)
        self.assertGreater(len(path), 108)
        listener = control.bind_listener(self.data_dir)
        self.addCleanup(listener.close)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        with control.reachable(path) as address:
            self.assertTrue(address.startswith("/proc/self/fd/"))
            client.connect(address)
        server_side, _ = listener.accept()
        self.addCleanup(server_side.close)
        credentials = control.peer_credentials(server_side)
        self.assertEqual(credentials, control.PeerCredentials(os.getpid(), os.geteuid(), os.getegid()))

    def test_stale_socket_replaced(self) -> None:
        """
        A socket file left by a supervisor that died is replaced.
        """
        first = control.bind_listener(self.data_dir)
        first.close()
        second = control.bind_listener(self.data_dir)
        self.addCleanup(second.close)
        self.assertTrue(stat.S_ISSOCK(os.stat(control.socket_path(self.data_dir)).st_mode))

    def test_one_lock(self) -> None:
        """
        The supervisor lock is held once: a second taker is told no.
        """
        held = control.lock_supervisor(self.data_dir)
        self.assertIsNotNone(held)
        assert held is not None
        self.addCleanup(os.close, held)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: a second supervisor
            os._exit(0 if control.lock_supervisor(self.data_dir) is None else 1)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.WEXITSTATUS(status), 0)


class SettingsTests(SynchronousTestCase):
    """
    The settings file.
    """

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        control.prepare_run_dir(self.data_dir)

    def test_round_trip(self) -> None:
        """
        Written (mode 0600) and read back the same.
        """
        control.write_settings(self.data_dir, settings())
        path = os.path.join(control.run_dir(self.data_dir), control.SETTINGS_NAME)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(control.read_settings(self.data_dir), settings())

    def assert_optional_positive(self, name: str, value: int, bad: Tuple[Any, ...]) -> None:
        """
        The setting C{name} round-trips with C{value}; a file written
        before it existed still parses (the setting is C{None}); each of
        C{bad} (not a positive integer) makes the file malformed.
        """
        path = os.path.join(control.run_dir(self.data_dir), control.SETTINGS_NAME)
        control.write_settings(self.data_dir, settings(**{name: value}))
        self.assertEqual(control.read_settings(self.data_dir), settings(**{name: value}))
        old = settings().to_json()
        del old[name]
        with open(path, "w") as out:
            out.write(json.dumps(old))
        read = control.read_settings(self.data_dir)
        assert read is not None
        self.assertIsNone(getattr(read, name))
        for wrong in bad:
            with open(path, "w") as out:
                out.write(json.dumps({**old, name: wrong}))
            self.assertIsNone(control.read_settings(self.data_dir), wrong)

    def test_preview_ceiling(self) -> None:
        """
        The preview ceiling (no ceiling in an older file: the tasks' own
        limits alone).
        """
        self.assert_optional_positive("max_output_preview_bytes", 16777216, (0, "16", True))

    def test_max_running_tasks(self) -> None:
        """
        The task slots (none in an older file: the supervisor keeps no
        limit and starts every order at once).
        """
        self.assert_optional_positive("max_running_tasks", 4, (0, -1, "4", True))

    def test_missing_or_malformed(self) -> None:
        """
        No file, or one that does not parse: no settings.
        """
        self.assertIsNone(control.read_settings(self.data_dir))
        path = os.path.join(control.run_dir(self.data_dir), control.SETTINGS_NAME)
        for text in ("not json", json.dumps({"grace_ms": 1}), json.dumps({**settings().to_json(), "env": {"A": 1}})):
            with open(path, "w") as out:
                out.write(text)
            self.assertIsNone(control.read_settings(self.data_dir), text)


class MessageTests(SynchronousTestCase):
    """
    The typed messages of the channel and their one wire form.
    """

    def test_round_trip(self) -> None:
        """
        Every order and report decodes back from its encoding to itself.
        """
        orders = [control.Launch(("a", "b")), control.Kill("a"), control.Ping(7), control.Shutdown()]
        reports = [
            control.Hello(42, ("a",)),
            control.Hello(42, ("a",), "postgresql://app@db/execgo"),
            control.Hello(42, (), "/data/runtime.db", 4),
            control.Finished("a"),
            control.Finished("a", {"task_id": "a", "status": "success"}),
            control.Declined("a"),
            control.Pong(7),
        ]
        for order in orders:
            self.assertEqual(control.decode_order(control.encode(order)), order)
        for report in reports:
            self.assertEqual(control.decode_report(control.encode(report)), report)

    def test_wire_form(self) -> None:
        """
        Compact JSON with C{op} for orders and C{ev} for reports.
        """
        self.assertEqual(control.encode(control.Launch(("t",))), b'{"op":"launch","task_ids":["t"]}')
        self.assertEqual(control.encode(control.Finished("t")), b'{"ev":"finished","task_id":"t"}')

    def test_orders_carry_ids_only(self) -> None:
        """
        Whatever else a launch order names is not read; ids that are not
        strings are dropped.
        """
        line = b'{"op":"launch","task_ids":["a",1,null],"env":{"PATH":"/evil"},"cgroup_root":"/x","grace_ms":1}'
        self.assertEqual(control.decode_order(line), control.Launch(("a",)))

    def test_hello_slots(self) -> None:
        """
        A greeting's slots are a positive integer or none at all: a
        supervisor that says anything else is taken to start every order
        at once.
        """
        for slots in (0, -2, "4", True, 1.5, None):
            line = json.dumps({"ev": "hello", "pid": 42, "running": [], "slots": slots}).encode()
            self.assertEqual(control.decode_report(line), control.Hello(42), slots)

    def test_garbage_ignored(self) -> None:
        """
        Lines that are not a known, well-formed message decode to nothing.
        """
        for line in (b"", b"not json", b"[]", b'{"op":"format-disk"}', b'{"op":"kill"}', b'{"op":"ping","seq":"1"}',
                     b'{"op":"launch","task_ids":"a"}'):
            self.assertIsNone(control.decode_order(line), line)
        for line in (b"{}", b'{"ev":"hello"}', b'{"ev":"finished"}', b'{"ev":"declined","task_id":3}'):
            self.assertIsNone(control.decode_report(line), line)
