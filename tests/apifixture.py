"""
An in-process runtime for API and client tests: the real Klein resource,
the real L{Runtime}, the real store (SQLite through adbapi, on the real
reactor's thread pool), and a supervisor link that is either a fake (tasks
stay queued) or none at all.  Requests go through L{treq.testing.StubTreq},
so there are no sockets.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from execgo.core.capabilities import Capabilities
from execgo.core.config import RuntimeConfig
from execgo.core.ledger import Capacity, Ledger, parse_tenant_quotas
from execgo.server.budget import ByteBudget
from execgo.server.database import Store, open_pool
from execgo.server.runtime import Runtime
from execgo.server.scheduler import Scheduler
from execgo.server.service import prepare_data_dir, wall_ms
from execgo.server.upkeep import Upkeep
from execgo.server.web.api import RuntimeAPI
from execgo.server.web.auth import Tokens
from tests.fakes import FakeLink


def fake_capabilities(**overrides: Any) -> Capabilities:
    """
    A capability snapshot of a host without cgroups or sandbox.
    """
    values: Dict[str, Any] = dict(
        runtime_id="test-runtime",
        collected_at="2026-01-01T00:00:00Z",
        capacity=Capacity(task_slots=4, memory_bytes=1 << 30, pids=4096),
    )
    values.update(overrides)
    return Capabilities(**values)


class InProcessRuntime:
    """
    A runtime over a temp data directory, serving its API through StubTreq.

    @param budget: the preview budget of its store (none by default).
    @param probe: replaces the data directory's readiness probe
        (L{execgo.server.upkeep.probe_writable}).
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
        self.store = Store(
            open_pool(reactor, self.config.database_path),
            preview_ceiling=self.config.max_output_preview_bytes,
            budget=budget,
        )
        # Never connected: the dispatcher keeps every task queued.
        self.link = FakeLink(pid=None, connected=False)
        self.capabilities = fake_capabilities(**caps)
        quotas = parse_tenant_quotas(self.config.tenant_quotas)
        self.scheduler = Scheduler(
            reactor,
            self.store,
            self.link,
            Ledger(self.capabilities.capacity, quotas),
            self.config.max_queued_tasks,
            3600.0,
            wall_ms,
        )
        self.runtime = Runtime(
            reactor=reactor,
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
            upkeep=None if probe is None else Upkeep(
                self.store, os.path.join(self.config.data_dir_abs, "tasks"), wall_ms, reactor, probe=probe
            ),
        )
        self.api = RuntimeAPI(self.runtime, tokens)
        self.treq = StubTreq(self.api.resource())

    async def start(self) -> None:
        """
        Create the schema and start accepting.
        """
        await self.store.init_schema()
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
        self.store.close()

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
    ) -> "tuple[int, Dict[bytes, List[bytes]], bytes]":
        """
        One request: status code, headers, body.
        """
        url = "http://runtime.test" + path
        response = await self.settle(self.treq.request(method, url, data=body, headers=headers))
        content = await self.settle(response.content())
        return response.code, dict(response.headers.getAllRawHeaders()), content


def tmp_data_dir(test: Any) -> str:
    """
    A fresh data directory for one test.
    """
    path = os.path.abspath(test.mktemp())
    os.makedirs(path)
    return path
