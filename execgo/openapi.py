# -*- test-case-name: tests.test_openapi -*-
"""
The OpenAPI 3.1 document of the HTTP API, served at
C{/api/v1/openapi.json}.

The request schema of C{POST /api/v1/tasks} is generated from the models the
decoder builds (L{execgo.models}): each attrs field of L{SubmitRequest},
L{ExecutionSpec}, L{ResourceLimits}, L{SandboxPolicy}, L{Namespaces} and
L{ControlContext} becomes a property whose JSON type follows the field's
annotation, which is required when the field has no default, which accepts
C{null} when the annotation is C{Optional}, and whose default is the
model's.  Only what the annotations cannot say is written here: the enums,
the rename of C{capability_mode} to the C{policy} object, and the few
semantic rules that are expressible in JSON Schema and that the validator
enforces exactly (so a request that breaks the schema is always rejected).
C{tests.test_openapi} probes L{execgo.validation.decode_submit} to prove the
two agree field by field.

Error responses are generated from L{execgo.errors}: each endpoint lists the
error classes it can raise, and each HTTP status documents the codes of
those classes.  Response bodies are described by hand from C{api.md}, with
the runtime's additions (C{resources.cgroup} in the capabilities,
C{resource_enforcement.mechanisms} in the plan); they are closed
(C{additionalProperties: false}) so that a field the runtime starts to emit
without documenting it fails the schemathesis run.

This module imports no Twisted; the document is plain data.
"""

from __future__ import annotations

import collections.abc
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

import attrs

from execgo import __version__, errors
from execgo.models import (
    ALL_STATUSES,
    MODE_ADAPTIVE,
    MODE_STRICT,
    NAMESPACE_NAMES,
    PROFILE_LINUX_SANDBOX,
    PROFILE_PROCESS,
    ControlContext,
    ExecutionSpec,
    Namespaces,
    ResourceLimits,
    SandboxPolicy,
    SubmitRequest,
)
from execgo.validation import (
    KIND_COMMAND,
    KIND_SCRIPT,
    MAX_BODY_BYTES,
    OUTPUT_LIMIT_MAX,
    TASK_ID_MAX_LENGTH,
    UINT64_MAX,
)

__all__ = [
    "ERROR_CODES",
    "OPENAPI_VERSION",
    "PATH",
    "REQUEST_MODELS",
    "document",
    "request_schemas",
]

JSON = Dict[str, Any]

OPENAPI_VERSION = "3.1.0"
PATH = "/api/v1/openapi.json"

# api.md 2.2, in canonical order.
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

MAX_WAIT_MS = 600_000
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# The request models, by the schema name api.md gives them.  TaskPolicy has
# no model: the decoder folds it into SubmitRequest.capability_mode.
REQUEST_MODELS: Tuple[Tuple[str, type], ...] = (
    ("SubmitTaskRequest", SubmitRequest),
    ("ExecutionSpec", ExecutionSpec),
    ("ResourceLimits", ResourceLimits),
    ("SandboxPolicy", SandboxPolicy),
    ("NamespaceConfig", Namespaces),
    ("ControlContext", ControlContext),
)
_NAMES = {model: name for name, model in REQUEST_MODELS}

_KINDS = (KIND_COMMAND, KIND_SCRIPT)
_PROFILES = (PROFILE_PROCESS, PROFILE_LINUX_SANDBOX)
_MODES = (MODE_ADAPTIVE, MODE_STRICT)

_ENUMS: Mapping[Tuple[type, str], Tuple[str, ...]] = {
    (ExecutionSpec, "kind"): _KINDS,
    (SandboxPolicy, "profile"): _PROFILES,
}

# Semantic rules (api.md 3.2, 3.5, decisions.md items 3 and 4) that JSON
# Schema states exactly; every request breaking one of them is rejected.
_NO_EQUALS_KEYS = {"propertyNames": {"pattern": "^[^=]*$"}}
_NOT_EMPTY = {"minLength": 1}
_POSITIVE = {"minimum": 1}
_CONSTRAINTS: Mapping[Tuple[type, str], JSON] = {
    (SubmitRequest, "task_id"): {
        "minLength": 1,
        "maxLength": TASK_ID_MAX_LENGTH,
        "pattern": "^[A-Za-z0-9._-]+$",
        "not": {"enum": [".", ".."]},
    },
    (ExecutionSpec, "env"): _NO_EQUALS_KEYS,
    (ResourceLimits, "wall_time_ms"): _POSITIVE,
    (ResourceLimits, "cpu_time_sec"): _POSITIVE,
    (ResourceLimits, "memory_bytes"): _POSITIVE,
    (ResourceLimits, "pids_max"): _POSITIVE,
    (ResourceLimits, "stdout_max_bytes"): {"minimum": 1, "maximum": OUTPUT_LIMIT_MAX},
    (ResourceLimits, "stderr_max_bytes"): {"minimum": 1, "maximum": OUTPUT_LIMIT_MAX},
    (ControlContext, "control_plane_mode"): _NOT_EMPTY,
    (ControlContext, "tenant"): _NOT_EMPTY,
    (ControlContext, "owner"): _NOT_EMPTY,
    (ControlContext, "expected_runtime_profile"): _NOT_EMPTY,
    (ControlContext, "labels"): _NO_EQUALS_KEYS,
}

# The rules JSON Schema does not state (or not exactly), in words.
_NOTES: Mapping[Tuple[type, str], str] = {
    (SubmitRequest, "task_id"): (
        "Absent or null: a random UUID is generated. No surrounding white "
        "space. An existing id gets 409."
    ),
    (ExecutionSpec, "program"): (
        "kind command: required, not blank. kind script: absent, null or blank."
    ),
    (ExecutionSpec, "script"): (
        "kind script: required, not blank. kind command: absent, null or blank."
    ),
    (ExecutionSpec, "interpreter"): (
        "kind script: when present, non-empty with a non-blank first element. "
        "Ignored for kind command."
    ),
    (ExecutionSpec, "env"): "Keys are not blank and contain no '='.",
    (ResourceLimits, "stdout_max_bytes"): "Bounds only the inline preview of the status.",
    (ResourceLimits, "stderr_max_bytes"): "Bounds only the inline preview of the status.",
    (SandboxPolicy, "workspace_subdir"): "Relative: no leading '/', no '..' component.",
    (SandboxPolicy, "rootfs"): "Required (not blank) when chroot is true.",
    (SandboxPolicy, "chroot"): "true requires profile linux_sandbox and a rootfs.",
    (ControlContext, "control_plane_mode"): "Not blank when present.",
    (ControlContext, "tenant"): "Not blank when present; the tenant quota key.",
    (ControlContext, "owner"): "Not blank when present; gates kill.",
    (ControlContext, "expected_runtime_profile"): "Not blank when present.",
    (ControlContext, "labels"): "Keys are not blank and contain no '='.",
}

_UINT: JSON = {"type": "integer", "minimum": 0, "maximum": UINT64_MAX}
_INT32: JSON = {"type": "integer", "minimum": INT32_MIN, "maximum": INT32_MAX}
_STRING: JSON = {"type": "string"}
_BOOL: JSON = {"type": "boolean"}
_STRINGS: JSON = {"type": "array", "items": {"type": "string"}}
_STRING_MAP: JSON = {"type": "object", "additionalProperties": {"type": "string"}}
_TIMESTAMP: JSON = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{3}|\.[0-9]{6}|\.[0-9]{9})?Z$",
}


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


# ---------------------------------------------------------------- requests


def _field_schema(model: type, field: "attrs.Attribute[Any]", hint: Any) -> JSON:
    """
    The schema of one request field, from its annotation, default and the
    tables above.
    """
    nullable = False
    if typing.get_origin(hint) is typing.Union:
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{model.__name__}.{field.name}: unsupported type {hint!r}")
        hint, nullable = inner[0], True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    schema: JSON
    if hint is str:
        schema = dict(_STRING)
    elif hint is bool:
        schema = dict(_BOOL)
    elif hint is int:
        schema = dict(_UINT)
    elif origin is tuple and args == (str, Ellipsis):
        schema = {"type": "array", "items": dict(_STRING)}
    elif origin is collections.abc.Mapping and args == (str, str):
        schema = {"type": "object", "additionalProperties": dict(_STRING)}
    elif hint in _NAMES:
        schema = _ref(_NAMES[hint])
    else:
        raise TypeError(f"{model.__name__}.{field.name}: unsupported type {hint!r}")
    choices = _ENUMS.get((model, field.name))
    if choices is not None:
        schema["enum"] = list(choices)
    schema.update(_CONSTRAINTS.get((model, field.name), {}))
    if nullable:
        if "$ref" in schema:
            schema = {"anyOf": [schema, {"type": "null"}]}
        else:
            schema["type"] = [schema["type"], "null"]
            if "enum" in schema:
                schema["enum"].append(None)
    default = _default(field)
    if default is not None:
        schema["default"] = default
    note = _NOTES.get((model, field.name))
    if note is not None:
        schema["description"] = note
    return schema


def _default(field: "attrs.Attribute[Any]") -> Any:
    """
    The JSON form of a field's default, or C{None} when it has none (or
    its default is "absent").
    """
    default = field.default
    if default is attrs.NOTHING:
        return None
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()  # type: ignore[union-attr]
    if attrs.has(type(default)):
        return default.to_json()
    if isinstance(default, tuple):
        return list(default)
    if isinstance(default, collections.abc.Mapping):
        return dict(default)
    return default


def _model_schema(name: str, model: type) -> JSON:
    """
    The object schema of one request model.
    """
    hints = typing.get_type_hints(model)
    properties: JSON = {}
    required: List[str] = []
    for field in attrs.fields(model):
        if model is SubmitRequest and field.name == "capability_mode":
            properties["policy"] = {
                "anyOf": [_ref("TaskPolicy"), {"type": "null"}],
                "description": (
                    "Absent, null, or an object without capability_mode: the "
                    "server's default mode applies."
                ),
            }
            continue
        properties[field.name] = _field_schema(model, field, hints[field.name])
        if field.default is attrs.NOTHING:
            required.append(field.name)
    schema: JSON = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def request_schemas() -> JSON:
    """
    The component schemas of the submit request, C{SubmitTaskRequest} and
    everything it references.  Unknown keys are allowed (and ignored by the
    runtime) at every level.
    """
    schemas = {name: _model_schema(name, model) for name, model in REQUEST_MODELS}
    schemas["TaskPolicy"] = {
        "type": "object",
        "properties": {"capability_mode": {"type": "string", "enum": list(_MODES)}},
    }
    schemas["SubmitTaskRequest"]["description"] = (
        f"At most {MAX_BODY_BYTES} bytes of UTF-8 JSON (larger bodies get 413). "
        "The body is parsed as JSON whatever its Content-Type says."
    )
    schemas["SubmitTaskRequest"]["example"] = {
        "execution": {"kind": "command", "program": "echo", "args": ["hello"]},
        "limits": {"wall_time_ms": 10000},
        "metadata": {"purpose": "example"},
    }
    return schemas


# ---------------------------------------------------------------- responses


def _closed(
    properties: JSON, required: Iterable[str] = (), description: Optional[str] = None
) -> JSON:
    """
    An object schema with exactly these properties, the listed ones required.
    """
    schema: JSON = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    required = list(required)
    if required:
        schema["required"] = required
    if description is not None:
        schema["description"] = description
    return schema


def _all_required(properties: JSON, description: Optional[str] = None) -> JSON:
    return _closed(properties, list(properties), description)


def _capacity() -> JSON:
    return _closed(
        {"task_slots": _UINT, "memory_bytes": _UINT, "pids": _UINT}, ["task_slots"]
    )


def _sandbox() -> JSON:
    return _closed(
        {
            "profile": {"type": "string", "enum": list(_PROFILES)},
            "workspace_subdir": _STRING,
            "rootfs": _STRING,
            "chroot": _BOOL,
            "namespaces": _all_required({name: _BOOL for name in NAMESPACE_NAMES}),
        },
        ["profile", "chroot"],
        "A sandbox as emitted: the request's after defaults, or the effective one.",
    )


def _enforcement() -> JSON:
    return _closed(
        {
            "wall_time_ms": _UINT,
            "cpu_time_sec": _UINT,
            "cpu_time_enforced": _BOOL,
            "memory_bytes": _UINT,
            "memory_enforced": _BOOL,
            "pids_max": _UINT,
            "pids_enforced": _BOOL,
            "cgroup_enforced": _BOOL,
            "oom_detection": _BOOL,
            "mechanisms": dict(
                _STRING_MAP,
                description=(
                    "Runtime addition: limit name (cpu_time_sec, memory_bytes, "
                    "pids_max) to the mechanism enforcing it (rlimit, "
                    "cgroup_v1, cgroup_v2); omitted when empty."
                ),
            ),
        },
        [
            "wall_time_ms",
            "cpu_time_enforced",
            "memory_enforced",
            "pids_enforced",
            "cgroup_enforced",
            "oom_detection",
        ],
    )


def _plan() -> JSON:
    return _closed(
        {
            "capability_mode": {"type": "string", "enum": list(_MODES)},
            "requested_sandbox": _ref("Sandbox"),
            "effective_sandbox": _ref("Sandbox"),
            "resource_enforcement": _ref("ResourceEnforcementPlan"),
            "degraded": _BOOL,
            "fallback_reasons": _STRINGS,
            "capability_warnings": _STRINGS,
        },
        [
            "capability_mode",
            "requested_sandbox",
            "effective_sandbox",
            "resource_enforcement",
            "degraded",
        ],
    )


def _usage() -> JSON:
    return _closed(
        {
            "duration_ms": _UINT,
            "user_cpu_ms": _UINT,
            "system_cpu_ms": _UINT,
            "max_rss_bytes": _UINT,
            "memory_peak_bytes": _UINT,
        },
        ["duration_ms"],
    )


def _error_info(codes: Sequence[str] = ERROR_CODES) -> JSON:
    return _closed(
        {
            "code": {"type": "string", "enum": list(codes)},
            "message": _STRING,
            "details": {"description": "Any JSON; currently never emitted."},
        },
        ["code", "message"],
    )


def _status() -> JSON:
    return _closed(
        {
            "task_id": _STRING,
            "handle_id": _STRING,
            "status": {"type": "string", "enum": list(ALL_STATUSES)},
            "created_at": _TIMESTAMP,
            "updated_at": _TIMESTAMP,
            "started_at": _TIMESTAMP,
            "finished_at": _TIMESTAMP,
            "duration_ms": _UINT,
            "shim_pid": _UINT,
            "pid": _UINT,
            "pgid": _INT32,
            "exit_code": _INT32,
            "exit_signal": _INT32,
            "stdout": _STRING,
            "stderr": _STRING,
            "stdout_truncated": _BOOL,
            "stderr_truncated": _BOOL,
            "error": _ref("RuntimeErrorInfo"),
            "usage": _ref("ResourceUsage"),
            "execution_plan": _ref("ExecutionPlan"),
            "reservation": _ref("TaskResourceReservation"),
            "artifacts": _closed(
                {
                    "task_dir": _STRING,
                    "request_path": _STRING,
                    "result_path": _STRING,
                    "stdout_path": _STRING,
                    "stderr_path": _STRING,
                    "script_path": _STRING,
                },
                ["task_dir", "request_path", "result_path", "stdout_path", "stderr_path"],
            ),
            "metadata": _STRING_MAP,
        },
        [
            "task_id",
            "handle_id",
            "status",
            "created_at",
            "updated_at",
            "stdout",
            "stderr",
            "stdout_truncated",
            "stderr_truncated",
            "execution_plan",
            "artifacts",
        ],
    )


def _event() -> JSON:
    return _closed(
        {
            "seq": {"type": "integer", "minimum": 0},
            "task_id": _STRING,
            "event_type": dict(
                _STRING,
                description=(
                    "api.md 6.1 (submitted, accepted, planned, degraded, "
                    "resource_reserved, started, kill_requested, "
                    "timeout_triggered, resource_released, finished, failed, "
                    "cancelled, recovered) and runtime additions such as "
                    "pids_limit_reached."
                ),
            ),
            "timestamp": _TIMESTAMP,
            "message": _STRING,
            "data": {"description": "Any JSON, keys sorted at every level."},
        },
        ["seq", "task_id", "event_type", "timestamp"],
    )


def _platform() -> JSON:
    return _all_required(
        {"os": _STRING, "arch": _STRING, "containerized": _BOOL, "kubernetes": _BOOL}
    )


def _capabilities() -> JSON:
    return _closed(
        {
            "runtime_id": _STRING,
            "snapshot_version": {"type": "string", "enum": ["v1"]},
            "collected_at": _TIMESTAMP,
            "platform": _ref("Platform"),
            "execution": _all_required(
                {"command": _BOOL, "script": _BOOL, "process_group": _BOOL}
            ),
            "sandbox": _all_required(
                {
                    "process": _BOOL,
                    "linux_sandbox": _BOOL,
                    "chroot": _BOOL,
                    "namespaces": _all_required({name: _BOOL for name in NAMESPACE_NAMES}),
                }
            ),
            "storage": _all_required({"data_dir_writable": _BOOL}),
            "resources": _closed(
                {
                    "rlimit_cpu": _BOOL,
                    "rlimit_memory": _BOOL,
                    "cgroup_v2": _BOOL,
                    "cgroup_writable": _BOOL,
                    "memory_limit": _BOOL,
                    "pids_limit": _BOOL,
                    "oom_detection": _BOOL,
                    "cpu_quota": _BOOL,
                    "ledger": _BOOL,
                    "capacity": _ref("ResourceCapacity"),
                    "cgroup": dict(
                        _STRING_MAP,
                        description=(
                            "Runtime addition: cgroup capability (memory, pids, "
                            "cpu_accounting, kill) to the mechanism backing it."
                        ),
                    ),
                },
                [
                    "rlimit_cpu",
                    "rlimit_memory",
                    "cgroup_v2",
                    "cgroup_writable",
                    "memory_limit",
                    "pids_limit",
                    "oom_detection",
                    "cpu_quota",
                    "ledger",
                    "capacity",
                ],
            ),
            "stable_semantics": _STRINGS,
            "enhanced_semantics": _STRINGS,
            "warnings": _STRINGS,
            "degraded": _BOOL,
            "overrides": _STRING_MAP,
        },
        [
            "runtime_id",
            "snapshot_version",
            "collected_at",
            "platform",
            "execution",
            "sandbox",
            "storage",
            "resources",
            "degraded",
        ],
    )


def _config() -> JSON:
    return _all_required(
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
            "default_capability_mode": {"type": "string", "enum": list(_MODES)},
            "cgroup_enabled": _BOOL,
        }
    )


def _resources() -> JSON:
    return _all_required(
        {
            "runtime_id": _STRING,
            "capacity": _ref("ResourceCapacity"),
            "reserved": _ref("ResourceCapacity"),
            "available": _ref("ResourceCapacity"),
            "active_reservations": {
                "type": "array",
                "items": _closed(
                    {
                        "task_id": _STRING,
                        "status": {"type": "string", "enum": list(ALL_STATUSES)},
                        "reservation": _ref("TaskResourceReservation"),
                        "reserved_at": _TIMESTAMP,
                    },
                    ["task_id", "status", "reservation"],
                ),
            },
            "accepted_waiting_tasks": _UINT,
            "tenants": {
                "type": "array",
                "items": _closed(
                    {
                        "tenant": _STRING,
                        "quota": _ref("ResourceCapacity"),
                        "reserved": _ref("ResourceCapacity"),
                        "available": _ref("ResourceCapacity"),
                    },
                    ["tenant", "reserved"],
                ),
            },
        }
    )


def _health(status: str) -> JSON:
    return _all_required({"status": {"type": "string", "enum": [status]}, "version": _STRING})


def response_schemas() -> JSON:
    """
    The component schemas of the response bodies.
    """
    return {
        "SubmitTaskResponse": _all_required(
            {
                "task_id": _STRING,
                "handle_id": _STRING,
                "status": {"type": "string", "enum": ["accepted"]},
            }
        ),
        "TaskStatusResponse": _status(),
        "RuntimeErrorInfo": _error_info(),
        "ResourceUsage": _usage(),
        "ExecutionPlan": _plan(),
        "Sandbox": _sandbox(),
        "ResourceEnforcementPlan": _enforcement(),
        "TaskResourceReservation": _capacity(),
        "ResourceCapacity": _capacity(),
        "EventRecord": _event(),
        "Platform": _platform(),
        "RuntimeInfo": _all_required(
            {
                "runtime_id": _STRING,
                "version": _STRING,
                "started_at": _TIMESTAMP,
                "snapshot_version": {"type": "string", "enum": ["v1"]},
                "platform": _ref("Platform"),
            }
        ),
        "RuntimeCapabilities": _capabilities(),
        "RuntimeConfig": _config(),
        "RuntimeResources": _resources(),
        "Health": _health("ok"),
        "Ready": _health("ready"),
        "ErrorResponse": _all_required(
            {"error": _error_info()},
            "The error envelope (decisions.md item 1).",
        ),
    }


# ---------------------------------------------------------------- errors

# What each operation can raise, besides routing errors (404 for an unknown
# path, 405 for a wrong method) which are not operations of their own.
_STORAGE: Tuple[Type[errors.ExecgoError], ...] = (
    errors.Internal,
    errors.Unavailable,
    errors.InsufficientStorage,
)
_RAISES: Mapping[str, Tuple[Type[errors.ExecgoError], ...]] = {
    "submitTask": (
        errors.InvalidInput,
        errors.PayloadTooLarge,
        errors.UnsupportedCapability,
        errors.InsufficientResources,
        errors.QueueFull,
        errors.Conflict,
        *_STORAGE,
    ),
    "getTask": (errors.InvalidInput, errors.NotFound, *_STORAGE),
    "killTask": (errors.NotFound, errors.PermissionDenied, *_STORAGE),
    "getTaskEvents": (errors.NotFound, *_STORAGE),
    "getRuntimeResources": _STORAGE,
    "readyz": (errors.Internal,),
}


def _error_classes() -> List[Type[errors.ExecgoError]]:
    """
    L{errors.ExecgoError} and all its subclasses.
    """
    found: List[Type[errors.ExecgoError]] = []
    pending: List[Type[errors.ExecgoError]] = [errors.ExecgoError]
    while pending:
        cls = pending.pop(0)
        if cls not in found:
            found.append(cls)
            pending.extend(cls.__subclasses__())
    return found


def _error_responses(raised: Sequence[Type[errors.ExecgoError]]) -> JSON:
    """
    One envelope response per HTTP status that C{raised} can produce, its
    C{code} limited to the codes of the error classes with that status.
    """
    statuses = sorted({cls.http_status for cls in raised})
    out: JSON = {}
    for status in statuses:
        codes = {cls.code for cls in raised if cls.http_status == status}
        codes.update(
            cls.code
            for cls in _error_classes()
            if cls.http_status == status and any(issubclass(cls, r) for r in raised)
        )
        ordered = [code for code in ERROR_CODES if code in codes]
        out[str(status)] = _json_response(
            ", ".join(sorted({cls.__name__ for cls in raised if cls.http_status == status})),
            {
                "allOf": [
                    _ref("ErrorResponse"),
                    {"properties": {"error": {"properties": {"code": {"enum": ordered}}}}},
                ]
            },
        )
    return out


# ---------------------------------------------------------------- paths


def _json_response(description: str, schema: JSON) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    operation_id: str,
    summary: str,
    ok: JSON,
    parameters: Sequence[JSON] = (),
    errors_: Optional[JSON] = None,
    **extra: Any,
) -> JSON:
    """
    One operation: its 200 response C{ok}, then the error responses of what
    it raises (L{_RAISES}), or C{errors_} when given.
    """
    responses: JSON = {"200": ok}
    if errors_ is None:
        errors_ = _error_responses(_RAISES.get(operation_id, ()))
    responses.update(errors_)
    operation: JSON = {"operationId": operation_id, "summary": summary}
    if parameters:
        operation["parameters"] = list(parameters)
    operation.update(extra)
    operation["responses"] = responses
    return operation


_TASK_ID: JSON = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The task id, percent-decoded and used verbatim.",
    "schema": {"type": "string"},
}


def _text(description: str) -> JSON:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _paths() -> JSON:
    status = _json_response("The task status snapshot", _ref("TaskStatusResponse"))
    return {
        "/api/v1/tasks": {
            "post": _operation(
                "submitTask",
                "Submit a task",
                _json_response("Persisted and queued", _ref("SubmitTaskResponse")),
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SubmitTaskRequest")}},
                },
            )
        },
        "/api/v1/tasks/{id}": {
            "get": _operation(
                "getTask",
                "Task status snapshot; with wait_ms, long-poll for the terminal state",
                status,
                [
                    _TASK_ID,
                    {
                        "name": "wait_ms",
                        "in": "query",
                        "required": False,
                        "description": (
                            "Answer as soon as the task is terminal, or after this "
                            f"many milliseconds (capped at {MAX_WAIT_MS}). 0 or "
                            "absent: answer at once."
                        ),
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
            )
        },
        "/api/v1/tasks/{id}/kill": {
            "post": _operation(
                "killTask",
                "Request cancellation (any request body is ignored)",
                status,
                [
                    _TASK_ID,
                    {
                        "name": "x-execgo-owner",
                        "in": "header",
                        "required": False,
                        "description": "Must equal the task's control_context.owner when it has one.",
                        "schema": {"type": "string"},
                    },
                ],
            )
        },
        "/api/v1/tasks/{id}/events": {
            "get": _operation(
                "getTaskEvents",
                "The task's event log, ascending by seq",
                _json_response(
                    "The events", {"type": "array", "items": _ref("EventRecord")}
                ),
                [_TASK_ID],
            )
        },
        "/api/v1/runtime/info": {
            "get": _operation(
                "getRuntimeInfo",
                "Identity, version and platform",
                _json_response("Runtime identity", _ref("RuntimeInfo")),
            )
        },
        "/api/v1/runtime/capabilities": {
            "get": _operation(
                "getRuntimeCapabilities",
                "The host capability snapshot taken at start-up",
                _json_response("Capability snapshot", _ref("RuntimeCapabilities")),
            )
        },
        "/api/v1/runtime/config": {
            "get": _operation(
                "getRuntimeConfig",
                "The non-secret effective configuration",
                _json_response("Configuration", _ref("RuntimeConfig")),
            )
        },
        "/api/v1/runtime/resources": {
            "get": _operation(
                "getRuntimeResources",
                "The resource ledger",
                _json_response("Ledger view", _ref("RuntimeResources")),
            )
        },
        PATH: {
            "get": _operation(
                "getOpenAPI",
                "This document",
                _json_response(
                    "The OpenAPI document",
                    {"type": "object", "required": ["openapi", "info", "paths"]},
                ),
            )
        },
        "/healthz": {
            "get": _operation("healthz", "Liveness", _json_response("Alive", _ref("Health")))
        },
        "/readyz": {
            "get": _operation(
                "readyz", "Readiness: storage usable", _json_response("Ready", _ref("Ready"))
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus text exposition",
                _text("Metrics (text/plain; version=0.0.4)"),
                errors_={"500": _text("The store could not be read: 'metrics_error <message>'")},
            )
        },
    }


def document(version: str = __version__) -> JSON:
    """
    The OpenAPI 3.1 document of the API, as a JSON-ready C{dict} (a new one
    on every call).

    @param version: the API version to report in C{info.version}.
    """
    schemas = request_schemas()
    schemas.update(response_schemas())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "execgo runtime API",
            "version": version,
            "description": (
                "The HTTP API of the execgo task-execution runtime. Every error "
                "produced by the runtime uses the envelope "
                '{"error": {"code": ..., "message": ...}}; an unknown path gets '
                "404 not_found and a wrong method 405 invalid_input."
            ),
        },
        "paths": _paths(),
        "components": {"schemas": schemas},
    }
