# -*- test-case-name: tests.test_upkeep -*-
"""
The C{result.json} files a storage fault left out of terminal writes,
written from the rows.

A terminal task whose C{result.json} could not be written (a full or
read-only data directory: the terminal write does not wait for the file)
is marked in its row (C{result_missing}, in the terminal write's own
transaction, L{execgo.store.terminal.mark_result_missing}).
L{repair_results} writes the marked ones: finding them is one probe of a
partial index, empty but for a fault.  L{mark_missing_results} checks the
most recently finished tasks for their file too (a supervisor of an older
version, a file lost with the host).

Plain functions over one C{sqlite3} connection that also write files
(blocking): the server runs them in its writer thread.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, List, Optional, Tuple

from execgo.core.records import TaskRecord
from execgo.store.connection import transaction
from execgo.store.reads import load_task
from execgo.store.terminal import ResultFile, mark_result_missing

#: C{(task_id, error)} of the files that could not be written.
Failures = List[Tuple[str, str]]


def repair_results(
    conn: sqlite3.Connection, now_ms: int, limit: int, ceiling: Optional[int] = None, node_id: Optional[str] = None
) -> Tuple[List[str], Failures]:
    """
    Write the C{result.json} of up to C{limit} tasks marked
    C{result_missing}, each rendered from its row as the terminal write
    would have (its previews from its logs), then clear their marks.  A
    task whose file exists meanwhile, or whose directory is gone, is only
    unmarked.  Leftover temporary files of its earlier attempts are
    removed too.

    @param ceiling: bounds the previews (C{--max-output-preview-bytes}).
    @param node_id: this node: in a cluster only the tasks whose files are
        here (claimed by this node, or by none) are its to repair; another
        node's are that node's, when it is back.
    @return: the ids written (or unmarked), and C{(task_id, error)} for
        those that still cannot be written (they stay marked).
    """
    sql, params = "SELECT task_id FROM tasks WHERE result_missing = 1", ()
    sql, params = _of_node(sql, params, node_id)
    marked = conn.execute(sql + " LIMIT ?", (*params, limit)).fetchall()
    done: List[str] = []
    failures: Failures = []
    for (task_id,) in marked:
        record = load_task(conn, task_id)
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
        with transaction(conn):
            conn.cursor().executemany(
                "UPDATE tasks SET result_missing = NULL WHERE task_id = ?", [(task_id,) for task_id in done]
            )
    return done, failures


def _of_node(sql: str, params: Tuple[Any, ...], node_id: Optional[str]) -> Tuple[str, Tuple[Any, ...]]:
    """
    C{sql} (a C{SELECT ... WHERE ...}) kept to the tasks of node C{node_id}
    and those no node claimed (all of them without a node).
    """
    if node_id is None:
        return sql, params
    return sql + " AND (node_id IS NULL OR node_id = ?)", (*params, node_id)


def _write_result(record: TaskRecord, now_ms: int, ceiling: Optional[int]) -> None:
    paths = record.paths
    if not os.path.isdir(paths.task_dir):
        return
    _remove_temporaries(paths.task_dir, os.path.basename(paths.result_path) + ".tmp-")
    if os.path.exists(paths.result_path):
        return
    ResultFile.write_aside(record, now_ms, ceiling).place()


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


def mark_missing_results(conn: sqlite3.Connection, limit: int, node_id: Optional[str] = None) -> List[str]:
    """
    Check the C{result.json} of the C{limit} most recently finished tasks
    (of this node, C{node_id}, as in L{repair_results}; one C{stat} each)
    and mark those without one whose directory is there, for
    L{repair_results}.

    @return: the ids marked.
    """
    sql, params = _of_node(
        "SELECT task_id, task_dir, result_path FROM tasks WHERE finished_at_ms IS NOT NULL", (), node_id
    )
    finished = conn.execute(sql + " ORDER BY finished_at_ms DESC LIMIT ?", (*params, limit)).fetchall()
    missing = [
        task_id
        for task_id, task_dir, result_path in finished
        if not os.path.exists(result_path) and os.path.isdir(task_dir)
    ]
    if missing:
        with transaction(conn):
            for task_id in missing:
                mark_result_missing(conn, task_id)
    return missing
