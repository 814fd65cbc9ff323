# -*- test-case-name: tests.test_nodewatch -*-
"""
The server's watch over the cluster's other nodes (L{NodeWatch}): every
second, the alive nodes whose lease ran out are marked C{lost}, and the
running tasks of lost (or departed) nodes are ended C{failed},
C{internal}, C{node_lost}, each with its reservation released and its
C{result.json} written where its files can be reached from here (else
the row is marked for the repair its own node makes when it is back).

Every node runs it; the store's conditional writes make it safe for all
of them to find the same node lost at once: one marks it, one ends each
task.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from execgo.core import outcome
from execgo.core.constants import STATUS_RUNNING
from execgo.server.repeating import Repeating
from execgo.server.taskstore import TaskStore
from execgo.server.waiters import Waiters

log = Logger()

#: Seconds between two looks at the nodes' leases.
WATCH_INTERVAL_S = 1.0


class NodeWatch:
    """
    Finds lost nodes and ends their tasks, on a timer (L{start}) or when
    asked (L{sweep}).

    @param reactor: runs the timer.
    @param store: the task store.
    @param waiters: the long-polls woken when a task ends.
    @param now_ms: wall clock, epoch milliseconds.
    @param accepting: whether the server serves now: the timer is set
        again after a pass only then.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        store: TaskStore,
        waiters: Waiters,
        now_ms: Callable[[], int],
        accepting: Callable[[], bool],
        interval_s: float = WATCH_INTERVAL_S,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.waiters = waiters
        self.now_ms = now_ms
        self.accepting = accepting
        self.interval_s = interval_s
        self._looks = Repeating(reactor, interval_s, self.sweep, accepting, "node watch")

    def start(self) -> None:
        """
        Look every interval, the first time one interval from now.
        """
        self._looks.start()

    def stop(self) -> None:
        """
        Call off the next look.
        """
        self._looks.stop()

    async def sweep(self) -> int:
        """
        One look now: mark the nodes whose lease ran out C{lost}, then end
        the running tasks of lost and departed nodes.

        @return: how many tasks this look ended.
        """
        for node_id in await self.store.mark_lost_nodes(self.now_ms()):
            log.warn("node {node_id} lost: its lease ran out", node_id=node_id)
        ended = 0
        for task_id in await self.store.orphaned_tasks():
            if await self.store.finish(task_id, outcome.node_lost(), self.now_ms(), (STATUS_RUNNING,)):
                log.warn("task {task_id} ended: its node was lost", task_id=task_id)
                self.waiters.notify(task_id)
                ended += 1
        return ended
