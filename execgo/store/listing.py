# -*- test-case-name: tests.test_listing -*-
"""
Listing and searching tasks (C{GET /api/v1/tasks}).

A page is the newest tasks first, ordered by C{(created_at_ms, rowid)}
descending (creation time, ties by insertion order), filtered by status,
tenant, owner and labels.  Pages are cut by keyset pagination: the cursor
encodes the C{(created_at_ms, rowid)} of the last entry served, and the
next page starts strictly below it, so tasks submitted between two pages
(which sort above) never shift or repeat entries of later pages.  Every
filter combination is answered from an index in that order
(C{idx_tasks_created}, C{idx_tasks_status_created},
C{idx_tasks_tenant_created}, C{idx_tasks_owner_created}, and
C{task_labels}' C{idx_task_labels_kv}, which copies the two ordering
columns), so a page costs about its own size, not the store's.

Standard library only: the query runs as a plain function over one
C{sqlite3} connection, like the rest of L{execgo.store}.
"""

from __future__ import annotations

import base64
import binascii
import re
import sqlite3
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import attrs

from execgo.core import errors
from execgo.core.constants import ALL_STATUSES, JSON
from execgo.core.records import TaskRecord
from execgo.core.render import render_status
from execgo.store.connection import rows

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_LABELS = 32
_CURSOR_VERSION = "1"
_CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURSOR_RAW = re.compile(r"1:(\d{1,19}):(\d{1,19})")
_CURSOR_INT_MAX = 2**63 - 1


@attrs.frozen
class ListQuery:
    """
    One page request, validated.

    @ivar labels: C{(key, value)} pairs that must all match.
    @ivar after: the C{(created_at_ms, rowid)} position of the previous
        page's last entry; the page holds only entries below it.
    @ivar no_tenant: only tasks without a tenant (never from the query
        string: see L{within_tenant}).
    """

    status: Optional[str] = None
    tenant: Optional[str] = None
    owner: Optional[str] = None
    labels: Tuple[Tuple[str, str], ...] = ()
    limit: int = DEFAULT_LIMIT
    after: Optional[Tuple[int, int]] = None
    no_tenant: bool = False


def within_tenant(query: ListQuery, tenant: Optional[str]) -> Optional[ListQuery]:
    """
    C{query} narrowed to the tasks of C{tenant} (C{None}: the tasks without
    a tenant), for a principal that sees only its own tenant; C{None} when
    the query asks for another tenant's tasks, so the page is empty.
    """
    if query.tenant is not None and query.tenant != tenant:
        return None
    return attrs.evolve(query, tenant=tenant, no_tenant=tenant is None)


def encode_cursor(created_at_ms: int, rowid: int) -> str:
    """
    The opaque, URL-safe cursor that continues below this position.
    """
    raw = f"{_CURSOR_VERSION}:{created_at_ms}:{rowid}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> Tuple[int, int]:
    """
    The position a cursor from L{encode_cursor} stands for.

    @raise errors.InvalidInput: for anything L{encode_cursor} cannot make.
    """
    if _CURSOR_TEXT.fullmatch(text) is None:
        raise errors.InvalidInput("cursor: not a cursor from a previous page")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (ValueError, binascii.Error):
        raise errors.InvalidInput("cursor: not a cursor from a previous page") from None
    match = _CURSOR_RAW.fullmatch(raw)
    if match is None:
        raise errors.InvalidInput("cursor: not a cursor from a previous page")
    position = int(match.group(1)), int(match.group(2))
    # Both are SQLite integers (64-bit signed): 19 digits can be more.
    if max(position) > _CURSOR_INT_MAX:
        raise errors.InvalidInput("cursor: not a cursor from a previous page")
    return position


def _text(name: str, raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidInput(f"{name}: must be UTF-8") from None


def _values(args: Mapping[Any, Sequence[Any]], name: str) -> List[str]:
    values = args.get(name.encode("ascii"))
    if values is None:
        values = args.get(name)
    return [_text(name, value) for value in values or ()]


def _single(args: Mapping[Any, Sequence[Any]], name: str) -> Optional[str]:
    values = _values(args, name)
    if not values:
        return None
    if len(values) > 1:
        raise errors.InvalidInput(f"{name}: must be given at most once")
    if not values[0]:
        raise errors.InvalidInput(f"{name}: must not be empty")
    return values[0]


def parse_query(args: Mapping[Any, Sequence[Any]]) -> ListQuery:
    """
    Validate the query arguments of a list request (names and values as
    bytes, as in C{IRequest.args}, or as text).  Unknown names are ignored.

    @raise errors.InvalidInput: for a bad value, a repeated single-valued
        argument, or more than L{MAX_LABELS} labels.
    """
    status = _single(args, "status")
    if status is not None and status not in ALL_STATUSES:
        raise errors.InvalidInput(f"status: must be one of {', '.join(ALL_STATUSES)}")
    labels = []
    for label in _values(args, "label"):
        key, colon, value = label.partition(":")
        if not colon or not key:
            raise errors.InvalidInput("label: expected key:value with a non-empty key")
        labels.append((key, value))
    if len(labels) > MAX_LABELS:
        raise errors.InvalidInput(f"label: at most {MAX_LABELS} labels")
    limit = DEFAULT_LIMIT
    limit_text = _single(args, "limit")
    if limit_text is not None:
        if not limit_text.isascii() or not limit_text.isdigit() or len(limit_text) > 6:
            raise errors.InvalidInput(f"limit: expected an integer from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
        if not 1 <= limit <= MAX_LIMIT:
            raise errors.InvalidInput(f"limit: expected an integer from 1 to {MAX_LIMIT}")
    cursor = _single(args, "cursor")
    return ListQuery(
        status=status,
        tenant=_single(args, "tenant"),
        owner=_single(args, "owner"),
        labels=tuple(labels),
        limit=limit,
        after=None if cursor is None else decode_cursor(cursor),
    )


def page_sql(query: ListQuery) -> Tuple[str, List[Any]]:
    """
    The statement (and its parameters) selecting one more row than the
    page holds, newest first, each row with its C{list_rowid}.

    With labels the first one drives the scan (its index carries the
    ordering columns; C{CROSS JOIN} keeps SQLite from reordering the
    join, and its condition sits in C{WHERE}, which every engine accepts
    after a C{CROSS JOIN}), the others are checked per row through
    C{task_labels}' primary key.
    """
    where: List[str] = []
    params: List[Any] = []
    if query.labels:
        (key, value), rest = query.labels[0], query.labels[1:]
        source = "task_labels l0 CROSS JOIN tasks t"
        created, rowid = "l0.created_at_ms", "l0.task_rowid"
        where.append("t.task_id = l0.task_id AND l0.key = ? AND l0.value = ?")
        params += [key, value]
        for key, value in rest:
            where.append(
                "EXISTS (SELECT 1 FROM task_labels l WHERE l.task_id = t.task_id"
                " AND l.key = ? AND l.value = ?)"
            )
            params += [key, value]
    else:
        source = "tasks t"
        created, rowid = "t.created_at_ms", "t.rowid"
    for column in ("status", "tenant", "owner"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"t.{column} = ?")
            params.append(value)
    if query.no_tenant:
        where.append("t.tenant IS NULL")
    if query.after is not None:
        where.append(f"({created}, {rowid}) < (?, ?)")
        params += list(query.after)
    sql = f"SELECT t.rowid AS list_rowid, t.* FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {created} DESC, {rowid} DESC LIMIT ?"
    params.append(query.limit + 1)
    return sql, params


def list_page(conn: sqlite3.Connection, query: ListQuery, now_ms: int) -> JSON:
    """
    One page: C{{"tasks": [...], "next_cursor": ...}}, each entry the
    status snapshot without its four output keys; C{next_cursor} is
    C{None} on the last page.
    """
    sql, params = page_sql(query)
    found = rows(conn, sql, params)
    more = len(found) > query.limit
    found = found[: query.limit]
    tasks = [
        render_status(TaskRecord.from_row(row), ("", False), ("", False), now_ms, include_output=False)
        for row in found
    ]
    next_cursor = None
    if more and found:
        next_cursor = encode_cursor(found[-1]["created_at_ms"], found[-1]["list_rowid"])
    return {"tasks": tasks, "next_cursor": next_cursor}
