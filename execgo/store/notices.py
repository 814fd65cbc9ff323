# -*- test-case-name: tests.test_notices -*-
"""
Notices between the nodes of a cluster: what one node's change means to
the others, sent with the change.

On PostgreSQL a notice is a C{NOTIFY} on L{CHANNEL}, sent in the
transaction of the change it announces, so it is delivered when (and
only if) that change commits, and after it: a node that reads the store
on a notice sees the change.  Every server listens
(L{execgo.server.notices}); a node receives its own notices too, and the
store stays the truth: a notice only saves waiting for the next look.
On SQLite there is one node and nothing is sent.

A payload is C{<kind> <task_id>} and, for some kinds, a space and a
compact JSON object; data too large for a notice (a tenant's long names)
is left out, and a receiver that needs it reads the store.  Task ids hold
no spaces (L{execgo.core.validation}).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Optional

import attrs

from execgo.core.constants import JSON
from execgo.store.backend import backend_of
from execgo.store.connection import dumps

#: The channel every notice is sent on.
CHANNEL = "execgo"

#: A task was accepted; data: the queued task (L{execgo.core.records.QueuedTask}).
SUBMITTED = "s"
#: A node claimed a task; data: C{node}, C{tenant}, C{reservation}.
CLAIMED = "c"
#: A task ended.
ENDED = "e"
#: A kill of a running task was recorded; its node signals it.
KILLED = "k"

_KINDS = (SUBMITTED, CLAIMED, ENDED, KILLED)

#: PostgreSQL refuses a payload of 8,000 bytes or more; a notice whose data
#: would not fit goes without it (its receivers read the store instead).
MAX_PAYLOAD_BYTES = 7900


@attrs.frozen
class Notice:
    """
    One notice as received.
    """

    kind: str
    task_id: str
    data: Optional[JSON] = None


def announce(conn: sqlite3.Connection, kind: str, task_id: str, data: Optional[JSON] = None) -> None:
    """
    Send a notice in the open transaction (nothing on an engine whose
    store has one node).
    """
    notify = backend_of(conn).notify
    if notify is None:
        return
    payload = f"{kind} {task_id}"
    if data is not None:
        full = f"{payload} {dumps(data)}"
        if len(full.encode("utf-8")) <= MAX_PAYLOAD_BYTES:
            payload = full
    notify(conn, CHANNEL, payload)


def parse(payload: str) -> Optional[Notice]:
    """
    A received payload as a L{Notice}, or C{None} when it is none of ours.
    """
    kind, _, rest = payload.partition(" ")
    task_id, _, data = rest.partition(" ")
    if kind not in _KINDS or not task_id:
        return None
    if not data:
        return Notice(kind, task_id)
    try:
        decoded: Any = json.loads(data)
    except ValueError:
        return None
    return Notice(kind, task_id, decoded) if isinstance(decoded, dict) else None
