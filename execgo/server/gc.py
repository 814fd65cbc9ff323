# -*- test-case-name: tests.test_runtime,tests.test_api,tests.test_upkeep -*-
"""
The server's garbage collection (L{GarbageCollector}): every GC interval,
the repairs of L{Upkeep.run_pass}, then the terminal tasks older than the
retention period deleted (rows and directories, L{GC_BATCH} a pass) and
forgotten by the terminal snapshots kept in memory.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from execgo.server.repeating import Repeating
from execgo.server.snapshots import TerminalSnapshots
from execgo.server.taskstore import TaskStore
from execgo.server.upkeep import Upkeep

log = Logger()

#: The most tasks one pass deletes.
GC_BATCH = 256


class GarbageCollector:
    """
    Collects expired tasks, on a timer (L{start}) or when asked
    (L{collect}).

    @param reactor: runs the GC timer.
    @param store: the task store.
    @param upkeep: the repairs each pass runs first.
    @param finished: the terminal snapshots kept in memory: what is
        deleted is forgotten there too.
    @param now_ms: wall clock, epoch milliseconds.
    @param interval_s: seconds between passes (C{--gc-interval-ms}).
    @param retention_ms: how long a terminal task is kept
        (C{--result-retention-secs}, in milliseconds).
    @param accepting: whether the server serves now: the timer is set
        again after a pass only then.
    """

    def __init__(
        self,
        *,
        reactor: IReactorTime,
        store: TaskStore,
        upkeep: Upkeep,
        finished: TerminalSnapshots,
        now_ms: Callable[[], int],
        interval_s: float,
        retention_ms: int,
        accepting: Callable[[], bool],
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.upkeep = upkeep
        self.finished = finished
        self.now_ms = now_ms
        self.interval_s = interval_s
        self.retention_ms = retention_ms
        self.accepting = accepting
        self._passes = Repeating(reactor, interval_s, self.collect, accepting, "gc")

    def start(self) -> None:
        """
        Run a pass every interval, the first one interval from now.
        """
        self._passes.start()

    async def collect(self) -> int:
        """
        Delete terminal tasks older than the retention period, after the
        repairs of L{Upkeep.run_pass} (missing C{result.json} files, task
        directories without a row).

        @return: how many tasks were collected.
        """
        await self.upkeep.run_pass()
        now = self.now_ms()
        cutoff = now - self.retention_ms if self.retention_ms <= now else now
        collected, failures = await self.store.gc(cutoff, GC_BATCH)
        self.finished.discard_all(collected)
        # Another node's GC may have deleted what is kept here.
        self.finished.discard_finished_by(cutoff)
        for task_id, error in failures:
            log.warn("gc could not remove a task directory", task_id=task_id, error=error)
        return len(collected)

    def stop(self) -> None:
        """
        Cancel the timer (a pass under way sets it again only while the
        server accepts).
        """
        self._passes.stop()
