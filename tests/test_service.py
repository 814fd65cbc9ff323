"""
Tests for L{execgo.server.service}: the order in which the server starts
and stops, run in memory.  The reactor is a L{MemoryReactorClock}, blocking
calls run at once (L{ServiceEdges.in_thread}), the store's SQL runs on a
real SQLite file in a temporary data directory without threads, the host
probe answers fixed facts and the supervisor link is a fake; every step
is written down in one journal.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Tuple

import attrs
import psycopg
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from execgo.core import errors
from execgo.core.config import RuntimeConfig
from execgo.core.databaseurl import STORE_RETRY_S, STORE_WAIT_S, DatabaseUrl
from execgo.core.hostfacts import HostFacts
from execgo.host.privileges import open_passage
from execgo.server.service import RuntimeService, ServiceEdges
from tests.fakes import FakeLink, InlinePool, run_now


class FinishingRequest:
    """
    A request in flight as the site sees it: C{notifyFinish} Deferreds
    fired by L{finish}.
    """

    def __init__(self) -> None:
        self.waiting: List["Deferred[None]"] = []

    def notifyFinish(self) -> "Deferred[None]":
        waiting: "Deferred[None]" = Deferred()
        self.waiting.append(waiting)
        return waiting

    def finish(self, site: Any) -> None:
        """
        End the request: it leaves C{site}'s requests in flight, as the
        site's own C{notifyFinish} callback does.
        """
        site.inflight.discard(self)
        for waiting in self.waiting:
            waiting.callback(None)


class JournalPort:
    """
    A listening port that writes its closing in the journal.
    """

    def __init__(self, journal: List[str], port: Any) -> None:
        self.journal = journal
        self.port = port

    def stopListening(self) -> None:
        """
        Stop at once (as a port may, without a Deferred).
        """
        self.journal.append("port.stop")

    def getHost(self) -> Any:
        """
        The address it pretends to listen on.
        """
        return self.port.getHost()


class JournalReactor(MemoryReactorClock):
    """
    A memory reactor whose TCP ports write their opening and closing in
    the journal, or refuse to open.
    """

    def __init__(self, journal: List[str]) -> None:
        super().__init__()
        self.journal = journal
        self.refuse: Optional[Exception] = None

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """
        Record the port (see L{MemoryReactorClock.tcpServers}), or raise
        C{refuse}.
        """
        if self.refuse is not None:
            raise self.refuse
        self.journal.append("port.listen")
        return JournalPort(self.journal, super().listenTCP(port, factory, backlog, interface))


class JournalPool(InlinePool):
    """
    An L{InlinePool} that writes its jobs and its closing in the journal,
    and can hold its jobs until the test lets them run.

    @ivar held: the jobs waiting, when holding (else C{None}).
    """

    def __init__(self, journal: List[str], path: str, connections: int) -> None:
        super().__init__(path)
        self.journal = journal
        self.name = f"pool{connections}"
        self.held: Optional[List[Callable[[], None]]] = None
        journal.append(f"{self.name}.open")

    def runWithConnection(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        Run the job now, or hold it.
        """
        if self.held is None:
            return super().runWithConnection(func, *args, **kwargs)
        d: Deferred[Any] = Deferred()
        self.held.append(lambda: super(JournalPool, self).runWithConnection(func, *args, **kwargs).chainDeferred(d))
        return d

    def release_one(self) -> None:
        """
        Run the oldest held job.
        """
        assert self.held
        self.held.pop(0)()

    def close(self) -> None:
        """
        Record the closing, and close.
        """
        self.journal.append(f"{self.name}.close")
        super().close()


class ServiceTestCase(SynchronousTestCase):
    """
    A service over a temporary data directory, on fakes that write every
    step in L{journal}.
    """

    def setUp(self) -> None:
        # start() makes what the server creates private for the whole
        # process: give this test process its mask back.
        mask = os.umask(0o022)
        os.umask(mask)
        self.addCleanup(os.umask, mask)
        self.journal: List[str] = []
        self.reactor = JournalReactor(self.journal)
        self.data_dir = os.path.abspath(self.mktemp())
        self.pools: List[JournalPool] = []
        self.link = FakeLink(pid=4242, calls=self.journal)
        self.failing: Optional[Tuple[str, Exception]] = None
        self.hold_jobs = False
        self.config = RuntimeConfig(
            data_dir=self.data_dir,
            listen_addr="127.0.0.1:18080",
            disable_cgroup=True,
            disable_linux_sandbox=True,
        )

    def in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        """
        Run C{func} at once and write its name down; the passage to the
        data directory (which would change the modes of the directories
        above it) is only pretended, and the step named in L{failing} fails.
        """
        name = getattr(func, "__name__", repr(func))
        self.journal.append(name)
        if self.failing is not None and self.failing[0] == name:
            return run_now(_raise, self.failing[1])
        if func is open_passage:
            return run_now(lambda: ([], []))
        return run_now(func, *args)

    def open_pool(self, reactor: Any, database: DatabaseUrl, connections: int) -> JournalPool:
        """
        A journaling pool on the store.
        """
        pool = JournalPool(self.journal, database.without_password, connections)
        if self.hold_jobs:
            pool.held = []
        self.pools.append(pool)
        return pool

    def probe_host(self, *args: Any) -> HostFacts:
        """
        A Linux host without cgroups or namespaces.
        """
        return HostFacts()

    def make_link(self, reactor: Any, database: DatabaseUrl, data_dir: str) -> FakeLink:
        """
        The fake link, once the journal says it was made.
        """
        self.journal.append("link.make")
        return self.link

    def service(self) -> RuntimeService:
        """
        A service over the fakes (not started).
        """
        edges = ServiceEdges(
            in_thread=self.in_thread,
            open_pool=self.open_pool,
            probe_host=self.probe_host,
            make_link=self.make_link,  # type: ignore[arg-type]
        )
        return RuntimeService(self.reactor, self.config, {}, descriptor_limit=lambda: 4096, edges=edges)

    def begun(self) -> RuntimeService:
        """
        A service whose start began on a running reactor (it may wait).
        """
        service = self.service()
        service.startService()
        self.reactor.run()
        return service

    def started(self) -> RuntimeService:
        """
        A service started on a running reactor.
        """
        service = self.begun()
        self.successResultOf(service.started)
        return service


def _raise(error: Exception) -> Any:
    raise error


class StartTests(ServiceTestCase):
    """
    L{RuntimeService.startService} and what follows.
    """

    def test_waits_for_the_reactor(self) -> None:
        """
        Nothing starts before the reactor runs.
        """
        service = self.service()
        service.startService()
        self.assertTrue(service.running)
        self.assertEqual(self.journal, [])
        self.assertNoResult(service.started)

    def test_order(self) -> None:
        """
        Data directory, store, probe, the node's key, supervisor settings,
        the link, the
        supervisor (after recovery), then the port; the loops run and the
        runtime accepts once it listens.
        """
        service = self.service()
        service.startService()
        self.reactor.run()
        port = self.successResultOf(service.started)
        passage = ["open_passage"] if service.identity.drops else []
        self.assertEqual(
            self.journal,
            ["prepare_data_dir", "prepare_run_dir", *passage, "pool1.open", "pool2.open", "private_store"]
            + ["probe_host", "node_instance", "write_settings", "link.make", "link.listen", "link.ensure"]
            + ["port.listen"],
        )
        self.assertIs(port, service.port)
        [(number, _, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((number, backlog, interface), (18080, 1024, "127.0.0.1"))
        assert service.runtime is not None
        self.assertTrue(service.runtime.accepting)
        self.assertIs(self.link.receiver, service.runtime)
        self.assertTrue(os.path.isdir(os.path.join(self.data_dir, "tasks")))
        # The dispatcher's poll, the first GC pass and the node watch.
        self.assertEqual(len(self.reactor.getDelayedCalls()), 3)

    def test_nothing_listens_before_recovery(self) -> None:
        """
        While any store job (the schema, recovery, the dispatcher's state)
        is pending, nothing listens and start-up has not finished.
        """
        self.hold_jobs = True
        service = self.service()
        service.startService()
        self.reactor.run()
        released = 0
        while any(pool.held for pool in self.pools):
            self.assertEqual(self.reactor.tcpServers, [])
            self.assertNoResult(service.started)
            for pool in self.pools:
                if pool.held:
                    pool.release_one()
                    released += 1
        self.assertGreater(released, 2)
        self.successResultOf(service.started)
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertLess(self.journal.index("link.ensure"), self.journal.index("port.listen"))

    def test_unusable_data_directory(self) -> None:
        """
        A data directory that cannot be prepared fails start-up with
        C{internal} naming it; no store is opened.
        """
        self.failing = ("prepare_data_dir", PermissionError(13, "Permission denied"))
        service = self.service()
        service.startService()
        self.reactor.run()
        failure = self.failureResultOf(service.started, errors.Internal)
        self.assertIn(f"cannot use data directory {self.data_dir}", failure.value.detail)
        self.assertEqual(self.pools, [])

    def test_store_fails(self) -> None:
        """
        A store that cannot be opened (here: its files cannot be made
        private) fails start-up with C{internal} naming it, and its pools
        are closed.
        """
        self.failing = ("private_store", OSError(5, "Input/output error"))
        service = self.service()
        service.startService()
        self.reactor.run()
        failure = self.failureResultOf(service.started, errors.Internal)
        self.assertIn(f"cannot open {self.config.database_path}", failure.value.detail)
        self.assertEqual([pool.closed for pool in self.pools], [True, True])
        self.assertNotIn("link.make", self.journal)

    def refusing_pools(self, refusals: int, error: Exception, after: int = 0) -> None:
        """
        Make the store's connection jobs fail with C{error} (a database
        server that cannot be reached), C{refusals} of them after the
        first C{after}; the store is the SQLite file underneath.
        """
        self.config = attrs.evolve(self.config, database_url="postgresql://app:secret@127.0.0.1:1/execgo")
        left = [refusals]
        passed = [after]
        opened = self.open_pool

        def open_pool(reactor: Any, database: DatabaseUrl, connections: int) -> JournalPool:
            pool = opened(reactor, DatabaseUrl("sqlite", self.config.database_path), connections)
            run = pool.runWithConnection

            def refusing(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
                if passed[0] > 0:
                    passed[0] -= 1
                elif left[0] > 0:
                    left[0] -= 1
                    self.journal.append("store.refused")
                    return defer.fail(error)
                return run(func, *args, **kwargs)

            pool.runWithConnection = refusing  # type: ignore[method-assign]
            return pool

        self.open_pool = open_pool  # type: ignore[method-assign]

    def assert_waits(self, refusals: int) -> None:
        """
        Start-up meets C{refusals} refusals, one every L{STORE_RETRY_S},
        and has not finished until the last one is behind it.
        """
        service = self.begun()
        for seen in range(1, refusals + 1):
            self.assertEqual(self.journal.count("store.refused"), seen)
            self.assertNoResult(service.started)
            self.reactor.advance(STORE_RETRY_S)
        self.successResultOf(service.started)
        self.assertEqual(self.journal.count("store.refused"), refusals)

    def test_waits_for_the_database(self) -> None:
        """
        A database server that cannot be reached yet is tried again every
        L{STORE_RETRY_S}: start-up goes on once it answers.
        """
        self.refusing_pools(2, psycopg.OperationalError("connection failed: Connection refused"))
        self.assert_waits(refusals=2)

    def test_recovery_waits_for_the_database(self) -> None:
        """
        A database that goes away after the schema was made (a restart
        during start-up) is waited for by recovery the same way.
        """
        self.refusing_pools(1, psycopg.errors.AdminShutdown("terminating connection"), after=1)
        self.assert_waits(refusals=1)

    def test_database_wait_is_bounded(self) -> None:
        """
        After L{STORE_WAIT_S} start-up fails, naming the store without its
        password; the pools are closed.
        """
        self.refusing_pools(10_000, psycopg.OperationalError("connection failed: Connection refused"))
        service = self.begun()
        self.reactor.pump([STORE_RETRY_S] * int(STORE_WAIT_S / STORE_RETRY_S + 2))
        failure = self.failureResultOf(service.started, errors.Internal)
        self.assertIn("cannot open postgresql://app:***@127.0.0.1:1/execgo", failure.value.detail)
        self.assertNotIn("secret", failure.value.detail)
        self.assertEqual([pool.closed for pool in self.pools], [True, True])

    def test_database_refusal_is_final(self) -> None:
        """
        A database server that refuses for good (a wrong password) fails
        start-up at once.
        """
        self.refusing_pools(
            1, psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "app"')
        )
        service = self.begun()
        failure = self.failureResultOf(service.started, errors.Internal)
        self.assertIn("password authentication failed", failure.value.detail)

    def test_cannot_listen(self) -> None:
        """
        A port that cannot be opened fails start-up with C{internal}
        naming the address, and the runtime stops accepting.
        """
        self.reactor.refuse = OSError(98, "Address already in use")
        service = self.service()
        service.startService()
        self.reactor.run()
        failure = self.failureResultOf(service.started, errors.Internal)
        self.assertIn("cannot listen on 127.0.0.1:18080", failure.value.detail)
        assert service.runtime is not None
        self.assertFalse(service.runtime.accepting)


class StopTests(ServiceTestCase):
    """
    L{RuntimeService.stopService}.
    """

    def test_order(self) -> None:
        """
        The runtime stops accepting, the port closes, then the dispatcher,
        the link and the store; no timer is left.
        """
        service = self.started()
        del self.journal[:]
        self.successResultOf(service.stopService())
        self.assertEqual(self.journal, ["port.stop", "link.close", "pool2.close", "pool1.close"])
        assert service.runtime is not None
        self.assertFalse(service.runtime.accepting)
        self.assertFalse(service.running)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_drains_requests(self) -> None:
        """
        Requests in flight hold the stop (the port closed already) until
        each one's own C{notifyFinish} fires; a request a kept-alive
        connection brings meanwhile is waited for too; the link and store
        close after them.
        """
        service = self.started()
        assert service.site is not None
        first, second = FinishingRequest(), FinishingRequest()
        service.site.inflight.add(first)  # type: ignore[arg-type]
        del self.journal[:]
        stopped = service.stopService()
        self.reactor.advance(1)
        self.assertNoResult(stopped)
        self.assertEqual(self.journal, ["port.stop"])
        service.site.inflight.add(second)  # type: ignore[arg-type]
        first.finish(service.site)
        self.assertNoResult(stopped)
        second.finish(service.site)
        self.successResultOf(stopped)
        self.assertEqual(self.journal, ["port.stop", "link.close", "pool2.close", "pool1.close"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_drain_is_bounded(self) -> None:
        """
        A request that never finishes holds the stop for the drain timeout
        (10 seconds), no longer.
        """
        service = self.started()
        assert service.site is not None
        service.site.inflight.add(FinishingRequest())  # type: ignore[arg-type]
        stopped = service.stopService()
        self.reactor.advance(9.9)
        self.assertNoResult(stopped)
        self.reactor.advance(0.2)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_before_start(self) -> None:
        """
        A service stopped before the reactor ran it has nothing to close.
        """
        service = self.service()
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(self.journal, [])
