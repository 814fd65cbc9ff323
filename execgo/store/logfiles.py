# -*- test-case-name: tests.test_streams -*-
"""
Reading a task's C{stdout} and C{stderr} logs for streaming: the log
opened once (L{open_log}), then read in bounded chunks from an offset
(L{read_log}), its task's status read whenever a follower reaches the end
of what is written.

Plain functions over one C{sqlite3} connection that read files
(blocking): the server runs them in its reader threads
(L{execgo.server.web.streams}).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Optional, Tuple

import attrs

from execgo.core.constants import STATUS_ACCEPTED, TERMINAL_STATUSES
from execgo.store.reads import task_status

#: The most a read returns.
CHUNK_BYTES = 64 * 1024
LOG_NAMES = ("stdout", "stderr")


@attrs.frozen
class OpenLog:
    """
    A log opened for streaming: its descriptor (C{None} when the file is
    missing) and its size then, and whether the task is still queued (in
    a cluster it may then run on another node); or, for a task another
    node claimed, that node (C{elsewhere}), whose files these are, and
    nothing opened.
    """

    fd: Optional[int]
    size: int
    elsewhere: Optional[str] = None
    queued: bool = False


def open_log(
    conn: sqlite3.Connection, task_id: str, name: str, node_id: Optional[str] = None
) -> Optional[OpenLog]:
    """
    Open a task's C{stdout} or C{stderr} log; C{None} for an unknown task.
    The log of a task another node than C{node_id} claimed is that node's:
    not opened (L{OpenLog.elsewhere}).

    @raise ValueError: C{name} is not one of L{LOG_NAMES}.
    """
    if name not in LOG_NAMES:
        raise ValueError(name)
    row = conn.execute(f"SELECT {name}_path, node_id, status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    if row is None:
        return None
    if node_id is not None and row[1] is not None and row[1] != node_id:
        return OpenLog(None, 0, row[1])
    queued = row[2] == STATUS_ACCEPTED
    try:
        fd = os.open(row[0], os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return OpenLog(None, 0, queued=queued)
    try:
        return OpenLog(fd, os.fstat(fd).st_size, queued=queued)
    except BaseException:
        os.close(fd)
        raise


def read_log(
    conn: sqlite3.Connection, task_id: str, fd: int, pos: int, end: Optional[int]
) -> Tuple[bytes, bool]:
    """
    The next chunk of a log from C{pos}, and whether the stream is
    complete after it.

    @param end: where a plain read stops (the size when it began); C{None}
        to follow: at the end of what is written the task's status is read,
        and if it is terminal (or the task is gone) the file is read once
        more, since what it holds then is all it will ever hold.
    """
    want = CHUNK_BYTES if end is None else max(0, min(CHUNK_BYTES, end - pos))
    data = os.pread(fd, want, pos) if want else b""
    if end is not None:
        return data, not data or pos + len(data) >= end
    if data:
        return data, False
    status = task_status(conn, task_id)
    if status is not None and status not in TERMINAL_STATUSES:
        return b"", False
    data = os.pread(fd, CHUNK_BYTES, pos)
    return data, not data
