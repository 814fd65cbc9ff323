# -*- test-case-name: tests.test_openapi -*-
"""
The building blocks of the OpenAPI document's JSON Schemas, and the
response schemas written out by hand: the status snapshot, events, the
runtime views, a batch's results.

These carry the runtime's additions (C{resources.cgroup},
C{resource_enforcement.mechanisms}) and are closed
(C{additionalProperties: false}), so that a field the runtime starts to
emit without documenting it fails C{tests.test_openapi}.  The schemas
generated from models are in L{execgo.server.web.model_schemas}.

No Twisted here; schemas are plain data.
"""

from __future__ import annotations

from typing import Optional, Sequence

from execgo.core.cluster import NODE_ALIVE, NODE_LEFT, NODE_LOST
from execgo.core.constants import ALL_STATUSES, JSON, MODE_ADAPTIVE, MODE_STRICT
from execgo.core.decoding import UINT64_MAX
from execgo.core.protocol import MAX_BATCH_TASKS

# What listing.decode_cursor accepts before decoding (listing._CURSOR_TEXT).
CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
# The status snapshot's keys a listing entry leaves out
# (render.render_status with include_output=False).
OUTPUT_KEYS = ("stdout", "stderr", "stdout_truncated", "stderr_truncated")

# The wire error codes, in their canonical order.
ERROR_CODES = (
    "invalid_input",
    "launch_failed",
    "timeout",
    "cancelled",
    "memory_limit_exceeded",
    "cpu_limit_exceeded",
    "resource_limit_exceeded",
    "sandbox_setup_failed",
    "exit_nonzero",
    "unsupported_capability",
    "insufficient_resources",
    "not_found",
    "conflict",
    "permission_denied",
    "internal",
)

#: The capability modes, in their canonical order.
MODES = (MODE_ADAPTIVE, MODE_STRICT)

UINT: JSON = {"type": "integer", "minimum": 0, "maximum": UINT64_MAX}
INT32: JSON = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
STRING: JSON = {"type": "string"}
BOOL: JSON = {"type": "boolean"}
STRINGS: JSON = {"type": "array", "items": STRING}
STRING_MAP: JSON = {"type": "object", "additionalProperties": STRING}
TIMESTAMP: JSON = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{3}|\.[0-9]{6}|\.[0-9]{9})?Z$",
}


def ref(name: str) -> JSON:
    """
    A reference to the component schema C{name}.
    """
    return {"$ref": f"#/components/schemas/{name}"}


def enum(values: Sequence[str]) -> JSON:
    """
    A string schema allowing C{values} alone.
    """
    return {"type": "string", "enum": list(values)}


def shape(fields: JSON, description: Optional[str] = None) -> JSON:
    """
    A closed object schema; a key written C{"name?"} is optional, every
    other one required.
    """
    properties = {key.rstrip("?"): value for key, value in fields.items()}
    schema: JSON = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [key for key in fields if not key.endswith("?")]
    if required:
        schema["required"] = required
    if description is not None:
        schema["description"] = description
    return schema


# ---------------------------------------------------------------- responses written by hand


def _status_fields() -> JSON:
    """
    The keys of the status snapshot, in wire order, for L{shape}.
    """
    return {
        "task_id": STRING,
        "handle_id": STRING,
        "status": enum(ALL_STATUSES),
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "started_at?": TIMESTAMP,
        "finished_at?": TIMESTAMP,
        "duration_ms?": UINT,
        "shim_pid?": UINT,
        "pid?": UINT,
        "pgid?": INT32,
        "exit_code?": INT32,
        "exit_signal?": INT32,
        "stdout": STRING,
        "stderr": STRING,
        "stdout_truncated": BOOL,
        "stderr_truncated": BOOL,
        "error?": ref("RuntimeErrorInfo"),
        "usage?": ref("ResourceUsage"),
        "execution_plan": ref("ExecutionPlan"),
        "reservation?": ref("TaskResourceReservation"),
        "artifacts": shape(
            {
                "task_dir": STRING,
                "request_path": STRING,
                "result_path": STRING,
                "stdout_path": STRING,
                "stderr_path": STRING,
                "script_path?": STRING,
            }
        ),
        "metadata?": STRING_MAP,
        "node_id": dict({"type": ["string", "null"]}, description="The node that runs or ran it; null until claimed."),
    }


def _status() -> JSON:
    return shape(_status_fields())


def _summary() -> JSON:
    """
    A listing entry: the status snapshot without L{OUTPUT_KEYS}.
    """
    fields = {
        key: value for key, value in _status_fields().items() if key.rstrip("?") not in OUTPUT_KEYS
    }
    return shape(fields, "The status snapshot without its four output keys.")


def _task_list() -> JSON:
    """
    The page of C{GET /api/v1/tasks} (L{execgo.store.listing.list_page}).
    """
    return shape(
        {
            "tasks": {"type": "array", "items": ref("TaskSummary")},
            "next_cursor": {
                "type": ["string", "null"],
                "pattern": CURSOR_PATTERN,
                "description": "The cursor of the next page; null on the last page.",
            },
        },
        "One page, newest first (by created_at, ties by insertion order).",
    )


def _capabilities() -> JSON:
    namespaces = ref("Namespaces")
    cgroup = dict(
        STRING_MAP,
        description=(
            "Runtime addition: cgroup capability (memory, pids, cpu_accounting, "
            "kill) to the mechanism backing it."
        ),
    )
    flags = (
        "rlimit_cpu",
        "rlimit_memory",
        "cgroup_v2",
        "cgroup_writable",
        "memory_limit",
        "pids_limit",
        "oom_detection",
        "cpu_quota",
        "ledger",
    )
    resources = dict.fromkeys(flags, BOOL)
    return shape(
        {
            "runtime_id": STRING,
            "snapshot_version": enum(["v1"]),
            "collected_at": TIMESTAMP,
            "platform": ref("Platform"),
            "execution": shape({"command": BOOL, "script": BOOL, "process_group": BOOL}),
            "sandbox": shape(
                {"process": BOOL, "linux_sandbox": BOOL, "chroot": BOOL, "namespaces": namespaces}
            ),
            "storage": shape({"data_dir_writable": BOOL}),
            "resources": shape(
                {**resources, "capacity": ref("ResourceCapacity"), "cgroup?": cgroup}
            ),
            "stable_semantics?": STRINGS,
            "enhanced_semantics?": STRINGS,
            "privilege_drop": dict(
                BOOL, description="Tasks run without the runtime's privileges (a uid of their own)."
            ),
            "warnings?": STRINGS,
            "degraded": BOOL,
            "overrides?": STRING_MAP,
        }
    )


def _resources() -> JSON:
    capacity = ref("ResourceCapacity")
    reservation = shape(
        {
            "task_id": STRING,
            "status": enum(ALL_STATUSES),
            "reservation": ref("TaskResourceReservation"),
            "reserved_at?": TIMESTAMP,
        }
    )
    tenant = shape(
        {"tenant": STRING, "quota?": capacity, "reserved": capacity, "available?": capacity}
    )
    return shape(
        {
            "runtime_id": STRING,
            "capacity": capacity,
            "reserved": capacity,
            "available": capacity,
            "active_reservations": {"type": "array", "items": reservation},
            "accepted_waiting_tasks": UINT,
            "tenants": {"type": "array", "items": tenant},
        }
    )


def other_schemas() -> JSON:
    """
    The response schemas written out by hand, by component name.
    """
    return {
        "SubmitTaskResponse": shape(
            {"task_id": STRING, "handle_id": STRING, "status": enum(["accepted"])}
        ),
        "TaskStatusResponse": _status(),
        "TaskSummary": _summary(),
        "TaskListResponse": _task_list(),
        "EventRecord": shape(
            {
                "seq": {"type": "integer", "minimum": 0},
                "task_id": STRING,
                "event_type": dict(
                    STRING,
                    description=(
                        "One of submitted, accepted, planned, degraded, "
                        "resource_reserved, started, kill_requested, "
                        "timeout_triggered, resource_released, finished, failed, "
                        "cancelled, recovered, and pids_limit_reached."
                    ),
                ),
                "timestamp": TIMESTAMP,
                "message?": STRING,
                "data?": {"description": "Any JSON, keys sorted at every level."},
            }
        ),
        "Platform": shape(
            {"os": STRING, "arch": STRING, "containerized": BOOL, "kubernetes": BOOL}
        ),
        "RuntimeInfo": shape(
            {
                "runtime_id": STRING,
                "version": STRING,
                "started_at": TIMESTAMP,
                "snapshot_version": enum(["v1"]),
                "platform": ref("Platform"),
            }
        ),
        "RuntimeCapabilities": _capabilities(),
        "RuntimeConfig": shape(
            {
                "runtime_id": STRING,
                "listen_addr": STRING,
                "data_dir": STRING,
                "max_running_tasks": UINT,
                "max_queued_tasks": UINT,
                "termination_grace_ms": UINT,
                "result_retention_secs": UINT,
                "gc_interval_ms": UINT,
                "dispatch_poll_interval_ms": UINT,
                "cgroup_root": STRING,
                "default_capability_mode": enum(MODES),
                "cgroup_enabled": BOOL,
                "task_uid_range": {"type": ["string", "null"]},
                "task_user": {"type": ["string", "null"]},
                "sandbox_rootfs_roots": STRINGS,
                "max_output_preview_bytes": UINT,
                "request_header_timeout_ms": UINT,
                "idle_connection_timeout_ms": UINT,
                "max_connections": UINT,
                "database": enum(["sqlite", "postgresql"]),
                "advertise_url": STRING,
                "node_labels": STRING_MAP,
                "node_lease_ms": UINT,
            }
        ),
        "RuntimeResources": _resources(),
        "ClusterNode": shape(
            {
                "node_id": STRING,
                "advertise_url": STRING,
                "labels": STRING_MAP,
                "state": enum([NODE_ALIVE, NODE_LOST, NODE_LEFT]),
                "started_at": TIMESTAMP,
                "lease_expires_at": TIMESTAMP,
                "running_tasks": UINT,
                "capacity": ref("ResourceCapacity"),
            }
        ),
        "RuntimeCluster": shape(
            {"nodes": {"type": "array", "items": ref("ClusterNode")}},
            "Every node of the cluster that shares this runtime's store, by id.",
        ),
        "Health": shape({"status": enum(["ok"]), "version": STRING}),
        "Ready": shape({"status": enum(["ready"]), "version": STRING}),
        "ErrorResponse": shape(
            {"error": ref("RuntimeErrorInfo")}, "The error envelope: every error the runtime answers has this shape."
        ),
        "BatchSubmitResponse": shape(
            {
                "results": {
                    "type": "array",
                    "items": ref("BatchSubmitResult"),
                    "minItems": 1,
                    "maxItems": MAX_BATCH_TASKS,
                }
            },
            "One result per task of the request, in its order.",
        ),
        "BatchSubmitResult": shape(
            {
                "http_status": {
                    "type": "integer",
                    "minimum": 200,
                    "maximum": 599,
                    "description": "200, or the status of the error in body.",
                },
                "body": {"oneOf": [ref("SubmitTaskResponse"), ref("ErrorResponse")]},
            },
            "What POST /api/v1/tasks would have answered with this task as its whole body.",
        ),
    }

