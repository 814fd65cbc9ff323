# -*- test-case-name: tests.test_openapi -*-
"""
The JSON Schemas the OpenAPI document generates from models, so the
document follows the code.

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

C{tests.test_openapi} proves the request schema and
L{execgo.core.decoding.decode_submit} agree field by field.

No Twisted here; schemas are plain data.
"""

from __future__ import annotations

import collections.abc
import typing
from typing import Any, List, Mapping, Sequence, Tuple

import attrs

from execgo.core import bounds
from execgo.core.constants import (
    JSON,
    KIND_COMMAND,
    KIND_SCRIPT,
    PROFILE_LINUX_SANDBOX,
    PROFILE_PROCESS,
)
from execgo.core.models import (
    ControlContext,
    ExecutionSpec,
    Namespaces,
    ResourceLimits,
    SandboxPolicy,
    SubmitRequest,
)
from execgo.core.plan import ExecutionPlan, ResourceEnforcement
from execgo.core.protocol import MAX_BATCH_TASKS
from execgo.core.reservation import Reservation
from execgo.core.results import ErrorInfo, Usage
from execgo.core.strictjson import MAX_BODY_BYTES
from execgo.core.validation import OUTPUT_LIMIT_MAX, TASK_ID_MAX_LENGTH
from execgo.server.web.schemas import (
    BOOL,
    ERROR_CODES,
    MODES,
    STRING,
    UINT,
    enum,
    ref,
    shape,
)

# Component names of the models: the wire type names.  TaskPolicy and
# TaskPlacement have no model: the decoder folds them into
# SubmitRequest.capability_mode and SubmitRequest.node_labels.
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
    ("ResourceCapacity", Reservation),
    ("RuntimeErrorInfo", ErrorInfo),
)

_ENUMS: Mapping[Tuple[type, str], Sequence[str]] = {
    (ExecutionSpec, "kind"): (KIND_COMMAND, KIND_SCRIPT),
    (SandboxPolicy, "profile"): (PROFILE_PROCESS, PROFILE_LINUX_SANDBOX),
    (ExecutionPlan, "capability_mode"): MODES,
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
        return dict(STRING), optional
    if hint is bool:
        return dict(BOOL), optional
    if hint is int:
        return dict(UINT), optional
    if origin is tuple and args == (str, Ellipsis):
        return {"type": "array", "items": dict(STRING)}, optional
    if origin is collections.abc.Mapping and args == (str, str):
        return {"type": "object", "additionalProperties": dict(STRING)}, optional
    if hint in names:
        return ref(names[hint]), optional
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
    # A model under two names is referred to by the first.
    names = {m: n for n, m in reversed(REQUEST_MODELS if request else RESPONSE_MODELS)}
    hints = typing.get_type_hints(model)
    properties: JSON = {}
    required: List[str] = []
    for field in attrs.fields(model):
        key = (model, field.name)
        if request and key == (SubmitRequest, "capability_mode"):
            properties["policy"] = {
                "anyOf": [ref("TaskPolicy"), {"type": "null"}],
                "description": (
                    "Absent, null, or an object without capability_mode: the "
                    "server's default mode applies."
                ),
            }
            continue
        if request and key == (SubmitRequest, "node_labels"):
            properties["placement"] = {
                "anyOf": [ref("TaskPlacement"), {"type": "null"}],
                "description": (
                    "Where the task may run: node_labels, labels a node must all have"
                    " (--node-label). Under strict, a placement no live node matches is"
                    " refused; under adaptive the task waits for such a node."
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


def model_schemas() -> JSON:
    """
    The component schemas generated from L{REQUEST_MODELS} and
    L{RESPONSE_MODELS}, plus C{TaskPolicy}, C{TaskPlacement} and the
    batch's C{BatchSubmitRequest}, whose items are C{SubmitTaskRequest}s.
    """
    schemas = {name: _model_schema(model, True) for name, model in REQUEST_MODELS}
    schemas["TaskPolicy"] = {
        "type": "object",
        "properties": {"capability_mode": enum(MODES)},
    }
    schemas["TaskPlacement"] = {
        "type": "object",
        "properties": {"node_labels": {"type": "object", "additionalProperties": STRING, "default": {}}},
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
    schemas["BatchSubmitRequest"] = {
        "type": "object",
        "required": ["tasks"],
        "properties": {
            "tasks": {
                "type": "array",
                "items": ref("SubmitTaskRequest"),
                "minItems": 1,
                "maxItems": MAX_BATCH_TASKS,
            }
        },
        "description": (
            f"At most {MAX_BODY_BYTES} bytes of UTF-8 JSON in all (larger bodies get 413), "
            "parsed as JSON whatever the Content-Type says. Unknown keys are ignored. Each "
            "item is checked as the body of a submission of its own: one that breaks "
            "SubmitTaskRequest gets its refusal in its result, not the whole request."
        ),
    }
    schemas.update({name: _model_schema(model, False) for name, model in RESPONSE_MODELS})
    schemas["ExecutionPlan"]["properties"]["run_as"] = {
        "anyOf": [shape({"uid": UINT, "gid": UINT}), {"type": "null"}],
        "description": (
            "In a task's status: the uid and gid its processes run as, null until "
            "it is launched (without root, the runtime's own)."
        ),
    }
    schemas["RuntimeErrorInfo"]["properties"]["details"] = {
        "description": "Any JSON; currently never emitted."
    }
    return schemas

