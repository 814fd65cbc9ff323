# -*- test-case-name: tests.test_runtime,tests.test_api -*-
"""
The runtime's views of itself (L{RuntimeViews}): C{/runtime/info},
C{/runtime/capabilities}, C{/runtime/config}, C{/runtime/resources},
C{/metrics}, and the readiness check behind C{/readyz}.
"""

from __future__ import annotations

from typing import Mapping

from execgo.core import errors, timestamps
from execgo.core.capabilities import Capabilities
from execgo.core.config import RuntimeConfig
from execgo.core.constants import JSON
from execgo.core.reservation import Reservation
from execgo.core.resourceview import ActiveReservation, render_resources
from execgo.server import metrics
from execgo.server.link import SupervisorLink
from execgo.server.scheduler import Scheduler
from execgo.server.taskstore import TaskStore
from execgo.server.upkeep import Upkeep


class RuntimeViews:
    """
    What the runtime shows of itself.

    @param runtime_id: this runtime's id.
    @param version: the package version.
    @param started_at: the C{/runtime/info} start timestamp.
    @param capabilities: the cached capability snapshot.
    @param config: the effective configuration.
    @param quotas: the tenants' quotas.
    @param store: the task store.
    @param scheduler: the dispatcher (its ledger: what is reserved now).
    @param link: the supervisor link (its health).
    @param upkeep: the data directory's readiness probe.
    """

    def __init__(
        self,
        *,
        runtime_id: str,
        version: str,
        started_at: str,
        capabilities: Capabilities,
        config: RuntimeConfig,
        quotas: Mapping[str, Reservation],
        store: TaskStore,
        scheduler: Scheduler,
        link: SupervisorLink,
        upkeep: Upkeep,
    ) -> None:
        self.runtime_id = runtime_id
        self.version = version
        self.started_at = started_at
        self.capabilities = capabilities
        self.config = config
        self.quotas = quotas
        self.store = store
        self.scheduler = scheduler
        self.link = link
        self.upkeep = upkeep

    def info(self) -> JSON:
        """
        The C{/api/v1/runtime/info} body.
        """
        return {
            "runtime_id": self.runtime_id,
            "version": self.version,
            "started_at": self.started_at,
            "snapshot_version": "v1",
            "platform": self.capabilities.to_json()["platform"],
        }

    def capabilities_json(self) -> JSON:
        """
        The cached capability snapshot.
        """
        return self.capabilities.to_json()

    def config_json(self) -> JSON:
        """
        The non-secret effective configuration.
        """
        return self.config.to_json(self.runtime_id)

    async def resources(self) -> JSON:
        """
        The ledger view, computed from the store.
        """
        active, waiting = await self.store.resources()
        return render_resources(
            self.runtime_id,
            self.capabilities.capacity,
            self.quotas,
            [
                ActiveReservation(
                    task_id=record.task_id,
                    status=record.status,
                    tenant=record.tenant,
                    reservation=record.reservation or Reservation.for_limits(record.limits),
                    reserved_at=None
                    if record.reserved_at_ms is None
                    else timestamps.format_ms(record.reserved_at_ms),
                )
                for record in active
            ],
            waiting,
        )

    async def metrics(self) -> str:
        """
        The Prometheus exposition.
        """
        snapshot = await self.store.metrics()
        nodes = await self.store.node_states()
        ledger = self.scheduler.ledger
        capacity, reserved = ledger.capacity, ledger.reserved
        # Launch orders waiting in the supervisor for a slot hold none yet.
        view = [("task_slots", min(reserved.task_slots, capacity.task_slots), capacity.task_slots)]
        if capacity.memory_bytes is not None:
            view.append(("memory_bytes", reserved.memory_bytes or 0, capacity.memory_bytes))
        if capacity.pids is not None:
            view.append(("pids", reserved.pids or 0, capacity.pids))
        return metrics.render(snapshot, view, nodes, len(ledger.active))

    async def ready(self) -> None:
        """
        Check the supervisor answers and the data directory can be written
        (full, read only or not permitted: not ready), and re-run the
        (idempotent) storage initialisation.

        @raise errors.Unavailable: naming what is wrong.
        """
        reason = self.link.health()
        if reason is not None:
            raise errors.Unavailable(reason)
        await self.upkeep.check_writable()
        await self.store.init_schema()
