"""
An in-process runtime for API and client tests: the real Klein resource,
the real L{Runtime} over the real store (real SQL on a temporary SQLite
file), and a supervisor link that is a fake never connected (tasks stay
queued).  Requests go through L{treq.testing.StubTreq}, so there are no
sockets.

Two ways to run it:

  - L{MemoryRuntime}: synchronous, for C{SynchronousTestCase}s.  The store's
    SQL runs at once on the caller's thread (L{tests.fakes.InlinePool}),
    blocking calls too (L{tests.fakes.run_now}), and time is a
    L{MemoryReactorClock} the test advances: every request is answered
    before L{MemoryRuntime.request} returns, unless it waits for an event
    (a long-poll, a follow stream) the test then brings about.
  - L{InProcessRuntime}: the same parts on the real reactor and the
    store's own thread pools, for tests that need real time to pass.

Neither calls the store's methods: the schema is created through the pool
(L{execgo.store.schema.init_schema}), and the pool is closed directly.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from execgo.core.capabilities import Capabilities
from execgo.core.config import RuntimeConfig
from execgo.core.databaseurl import DatabaseUrl
from execgo.core.ledger import Ledger
from execgo.core.quotas import parse_tenant_quotas
from execgo.core.reservation import Reservation
from execgo.server.budget import ByteBudget
from execgo.server.database import Store, open_pool
from execgo.server.runtime import Runtime
from execgo.server.scheduler import Scheduler
from execgo.server.service import prepare_data_dir, wall_ms
from execgo.server.upkeep import Upkeep, probe_writable
from execgo.server.web.api import RuntimeAPI
from execgo.server.web.auth import Tokens
from execgo.store import schema
from tests.fakes import FakeLink, InlinePool, run_now

#: A response: status code, headers, body.
Answer = Tuple[int, Dict[bytes, List[bytes]], bytes]
#: Where requests go: any host, StubTreq serves them all.
BASE_URL = "http://runtime.test"


def fake_capabilities(**overrides: Any) -> Capabilities:
    """
    A capability snapshot of a host without cgroups or sandbox.
    """
    values: Dict[str, Any] = dict(
        runtime_id="test-runtime",
        collected_at="2026-01-01T00:00:00Z",
        capacity=Reservation(task_slots=4, memory_bytes=1 << 30, pids=4096),
    )
    values.update(overrides)
    return Capabilities(**values)


class _RuntimeParts:
    """
    The parts of one runtime over C{data_dir}, wired as the service wires
    them, on the reactor, pool and thread runner its subclass drives it
    with (L{_drive}).

    @param config: its configuration (the defaults over C{data_dir}).
    @param budget: the preview budget of its store (none by default).
    @param probe: replaces the data directory's readiness probe
        (L{execgo.server.upkeep.probe_writable}).
    @param caps: overrides of its capability snapshot (L{fake_capabilities}).
    @ivar clock: the runtime's reactor.
    """

    def __init__(
        self,
        data_dir: str,
        config: Optional[RuntimeConfig] = None,
        tokens: Optional[Tokens] = None,
        budget: Optional[ByteBudget] = None,
        probe: Optional[Callable[[str], None]] = None,
        **caps: Any,
    ) -> None:
        self.config = config or RuntimeConfig(data_dir=data_dir)
        prepare_data_dir(self.config.data_dir_abs)
        clock, pool, in_thread = self._drive(self.config.database)
        self.clock = clock
        self.pool = pool
        self.store = Store(pool, preview_ceiling=self.config.max_output_preview_bytes, budget=budget)
        # Never connected: the dispatcher keeps every task queued.
        self.link = FakeLink(pid=None, connected=False)
        self.capabilities = fake_capabilities(**caps)
        quotas = parse_tenant_quotas(self.config.tenant_quotas)
        self.scheduler = Scheduler(
            clock,
            self.store,
            self.link,
            Ledger(self.capabilities.capacity, quotas),
            self.config.max_queued_tasks,
            3600.0,
            wall_ms,
        )
        tasks_dir = os.path.join(self.config.data_dir_abs, "tasks")
        self.runtime = Runtime(
            reactor=clock,
            config=self.config,
            runtime_id="test-runtime",
            capabilities=self.capabilities,
            quotas=quotas,
            store=self.store,
            scheduler=self.scheduler,
            link=self.link,  # type: ignore[arg-type]
            now_ms=wall_ms,
            started_at="2026-01-01T00:00:00Z",
            version="1.1.0",
            upkeep=Upkeep(
                self.store, tasks_dir, wall_ms, clock, probe=probe or probe_writable, in_thread=in_thread
            ),
            in_thread=in_thread,
        )
        self.api = RuntimeAPI(self.runtime, tokens)
        self.treq = StubTreq(self.api.resource())

    def _drive(self, database: DatabaseUrl) -> Tuple[Any, Any, Callable[..., "defer.Deferred[Any]"]]:
        """
        What runs the parts: the reactor, a pool on the store at
        C{database} (the config's), and how blocking calls are run.
        """
        raise NotImplementedError()

    def _request(
        self, method: str, path: str, body: Optional[bytes], headers: Optional[Dict[bytes, List[bytes]]]
    ) -> "defer.Deferred[IResponse]":
        return self.treq.request(method, BASE_URL + path, data=body, headers=headers)


class MemoryRuntime(_RuntimeParts):
    """
    A runtime over a data directory, in memory and synchronous (see the
    module's docstring).

    @ivar clock: the runtime's reactor: advance it to let time pass.
    """

    clock: MemoryReactorClock

    def _drive(self, database: DatabaseUrl) -> Tuple[Any, Any, Callable[..., "defer.Deferred[Any]"]]:
        """
        A L{MemoryReactorClock}, and the store's SQL and blocking calls run
        at once on the caller's thread.
        """
        return MemoryReactorClock(), InlinePool(database.connect_url), run_now

    def start(self) -> None:
        """
        Create the schema, recover, and start accepting.
        """
        self.done(self.pool.runWithConnection(schema.init_schema))
        self.done(defer.ensureDeferred(self.runtime.recover()))
        self.runtime.accepting = True
        self.scheduler.start()

    def stop(self) -> None:
        """
        Stop the loops and close the store; no timer may be left.
        """
        self.runtime.accepting = False
        self.runtime.stop_timers()
        self.done(defer.ensureDeferred(self.scheduler.stop()))
        self.pool.close()
        self.treq.flush()
        left = self.clock.getDelayedCalls()
        if left:
            raise AssertionError(f"timers left running: {left}")

    def done(self, d: "defer.Deferred[Any]") -> Any:
        """
        The result of C{d}, which must have fired (its failure raised).
        """
        self.treq.flush()
        outcome: List[Any] = []
        d.addBoth(outcome.append)
        if not outcome:
            raise AssertionError(f"{d!r} has not fired: it waits for something that did not happen")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    def send(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[bytes, List[bytes]]] = None,
    ) -> "defer.Deferred[Answer]":
        """
        Send one request and let it run as far as it can: a Deferred of
        its answer, fired unless it waits for something (L{done} gets it).
        """

        async def exchange() -> Answer:
            response = await self._request(method, path, body, headers)
            content = await response.content()
            return response.code, dict(response.headers.getAllRawHeaders()), content

        d = defer.ensureDeferred(exchange())
        self.treq.flush()
        return d

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Dict[bytes, List[bytes]]] = None,
    ) -> Answer:
        """
        One request, answered at once: status code, headers, body.
        """
        return self.done(self.send(method, path, body, headers))


class InProcessRuntime(_RuntimeParts):
    """
    A runtime over a data directory on the real reactor: the store's SQL in
    its thread pool, blocking calls in the reactor's.
    """

    def _drive(self, database: DatabaseUrl) -> Tuple[Any, Any, Callable[..., "defer.Deferred[Any]"]]:
        """
        The real reactor, the store's own pool, and the reactor's thread
        pool for blocking calls.
        """
        return reactor, open_pool(reactor, database), deferToThread

    async def start(self) -> None:
        """
        Create the schema, recover, and start accepting.
        """
        await self.pool.runWithConnection(schema.init_schema)
        await self.runtime.recover()
        self.runtime.accepting = True
        self.scheduler.start()

    async def stop(self) -> None:
        """
        Stop the loops and close the store.
        """
        self.runtime.accepting = False
        self.runtime.stop_timers()
        await self.scheduler.stop()
        self.pool.close()

    async def settle(self, d: "defer.Deferred[Any]") -> Any:
        """
        Wait for a StubTreq Deferred whose response is produced on the real
        reactor (store work in its thread pool), pumping the stub.
        """
        settled: List[bool] = []

        def note(result: Any) -> Any:
            settled.append(True)
            return result

        d.addBoth(note)
        for _ in range(5000):
            self.treq.flush()
            if settled:
                break
            await deferLater(reactor, 0.001, lambda: None)
        return await d

    async def request(
        self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[Dict[bytes, List[bytes]]] = None
    ) -> Answer:
        """
        One request: status code, headers, body.
        """
        response = await self.settle(self._request(method, path, body, headers))
        content = await self.settle(response.content())
        return response.code, dict(response.headers.getAllRawHeaders()), content


def tmp_data_dir(test: Any) -> str:
    """
    A fresh data directory for one test.
    """
    path = os.path.abspath(test.mktemp())
    os.makedirs(path)
    return path
