# -*- test-case-name: tests.test_slots -*-
"""
The node's task slots as the supervisor keeps them.

The server's dispatcher decides which task runs next, and may send the
supervisor a launch order before a slot is free for it: when every slot is
taken it sends, for the tasks next in turn, up to as many orders again as
there are slots.  The supervisor starts an order only while fewer
workloads than slots are supervised, and keeps the rest here, oldest
first; when an end is written it starts the next at once, without waiting
for the server to hear of the end and answer.  So a slot turns over in the
supervisor's own time, and the node still never runs more workloads at
once than it has slots (the server counts what it sent against its memory
and pids capacity and its tenants' quotas as if it ran).

An order kept here is a task still C{accepted} in the store: a kill
cancels it there, and its claim, when its turn comes, declines it.  The
orders of a connection that closes are forgotten: the server that sent
them sends them again, if they still wait, once it is connected again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Optional, Tuple

import attrs

#: A launch order: the task and what to call if it is declined.
Order = Tuple[str, Optional[Callable[[], None]]]


@attrs.define
class _Held:
    """
    A launch order waiting for a slot, and the connection it came by.
    """

    on_declined: Optional[Callable[[], None]]
    sender: object


class Slots:
    """
    At most L{limit} workloads at once; the launch orders beyond it, in
    the order they came.

    @ivar limit: the node's task slots (C{None}: no limit kept here, every
        order starts at once).
    """

    def __init__(self, limit: Optional[int] = None) -> None:
        self.limit = limit
        self._held: "OrderedDict[str, _Held]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._held

    def hold(self, orders: List[Order], sender: object) -> None:
        """
        Keep C{orders} behind those already kept (an order for a task kept
        already stays where it is).
        """
        for task_id, on_declined in orders:
            if task_id not in self._held:
                self._held[task_id] = _Held(on_declined, sender)

    def take(self, occupied: int) -> List[Order]:
        """
        The oldest orders kept, as many as slots are free next to
        C{occupied} workloads; they are kept no longer.
        """
        free = len(self._held) if self.limit is None else self.limit - occupied
        taken: List[Order] = []
        while free > 0 and self._held:
            task_id, held = self._held.popitem(last=False)
            taken.append((task_id, held.on_declined))
            free -= 1
        return taken

    def put_back(self, orders: List[Order]) -> None:
        """
        Keep C{orders}, taken but not claimed (the transaction failed),
        first again, in their order.  Which connection they came by is
        not kept: a claim declines them if they are stale by their turn.
        """
        for task_id, on_declined in reversed(orders):
            if task_id not in self._held:
                self._held[task_id] = _Held(on_declined, None)
                self._held.move_to_end(task_id, last=False)

    def forget(self, sender: object) -> None:
        """
        Drop the orders that came by C{sender}, a connection that closed.
        """
        for task_id in [task_id for task_id, held in self._held.items() if held.sender is sender]:
            del self._held[task_id]
