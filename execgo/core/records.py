# -*- test-case-name: tests.test_store -*-
"""
The stored task as values: what the store reads back from a row
(L{TaskRecord}, L{Event}, L{QueuedTask}) and what it is given to write
(L{NewTask}, L{Outcome}).  Frozen attrs classes over the wire models;
standard library and C{attrs} only.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, Mapping, NamedTuple, Optional

import attrs

from execgo.core.cluster import labels_match
from execgo.core.constants import TERMINAL_STATUSES
from execgo.core.models import (
    ControlContext,
    ExecutionSpec,
    ResourceLimits,
    SandboxPolicy,
)
from execgo.core.plan import ExecutionPlan, RunAs
from execgo.core.reservation import Reservation
from execgo.core.results import ErrorInfo, Usage


@attrs.frozen
class Event:
    """
    One entry of a task's event log.
    """

    seq: int
    task_id: str
    event_type: str
    timestamp_ms: int
    message: Optional[str] = None
    data: Any = None


@attrs.frozen
class TaskPaths:
    """
    The absolute paths of one task's files under the data directory.
    """

    task_dir: str
    workspace_dir: str
    request_path: str
    result_path: str
    stdout_path: str
    stderr_path: str
    script_path: Optional[str] = None


@attrs.frozen
class TaskRecord:
    """
    A task row, decoded.
    """

    task_id: str
    status: str
    execution: ExecutionSpec
    limits: ResourceLimits
    sandbox: SandboxPolicy
    metadata: dict
    created_at_ms: int
    updated_at_ms: int
    paths: TaskPaths
    plan: Optional[ExecutionPlan] = None
    control_context: Optional[ControlContext] = None
    started_at_ms: Optional[int] = None
    finished_at_ms: Optional[int] = None
    duration_ms: Optional[int] = None
    shim_pid: Optional[int] = None
    pid: Optional[int] = None
    pgid: Optional[int] = None
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    error: Optional[ErrorInfo] = None
    usage: Optional[Usage] = None
    kill_requested: bool = False
    kill_requested_at_ms: Optional[int] = None
    timeout_triggered: bool = False
    reservation: Optional[Reservation] = None
    reserved_at_ms: Optional[int] = None
    released_at_ms: Optional[int] = None
    run_as: Optional[RunAs] = None
    node_id: Optional[str] = None
    node_labels: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def terminal(self) -> bool:
        """
        Whether the task reached C{success}, C{failed} or C{cancelled}.
        """
        return self.status in TERMINAL_STATUSES

    @property
    def reservation_active(self) -> bool:
        """
        Whether the task holds a reservation not yet released.
        """
        return self.reserved_at_ms is not None and self.released_at_ms is None

    @property
    def tenant(self) -> Optional[str]:
        """
        The tenant of the control context, if any.
        """
        return None if self.control_context is None else self.control_context.tenant

    @property
    def owner(self) -> Optional[str]:
        """
        The owner of the control context, if any.
        """
        return None if self.control_context is None else self.control_context.owner

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "TaskRecord":
        """
        Decode a C{SELECT * FROM tasks} row.
        """

        def load(column: str) -> Any:
            text = row[column]
            return None if text is None else json.loads(text)

        plan = load("execution_plan_json")
        context = load("control_context_json")
        error = load("error_json")
        usage = load("usage_json")
        return cls(
            task_id=row["task_id"],
            execution=ExecutionSpec.from_json(load("execution_json")),
            limits=ResourceLimits.from_json(load("limits_json")),
            sandbox=SandboxPolicy.from_json(load("sandbox_json")),
            metadata=load("metadata_json") or {},
            created_at_ms=row["created_at_ms"],
            paths=TaskPaths(
                task_dir=row["task_dir"],
                workspace_dir=row["workspace_dir"],
                request_path=row["request_path"],
                result_path=row["result_path"],
                stdout_path=row["stdout_path"],
                stderr_path=row["stderr_path"],
                script_path=row["script_path"],
            ),
            plan=None if plan is None else ExecutionPlan.from_json(plan),
            control_context=None if context is None else ControlContext.from_json(context),
            finished_at_ms=row["finished_at_ms"],
            duration_ms=row["duration_ms"],
            exit_code=row["exit_code"],
            exit_signal=row["exit_signal"],
            error=None if error is None else ErrorInfo.from_json(error),
            usage=None if usage is None else Usage.from_json(usage),
            node_labels=load("placement_json") or {},
            **changing_fields(row),
        )

    def refreshed(self, row: sqlite3.Row) -> "TaskRecord":
        """
        This record with the L{CHANGING_COLUMNS} of C{row} (a fresh read of
        the same task).
        """
        return attrs.evolve(
            self,
            paths=attrs.evolve(self.paths, script_path=row["script_path"]),
            **changing_fields(row),
        )


#: The columns a non-terminal task's transitions change (claim, start,
#: timeout, kill, recovery); the rest of a row is fixed until its end.
CHANGING_COLUMNS = (
    "status, updated_at_ms, shim_pid, pid, pgid, started_at_ms, script_path, kill_requested,"
    " kill_requested_at_ms, timeout_triggered, reservation_json, reserved_at_ms, released_at_ms,"
    " run_uid, run_gid, node_id"
)


def changing_fields(row: sqlite3.Row) -> Dict[str, Any]:
    """
    The L{TaskRecord} fields of the L{CHANGING_COLUMNS} but C{script_path}
    (a path), decoded from C{row}.
    """
    reservation = row["reservation_json"]
    return dict(
        status=row["status"],
        updated_at_ms=row["updated_at_ms"],
        shim_pid=row["shim_pid"],
        pid=row["pid"],
        pgid=row["pgid"],
        started_at_ms=row["started_at_ms"],
        kill_requested=bool(row["kill_requested"]),
        kill_requested_at_ms=row["kill_requested_at_ms"],
        timeout_triggered=bool(row["timeout_triggered"]),
        reservation=None if reservation is None else Reservation.from_json(json.loads(reservation)),
        reserved_at_ms=row["reserved_at_ms"],
        released_at_ms=row["released_at_ms"],
        run_as=None if row["run_uid"] is None else RunAs(row["run_uid"], row["run_gid"]),
        node_id=row["node_id"],
    )


@attrs.frozen
class QueuedTask:
    """
    A task waiting in C{accepted}, as the dispatcher sees it.
    """

    task_id: str
    tenant: Optional[str]
    reservation: Reservation
    created_at_ms: int
    node_labels: Mapping[str, str] = attrs.field(factory=dict)
    #: The node that accepted it, when known (a cluster's notice says).
    origin: Optional[str] = None

    def fits_node(self, labels: Mapping[str, str]) -> bool:
        """
        Whether a node with C{labels} may run it: it has every label the
        task's placement asks for.
        """
        return labels_match(self.node_labels, labels)

    @classmethod
    def from_record(cls, record: TaskRecord) -> "QueuedTask":
        """
        The queue entry of a stored task.
        """
        return cls(
            task_id=record.task_id,
            tenant=record.tenant,
            reservation=Reservation.for_limits(record.limits),
            created_at_ms=record.created_at_ms,
            node_labels=record.node_labels,
        )

    def to_json(self) -> Dict[str, Any]:
        """
        The entry as another node's dispatcher reads it
        (L{execgo.store.notices.SUBMITTED}), its id aside.
        """
        return {
            "tenant": self.tenant,
            "reservation": self.reservation.to_json(),
            "created_at_ms": self.created_at_ms,
            "node_labels": dict(self.node_labels),
        }

    @classmethod
    def from_json(cls, task_id: str, data: Mapping[str, Any]) -> "QueuedTask":
        """
        Read back L{to_json}.

        @raise ValueError: when it is malformed.
        """
        tenant, created, reservation = data.get("tenant"), data.get("created_at_ms"), data.get("reservation")
        if tenant is not None and not isinstance(tenant, str):
            raise ValueError("tenant must be a string or null")
        if isinstance(created, bool) or not isinstance(created, int) or not isinstance(reservation, dict):
            raise ValueError("created_at_ms must be an integer and reservation an object")
        labels = data.get("node_labels")
        labels = {} if labels is None else labels
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ValueError("node_labels must map strings to strings")
        amounts = [reservation.get("task_slots", 1), reservation.get("memory_bytes"), reservation.get("pids")]
        if any(a is not None and (isinstance(a, bool) or not isinstance(a, int)) for a in amounts):
            raise ValueError("a reservation holds integers")
        origin = data.get("origin")
        if origin is not None and not isinstance(origin, str):
            raise ValueError("origin must be a string or null")
        return cls(task_id, tenant, Reservation.from_json(reservation), created, dict(labels), origin)


#: The scope stored with keys sent without authentication.
OPEN = ""
TENANT_PREFIX = "tenant:"


class Scope(NamedTuple):
    """
    Where a submission's key is looked up and stored.

    @ivar name: stored with the key (C{idempotency_scope}).
    @ivar bounded: with authentication: only the keys of this scope, and
        the open-scope keys of tasks of C{tenant}, count; without, every
        stored key does.
    @ivar tenant: the submitting token's tenant (when C{bounded}).
    """

    name: str = OPEN
    bounded: bool = False
    tenant: Optional[str] = None


#: The scope of every key sent without authentication.
OPEN_SCOPE = Scope()


def tenant_scope(tenant: Optional[str]) -> Scope:
    """
    The scope of the keys sent with a token of C{tenant} (C{None}: a
    token without a tenant).
    """
    return Scope(TENANT_PREFIX + (tenant or ""), True, tenant)


@attrs.frozen
class NewTask:
    """
    Everything the submit path stores for a new task.
    """

    task_id: str
    execution: ExecutionSpec
    limits: ResourceLimits
    sandbox: SandboxPolicy
    metadata: dict
    plan: ExecutionPlan
    control_context: Optional[ControlContext]
    paths: TaskPaths
    idempotency_key: Optional[str] = None
    idempotency_hash: Optional[str] = None
    idempotency_scope: Scope = OPEN_SCOPE
    node_labels: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Outcome:
    """
    How a task ended: what the terminal write records.
    """

    status: str
    error: Optional[ErrorInfo] = None
    duration_ms: int = 0
    exit_code: Optional[int] = None
    exit_signal: Optional[int] = None
    usage: Optional[Usage] = None
