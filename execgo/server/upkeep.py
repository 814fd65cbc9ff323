# -*- test-case-name: tests.test_upkeep -*-
"""
What storage faults leave behind or leave out, repaired by the server's
recovery and GC passes; and the readiness probe of the data directory.

* A terminal task whose C{result.json} could not be written (a full or
  read-only data directory: the terminal write does not wait for the file)
  is marked in its row (C{result_missing}, in the terminal write's own
  transaction, L{execgo.store.taskdb.mark_result_missing}).  Each GC pass writes
  the marked ones from their rows (L{repair_results}, at most
  L{RESULT_REPAIR_BATCH}): finding them is one probe of a partial index,
  empty but for a fault.  At start-up the L{RESULT_SCAN_LIMIT} most
  recently finished tasks are also checked for their file
  (L{mark_missing_results}: a supervisor of an older version, a file lost
  with the host).
* A task directory without a row (a crash of the server between making
  the directory and committing the row, or a failed submission whose
  clean-up failed too) is removed once it is older than
  L{ORPHAN_MIN_AGE_S}, or was made before this server opened the store
  (as L{execgo.server.database._claim_task_dir} judges it).  The names under
  C{<data_dir>/tasks} are listed after start-up and every
  L{ORPHAN_SWEEP_INTERVAL_S}, then checked against the store at most
  L{ORPHAN_CHECK_BATCH} a pass, removing at most L{ORPHAN_REMOVE_BATCH}.
* C{/readyz} probes the data directory by creating, writing and removing
  a small file in C{<data_dir>/tasks} (L{probe_writable}), off the reactor
  thread.

The functions taking a connection are plain store functions, run in the
store's writer thread (the orphan check there, so it is ordered with the
submissions that make directories).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import stat
from typing import Any, Callable, List, Optional, Sequence, Set, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from execgo.core import errors
from execgo.host.fsio import write_all
from execgo.store import taskdb, wire

log = Logger()

RESULT_REPAIR_BATCH = 64
RESULT_SCAN_LIMIT = 256
ORPHAN_CHECK_BATCH = 4096
ORPHAN_REMOVE_BATCH = 64
ORPHAN_SWEEP_INTERVAL_S = 600.0
#: As old as a directory without a row may be while its submission is
#: still in flight (the same as L{execgo.server.database.CLAIM_STALE_S}).
ORPHAN_MIN_AGE_S = 60.0
#: Names of the readiness probe's files: C{~} is not allowed in a task id,
#: so a probe never meets a task directory.
PROBE_PREFIX = ".execgo-ready~"
_PROBE_DATA = b"execgo readiness probe\n"
_TASK_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_IN_CHUNK = 500
_probe_serial = itertools.count(1)

Failures = List[Tuple[str, str]]


# ---------------------------------------------------------------- result.json


def repair_results(
    conn: Any, now_ms: int, limit: int, ceiling: Optional[int] = None
) -> Tuple[List[str], Failures]:
    """
    Write the C{result.json} of up to C{limit} tasks marked
    C{result_missing}, each rendered from its row as the terminal write
    would have (its previews from its logs), then clear their marks.  A
    task whose file exists meanwhile, or whose directory is gone, is only
    unmarked.  Leftover temporary files of its earlier attempts are
    removed too.

    @param ceiling: bounds the previews (C{--max-output-preview-bytes}).
    @return: the ids written (or unmarked), and C{(task_id, error)} for
        those that still cannot be written (they stay marked).
    """
    rows = conn.execute("SELECT task_id FROM tasks WHERE result_missing = 1 LIMIT ?", (limit,)).fetchall()
    done: List[str] = []
    failures: Failures = []
    for (task_id,) in rows:
        record = taskdb.load_task(conn, task_id)
        if record is None:
            continue
        try:
            if record.terminal:
                _write_result(record, now_ms, ceiling)
        except OSError as e:
            failures.append((task_id, str(e)))
            continue
        done.append(task_id)
    if done:
        with taskdb.transaction(conn):
            conn.executemany(
                "UPDATE tasks SET result_missing = NULL WHERE task_id = ?", [(task_id,) for task_id in done]
            )
    return done, failures


def _write_result(record: taskdb.TaskRecord, now_ms: int, ceiling: Optional[int]) -> None:
    paths = record.paths
    if not os.path.isdir(paths.task_dir):
        return
    _remove_temporaries(paths.task_dir, os.path.basename(paths.result_path) + ".tmp-")
    if os.path.exists(paths.result_path):
        return
    wire.prepare_result(record, now_ms, ceiling=ceiling)(True)


def _remove_temporaries(task_dir: str, prefix: str) -> None:
    """
    Remove the C{result.json} temporaries a failed removal left in a
    terminal task's directory (no writer makes new ones for it).
    """
    with os.scandir(task_dir) as entries:
        names = [entry.name for entry in entries if entry.name.startswith(prefix)]
    for name in names:
        try:
            os.unlink(os.path.join(task_dir, name))
        except FileNotFoundError:
            pass


def mark_missing_results(conn: Any, limit: int) -> List[str]:
    """
    Check the C{result.json} of the C{limit} most recently finished tasks
    (one C{stat} each) and mark those without one whose directory is
    there, for L{repair_results}.

    @return: the ids marked.
    """
    rows = conn.execute(
        "SELECT task_id, task_dir, result_path FROM tasks WHERE finished_at_ms IS NOT NULL"
        " ORDER BY finished_at_ms DESC LIMIT ?",
        (limit,),
    ).fetchall()
    missing = [
        task_id
        for task_id, task_dir, result_path in rows
        if not os.path.exists(result_path) and os.path.isdir(task_dir)
    ]
    if missing:
        with taskdb.transaction(conn):
            for task_id in missing:
                taskdb.mark_result_missing(conn, task_id)
    return missing


# ---------------------------------------------------------------- directories without a row


def task_dir_names(conn: Any, tasks_dir: str) -> List[str]:
    """
    The names of the directories under C{tasks_dir} that could be tasks'
    (names a task id may have; anything else there is not ours to remove).
    Run on a reader connection (it needs none).
    """
    with os.scandir(tasks_dir) as entries:
        return [
            entry.name
            for entry in entries
            if _TASK_NAME.fullmatch(entry.name)
            and entry.name not in (".", "..")
            and entry.is_dir(follow_symlinks=False)
        ]


def collect_orphans(
    conn: Any,
    tasks_dir: str,
    names: Sequence[str],
    now_s: float,
    opened_s: float,
    remove_limit: int,
    min_age_s: float = ORPHAN_MIN_AGE_S,
) -> Tuple[List[str], List[str], Failures]:
    """
    Remove those of the directories C{tasks_dir/NAME} that have no row and
    are stale: made before the store was opened (C{opened_s}), or at least
    C{min_age_s} ago.  At most C{remove_limit} are removed.  Run in the
    writer thread, so no submission makes a directory or commits a row
    meanwhile.

    @return: the names removed, those to look at again later (too young,
        or past C{remove_limit}), and C{(name, error)} for those that
        could not be removed.
    """
    with_rows: Set[str] = set()
    for start in range(0, len(names), _IN_CHUNK):
        chunk = list(names[start : start + _IN_CHUNK])
        marks = ", ".join("?" for _ in chunk)
        with_rows.update(
            row[0] for row in conn.execute(f"SELECT task_id FROM tasks WHERE task_id IN ({marks})", chunk)
        )
    removed: List[str] = []
    later: List[str] = []
    failures: Failures = []
    for name in names:
        if name in with_rows:
            continue
        path = os.path.join(tasks_dir, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        if (info.st_mtime >= opened_s and now_s - info.st_mtime < min_age_s) or len(removed) >= remove_limit:
            later.append(name)
            continue
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            failures.append((name, str(e)))
            continue
        removed.append(name)
    return removed, later, failures


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

    @param store: the L{execgo.server.database.Store}.
    @param tasks_dir: C{<data_dir>/tasks}, absolute.
    @param now_ms: wall clock, epoch milliseconds.
    @param reactor: paces the sweeps of C{tasks_dir}.
    @param probe: the blocking readiness probe (L{probe_writable}).
    @param in_thread: runs C{probe(tasks_dir)} off the reactor thread.
    """

    def __init__(
        self,
        store: Any,
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
            marked = await self.store.run(mark_missing_results, RESULT_SCAN_LIMIT)
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
        ceiling = getattr(self.store, "preview_ceiling", None)
        try:
            done, failures = await self.store.run(repair_results, self.now_ms(), RESULT_REPAIR_BATCH, ceiling)
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
            self._pending = await self.store.read(task_dir_names, self.tasks_dir)
        if not self._pending:
            return
        batch, self._pending = self._pending[:ORPHAN_CHECK_BATCH], self._pending[ORPHAN_CHECK_BATCH:]
        removed, later, failures = await self.store.run(
            collect_orphans,
            self.tasks_dir,
            batch,
            self.now_ms() / 1000.0,
            self.store.opened_s,
            ORPHAN_REMOVE_BATCH,
        )
        self._pending.extend(later)
        if removed:
            log.info(
                "removed {count} task directories without a row", count=len(removed), names=removed[:20]
            )
        for name, error in failures:
            log.warn("cannot remove the task directory {name} (it has no row): {error}", name=name, error=error)
