# -*- test-case-name: tests.test_idempotency -*-
"""
Idempotent submission: the C{Idempotency-Key} request header.

A submission that carries a key stores it with its task, together with a
hash of the normalised request.  A later submission with the same key and
the same normalised request is a retry: it gets the first submission's
answer and creates nothing; with a different request it is a conflict.
Keys live as long as their task (GC deletes them with the row); a unique
index on C{(idempotency_key, idempotency_scope)} decides between
concurrent first submissions.

A key belongs to a L{Scope}.  Without authentication there is one, the
open scope (C{""}), as there always was.  With authentication each tenant
has its own (C{"tenant:NAME"}; C{"tenant:"} for tokens without a tenant):
the same key sent by two tenants makes two tasks, and a tenant learns
nothing of another's keys.  A key stored in the open scope (sent without
authentication, or stored before keys had scopes) counts, with
authentication, for the tenant of its task.

Standard library only (L{execgo.store.transitions} uses it inside its transactions).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any, Dict, List, Optional, Tuple

from execgo.core import errors
from execgo.core.records import OPEN, OPEN_SCOPE, Scope

MAX_KEY_LENGTH = 255
REUSED = "idempotency key reused with a different request"
class KeyReused(errors.Conflict):
    """
    The key belongs to a stored task submitted with another request.
    """

    def __init__(self) -> None:
        super().__init__(REUSED)


class Replay(errors.Conflict):
    """
    The key belongs to a stored task submitted with the same request: the
    submission is a retry and must be answered like the first one.

    @ivar task_id: the stored task.
    """

    def __init__(self, task_id: str) -> None:
        super().__init__(f"idempotent retry of task {task_id}")
        self.task_id = task_id


def parse_key(values: Optional[Any]) -> Optional[str]:
    """
    The key from the raw values of the C{Idempotency-Key} header (C{None}
    when absent): exactly one value of 1 to L{MAX_KEY_LENGTH} visible ASCII
    characters (C{0x21}-C{0x7E}).

    @raise errors.InvalidInput: for anything else.
    """
    if not values:
        return None
    if len(values) != 1:
        raise errors.InvalidInput("Idempotency-Key: must be given once")
    raw = values[0]
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or any(byte < 0x21 or byte > 0x7E for byte in raw):
        raise errors.InvalidInput(
            f"Idempotency-Key: must be 1 to {MAX_KEY_LENGTH} visible ASCII characters"
        )
    return raw.decode("ascii")


def request_hash(normalised: Dict[str, Any]) -> str:
    """
    The hash stored with a key: SHA-256 of the normalised request (the
    C{SubmitRequest.to_json()} rendering, with the principal's tenant and
    owner applied) as canonical JSON.
    """
    text = json.dumps(normalised, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def lookup(
    conn: sqlite3.Connection, key: str, scope: Scope = OPEN_SCOPE
) -> List[Tuple[str, Optional[str]]]:
    """
    C{(task_id, request hash)} of the tasks stored with C{key} that count
    in C{scope} (at most two when it is bounded: its own and an open one),
    those of C{scope} itself first.
    """
    if not scope.bounded:
        rows = conn.execute(
            "SELECT task_id, idempotency_hash FROM tasks WHERE idempotency_key = ?"
            " ORDER BY idempotency_scope = ? DESC",
            (key, scope.name),
        )
    else:
        rows = conn.execute(
            "SELECT task_id, idempotency_hash FROM tasks WHERE idempotency_key = ?"
            " AND (idempotency_scope = ? OR (idempotency_scope = ? AND tenant IS NOT DISTINCT FROM ?))"
            " ORDER BY idempotency_scope = ? DESC",
            (key, scope.name, OPEN, scope.tenant, scope.name),
        )
    return [(row[0], row[1]) for row in rows.fetchall()]


def check(conn: sqlite3.Connection, key: str, digest: Optional[str], scope: Scope = OPEN_SCOPE) -> None:
    """
    Compare a submission with the tasks stored under its key in its
    scope, if any.

    @raise Replay: the key is stored with the same request hash.
    @raise KeyReused: the key is stored with another request.
    """
    found = lookup(conn, key, scope)
    if not found:
        return
    for task_id, stored in found:
        if stored == digest:
            raise Replay(task_id)
    raise KeyReused()


def settle_conflict(
    conn: sqlite3.Connection, key: str, digest: Optional[str], task_id: str, scope: Scope = OPEN_SCOPE
) -> Optional[bool]:
    """
    After a submission with a key lost a race on its task id: L{check} the
    key; otherwise say whether the id is taken by a stored row (C{True}: a
    genuine conflict) or not yet (C{None}: the winner has not committed).

    @raise Replay: as L{check}.
    @raise KeyReused: as L{check}.
    """
    check(conn, key, digest, scope)
    exists = conn.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
    return True if exists is not None else None
