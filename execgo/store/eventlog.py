# -*- test-case-name: tests.test_store -*-
"""
The event log of each task: appended inside the transaction of the change
it records, so a reader never sees a change without its event, and read
back in C{seq} order (one sequence for the whole store, ascending within
each task).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, List, Optional, Sequence, Tuple

from execgo.core.records import Event
from execgo.store.backend import backend_of
from execgo.store.connection import dumps_sorted, rows
from execgo.store.reads import task_exists, task_status


def append_event(
    conn: sqlite3.Connection,
    task_id: str,
    event_type: str,
    message: Optional[str],
    timestamp_ms: int,
    data: Any = None,
) -> None:
    """
    Append one event; call inside the transaction of the change it records.
    """
    append_events(conn, task_id, [(event_type, message, timestamp_ms, data)])


#: One event to append: its type, message, timestamp and data.
NewEvent = Tuple[str, Optional[str], int, Any]

_INSERT = "INSERT INTO task_events (task_id, event_type, timestamp_ms, message, data_json)"


def append_events(conn: sqlite3.Connection, task_id: str, events: Sequence[NewEvent]) -> None:
    """
    Append several events of one change, in order, in one statement that
    goes with the transaction's next one (one round trip to a database
    server instead of one each); call inside the transaction of the change
    they record.
    """
    if not events:
        return
    values = ", ".join(["(?, ?, ?, ?, ?)"] * len(events))
    params: List[Any] = []
    for event_type, message, timestamp_ms, data in events:
        params += [task_id, event_type, timestamp_ms, message, None if data is None else dumps_sorted(data)]
    backend_of(conn).execute_later(conn, f"{_INSERT} VALUES {values}", params)


def append_event_while(
    conn: sqlite3.Connection, task_id: str, status: str, event_type: str, message: str, timestamp_ms: int
) -> None:
    """
    Append one event (without data) only while the task is in C{status}:
    the statement checks it, so nobody reads its result and it goes with
    the transaction's next one.
    """
    backend_of(conn).execute_later(
        conn,
        f"{_INSERT} SELECT ?, ?, ?, ?, NULL WHERE EXISTS (SELECT 1 FROM tasks WHERE task_id = ? AND status = ?)",
        (task_id, event_type, timestamp_ms, message, task_id, status),
    )


def load_events(conn: sqlite3.Connection, task_id: str, after_seq: int = 0) -> List[Event]:
    """
    The task's events with C{seq > after_seq}, ascending.
    """
    return [
        Event(
            seq=row["seq"],
            task_id=row["task_id"],
            event_type=row["event_type"],
            timestamp_ms=row["timestamp_ms"],
            message=row["message"],
            data=None if row["data_json"] is None else json.loads(row["data_json"]),
        )
        for row in rows(
            conn,
            "SELECT * FROM task_events WHERE task_id = ? AND seq > ? ORDER BY seq",
            (task_id, after_seq),
        )
    ]


def events_if_exists(conn: sqlite3.Connection, task_id: str, after_seq: int = 0) -> Optional[List[Event]]:
    """
    The task's events, or C{None} when the task is unknown.
    """
    if not task_exists(conn, task_id):
        return None
    return load_events(conn, task_id, after_seq)


def poll_events(conn: sqlite3.Connection, task_id: str, after_seq: int) -> Tuple[Optional[str], List[Event]]:
    """
    The task's status (C{None}: unknown task), then its events after
    C{after_seq}: when the status is terminal, the terminal event (written
    in the same transaction) is among them or was before.
    """
    status = task_status(conn, task_id)
    if status is None:
        return None, []
    return status, load_events(conn, task_id, after_seq)
