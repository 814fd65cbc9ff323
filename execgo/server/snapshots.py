# -*- test-case-name: tests.test_snapshots -*-
"""
The status snapshots of recently finished tasks, kept in memory.

A terminal task does not change any more until GC deletes it, yet callers
keep asking for it: a client that submits a batch and then collects the
results, C{execgo-runtime wait} and C{status}, a control plane polling.
Each such request used to be a round trip to a reader thread, a row read
and two preview files read.  The supervisor's C{finished} report already
carries the terminal snapshot, so the server keeps the latest ones and
answers from them; GC forgets what it deletes.

The cache is bounded by entry count and by the size of the previews it
holds (a snapshot is dominated by its two output previews), so a burst of
tasks with large output cannot grow the server.

Each entry keeps its task's tenant too (a snapshot does not show it), so
that with authentication the tenancy check of a read answered from here
needs no store read either (L{execgo.server.runtime.Runtime.require_visible}).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Optional

import attrs

from execgo.core.constants import JSON
from execgo.core.timestamps import parse_ms

#: The fixed cost counted per entry, beside its previews.
ENTRY_OVERHEAD = 1024


def _weight(snapshot: JSON) -> int:
    return ENTRY_OVERHEAD + len(snapshot.get("stdout") or "") + len(snapshot.get("stderr") or "")


@attrs.frozen
class Kept:
    """
    One kept task: its terminal snapshot and its tenant.
    """

    snapshot: JSON
    tenant: Optional[str]


class TerminalSnapshots:
    """
    The terminal snapshots of up to C{max_entries} tasks whose previews
    add up to at most about C{max_bytes}, least recently stored or read
    evicted first.

    The snapshots are shared, not copied: callers must not change them.
    """

    def __init__(self, max_entries: int = 4096, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[str, Kept]" = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def kept(self, task_id: str) -> Optional[Kept]:
        """
        The kept snapshot and tenant of C{task_id}, or C{None} when not kept.
        """
        kept = self._entries.get(task_id)
        if kept is not None:
            self._entries.move_to_end(task_id)
        return kept

    def get(self, task_id: str) -> Optional[JSON]:
        """
        The terminal snapshot of C{task_id}, or C{None} when not kept.
        """
        kept = self.kept(task_id)
        return None if kept is None else kept.snapshot

    def put(self, task_id: str, snapshot: JSON, tenant: Optional[str]) -> None:
        """
        Keep C{snapshot}, the terminal state of C{task_id}, a task of
        C{tenant}.
        """
        self.discard(task_id)
        weight = _weight(snapshot)
        if weight > self.max_bytes:
            return
        self._entries[task_id] = Kept(snapshot, tenant)
        self._bytes += weight
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= _weight(evicted.snapshot)

    def discard(self, task_id: str) -> None:
        """
        Forget C{task_id} (GC deleted it).
        """
        kept = self._entries.pop(task_id, None)
        if kept is not None:
            self._bytes -= _weight(kept.snapshot)

    def discard_all(self, task_ids: Iterable[str]) -> None:
        """
        Forget each of C{task_ids}.
        """
        for task_id in task_ids:
            self.discard(task_id)

    def discard_finished_by(self, cutoff_ms: int) -> None:
        """
        Forget every task that finished at or before C{cutoff_ms}: past
        the retention, whichever node's GC deletes its row (in a cluster,
        possibly another's), it is not answered from here any more.
        """
        for task_id, kept in list(self._entries.items()):
            finished = kept.snapshot.get("finished_at")
            try:
                if finished is not None and parse_ms(finished) <= cutoff_ms:
                    self.discard(task_id)
            except ValueError:
                self.discard(task_id)
