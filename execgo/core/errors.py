# -*- test-case-name: tests.test_api,tests.test_openapi,tests.test_storage_faults -*-
"""
One exception hierarchy for the whole runtime.

Every error that can reach a caller is an L{ExecgoError}: it carries the wire
error code, the HTTP status that goes with it (the table of C{docs/api.md},
"Errors"), and a message in the C{<category>: <detail>} form.  The edges
(the HTTP API and the CLI) map these to envelopes and exit codes; nothing
else does.
"""

from __future__ import annotations

import errno
from typing import Any, Dict


class ExecgoError(Exception):
    """
    Root of every error the runtime reports.

    @ivar code: the wire error code (one of L{execgo.server.web.openapi.ERROR_CODES}).
    @ivar http_status: the HTTP status used when this is an endpoint error.
    @ivar prefix: the message category prefix, or C{""} for a bare message.
    """

    code = "internal"
    http_status = 500
    prefix = "internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def message(self) -> str:
        """
        The human-readable message: C{"<prefix>: <detail>"}.
        """
        if not self.prefix:
            return self.detail
        return f"{self.prefix}: {self.detail}"

    def envelope(self) -> Dict[str, Any]:
        """
        The error envelope body: C{{"error": {"code": ..., "message": ...}}}.
        """
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(ExecgoError):
    """
    The request (or a configuration value) failed validation.
    """

    code = "invalid_input"
    http_status = 400
    prefix = "invalid input"


class PayloadTooLarge(InvalidInput):
    """
    A request body exceeded the 2 MiB limit.
    """

    http_status = 413


class MethodNotAllowed(InvalidInput):
    """
    A known path was requested with the wrong method.
    """

    http_status = 405


class NotFound(ExecgoError):
    """
    An unknown task id, or an unknown path.
    """

    code = "not_found"
    http_status = 404
    prefix = "task not found"


class Conflict(ExecgoError):
    """
    A task with the requested id already exists.
    """

    code = "conflict"
    http_status = 409
    prefix = "conflict"


class PermissionDenied(ExecgoError):
    """
    The owner check of a kill request failed.
    """

    code = "permission_denied"
    http_status = 403
    prefix = "permission denied"


class UnsupportedCapability(ExecgoError):
    """
    Strict plan resolution met a capability the host does not offer.
    """

    code = "unsupported_capability"
    http_status = 400
    prefix = "unsupported capability"


class InsufficientResources(ExecgoError):
    """
    A single task needs more than the runtime capacity or its tenant quota.
    """

    code = "insufficient_resources"
    http_status = 400
    prefix = "insufficient resources"


class QueueFull(ExecgoError):
    """
    The accepted queue holds C{max_queued_tasks} tasks already.
    """

    code = "resource_limit_exceeded"
    http_status = 429
    prefix = ""

    def __init__(self, detail: str = "queue is full") -> None:
        super().__init__(detail)


class Internal(ExecgoError):
    """
    A storage, IO or otherwise unexpected failure.
    """


class Unavailable(ExecgoError):
    """
    The runtime cannot take this request now (stopping, storage unusable).
    """

    http_status = 503
    prefix = "unavailable"


class InsufficientStorage(ExecgoError):
    """
    The data directory's file system is full.
    """

    http_status = 507
    prefix = "io error"


class Unauthorized(ExecgoError):
    """
    Authentication is on and the request carries no valid bearer token.

    The contract's error codes have no authentication entry; the closest,
    C{permission_denied}, is used with HTTP 401.
    """

    code = "permission_denied"
    http_status = 401
    prefix = "unauthorized"


_FULL = {errno.ENOSPC, errno.EDQUOT}
_UNUSABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO}
#: Database errors that carry an SQL standard C{sqlstate}: those classes
#: (two characters) or codes (five) that mean the store cannot be used
#: right now (connection gone, server shutting down, too many connections,
#: a lock not granted in time, a deadlock victim, a read-only store) ...
_UNAVAILABLE_SQLSTATES = {"08", "57P01", "57P02", "57P03", "53300", "55P03", "40P01", "25006"}
#: ... and the one that means it is full.
_FULL_SQLSTATES = {"53100"}
#: What a database server that refuses a connection says when it will take
#: one again soon: starting up, shutting down, in recovery, out of slots.
_PASSING_FATALS = ("the database system is", "too many clients", "too many connections")
#: ... and the ones of text it cannot hold (U+0000; bytes not in its
#: encoding): what a client sent, not a fault of the store.
_TEXT_SQLSTATES = {"22021", "22P05"}
#: The error a database connection pool raises for a connection that broke
#: under a query (Twisted's C{adbapi}), matched by module and class name
#: so that this layer need not import Twisted.
_CONNECTION_LOST = ("twisted.enterprise.adbapi", "ConnectionLost")


def from_storage(error: BaseException) -> ExecgoError:
    """
    The runtime error for a storage failure: a full file system or store
    is 507, a store or data directory that cannot be used right now
    (locked, read only, not permitted, its connection lost) is 503,
    anything else is 500.
    """
    if isinstance(error, ExecgoError):
        return error
    text = str(error)
    if isinstance(error, OSError) and error.errno in _FULL:
        return InsufficientStorage(text)
    if isinstance(error, OSError) and error.errno in _UNUSABLE:
        return Unavailable(f"io error: {text}")
    if (type(error).__module__, type(error).__name__) == _CONNECTION_LOST:
        return Unavailable(f"database connection lost: {text}" if text else "database connection lost")
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate in _FULL_SQLSTATES:
            return InsufficientStorage(f"database error: {text}")
        if sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate[:2] in _UNAVAILABLE_SQLSTATES:
            return Unavailable(f"database error: {text}")
    name = type(error).__name__
    if sqlstate in _TEXT_SQLSTATES:
        return InvalidInput("text must not contain U+0000 (or bytes that are not UTF-8)")
    if type(error).__module__.startswith("psycopg"):
        # No sqlstate: the driver's own verdict, a connection that failed,
        # was cut or is closed; a server that answered FATAL refused it for
        # good (no such role or database, wrong password) unless it is
        # starting, stopping or full.
        if name in ("OperationalError", "InterfaceError") and not isinstance(sqlstate, str):
            if "FATAL:" in text and not any(word in text for word in _PASSING_FATALS):
                return Internal(f"database error: {text}")
            return Unavailable(f"database unreachable: {text}")
        return Internal(f"database error: {text}")
    if name in ("OperationalError", "DatabaseError"):
        lowered = text.lower()
        if "full" in lowered:
            return InsufficientStorage(f"sqlite error: {text}")
        if "locked" in lowered or "busy" in lowered or "readonly" in lowered or "read-only" in lowered:
            return Unavailable(f"sqlite error: {text}")
        return Internal(f"sqlite error: {text}")
    if isinstance(error, OSError):
        return Internal(f"io error: {text}")
    return Internal(text)
