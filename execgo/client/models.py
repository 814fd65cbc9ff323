# -*- test-case-name: tests.test_client -*-
"""
The typed values of L{execgo.client}'s task answers (submission, status,
list page, event); the runtime-wide answers are in L{execgo.client.views},
the errors in L{execgo.client.errors}.

Every value is a frozen attrs class read from the decoded JSON with a
C{from_json} constructor that checks the contract's fields and raises
L{MalformedResponse} when one is missing or of the wrong type; the larger
ones keep the whole decoded object in C{raw} for fields added later.
No Twisted here: a program can use these types without the client.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import attrs

from execgo.client.errors import MalformedResponse
from execgo.core.constants import TERMINAL_STATUSES

# -- reading JSON -----------------------------------------------------------------


def get_field(
    data: Mapping[str, Any],
    key: str,
    kind: Union[type, Tuple[type, ...]],
    required: bool,
) -> Any:
    """
    C{data[key]} checked against C{kind}; C{None} for an absent (or null)
    optional key.

    @raise MalformedResponse: for a missing required key or a wrong type.
    """
    value = data.get(key)
    if value is None:
        if required:
            raise MalformedResponse(f"missing field {key!r}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedResponse(f"field {key!r} has the wrong type: {value!r}")
    return value


def json_object(value: Any, what: str) -> Dict[str, Any]:
    """
    C{value} if it is a JSON object.

    @raise MalformedResponse: otherwise.
    """
    if not isinstance(value, dict):
        raise MalformedResponse(f"{what} is not a JSON object")
    return value


# -- tasks --------------------------------------------------------------------------


@attrs.frozen
class SubmitResult:
    """
    The answer to a submission (C{SubmitTaskResponse}); a retry with the
    same C{Idempotency-Key} gets the same one.
    """

    task_id: str
    handle_id: str
    status: str

    @classmethod
    def from_json(cls, data: Any) -> "SubmitResult":
        """
        Read a decoded C{SubmitTaskResponse}.

        @raise MalformedResponse: if a field is missing or mistyped.
        """
        data = json_object(data, "submit response")
        return cls(
            task_id=get_field(data, "task_id", str, True),
            handle_id=get_field(data, "handle_id", str, True),
            status=get_field(data, "status", str, True),
        )


@attrs.frozen
class TaskError:
    """
    A task's C{error}: a code from the contract's ErrorCode list and a message.
    """

    code: str
    message: str


@attrs.frozen
class TaskStatus:
    """
    The main fields of a C{TaskStatusResponse} (or of a list entry, which has
    no output: C{stdout}/C{stderr} are then empty); everything else is in
    C{raw}.

    @ivar raw: the whole decoded status object (not compared: two values
        are equal when their main fields are).
    """

    task_id: str
    handle_id: str
    status: str
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    duration_ms: Optional[int] = None
    error: Optional[TaskError] = None
    node_id: Optional[str] = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def terminal(self) -> bool:
        """
        Whether the task is C{success}, C{failed} or C{cancelled}.
        """
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, data: Any) -> "TaskStatus":
        """
        Read a decoded C{TaskStatusResponse}.

        @raise MalformedResponse: if a main field is missing or mistyped.
        """
        data = json_object(data, "task status")
        error = get_field(data, "error", dict, False)
        return cls(
            task_id=get_field(data, "task_id", str, True),
            handle_id=get_field(data, "handle_id", str, True),
            status=get_field(data, "status", str, True),
            stdout=get_field(data, "stdout", str, False) or "",
            stderr=get_field(data, "stderr", str, False) or "",
            stdout_truncated=bool(get_field(data, "stdout_truncated", bool, False)),
            stderr_truncated=bool(get_field(data, "stderr_truncated", bool, False)),
            exit_code=get_field(data, "exit_code", int, False),
            exit_signal=get_field(data, "exit_signal", int, False),
            duration_ms=get_field(data, "duration_ms", int, False),
            error=None
            if error is None
            else TaskError(
                code=get_field(error, "code", str, True),
                message=get_field(error, "message", str, True),
            ),
            node_id=get_field(data, "node_id", str, False),
            raw=data,
        )


@attrs.frozen
class TaskPage:
    """
    One page of C{GET /api/v1/tasks}: newest first, and the cursor of the
    next page (C{None} on the last one).
    """

    tasks: Tuple[TaskStatus, ...]
    next_cursor: Optional[str]

    @classmethod
    def from_json(cls, data: Any) -> "TaskPage":
        """
        Read a decoded list page.

        @raise MalformedResponse: if a field is missing or mistyped.
        """
        data = json_object(data, "task page")
        tasks = get_field(data, "tasks", list, True)
        return cls(
            tasks=tuple(TaskStatus.from_json(task) for task in tasks),
            next_cursor=get_field(data, "next_cursor", str, False),
        )


@attrs.frozen
class TaskEvent:
    """
    One C{EventRecord} of a task's event log.
    """

    seq: int
    task_id: str
    event_type: str
    timestamp: str
    message: Optional[str] = None
    data: Any = attrs.field(default=None, hash=False)

    @property
    def terminal(self) -> bool:
        """
        Whether this is the task's last event (C{finished}, C{failed} or
        C{cancelled}).
        """
        return self.event_type in ("finished", "failed", "cancelled")

    @classmethod
    def from_json(cls, data: Any) -> "TaskEvent":
        """
        Read a decoded C{EventRecord}.

        @raise MalformedResponse: if a field is missing or mistyped.
        """
        data = json_object(data, "event")
        return cls(
            seq=get_field(data, "seq", int, True),
            task_id=get_field(data, "task_id", str, True),
            event_type=get_field(data, "event_type", str, True),
            timestamp=get_field(data, "timestamp", str, True),
            message=get_field(data, "message", str, False),
            data=data.get("data"),
        )
