# -*- test-case-name: tests.test_openapi -*-
"""
The OpenAPI 3.1 document of the HTTP API, served at
C{/api/v1/openapi.json}.

Whatever has a model is generated from it, so the document follows the code:

  - The request schema of C{POST /api/v1/tasks} comes from the models the
    decoder builds (L{REQUEST_MODELS}): each attrs field is a property whose
    JSON type follows its annotation, required when the field has no
    default, accepting C{null} when the annotation is C{Optional}, with the
    model's default.  Only what annotations cannot say is written here: the
    enums, the C{policy} object (folded into C{capability_mode} by the
    decoder), and the semantic rules JSON Schema states exactly and the
    validator enforces (so whatever breaks the schema is refused).
  - The response objects rendered by a model's C{to_json()}
    (L{RESPONSE_MODELS}) are generated the same way: a field is always
    emitted unless it is C{Optional} (left out when C{None}) or listed in
    L{_OMITTED_WHEN_EMPTY}.
  - Error responses come from L{execgo.core.errors}: each operation lists the
    error classes it raises, and each HTTP status documents their codes.

The other response bodies (the status snapshot, events, runtime views) are
written out here with the runtime's additions (C{resources.cgroup},
C{resource_enforcement.mechanisms}); the added routes (listing, log and
event streams) and idempotent submission take their bounds from the
modules that enforce them (L{execgo.store.listing}, L{execgo.store.idempotency}).  Response objects are closed
(C{additionalProperties: false}) so that a field the runtime starts to emit
without documenting it fails C{tests.test_openapi}, which also proves the
request schema and L{execgo.core.validation.decode_submit} agree field by field.

No Twisted here; the document is plain data.
"""

from __future__ import annotations

import collections.abc
import copy
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import attrs

from execgo import __version__
from execgo.core import bounds, errors
from execgo.core.ledger import Capacity
from execgo.core.models import (
    ALL_STATUSES,
    MODE_ADAPTIVE,
    MODE_STRICT,
    PROFILE_LINUX_SANDBOX,
    PROFILE_PROCESS,
    ControlContext,
    ErrorInfo,
    ExecutionPlan,
    ExecutionSpec,
    Namespaces,
    Reservation,
    ResourceEnforcement,
    ResourceLimits,
    SandboxPolicy,
    SubmitRequest,
    Usage,
)
from execgo.core.validation import (
    KIND_COMMAND,
    KIND_SCRIPT,
    MAX_BODY_BYTES,
    OUTPUT_LIMIT_MAX,
    TASK_ID_MAX_LENGTH,
    UINT64_MAX,
)
from execgo.store import idempotency, listing

__all__ = [
    "CURSOR_PATTERN",
    "ERROR_CODES",
    "IDEMPOTENCY_HEADER",
    "LOG_OFFSET_HEADER",
    "LOG_SIZE_HEADER",
    "MAX_WAIT_MS",
    "NDJSON_TYPE",
    "OCTET_TYPE",
    "OUTPUT_KEYS",
    "OPENAPI_VERSION",
    "PATH",
    "REQUEST_MODELS",
    "RESPONSE_MODELS",
    "document",
]

JSON = Dict[str, Any]

OPENAPI_VERSION = "3.1.0"
PATH = "/api/v1/openapi.json"
MAX_WAIT_MS = 600_000

# The added routes and idempotent submission.  The stream constants live
# in execgo.server.web.streams, which imports Twisted; tests.test_openapi checks
# these equal them.
IDEMPOTENCY_HEADER = "Idempotency-Key"
LOG_SIZE_HEADER = "X-Execgo-Log-Size"
LOG_OFFSET_HEADER = "X-Execgo-Offset"
OCTET_TYPE = "application/octet-stream"
NDJSON_TYPE = "application/x-ndjson"
# What listing.decode_cursor accepts before decoding (listing._CURSOR_TEXT).
CURSOR_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
# The status snapshot's keys a listing entry leaves out
# (wire.render_status with include_output=False).
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

# Component names of the models: the wire type names.  TaskPolicy has no
# model: the decoder folds it into SubmitRequest.capability_mode.
REQUEST_MODELS: Tuple[Tuple[str, type], ...] = (
    ("SubmitTaskRequest", SubmitRequest),
    ("ExecutionSpec", ExecutionSpec),
    ("ResourceLimits", ResourceLimits),
    ("SandboxPolicy", SandboxPolicy),
    ("NamespaceConfig", Namespaces),
    ("ControlContext", ControlContext),
)
RESPONSE_MODELS: Tuple[Tuple[str, type], ...] = (
    ("ExecutionPlan", ExecutionPlan),
    ("Sandbox", SandboxPolicy),
    ("Namespaces", Namespaces),
    ("ResourceEnforcementPlan", ResourceEnforcement),
    ("ResourceUsage", Usage),
    ("TaskResourceReservation", Reservation),
    ("ResourceCapacity", Capacity),
    ("RuntimeErrorInfo", ErrorInfo),
)

_MODES = (MODE_ADAPTIVE, MODE_STRICT)
_ENUMS: Mapping[Tuple[type, str], Sequence[str]] = {
    (ExecutionSpec, "kind"): (KIND_COMMAND, KIND_SCRIPT),
    (SandboxPolicy, "profile"): (PROFILE_PROCESS, PROFILE_LINUX_SANDBOX),
    (ExecutionPlan, "capability_mode"): _MODES,
    (ErrorInfo, "code"): ERROR_CODES,
}
# Collections that to_json() leaves out when they are empty.
_OMITTED_WHEN_EMPTY = {
    (ExecutionPlan, "fallback_reasons"),
    (ExecutionPlan, "capability_warnings"),
    (ResourceEnforcement, "mechanisms"),
}

# Semantic rules of submit (the task_id rules, no '=' in keys, non-empty
# strings, positive limits) that JSON Schema states exactly; every request
# breaking one of them is refused.
_NO_EQUALS_IN_KEYS = {"propertyNames": {"pattern": "^[^=]*$"}}
_NOT_EMPTY = {"minLength": 1}
_POSITIVE = {"minimum": 1}
# What the host accepts (execgo.core.bounds).  The runtime counts bytes of
# UTF-8 where JSON Schema counts characters, so these are never stricter
# than the runtime; the notes give the exact rules.
_NO_NUL = "^[^\\u0000]*$"
_PATH_COMPONENTS = f"^(?:[^/\\u0000]{{0,{bounds.NAME_MAX_BYTES}}}/)*[^/\\u0000]{{0,{bounds.NAME_MAX_BYTES}}}$"
_ARG_STRING: JSON = {"type": "string", "pattern": _NO_NUL, "maxLength": bounds.ARG_STRING_MAX_BYTES}
_ARG_STRINGS: JSON = {"items": _ARG_STRING}
_OUTPUT_LIMIT = {"minimum": 1, "maximum": OUTPUT_LIMIT_MAX}
_CONSTRAINTS: Mapping[Tuple[type, str], JSON] = {
    (SubmitRequest, "task_id"): {
        "minLength": 1,
        "maxLength": TASK_ID_MAX_LENGTH,
        "pattern": "^[A-Za-z0-9._-]+$",
        "not": {"enum": [".", ".."]},
    },
    (ExecutionSpec, "program"): {"pattern": _PATH_COMPONENTS, "maxLength": bounds.PATH_MAX_BYTES},
    (ExecutionSpec, "args"): _ARG_STRINGS,
    (ExecutionSpec, "interpreter"): _ARG_STRINGS,
    (ExecutionSpec, "env"): {
        "propertyNames": {"pattern": "^[^=\\u0000]*$"},
        "additionalProperties": _ARG_STRING,
    },
    (ResourceLimits, "wall_time_ms"): {"minimum": 1, "maximum": bounds.WALL_TIME_MS_MAX},
    (ResourceLimits, "cpu_time_sec"): {"minimum": 1, "maximum": bounds.CPU_TIME_SEC_MAX},
    (ResourceLimits, "memory_bytes"): {"minimum": 1, "maximum": bounds.MEMORY_BYTES_MAX},
    (ResourceLimits, "pids_max"): {"minimum": 1, "maximum": bounds.PIDS_MAX_MAX},
    (ResourceLimits, "stdout_max_bytes"): _OUTPUT_LIMIT,
    (ResourceLimits, "stderr_max_bytes"): _OUTPUT_LIMIT,
    (SandboxPolicy, "workspace_subdir"): {
        "pattern": _PATH_COMPONENTS,
        "maxLength": bounds.WORKSPACE_SUBDIR_MAX_BYTES,
    },
    (SandboxPolicy, "rootfs"): {"pattern": _PATH_COMPONENTS, "maxLength": bounds.PATH_MAX_BYTES},
    (ControlContext, "control_plane_mode"): _NOT_EMPTY,
    (ControlContext, "tenant"): _NOT_EMPTY,
    (ControlContext, "owner"): _NOT_EMPTY,
    (ControlContext, "expected_runtime_profile"): _NOT_EMPTY,
    (ControlContext, "labels"): _NO_EQUALS_IN_KEYS,
}

# The server's preview ceiling is a setting, not part of the schema.
_PREVIEW_NOTE = (
    "Bounds only the inline preview of the status. At most the server's "
    "--max-output-preview-bytes (default 16777216; GET /api/v1/runtime/config "
    "shows it as max_output_preview_bytes): a larger value is invalid_input."
)
_PATH_NOTE = (
    "A path: no NUL, at most {} bytes of UTF-8, each component at most "
    f"{bounds.NAME_MAX_BYTES} bytes."
)
_ARG_NOTE = (
    f"Each element is an argument string: no NUL, at most {bounds.ARG_STRING_MAX_BYTES} "
    "bytes of UTF-8 (the kernel's limit for one argument)."
)
# What the schema does not state (or not exactly), in words.
_NOTES: Mapping[Tuple[type, str], str] = {
    (SubmitRequest, "task_id"): (
        "Absent or null: a random UUID is generated. No surrounding white "
        "space. An existing id gets 409."
    ),
    (ExecutionSpec, "program"): (
        "kind command: required, not blank. kind script: absent, null or blank. "
        f"{_PATH_NOTE.format(bounds.PATH_MAX_BYTES)}"
    ),
    (ExecutionSpec, "args"): _ARG_NOTE,
    (ExecutionSpec, "script"): (
        "kind script: required, not blank. kind command: absent, null or blank. "
        "Without an interpreter it runs as /bin/sh -c SCRIPT, so it is an "
        f"argument string: no NUL, at most {bounds.ARG_STRING_MAX_BYTES} bytes."
    ),
    (ExecutionSpec, "interpreter"): (
        "kind script: when present, non-empty with a non-blank first element. "
        f"Ignored for kind command. {_ARG_NOTE} The first element is a path: "
        f"at most {bounds.PATH_MAX_BYTES} bytes, each component at most "
        f"{bounds.NAME_MAX_BYTES}."
    ),
    (ExecutionSpec, "env"): (
        "Keys are not blank and contain no '='. No NUL in keys or values; each "
        f"NAME=value at most {bounds.ARG_STRING_MAX_BYTES} bytes of UTF-8 (the "
        "kernel's limit for one environment string)."
    ),
    (ResourceLimits, "wall_time_ms"): (
        f"At most {bounds.WALL_TIME_MS_MAX} (about 24.8 days): the longest timer "
        "the supervisor can set."
    ),
    (ResourceLimits, "cpu_time_sec"): (
        f"At most {bounds.CPU_TIME_SEC_MAX}: RLIMIT_CPU gets this soft limit and a "
        "hard limit one second above, which must fit a signed 64-bit rlim_t "
        "below RLIM_INFINITY."
    ),
    (ResourceLimits, "memory_bytes"): (
        f"At most {bounds.MEMORY_BYTES_MAX}: the largest RLIMIT_AS the runtime "
        "can set (a memory cgroup takes it too)."
    ),
    (ResourceLimits, "pids_max"): (
        f"At most {bounds.PIDS_MAX_MAX}: the kernel's pids.max is at most "
        "4194304, and the supervisor sets one more while it starts the task."
    ),
    (ResourceLimits, "stdout_max_bytes"): _PREVIEW_NOTE,
    (ResourceLimits, "stderr_max_bytes"): _PREVIEW_NOTE,
    (SandboxPolicy, "workspace_subdir"): (
        "Relative: no leading '/', no '..' component. "
        f"{_PATH_NOTE.format(bounds.WORKSPACE_SUBDIR_MAX_BYTES)}"
    ),
    (SandboxPolicy, "rootfs"): (
        f"Required (not blank) when chroot is true. {_PATH_NOTE.format(bounds.PATH_MAX_BYTES)}"
    ),
    (SandboxPolicy, "chroot"): "true requires profile linux_sandbox and a rootfs.",
    (ControlContext, "control_plane_mode"): "Not blank when present.",
    (ControlContext, "tenant"): "Not blank when present; the tenant quota key.",
    (ControlContext, "owner"): "Not blank when present; gates kill.",
    (ControlContext, "expected_runtime_profile"): "Not blank when present.",
    (ControlContext, "labels"): "Keys are not blank and contain no '='.",
    (ResourceEnforcement, "mechanisms"): (
        "Runtime addition: limit name (cpu_time_sec, memory_bytes, pids_max) "
        "to the mechanism enforcing it (rlimit, cgroup_v1, cgroup_v2)."
    ),
}

_UINT: JSON = {"type": "integer", "minimum": 0, "maximum": UINT64_MAX}
_INT32: JSON = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_STRING: JSON = {"type": "string"}
_BOOL: JSON = {"type": "boolean"}
_STRINGS: JSON = {"type": "array", "items": _STRING}
_STRING_MAP: JSON = {"type": "object", "additionalProperties": _STRING}
_TIMESTAMP: JSON = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{3}|\.[0-9]{6}|\.[0-9]{9})?Z$",
}


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _enum(values: Sequence[str]) -> JSON:
    return {"type": "string", "enum": list(values)}


def _shape(fields: JSON, description: Optional[str] = None) -> JSON:
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


# ---------------------------------------------------------------- schemas from models


def _type_schema(hint: Any, names: Mapping[type, str], where: str) -> Tuple[JSON, bool]:
    """
    The schema of an annotation, and whether it is C{Optional}.
    """
    optional = False
    if typing.get_origin(hint) is typing.Union:
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{where}: unsupported type {hint!r}")
        hint, optional = inner[0], True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is str:
        return dict(_STRING), optional
    if hint is bool:
        return dict(_BOOL), optional
    if hint is int:
        return dict(_UINT), optional
    if origin is tuple and args == (str, Ellipsis):
        return {"type": "array", "items": dict(_STRING)}, optional
    if origin is collections.abc.Mapping and args == (str, str):
        return {"type": "object", "additionalProperties": dict(_STRING)}, optional
    if hint in names:
        return _ref(names[hint]), optional
    raise TypeError(f"{where}: unsupported type {hint!r}")


def _request_default(field: "attrs.Attribute[Any]") -> Any:
    """
    The JSON form of a field's default, or C{None} when it has none (or its
    default is "absent").
    """
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()  # type: ignore[union-attr]
    if default is attrs.NOTHING or default is None:
        return None
    if attrs.has(type(default)):
        return default.to_json()
    if isinstance(default, tuple):
        return list(default)
    if isinstance(default, collections.abc.Mapping):
        return dict(default)
    return default


def _model_schema(model: type, request: bool) -> JSON:
    """
    The object schema of C{model} as a request (open, nullable where
    C{Optional}, required without default) or as a response (closed,
    required unless C{Optional} or omitted when empty).
    """
    names = {m: n for n, m in (REQUEST_MODELS if request else RESPONSE_MODELS)}
    hints = typing.get_type_hints(model)
    properties: JSON = {}
    required: List[str] = []
    for field in attrs.fields(model):
        key = (model, field.name)
        if request and key == (SubmitRequest, "capability_mode"):
            properties["policy"] = {
                "anyOf": [_ref("TaskPolicy"), {"type": "null"}],
                "description": (
                    "Absent, null, or an object without capability_mode: the "
                    "server's default mode applies."
                ),
            }
            continue
        schema, optional = _type_schema(hints[field.name], names, f"{model.__name__}.{field.name}")
        if key in _ENUMS:
            schema["enum"] = list(_ENUMS[key])
        if request:
            schema.update(_CONSTRAINTS.get(key, {}))
            if optional and "$ref" in schema:
                schema = {"anyOf": [schema, {"type": "null"}]}
            elif optional:
                schema["type"] = [schema["type"], "null"]
                if "enum" in schema:
                    schema["enum"].append(None)
            default = _request_default(field)
            if default is not None:
                schema["default"] = default
            if field.default is attrs.NOTHING:
                required.append(field.name)
        elif not optional and key not in _OMITTED_WHEN_EMPTY:
            required.append(field.name)
        if key in _NOTES:
            schema["description"] = _NOTES[key]
        properties[field.name] = schema
    out: JSON = {"type": "object", "properties": properties}
    if not request:
        out["additionalProperties"] = False
    if required:
        out["required"] = required
    return out


def _model_schemas() -> JSON:
    """
    The component schemas generated from L{REQUEST_MODELS} and
    L{RESPONSE_MODELS}, plus C{TaskPolicy}.
    """
    schemas = {name: _model_schema(model, True) for name, model in REQUEST_MODELS}
    schemas["TaskPolicy"] = {
        "type": "object",
        "properties": {"capability_mode": _enum(_MODES)},
    }
    request = schemas["SubmitTaskRequest"]
    request["description"] = (
        f"At most {MAX_BODY_BYTES} bytes of UTF-8 JSON (larger bodies get 413), "
        "parsed as JSON whatever the Content-Type says. Unknown keys are "
        "ignored at every level."
    )
    request["example"] = {
        "execution": {"kind": "command", "program": "echo", "args": ["hello"]},
        "limits": {"wall_time_ms": 10000},
        "metadata": {"purpose": "example"},
    }
    schemas.update({name: _model_schema(model, False) for name, model in RESPONSE_MODELS})
    schemas["ExecutionPlan"]["properties"]["run_as"] = {
        "anyOf": [_shape({"uid": _UINT, "gid": _UINT}), {"type": "null"}],
        "description": (
            "In a task's status: the uid and gid its processes run as, null until "
            "it is launched (without root, the runtime's own)."
        ),
    }
    schemas["RuntimeErrorInfo"]["properties"]["details"] = {
        "description": "Any JSON; currently never emitted."
    }
    return schemas


# ---------------------------------------------------------------- other responses


def _status_fields() -> JSON:
    """
    The keys of the status snapshot, in wire order, for L{_shape}.
    """
    return {
        "task_id": _STRING,
        "handle_id": _STRING,
        "status": _enum(ALL_STATUSES),
        "created_at": _TIMESTAMP,
        "updated_at": _TIMESTAMP,
        "started_at?": _TIMESTAMP,
        "finished_at?": _TIMESTAMP,
        "duration_ms?": _UINT,
        "shim_pid?": _UINT,
        "pid?": _UINT,
        "pgid?": _INT32,
        "exit_code?": _INT32,
        "exit_signal?": _INT32,
        "stdout": _STRING,
        "stderr": _STRING,
        "stdout_truncated": _BOOL,
        "stderr_truncated": _BOOL,
        "error?": _ref("RuntimeErrorInfo"),
        "usage?": _ref("ResourceUsage"),
        "execution_plan": _ref("ExecutionPlan"),
        "reservation?": _ref("TaskResourceReservation"),
        "artifacts": _shape(
            {
                "task_dir": _STRING,
                "request_path": _STRING,
                "result_path": _STRING,
                "stdout_path": _STRING,
                "stderr_path": _STRING,
                "script_path?": _STRING,
            }
        ),
        "metadata?": _STRING_MAP,
    }


def _status() -> JSON:
    return _shape(_status_fields())


def _summary() -> JSON:
    """
    A listing entry: the status snapshot without L{OUTPUT_KEYS}.
    """
    fields = {
        key: value for key, value in _status_fields().items() if key.rstrip("?") not in OUTPUT_KEYS
    }
    return _shape(fields, "The status snapshot without its four output keys.")


def _task_list() -> JSON:
    """
    The page of C{GET /api/v1/tasks} (L{listing.list_page}).
    """
    return _shape(
        {
            "tasks": {"type": "array", "items": _ref("TaskSummary")},
            "next_cursor": {
                "type": ["string", "null"],
                "pattern": CURSOR_PATTERN,
                "description": "The cursor of the next page; null on the last page.",
            },
        },
        "One page, newest first (by created_at, ties by insertion order).",
    )


def _capabilities() -> JSON:
    namespaces = _ref("Namespaces")
    cgroup = dict(
        _STRING_MAP,
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
    resources = dict.fromkeys(flags, _BOOL)
    return _shape(
        {
            "runtime_id": _STRING,
            "snapshot_version": _enum(["v1"]),
            "collected_at": _TIMESTAMP,
            "platform": _ref("Platform"),
            "execution": _shape({"command": _BOOL, "script": _BOOL, "process_group": _BOOL}),
            "sandbox": _shape(
                {"process": _BOOL, "linux_sandbox": _BOOL, "chroot": _BOOL, "namespaces": namespaces}
            ),
            "storage": _shape({"data_dir_writable": _BOOL}),
            "resources": _shape(
                {**resources, "capacity": _ref("ResourceCapacity"), "cgroup?": cgroup}
            ),
            "stable_semantics?": _STRINGS,
            "enhanced_semantics?": _STRINGS,
            "privilege_drop": dict(
                _BOOL, description="Tasks run without the runtime's privileges (a uid of their own)."
            ),
            "warnings?": _STRINGS,
            "degraded": _BOOL,
            "overrides?": _STRING_MAP,
        }
    )


def _resources() -> JSON:
    capacity = _ref("ResourceCapacity")
    reservation = _shape(
        {
            "task_id": _STRING,
            "status": _enum(ALL_STATUSES),
            "reservation": _ref("TaskResourceReservation"),
            "reserved_at?": _TIMESTAMP,
        }
    )
    tenant = _shape(
        {"tenant": _STRING, "quota?": capacity, "reserved": capacity, "available?": capacity}
    )
    return _shape(
        {
            "runtime_id": _STRING,
            "capacity": capacity,
            "reserved": capacity,
            "available": capacity,
            "active_reservations": {"type": "array", "items": reservation},
            "accepted_waiting_tasks": _UINT,
            "tenants": {"type": "array", "items": tenant},
        }
    )


def _other_schemas() -> JSON:
    """
    The response schemas written out by hand.
    """
    return {
        "SubmitTaskResponse": _shape(
            {"task_id": _STRING, "handle_id": _STRING, "status": _enum(["accepted"])}
        ),
        "TaskStatusResponse": _status(),
        "TaskSummary": _summary(),
        "TaskListResponse": _task_list(),
        "EventRecord": _shape(
            {
                "seq": {"type": "integer", "minimum": 0},
                "task_id": _STRING,
                "event_type": dict(
                    _STRING,
                    description=(
                        "One of submitted, accepted, planned, degraded, "
                        "resource_reserved, started, kill_requested, "
                        "timeout_triggered, resource_released, finished, failed, "
                        "cancelled, recovered, and pids_limit_reached."
                    ),
                ),
                "timestamp": _TIMESTAMP,
                "message?": _STRING,
                "data?": {"description": "Any JSON, keys sorted at every level."},
            }
        ),
        "Platform": _shape(
            {"os": _STRING, "arch": _STRING, "containerized": _BOOL, "kubernetes": _BOOL}
        ),
        "RuntimeInfo": _shape(
            {
                "runtime_id": _STRING,
                "version": _STRING,
                "started_at": _TIMESTAMP,
                "snapshot_version": _enum(["v1"]),
                "platform": _ref("Platform"),
            }
        ),
        "RuntimeCapabilities": _capabilities(),
        "RuntimeConfig": _shape(
            {
                "runtime_id": _STRING,
                "listen_addr": _STRING,
                "data_dir": _STRING,
                "max_running_tasks": _UINT,
                "max_queued_tasks": _UINT,
                "termination_grace_ms": _UINT,
                "result_retention_secs": _UINT,
                "gc_interval_ms": _UINT,
                "dispatch_poll_interval_ms": _UINT,
                "cgroup_root": _STRING,
                "default_capability_mode": _enum(_MODES),
                "cgroup_enabled": _BOOL,
                "task_uid_range": {"type": ["string", "null"]},
                "task_user": {"type": ["string", "null"]},
                "sandbox_rootfs_roots": _STRINGS,
                "max_output_preview_bytes": _UINT,
                "request_header_timeout_ms": _UINT,
                "idle_connection_timeout_ms": _UINT,
                "max_connections": _UINT,
            }
        ),
        "RuntimeResources": _resources(),
        "Health": _shape({"status": _enum(["ok"]), "version": _STRING}),
        "Ready": _shape({"status": _enum(["ready"]), "version": _STRING}),
        "ErrorResponse": _shape(
            {"error": _ref("RuntimeErrorInfo")}, "The error envelope: every error the runtime answers has this shape."
        ),
    }


# ---------------------------------------------------------------- errors

_STORAGE: Tuple[Type[errors.ExecgoError], ...] = (
    errors.Internal,
    errors.Unavailable,
    errors.InsufficientStorage,
)
# What each operation raises, besides routing errors (404 for an unknown
# path, 405 for a wrong method), which belong to no operation.
_RAISES: Mapping[str, Tuple[Type[errors.ExecgoError], ...]] = {
    "submitTask": (
        errors.InvalidInput,
        errors.PayloadTooLarge,
        errors.UnsupportedCapability,
        errors.InsufficientResources,
        errors.QueueFull,
        errors.Conflict,
        idempotency.KeyReused,
        *_STORAGE,
    ),
    "listTasks": (errors.InvalidInput, *_STORAGE),
    "getTask": (errors.InvalidInput, errors.NotFound, *_STORAGE),
    "killTask": (errors.NotFound, errors.PermissionDenied, *_STORAGE),
    "getTaskStdout": (errors.InvalidInput, errors.NotFound, *_STORAGE),
    "getTaskStderr": (errors.InvalidInput, errors.NotFound, *_STORAGE),
    "getTaskEvents": (errors.InvalidInput, errors.NotFound, *_STORAGE),
    "getRuntimeResources": (errors.PermissionDenied, *_STORAGE),
    "metrics": (errors.PermissionDenied,),
    "readyz": (errors.Internal, errors.Unavailable),
}
# Operations open to everyone even when the server requires bearer tokens
# (--auth-token-file); every other one may answer 401.
_PUBLIC = ("healthz", "readyz", "getOpenAPI")
_BEARER = "bearerToken"
# What tenancy means for each operation when bearer tokens are required.
_PER_TASK = (
    "With bearer tokens, a task of another tenant answers 404 not_found "
    "exactly like an unknown id (a token with role=admin sees every tenant)."
)
_ADMIN_ONLY = (
    "With bearer tokens, only a token with role=admin may read this (it "
    "spans tenants); any other token gets 403 permission_denied."
)
_TENANCY: Mapping[str, str] = {
    "getTask": _PER_TASK,
    "killTask": _PER_TASK + " An admin's kill skips the owner check.",
    "getTaskStdout": _PER_TASK,
    "getTaskStderr": _PER_TASK,
    "getTaskEvents": _PER_TASK,
    "listTasks": (
        "With bearer tokens, only the tasks of the token's tenant (tenant= "
        "naming another tenant gives an empty page); a token with "
        "role=admin lists every tenant."
    ),
    "submitTask": (
        "With bearer tokens, Idempotency-Key values are per tenant: the "
        "same key sent by two tenants makes two tasks."
    ),
    "getRuntimeResources": _ADMIN_ONLY,
    "metrics": _ADMIN_ONLY,
}


def _error_classes() -> List[Type[errors.ExecgoError]]:
    """
    L{errors.ExecgoError} and all its subclasses.
    """
    found = [errors.ExecgoError]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


def _error_responses(raised: Sequence[Type[errors.ExecgoError]]) -> JSON:
    """
    One envelope response per HTTP status C{raised} can produce, its C{code}
    narrowed to the codes of those classes (and their subclasses with the
    same status).
    """
    out: JSON = {}
    for status in sorted({cls.http_status for cls in raised}):
        with_status = [cls for cls in raised if cls.http_status == status]
        codes = {
            cls.code
            for cls in _error_classes()
            if cls.http_status == status and issubclass(cls, tuple(with_status))
        }
        narrowed = {"properties": {"code": {"enum": [c for c in ERROR_CODES if c in codes]}}}
        schema = {"allOf": [_ref("ErrorResponse"), {"properties": {"error": narrowed}}]}
        response = _json(", ".join(sorted(cls.__name__ for cls in with_status)), schema)
        if status == errors.Unauthorized.http_status:
            response["headers"] = {"WWW-Authenticate": {"required": True, "schema": _STRING}}
        out[str(status)] = response
    return out


# ---------------------------------------------------------------- paths


def _json(description: str, schema: JSON) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str) -> JSON:
    return {"description": description, "content": {"text/plain": {"schema": _STRING}}}


def _operation(
    operation_id: str,
    summary: str,
    ok: JSON,
    parameters: Sequence[JSON] = (),
    more_responses: Optional[JSON] = None,
    **extra: Any,
) -> JSON:
    """
    One operation: its 200 response C{ok}, the error responses of what it
    raises (L{_RAISES}, and L{errors.Unauthorized} unless it is public), and
    C{more_responses} (answers that are not envelopes).
    """
    public = operation_id in _PUBLIC
    raised = _RAISES.get(operation_id, ())
    if not public:
        raised = (*raised, errors.Unauthorized)
    responses: JSON = {"200": ok, **_error_responses(raised), **(more_responses or {})}
    operation: JSON = {"operationId": operation_id, "summary": summary}
    if operation_id in _TENANCY:
        operation["description"] = _TENANCY[operation_id]
    if parameters:
        operation["parameters"] = list(parameters)
    operation.update(extra)
    # No token ({}), or a bearer token when the server requires one.
    operation["security"] = [] if public else [{}, {_BEARER: []}]
    operation["responses"] = {key: responses[key] for key in sorted(responses)}
    return operation


def _uint_query(name: str, description: str) -> JSON:
    """
    An optional non-negative integer query parameter, 0 when absent, as
    C{execgo.server.web.api} reads it: more than 20 digits is refused, a value past
    2**63-1 capped (so no C{maximum}: a larger value is not refused).
    """
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "default": 0},
    }


def _list_parameters() -> List[JSON]:
    """
    The query of C{GET /api/v1/tasks} (L{listing.parse_query}): each
    parameter at most once but C{label}, none empty.
    """

    def query(name: str, description: str, schema: JSON) -> JSON:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema,
        }

    return [
        query("status", "Only tasks in this status.", _enum(ALL_STATUSES)),
        query("tenant", "Only tasks of this tenant (exact match).", dict(_STRING, minLength=1)),
        query("owner", "Only tasks of this owner (exact match).", dict(_STRING, minLength=1)),
        dict(
            query(
                "label",
                "Only tasks with this control_context label, as key:value split at "
                "the first ':'; repeat it for several (all must match).",
                {
                    "type": "array",
                    "maxItems": listing.MAX_LABELS,
                    "items": {"type": "string", "pattern": "^[^:]+:"},
                },
            ),
            style="form",
            explode=True,
        ),
        query(
            "limit",
            "The page size.",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": listing.MAX_LIMIT,
                "default": listing.DEFAULT_LIMIT,
            },
        ),
        query(
            "cursor",
            "next_cursor of the previous page; absent for the first page.",
            dict(_STRING, pattern=CURSOR_PATTERN),
        ),
    ]


def _log_operation(name: str, task_id: JSON, follow: JSON) -> JSON:
    """
    C{GET /api/v1/tasks/{id}/stdout} or C{/stderr}.
    """
    size = {
        "required": True,
        "description": "The size of the log when the response started.",
        "schema": {"type": "integer", "minimum": 0},
    }
    offset = {
        "required": True,
        "description": "The offset served from.",
        "schema": {"type": "integer", "minimum": 0},
    }
    ok = {
        "description": (
            "The bytes from offset to the end at that moment (offset past the "
            "end: none); with follow=true also the bytes written afterwards "
            "(chunked), until the task is terminal and all is sent. A client "
            "reconnecting with offset = the bytes it received misses nothing "
            "and sees nothing twice. HEAD answers the headers alone."
        ),
        "headers": {LOG_SIZE_HEADER: size, LOG_OFFSET_HEADER: offset},
        "content": {OCTET_TYPE: {}},
    }
    return _operation(
        f"getTask{name.capitalize()}",
        f"The task's {name} log, from an offset; with follow=true, streamed",
        ok,
        [task_id, _uint_query("offset", "The byte offset to start from."), follow],
    )


def _events_response(events: JSON) -> JSON:
    """
    The 200 of C{GET /api/v1/tasks/{id}/events}: the array C{events}, or
    NDJSON when following.
    """
    return {
        "description": (
            "The events as a JSON array; with follow=true, as NDJSON: one "
            "EventRecord per line, new ones as they are appended, until the "
            "terminal event (finished, failed or cancelled) has been sent."
        ),
        "content": {
            "application/json": {"schema": events},
            NDJSON_TYPE: {
                "schema": _STRING,
                # What OpenAPI 3.2 calls itemSchema: the schema of each line.
                "x-item-schema": _ref("EventRecord"),
            },
        },
    }


def _paths() -> JSON:
    task_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "The task id, percent-decoded and used verbatim.",
        "schema": _STRING,
    }
    wait_ms = {
        "name": "wait_ms",
        "in": "query",
        "required": False,
        "description": (
            "Answer as soon as the task is terminal, or after this many "
            f"milliseconds (capped at {MAX_WAIT_MS}); 0 or absent: at once."
        ),
        "schema": {"type": "integer", "minimum": 0},
    }
    owner = {
        "name": "x-execgo-owner",
        "in": "header",
        "required": False,
        "description": "Must equal the task's control_context.owner when it has one.",
        "schema": _STRING,
    }
    submit = {"required": True, "content": {"application/json": {"schema": _ref("SubmitTaskRequest")}}}
    key = {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": False,
        "description": (
            "Makes the submission retryable: the same key with the same "
            "request (after normalisation) answers 200 with the first "
            "submission's task and creates nothing; with another request, "
            "409 conflict. A key lives as long as its task."
        ),
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": idempotency.MAX_KEY_LENGTH,
            "pattern": "^[\\x21-\\x7E]+$",
        },
    }
    status = _json("The task status snapshot", _ref("TaskStatusResponse"))
    events = {"type": "array", "items": _ref("EventRecord")}
    follow = {
        "name": "follow",
        "in": "query",
        "required": False,
        "description": "true: keep streaming until the task is terminal and all is sent.",
        "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
    }
    return {
        "/api/v1/tasks": {
            "get": _operation(
                "listTasks",
                "List tasks, newest first, filtered and paged",
                _json("One page", _ref("TaskListResponse")),
                _list_parameters(),
            ),
            "post": _operation(
                "submitTask",
                "Submit a task",
                _json("Persisted and queued, or an idempotent retry", _ref("SubmitTaskResponse")),
                [key],
                requestBody=submit,
            ),
        },
        "/api/v1/tasks/{id}": {
            "get": _operation(
                "getTask", "Status snapshot; long-poll with wait_ms", status, [task_id, wait_ms]
            )
        },
        "/api/v1/tasks/{id}/kill": {
            "post": _operation(
                "killTask", "Request cancellation (the body is ignored)", status, [task_id, owner]
            )
        },
        "/api/v1/tasks/{id}/stdout": {"get": _log_operation("stdout", task_id, follow)},
        "/api/v1/tasks/{id}/stderr": {"get": _log_operation("stderr", task_id, follow)},
        "/api/v1/tasks/{id}/events": {
            "get": _operation(
                "getTaskEvents",
                "The event log, by seq; with follow=true, streamed as NDJSON",
                _events_response(events),
                [task_id, _uint_query("after_seq", "Only the events with a greater seq."), follow],
            )
        },
        "/api/v1/runtime/info": {
            "get": _operation(
                "getRuntimeInfo", "Identity and platform", _json("Identity", _ref("RuntimeInfo"))
            )
        },
        "/api/v1/runtime/capabilities": {
            "get": _operation(
                "getRuntimeCapabilities",
                "The capability snapshot taken at start-up",
                _json("Capabilities", _ref("RuntimeCapabilities")),
            )
        },
        "/api/v1/runtime/config": {
            "get": _operation(
                "getRuntimeConfig",
                "The non-secret effective configuration",
                _json("Configuration", _ref("RuntimeConfig")),
            )
        },
        "/api/v1/runtime/resources": {
            "get": _operation(
                "getRuntimeResources",
                "The resource ledger",
                _json("Ledger", _ref("RuntimeResources")),
            )
        },
        PATH: {
            "get": _operation(
                "getOpenAPI",
                "This document",
                _json("OpenAPI 3.1", {"type": "object", "required": ["openapi", "info", "paths"]}),
            )
        },
        "/healthz": {"get": _operation("healthz", "Liveness", _json("Alive", _ref("Health")))},
        "/readyz": {
            "get": _operation(
                "readyz",
                "Readiness: the supervisor answers and storage (data directory, store) is usable",
                _json("Ready", _ref("Ready")),
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus text exposition",
                _text("Metrics (text/plain; version=0.0.4)"),
                more_responses={"500": _text("The store failed: 'metrics_error <message>'")},
            )
        },
    }


def document(version: str = __version__) -> JSON:
    """
    The OpenAPI 3.1 document of the API, as a JSON-ready C{dict} (a new one
    on every call).

    @param version: the version to report in C{info.version}.
    """
    schemas = _model_schemas()
    schemas.update(_other_schemas())
    # Deep-copied: the parts shared between schemas (and with this module)
    # must not be changed through one document.
    return copy.deepcopy({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "execgo runtime API",
            "version": version,
            "description": (
                "The HTTP API of the execgo task-execution runtime. Every error "
                "produced by the runtime uses the envelope "
                '{"error": {"code": ..., "message": ...}}; an unknown path gets '
                "404 not_found, a wrong method 405 invalid_input, and a path "
                "that is not valid UTF-8 once percent-decoded 400 invalid_input. "
                "The listener closes a connection whose request line and headers "
                "take longer than --request-header-timeout-ms (default 10000) and "
                "one idle, with no request in flight, for --idle-connection-timeout-ms "
                "(default 60000; long-polls and follow streams are not idle); past "
                "--max-connections (default: three quarters of the descriptor limit) "
                "it closes the longest-idle connection, or answers 503 and closes."
            ),
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                _BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "Required only when the server runs with "
                        "--auth-token-file; the token's tenant and owner then "
                        "override the request's control_context, and the "
                        "token sees only its tenant's tasks (others answer "
                        "404 like unknown ids) unless it has role=admin, "
                        "which alone reads /api/v1/runtime/resources and "
                        "/metrics (others: 403)."
                    ),
                }
            },
        },
    })
