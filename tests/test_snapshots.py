"""
Tests for L{execgo.server.snapshots}.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.trial.unittest import SynchronousTestCase

from execgo.server.snapshots import ENTRY_OVERHEAD, Kept, TerminalSnapshots


def snapshot(task_id: str, stdout: str = "", stderr: str = "") -> Dict[str, Any]:
    return {"task_id": task_id, "status": "success", "stdout": stdout, "stderr": stderr}


class TerminalSnapshotsTests(SynchronousTestCase):
    """
    The bounded cache of finished tasks' snapshots.
    """

    def test_put_get_discard(self) -> None:
        """
        A kept snapshot is returned as stored (the same object), with the
        tenant it was kept for, until it is discarded; unknown ids give
        C{None}.
        """
        cache = TerminalSnapshots()
        kept = snapshot("a")
        cache.put("a", kept, "t")
        self.assertIs(cache.get("a"), kept)
        self.assertEqual(cache.kept("a"), Kept(kept, "t"))
        self.assertIsNone(cache.get("b"))
        self.assertIsNone(cache.kept("b"))
        cache.discard_all(["a", "b"])
        self.assertIsNone(cache.get("a"))
        self.assertEqual(len(cache), 0)

    def test_put_replaces(self) -> None:
        """
        Storing a task again replaces its snapshot and counts it once.
        """
        cache = TerminalSnapshots(max_entries=2)
        cache.put("a", snapshot("a", "old"), None)
        cache.put("a", snapshot("a", "new"), None)
        self.assertEqual(cache.get("a")["stdout"], "new")
        self.assertEqual(len(cache), 1)

    def test_entry_bound_evicts_least_recent(self) -> None:
        """
        Past C{max_entries}, the snapshot least recently stored or read
        goes first.
        """
        cache = TerminalSnapshots(max_entries=2)
        cache.put("a", snapshot("a"), None)
        cache.put("b", snapshot("b"), None)
        cache.get("a")
        cache.put("c", snapshot("c"), None)
        self.assertEqual([cache.get(k) is not None for k in "abc"], [True, False, True])

    def test_byte_bound(self) -> None:
        """
        The previews count toward C{max_bytes}: large ones evict older
        entries, and one that alone exceeds the bound is not kept.
        """
        cache = TerminalSnapshots(max_bytes=3 * ENTRY_OVERHEAD)
        cache.put("a", snapshot("a"), None)
        cache.put("b", snapshot("b", stdout="x" * ENTRY_OVERHEAD), None)
        self.assertEqual(len(cache), 2)
        cache.put("c", snapshot("c", stderr="y" * ENTRY_OVERHEAD), None)
        self.assertEqual([cache.get(k) is not None for k in "abc"], [False, False, True])
        cache.put("d", snapshot("d", stdout="z" * 3 * ENTRY_OVERHEAD), None)
        self.assertIsNone(cache.get("d"))
        self.assertIsNotNone(cache.get("c"))
        cache.discard("c")
        cache.put("e", snapshot("e", stdout="e" * ENTRY_OVERHEAD), None)
        cache.put("f", snapshot("f"), None)
        self.assertEqual(len(cache), 2)


class ExpiryTests(SynchronousTestCase):
    """
    L{TerminalSnapshots.discard_finished_by}: past the retention a kept
    snapshot goes, whichever node's GC deleted its task.
    """

    def test_finished_by_the_cutoff(self) -> None:
        """
        Snapshots finished at or before the cutoff are forgotten, later ones
        kept; one with a stamp that does not parse is forgotten too.
        """
        kept = TerminalSnapshots()
        kept.put("old", {"task_id": "old", "finished_at": "2026-12-07T23:00:00Z"}, None)
        kept.put("edge", {"task_id": "edge", "finished_at": "2026-12-07T23:00:01.500Z"}, None)
        kept.put("new", {"task_id": "new", "finished_at": "2026-12-07T23:00:01.501Z"}, None)
        kept.put("odd", {"task_id": "odd", "finished_at": "soon"}, None)
        kept.discard_finished_by(1_796_684_401_500)
        self.assertEqual([task_id for task_id in ("old", "edge", "new", "odd") if kept.get(task_id)], ["new"])
