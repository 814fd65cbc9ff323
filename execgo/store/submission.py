# -*- test-case-name: tests.test_upkeep,tests.test_api -*-
"""
A submission's way into the store: its last checks, its files, its row.

L{prepare_submit} runs before the write lock (the checks that need the
store, then the task directory, C{request.json} and the empty logs),
L{insert} in the transaction the server's writer shares between the
submissions of one hop.  The task directory is created exclusively
(L{claim_task_dir}): its existence is what keeps two concurrent
submissions with one id from both writing files.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from typing import Callable, Optional

from execgo.core import errors
from execgo.core.constants import JSON
from execgo.core.encoding import pretty
from execgo.core.records import NewTask
from execgo.host.fsio import write_file
from execgo.store import idempotency
from execgo.store.connection import fetch_all
from execgo.store.reads import ACCEPTED_TALLY, count_accepted, exists_query
from execgo.store.transitions import insert_task

#: How long a directory without a row is taken for one a submission is
#: still making.
CLAIM_STALE_S = 60.0


def claim_task_dir(task_dir: str, now_s: float, opened_s: float = 0.0) -> None:
    """
    Create the task directory exclusively: its existence is what keeps two
    concurrent submissions with one id from both writing files.  A
    directory without a row that was made before this server opened the
    store (left by a crash between file creation and the insert: no
    submission of ours can be making it), or longer ago than
    L{CLAIM_STALE_S}, is taken over.
    """
    try:
        os.mkdir(task_dir)
        return
    except FileExistsError:
        pass
    made = os.stat(task_dir).st_mtime
    if made >= opened_s and now_s - made < CLAIM_STALE_S:
        raise errors.Conflict(f"task already exists: {os.path.basename(task_dir)}")
    shutil.rmtree(task_dir, ignore_errors=True)
    os.mkdir(task_dir)


def create_task_files(task: NewTask, request_json: JSON, now_s: float, opened_s: float = 0.0) -> None:
    """
    The task directory (L{claim_task_dir}), its workspace,
    C{request.json} and the empty logs.
    """
    paths = task.paths
    claim_task_dir(paths.task_dir, now_s, opened_s)
    os.makedirs(paths.workspace_dir, exist_ok=True)
    write_file(paths.request_path, pretty(request_json).encode("utf-8"), exclusive=True, mode=0o600)
    for log in (paths.stdout_path, paths.stderr_path):
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT, 0o600))


def prepare_submit(
    conn: sqlite3.Connection,
    task: NewTask,
    request_json: JSON,
    max_queued: int,
    check_late: Callable[[], None],
    now_ms: int,
    opened_s: float = 0.0,
    pending: int = 0,
) -> None:
    """
    The last checks of a submission, then its files: queue bound, late
    checks, duplicate id (before anything touches the disk), then the
    task files.  The server runs it in its writer thread and then
    L{insert}, in the same hop.  A submission whose idempotency key is
    stored already is answered first (L{idempotency.check}), so a retry
    of an accepted submission never meets the queue bound.

    @param pending: the submissions of the same hop prepared before this
        one, whose rows are not inserted yet: the queue bound counts them
        as queued, so a hop of many (a batch) cannot overfill the queue.
    """
    if task.idempotency_key is not None:
        idempotency.check(conn, task.idempotency_key, task.idempotency_hash, task.idempotency_scope)
    tally, same_id = fetch_all(conn, [ACCEPTED_TALLY, exists_query(task.task_id)])
    if count_accepted(conn, tally) + pending >= max_queued:
        raise errors.QueueFull()
    check_late()
    if same_id:
        raise errors.Conflict(f"task already exists: {task.task_id}")
    try:
        create_task_files(task, request_json, now_ms / 1000.0, opened_s)
    except (OSError, ValueError) as e:
        shutil.rmtree(task.paths.task_dir, ignore_errors=True)
        raise task_files_error(e) from None


def task_files_error(error: Exception) -> errors.ExecgoError:
    """
    The error for task files that could not be made: a path the file
    system refuses (NUL, too long: L{execgo.core.bounds} refuses those first,
    this is the backstop) is the request's fault, anything else the
    storage's.
    """
    if isinstance(error, ValueError) or getattr(error, "errno", None) == errno.ENAMETOOLONG:
        reason = os.strerror(errno.ENAMETOOLONG) if isinstance(error, OSError) else str(error)
        return errors.InvalidInput(f"sandbox.workspace_subdir: the file system refuses the workspace path ({reason})")
    return errors.from_storage(error)


def remove_task_dir(task_dir: str) -> None:
    """
    Remove the files of a submission whose row was not committed (best
    effort: what stays is collected later, L{execgo.store.gc.collect_orphans}).
    """
    shutil.rmtree(task_dir, ignore_errors=True)


def insert(
    conn: sqlite3.Connection,
    task: NewTask,
    now_ms: int,
    origin: Optional[str] = None,
    request_json: Optional[JSON] = None,
) -> None:
    """
    The row and its first events (C{submitted}, C{accepted}, C{planned},
    and C{degraded} for a degraded plan), with the request and the node
    that accepted it (L{insert_task}); on a conflict the files this
    submission made are removed again.
    """
    try:
        insert_task(conn, task, now_ms, origin, request_json)
    except errors.Conflict:
        shutil.rmtree(task.paths.task_dir, ignore_errors=True)
        raise
