"""
Tests for the supervisor daemon's loop (L{execgo.supervisor.daemon.Loop})
on its own: orders written into one end of a socket pair, reports read
from it, the loop turned by hand (L{Loop.turn} without blocking), over an
engine with a clock the test moves and fake kernel edges
(L{tests.fakes.FakeProcesses}): no workload process, no sleep.
The accept path (peer credentials, the private socket) is tested with
real sockets in C{tests.test_supervisor}.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any, List

import psycopg
from twisted.trial.unittest import SynchronousTestCase

from execgo import control
from execgo.core.databaseurl import STORE_RETRY_S, STORE_WAIT_S
from execgo.host import privileges
from execgo.supervisor import daemon
from execgo.supervisor.daemon import Loop
from tests.test_engine import GRACE_S, EngineHarness

IDLE_EXIT_S = 10.0


class LoopTests(EngineHarness, SynchronousTestCase):
    """
    Orders in, reports out, and when the loop exits.
    """

    def setUp(self) -> None:
        self.make_engine()
        self.loop = Loop(self.supervisor, self.data_dir, IDLE_EXIT_S, self.logged.append)
        self.addCleanup(self.loop.selector.close)

    def connect(self, buffer_bytes: int = 0) -> socket.socket:
        """
        A server's end of a new connection the loop serves; the hello is
        left to read.

        @param buffer_bytes: when given, the size of both socket buffers.
        """
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        if buffer_bytes:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        ours.setblocking(False)
        self.loop.adopt(theirs)
        return ours

    def received(self, server: socket.socket) -> List[control.Report]:
        """
        Every report the loop has sent to C{server} and not read yet.
        """
        data = b""
        while True:
            try:
                chunk = server.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        self.assertTrue(data == b"" or data.endswith(b"\n"), data)
        decoded = [control.decode_report(line) for line in data.splitlines()]
        self.assertNotIn(None, decoded)
        return decoded  # type: ignore[return-value]

    def order(self, server: socket.socket, *orders: control.Order) -> None:
        """
        Send orders and let the loop take them in.
        """
        server.sendall(b"".join(control.encode(order) + b"\n" for order in orders))
        self.assertFalse(self.loop.turn(block=False))

    def turn(self, seconds: float = 0.0) -> bool:
        """
        Move the clock on and turn the loop once.
        """
        self.now += seconds
        return self.loop.turn(block=False)

    def test_hello(self) -> None:
        """
        A connection is greeted with this process's pid, the tasks
        supervised here and the store they are on.
        """
        self.launch("running")
        server = self.connect()
        self.assertEqual(self.received(server), [control.Hello(os.getpid(), ("running",), self.db)])

    def test_hello_says_the_slots(self) -> None:
        """
        The greeting names the task slots the supervisor keeps orders to.
        """
        self.supervisor.slots.limit = 3
        server = self.connect()
        self.assertEqual(self.received(server), [control.Hello(os.getpid(), (), self.db, 3)])

    def test_orders_of_a_closed_connection_forgotten(self) -> None:
        """
        The orders waiting for a slot that came by a connection that
        closed are dropped: they stay C{accepted} for the server to order
        again.
        """
        self.supervisor.slots.limit = 1
        gone, staying = self.connect(), self.connect()
        for task_id in ("a", "b", "c"):
            self.insert(task_id)
        self.order(gone, control.Launch(("a", "b")))
        self.order(staying, control.Launch(("c",)))
        self.assertEqual(sorted(self.supervisor.by_task), ["a"])
        gone.close()
        self.turn()
        self.processes.exit(self.supervisor.by_task["a"].pid, 0)
        self.turn()
        self.assertEqual(sorted(self.supervisor.by_task), ["c"])
        self.assertEqual(self.load("b").status, "accepted")

    def test_launch_then_finished(self) -> None:
        """
        A launch order starts the task; its end is reported with its
        terminal snapshot.
        """
        server = self.connect()
        self.received(server)
        self.insert("t")
        self.order(server, control.Launch(("t",)))
        [workload] = self.processes.workloads.values()
        self.processes.exit(workload.pid, 0)
        self.assertFalse(self.turn())
        [finished] = self.received(server)
        assert isinstance(finished, control.Finished)
        self.assertEqual(finished.task_id, "t")
        assert finished.status is not None
        self.assertEqual(finished.status["status"], "success")

    def test_kill_order_escalates(self) -> None:
        """
        A kill order sends SIGTERM at once and SIGKILL after the grace
        period, on the loop's turns; the end is reported C{cancelled}.
        """
        self.processes.behaviour = {"ignores": {signal.SIGTERM}}
        server = self.connect()
        pid = self.launch("k")
        self.order(server, control.Kill("k"))
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM])
        self.turn(GRACE_S)
        self.assertEqual(self.processes.sent(pid), [signal.SIGTERM, signal.SIGKILL])
        self.turn()
        finished = self.received(server)[-1]
        assert isinstance(finished, control.Finished) and finished.status is not None
        self.assertEqual(finished.status["status"], "cancelled")

    def test_declined(self) -> None:
        """
        A launch order for a task that is not C{accepted} is declined to
        the server that sent it alone.
        """
        sender, other = self.connect(), self.connect()
        self.received(sender)
        self.received(other)
        self.order(sender, control.Launch(("ghost",)))
        self.assertEqual(self.received(sender), [control.Declined("ghost")])
        self.assertEqual(self.received(other), [])

    def test_launches_read_together_claimed_together(self) -> None:
        """
        Launch orders read at once are claimed in one transaction, in
        order, around the other orders between them; a task ordered twice
        starts once, and only the unknown task is declined.
        """
        server = self.connect()
        self.received(server)
        for task_id in ("a", "b", "c"):
            self.insert(task_id)
        batches: List[List[str]] = []
        launch_all = self.supervisor.launch_all

        def recording(orders: Any) -> Any:
            batches.append([task_id for task_id, _ in orders])
            return launch_all(orders)

        self.patch(self.supervisor, "launch_all", recording)
        self.order(
            server,
            control.Launch(("a",)),
            control.Launch(("b", "a", "ghost")),
            control.Ping(1),
            control.Launch(("c",)),
        )
        self.assertEqual(batches, [["a", "b", "ghost"], ["c"]])
        self.assertEqual(self.received(server), [control.Declined("ghost"), control.Pong(1)])
        self.assertEqual(sorted(self.supervisor.by_task), ["a", "b", "c"])
        self.assertEqual(len(self.processes.workloads), 3)

    def test_reports_to_every_server(self) -> None:
        """
        A task's end is reported to every connected server.
        """
        first, second = self.connect(), self.connect()
        pid = self.launch("b")
        self.received(first)
        self.received(second)
        self.processes.exit(pid, 0)
        self.turn()
        for server in (first, second):
            self.assertEqual([report.task_id for report in self.received(server)], ["b"])  # type: ignore[union-attr]

    def test_ping_and_split_lines(self) -> None:
        """
        Pings are answered in order; an order split across reads is taken
        once whole; a line that is no order is ignored.
        """
        server = self.connect()
        self.received(server)
        line = control.encode(control.Ping(2)) + b"\n"
        server.sendall(control.encode(control.Ping(1)) + b"\nnot an order\n" + line[:5])
        self.turn()
        self.assertEqual(self.received(server), [control.Pong(1)])
        server.sendall(line[5:])
        self.turn()
        self.assertEqual(self.received(server), [control.Pong(2)])

    def test_overlong_line_drops(self) -> None:
        """
        A connection sending a line longer than L{control.MAX_LINE} is
        dropped.
        """
        server = self.connect()
        self.received(server)
        server.sendall(b"x" * (control.MAX_LINE + 2))
        for _ in range(4):
            self.turn()
        self.assertEqual(self.loop.connections, {})
        self.assertEqual(server.recv(10), b"")

    def test_slow_reader(self) -> None:
        """
        Reports to a server that does not read are queued, not lost or
        blocking, and sent in order once it reads again.
        """
        server = self.connect(buffer_bytes=4096)
        self.received(server)
        [connection] = self.loop.connections.values()
        for count in range(1, 5000):
            self.loop.broadcast(control.Pong(count))
            if connection.waiting_to_write:
                break
        else:
            self.fail("the socket never filled")
        received: List[control.Report] = []
        for _ in range(count):
            received += self.received(server)
            self.turn()
            if len(received) == count:
                break
        received += self.received(server)
        self.assertEqual(received, [control.Pong(seq) for seq in range(1, count + 1)])
        self.assertFalse(connection.waiting_to_write)

    def test_peer_gone(self) -> None:
        """
        A connection closed by its server is dropped.
        """
        server = self.connect()
        server.close()
        self.turn()
        self.assertEqual(self.loop.connections, {})

    def test_idle_exit(self) -> None:
        """
        With no server connected and nothing supervised, the loop exits
        after C{idle_exit_s}, counted from when it became idle.
        """
        server = self.connect()
        self.assertFalse(self.turn(IDLE_EXIT_S * 2))
        server.close()
        self.assertFalse(self.turn())
        self.assertEqual(self.loop.connections, {})
        self.assertFalse(self.turn())
        self.assertFalse(self.turn(IDLE_EXIT_S - 1))
        self.assertTrue(self.turn(1))

    def test_not_idle_while_busy(self) -> None:
        """
        A supervised workload keeps the loop running, server or none.
        """
        pid = self.launch("long")
        self.assertFalse(self.turn(IDLE_EXIT_S * 2))
        self.processes.exit(pid, 0)
        self.assertFalse(self.turn())
        self.assertTrue(self.turn(IDLE_EXIT_S))

    def test_shutdown_waits_for_workloads(self) -> None:
        """
        A shutdown order makes the loop exit once nothing is supervised,
        not before.
        """
        server = self.connect()
        pid = self.launch("w")
        self.order(server, control.Shutdown())
        self.assertFalse(self.turn(1))
        self.processes.exit(pid, 0)
        self.assertTrue(self.turn())

    def test_settings_on_adopt(self) -> None:
        """
        Each connection makes the engine take the settings file's values.
        """
        control.prepare_run_dir(self.data_dir)
        settings = control.SupervisorSettings(
            grace_ms=4321,
            env={"PATH": "/bin"},
            cgroup_root="/nonexistent-cgroup-root",
            identity=privileges.TaskIdentity(kind=privileges.SELF, owner_uid=os.geteuid(), owner_gid=os.getegid()),
            rootfs_roots=("/srv",),
        )
        control.write_settings(self.data_dir, settings)
        self.connect()
        self.assertEqual(self.supervisor.grace_s, 4.321)
        self.assertEqual(self.supervisor.rootfs_roots, ("/srv",))


class ServeTests(SynchronousTestCase):
    """
    The daemon's start on its store (L{daemon.open_engine}) and the end of
    its loop (L{daemon.serve}).
    """

    def test_error_is_logged(self) -> None:
        """
        An error that ends the loop is written to the supervisor's log,
        with its traceback, and the engine is closed.
        """
        logged: List[str] = []
        closed: List[bool] = []

        class Broken:
            def run(self) -> None:
                raise RuntimeError("the store went away")

        class Engine:
            def close(self) -> None:
                closed.append(True)

        with self.assertRaises(RuntimeError):
            daemon.serve(Broken(), Engine(), logged.append)
        self.assertEqual(closed, [True])
        [line] = logged
        self.assertTrue(line.startswith("supervisor stopped by an error: Traceback"))
        self.assertIn("RuntimeError: the store went away", line)

    def test_store_waited_for(self) -> None:
        """
        A store that cannot be reached yet is tried again every
        L{STORE_RETRY_S}, each try logged, until it opens.
        """
        logged: List[str] = []
        slept: List[float] = []
        tries = [psycopg.OperationalError("connection failed: Connection refused")] * 2

        def build(database: str, settings: Any, log: Any) -> Any:
            if tries:
                raise tries.pop()
            return "engine"

        engine = daemon.open_engine("postgresql://x@h/db", None, logged.append, build, slept.append, lambda: 0.0)
        self.assertEqual((engine, slept, len(logged)), ("engine", [STORE_RETRY_S] * 2, 2))
        self.assertTrue(logged[0].startswith("store not reachable yet"))

    def test_store_wait_bounded_and_refusal_final(self) -> None:
        """
        After L{STORE_WAIT_S} the last error is raised; a refusal for good
        (a wrong password) at once.
        """
        now = [0.0]

        def build(database: str, settings: Any, log: Any) -> Any:
            raise psycopg.OperationalError("connection failed: Connection refused")

        def sleep(seconds: float) -> None:
            now[0] += seconds

        with self.assertRaises(psycopg.OperationalError):
            daemon.open_engine("postgresql://x@h/db", None, lambda line: None, build, sleep, lambda: now[0])
        self.assertGreaterEqual(now[0], STORE_WAIT_S)

        def refused(database: str, settings: Any, log: Any) -> Any:
            raise psycopg.OperationalError("connection failed: FATAL:  password authentication failed")

        slept: List[float] = []
        with self.assertRaises(psycopg.OperationalError):
            daemon.open_engine("postgresql://x@h/db", None, lambda line: None, refused, slept.append, lambda: 0.0)
        self.assertEqual(slept, [])
