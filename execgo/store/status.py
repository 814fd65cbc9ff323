# -*- test-case-name: tests.test_previews,tests.test_api -*-
"""
A task's status snapshot as the API reads it: the row, and the heads of
its logs (the previews), read under an allowance of bytes when the server
shares a preview budget between its requests
(L{execgo.server.budget.ByteBudget}).

Plain functions over one C{sqlite3} connection that read files too
(blocking): the server runs them in its reader threads.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Optional, Tuple, Union

import attrs

from execgo.core.constants import JSON
from execgo.core.records import TaskRecord
from execgo.core.render import render_status
from execgo.store import taskfiles
from execgo.store.reads import load_task


@attrs.frozen
class NeedBudget:
    """
    A snapshot read that stopped before reading: its previews add up to
    C{amount} bytes, more than it was allowed to read.
    """

    amount: int


def preview_need(record: TaskRecord, ceiling: Optional[int]) -> int:
    """
    The bytes reading both previews of C{record} takes now: each log's
    size, at most its limit and C{ceiling} (blocking: two C{stat}s).
    """
    need = 0
    for path, limit in (
        (record.paths.stdout_path, record.limits.stdout_max_bytes),
        (record.paths.stderr_path, record.limits.stderr_max_bytes),
    ):
        try:
            size = os.stat(path).st_size
        except OSError:
            continue
        need += min(size, limit if ceiling is None else min(limit, ceiling))
    return need


def read_snapshot(
    conn: sqlite3.Connection,
    task_id: str,
    now_ms: int,
    ceiling: Optional[int] = None,
    allowance: Optional[int] = None,
    node_id: Optional[str] = None,
) -> Union[Tuple[JSON, Optional[str]], NeedBudget, None]:
    """
    The status snapshot of a task, previews included, and its tenant; or
    C{None}.  A task another node than C{node_id} claimed keeps its files
    there: its snapshot comes with empty previews (its C{node_id} says
    whom to ask for them, L{execgo.server.relay}).

    @param ceiling: bounds each preview (L{taskfiles.snapshot}).
    @param allowance: when not C{None}, the bytes the previews may take:
        a task whose previews need more is not read (L{NeedBudget}).
    """
    record = load_task(conn, task_id)
    if record is None:
        return None
    if node_id is not None and record.node_id is not None and record.node_id != node_id:
        return render_status(record, ("", False), ("", False), now_ms), record.tenant
    if allowance is not None:
        need = preview_need(record, ceiling)
        if need > allowance:
            return NeedBudget(need)
    return (taskfiles.snapshot(record, now_ms, ceiling), record.tenant)
