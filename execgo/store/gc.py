# -*- test-case-name: tests.test_store,tests.test_upkeep -*-
"""
Collection: terminal tasks past their retention (row and directory), and
task directories without a row.

A directory without a row is left by a crash of the server between making
the directory and committing the row, or by a failed submission whose
clean-up failed too.  It is removed once it is older than
L{ORPHAN_MIN_AGE_S}, or was made before the server opened the store (as
L{execgo.store.submission.claim_task_dir} judges it).

Plain functions over one C{sqlite3} connection; they remove directories
too (blocking), so the server runs them in its writer thread, where no
submission makes a directory or commits a row meanwhile.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
from typing import List, Optional, Sequence, Set, Tuple

from execgo.core.constants import STATUS_CANCELLED, STATUS_FAILED, STATUS_SUCCESS
from execgo.store.connection import transaction
from execgo.store.submission import CLAIM_STALE_S

#: As old as a directory without a row may be while its submission is
#: still in flight.
ORPHAN_MIN_AGE_S = CLAIM_STALE_S
_TASK_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_IN_CHUNK = 500

#: C{(task_id or name, error)} of what could not be removed.
Failures = List[Tuple[str, str]]


def gc_candidates(conn: sqlite3.Connection, cutoff_ms: int, limit: int) -> List[Tuple[str, str]]:
    """
    C{(task_id, task_dir)} of terminal tasks finished at or before the cutoff.
    """
    return [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT task_id, task_dir FROM tasks WHERE finished_at_ms IS NOT NULL"
            " AND finished_at_ms <= ? AND status IN (?, ?, ?) ORDER BY finished_at_ms LIMIT ?",
            (cutoff_ms, STATUS_SUCCESS, STATUS_FAILED, STATUS_CANCELLED, limit),
        )
    ]


def delete_task(conn: sqlite3.Connection, task_id: str) -> None:
    """
    Delete a terminal task's row and, by cascade, its events.
    """
    with transaction(conn):
        conn.execute(
            "DELETE FROM tasks WHERE task_id = ? AND status IN (?, ?, ?)",
            (task_id, STATUS_SUCCESS, STATUS_FAILED, STATUS_CANCELLED),
        )


def collect_expired(conn: sqlite3.Connection, cutoff_ms: int, limit: int) -> Tuple[List[str], Failures]:
    """
    Delete up to C{limit} terminal tasks finished at or before
    C{cutoff_ms}: directory first, then the row.

    @return: the collected ids, and C{(task_id, error)} for directories that
        could not be removed (their rows stay for the next run).
    """
    collected: List[str] = []
    failures: Failures = []
    for task_id, task_dir in gc_candidates(conn, cutoff_ms, limit):
        try:
            shutil.rmtree(task_dir)
        except FileNotFoundError:
            pass
        except OSError as e:
            failures.append((task_id, str(e)))
            continue
        delete_task(conn, task_id)
        collected.append(task_id)
    return collected, failures


def task_dir_names(tasks_dir: str) -> List[str]:
    """
    The names of the directories under C{tasks_dir} that could be tasks'
    (names a task id may have; anything else there is not ours to remove).
    """
    with os.scandir(tasks_dir) as entries:
        return [
            entry.name
            for entry in entries
            if _TASK_NAME.fullmatch(entry.name)
            and entry.name not in (".", "..")
            and entry.is_dir(follow_symlinks=False)
        ]


def _with_rows(
    conn: sqlite3.Connection, tasks_dir: str, names: Sequence[str], node_id: Optional[str]
) -> Set[str]:
    """
    Those of C{names} that are ids of stored tasks, but for the tasks
    another node than C{node_id} claimed and keeps the files of elsewhere
    (in a cluster, the copy the node that accepted such a task made).
    """
    found: Set[str] = set()
    for start in range(0, len(names), _IN_CHUNK):
        chunk = list(names[start : start + _IN_CHUNK])
        marks = ", ".join("?" for _ in chunk)
        found.update(
            task_id
            for task_id, task_dir, claimer in conn.execute(
                f"SELECT task_id, task_dir, node_id FROM tasks WHERE task_id IN ({marks})", chunk
            )
            if claimer is None or claimer == node_id or task_dir == os.path.join(tasks_dir, task_id)
        )
    return found


def collect_orphans(
    conn: sqlite3.Connection,
    tasks_dir: str,
    names: Sequence[str],
    now_s: float,
    opened_s: float,
    remove_limit: int,
    min_age_s: float = ORPHAN_MIN_AGE_S,
    node_id: Optional[str] = None,
) -> Tuple[List[str], List[str], Failures]:
    """
    Remove those of the directories C{tasks_dir/NAME} that have no row (or
    whose row places the task's files on another node, C{node_id} being
    this one) and are stale: made before the store was opened
    (C{opened_s}), or at least C{min_age_s} ago.  At most C{remove_limit} are removed.

    @return: the names removed, those to look at again later (too young,
        or past C{remove_limit}), and C{(name, error)} for those that
        could not be removed.
    """
    with_rows = _with_rows(conn, tasks_dir, names, node_id)
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
