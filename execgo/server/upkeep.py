# -*- test-case-name: tests.test_upkeep -*-
"""
What storage faults leave behind or leave out, repaired by the server's
recovery and GC passes; and the readiness probe of the data directory.

* A terminal task whose C{result.json} could not be written is marked in
  its row (L{execgo.store.terminal}).  Each GC pass writes the marked ones
  from their rows (L{TaskStore.repair_results}, at most
  L{RESULT_REPAIR_BATCH}).  At start-up the L{RESULT_SCAN_LIMIT} most
  recently finished tasks are also checked for their file
  (L{TaskStore.mark_missing_results}: a supervisor of an older version, a
  file lost with the host).
* A task directory without a row (a crash of the server between making
  the directory and committing the row, or a failed submission whose
  clean-up failed too) is removed once it is stale
  (L{execgo.store.gc.collect_orphans}).  The names under
  C{<data_dir>/tasks} are listed after start-up and every
  L{ORPHAN_SWEEP_INTERVAL_S}, then checked against the store at most
  L{ORPHAN_CHECK_BATCH} a pass, removing at most L{ORPHAN_REMOVE_BATCH}.
* C{/readyz} probes the data directory by creating, writing and removing
  a small file in C{<data_dir>/tasks} (L{probe_writable}), off the reactor
  thread.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, List, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from execgo.core import errors
from execgo.host.fsio import write_all
from execgo.server.taskstore import TaskStore

log = Logger()

RESULT_REPAIR_BATCH = 64
RESULT_SCAN_LIMIT = 256
ORPHAN_CHECK_BATCH = 4096
ORPHAN_REMOVE_BATCH = 64
ORPHAN_SWEEP_INTERVAL_S = 600.0
#: Names of the readiness probe's files: C{~} is not allowed in a task id,
#: so a probe never meets a task directory.
PROBE_PREFIX = ".execgo-ready~"
_PROBE_DATA = b"execgo readiness probe\n"
_probe_serial = itertools.count(1)


# ---------------------------------------------------------------- readiness


def probe_writable(tasks_dir: str) -> None:
    """
    Create, write and remove a small file in C{tasks_dir} (blocking).

    @raise OSError: when the directory cannot be written (read only, not
        permitted, full).
    """
    path = os.path.join(tasks_dir, f"{PROBE_PREFIX}{os.getpid()}-{next(_probe_serial)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            write_all(fd, _PROBE_DATA)
        finally:
            os.close(fd)
    finally:
        os.unlink(path)


# ---------------------------------------------------------------- the server's side


class Upkeep:
    """
    The repairs of one server: run by its recovery (L{at_start}) and by
    each GC pass (L{run_pass}), and the data directory's readiness check.

    @param store: the task store.
    @param tasks_dir: C{<data_dir>/tasks}, absolute.
    @param now_ms: wall clock, epoch milliseconds.
    @param reactor: paces the sweeps of C{tasks_dir}.
    @param probe: the blocking readiness probe (L{probe_writable}).
    @param in_thread: runs C{probe(tasks_dir)} off the reactor thread.
    """

    def __init__(
        self,
        store: TaskStore,
        tasks_dir: str,
        now_ms: Callable[[], int],
        reactor: IReactorTime,
        probe: Callable[[str], None] = probe_writable,
        in_thread: Callable[..., Any] = deferToThread,
    ) -> None:
        self.store = store
        self.tasks_dir = tasks_dir
        self.now_ms = now_ms
        self.reactor = reactor
        self.probe = probe
        self._in_thread = in_thread
        self._pending: List[str] = []
        self._next_sweep: Optional[float] = None
        self._results_failing = False

    async def check_writable(self) -> None:
        """
        Prove C{tasks_dir} writable now.

        @raise errors.Unavailable: naming the directory and why not.
        """
        try:
            await self._in_thread(self.probe, self.tasks_dir)
        except OSError as e:
            raise errors.Unavailable(
                f"data directory cannot be written: {self.tasks_dir}: {e.strerror or e}"
            ) from None

    async def at_start(self) -> None:
        """
        After recovery: mark the recently finished tasks that lack their
        C{result.json}, and write what is marked.  (The first sweep of
        C{tasks_dir} waits for the first GC pass, so start-up does not
        list it.)
        """
        try:
            marked = await self.store.mark_missing_results(RESULT_SCAN_LIMIT)
        except Exception as e:
            log.warn("cannot check the result.json of finished tasks: {error}", error=str(e))
        else:
            if marked:
                log.warn("{count} finished tasks have no result.json", count=len(marked), task_ids=marked)
        await self._repair_results()

    async def run_pass(self) -> None:
        """
        One GC pass: write the missing C{result.json} files it can, and
        check the next names of the current sweep for directories without
        a row.  Errors are logged, never raised.
        """
        await self._repair_results()
        try:
            await self._collect_orphans()
        except Exception as e:
            log.warn("cannot collect task directories without a row: {error}", error=str(e))

    async def _repair_results(self) -> None:
        try:
            done, failures = await self.store.repair_results(self.now_ms(), RESULT_REPAIR_BATCH)
        except Exception as e:
            done, failures = [], [("", str(e))]
        for task_id in done:
            log.info("wrote the missing result.json of {task_id}", task_id=task_id)
        if failures and not self._results_failing:
            log.warn(
                "cannot write the missing result.json of {count} tasks yet: {error}",
                count=len(failures),
                error=failures[0][1],
            )
        self._results_failing = bool(failures)

    async def _collect_orphans(self) -> None:
        now = self.reactor.seconds()
        if not self._pending and (self._next_sweep is None or now >= self._next_sweep):
            self._next_sweep = now + ORPHAN_SWEEP_INTERVAL_S
            self._pending = await self.store.task_dir_names(self.tasks_dir)
        if not self._pending:
            return
        batch, self._pending = self._pending[:ORPHAN_CHECK_BATCH], self._pending[ORPHAN_CHECK_BATCH:]
        removed, later, failures = await self.store.collect_orphans(
            self.tasks_dir, batch, self.now_ms() / 1000.0, ORPHAN_REMOVE_BATCH
        )
        self._pending.extend(later)
        if removed:
            log.info(
                "removed {count} task directories without a row", count=len(removed), names=removed[:20]
            )
        for name, error in failures:
            log.warn("cannot remove the task directory {name} (it has no row): {error}", name=name, error=error)
