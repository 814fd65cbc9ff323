# -*- test-case-name: tests.test_validation -*-
"""
A parsed JSON value decoded into a L{SubmitRequest} (L{decode_submit}):
the schema of a C{SubmitTaskRequest}, what a typed deserializer would
reject (missing keys, wrong JSON types, unknown enum values, integers that
are not 64-bit unsigned, C{null} in a field that is required or has a
default), with every default filled in.

The second step of the untrusted-input layer (L{execgo.core.submission});
the CLI uses it, without the rules, to normalise a request it sends.
A batch submission's envelope is decoded here too (L{decode_batch}); its
items are then decoded one by one as L{decode_submit} decodes a body.
Standard library and the models only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from execgo.core.constants import (
    DEFAULT_OUTPUT_MAX_BYTES,
    DEFAULT_WALL_TIME_MS,
    KIND_COMMAND,
    KIND_SCRIPT,
    MODE_ADAPTIVE,
    MODE_STRICT,
    NAMESPACE_NAMES,
    PROFILE_LINUX_SANDBOX,
    PROFILE_PROCESS,
    UINT64_MAX,
)
from execgo.core.fields import encodable, fail, show
from execgo.core.models import (
    ControlContext,
    ExecutionSpec,
    Namespaces,
    ResourceLimits,
    SandboxPolicy,
    SubmitRequest,
)
from execgo.core.protocol import MAX_BATCH_TASKS

_KINDS = (KIND_COMMAND, KIND_SCRIPT)
_PROFILES = (PROFILE_PROCESS, PROFILE_LINUX_SANDBOX)
_MODES = (MODE_ADAPTIVE, MODE_STRICT)

_T = TypeVar("_T")
_Decoder = Callable[[Any, str], _T]


def decode_submit(obj: Any) -> SubmitRequest:
    """
    Decode a parsed JSON value as a C{SubmitTaskRequest}.

    Only the schema is checked here: the value must be an object; the
    required keys C{execution} and C{execution.kind} present; every field of
    the right JSON type; enum values known; unsigned integers real JSON
    integers (not booleans, not floats even when integral) between 0 and
    L{UINT64_MAX}; C{null} only in an optional field without a default,
    where it means the same as an absent key.  Unknown keys are ignored at
    every level and defaults are filled in.  A C{policy} that is absent,
    C{null}, or an object without C{capability_mode} decodes to
    C{capability_mode=None} (the server's default mode applies to all three).

    @param obj: a value as returned by
        L{execgo.core.strictjson.parse_json_body}.
    @return: the decoded request, not yet validated (see
        L{execgo.core.validation.validate_submit}).
    @raise InvalidInput: naming the path of the first offending field.
    """
    body = _Fields(obj, "")
    return SubmitRequest(
        task_id=body.optional("task_id", _string),
        execution=body.required("execution", _decode_execution),
        limits=body.default("limits", _decode_limits, ResourceLimits()),
        sandbox=body.default("sandbox", _decode_sandbox, SandboxPolicy()),
        capability_mode=body.optional("policy", _decode_policy),
        control_context=body.optional("control_context", _decode_control_context),
        metadata=body.default("metadata", _string_map, {}),
        node_labels=body.optional("placement", _decode_placement) or {},
    )


def decode_batch(obj: Any) -> list[Any]:
    """
    Decode a parsed JSON value as a C{BatchSubmitRequest}: an object whose
    C{tasks} is an array of 1 to L{MAX_BATCH_TASKS} values.  Unknown keys
    are ignored.

    @return: the items, not decoded: each is a submission of its own, for
        L{decode_submit}.
    @raise InvalidInput: for the envelope (not an object, C{tasks} missing,
        not an array, empty or too long).
    """
    tasks = _Fields(obj, "").required("tasks", _array)
    if not tasks:
        fail("tasks", "a batch holds at least one task")
    if len(tasks) > MAX_BATCH_TASKS:
        fail("tasks", f"a batch holds at most {MAX_BATCH_TASKS} tasks, got {len(tasks)}")
    return tasks


def _decode_placement(value: Any, path: str) -> dict[str, str]:
    """
    Decode a C{TaskPlacement} to the node labels it asks for (none when
    it names none).
    """
    return _Fields(value, path).default("node_labels", _string_map, {})


def _decode_execution(value: Any, path: str) -> ExecutionSpec:
    """
    Decode an C{ExecutionSpec}.
    """
    spec = _Fields(value, path)
    return ExecutionSpec(
        kind=spec.required("kind", _enum(_KINDS)),
        program=spec.optional("program", _string),
        args=spec.default("args", _string_list, ()),
        script=spec.optional("script", _string),
        interpreter=spec.optional("interpreter", _string_list),
        env=spec.default("env", _string_map, {}),
    )


def _decode_limits(value: Any, path: str) -> ResourceLimits:
    """
    Decode C{ResourceLimits}.
    """
    limits = _Fields(value, path)
    return ResourceLimits(
        wall_time_ms=limits.default("wall_time_ms", _uint, DEFAULT_WALL_TIME_MS),
        cpu_time_sec=limits.optional("cpu_time_sec", _uint),
        memory_bytes=limits.optional("memory_bytes", _uint),
        pids_max=limits.optional("pids_max", _uint),
        stdout_max_bytes=limits.default(
            "stdout_max_bytes", _uint, DEFAULT_OUTPUT_MAX_BYTES
        ),
        stderr_max_bytes=limits.default(
            "stderr_max_bytes", _uint, DEFAULT_OUTPUT_MAX_BYTES
        ),
    )


def _decode_sandbox(value: Any, path: str) -> SandboxPolicy:
    """
    Decode a C{SandboxPolicy}.
    """
    sandbox = _Fields(value, path)
    return SandboxPolicy(
        profile=sandbox.default("profile", _enum(_PROFILES), PROFILE_PROCESS),
        workspace_subdir=sandbox.optional("workspace_subdir", _string),
        rootfs=sandbox.optional("rootfs", _string),
        chroot=sandbox.default("chroot", _bool, False),
        namespaces=sandbox.optional("namespaces", _decode_namespaces),
    )


def _decode_namespaces(value: Any, path: str) -> Namespaces:
    """
    Decode a C{NamespaceConfig}; each missing key takes its own default.
    """
    namespaces = _Fields(value, path)
    defaults = Namespaces()
    return Namespaces(
        **{
            name: namespaces.default(name, _bool, getattr(defaults, name))
            for name in NAMESPACE_NAMES
        }
    )


def _decode_policy(value: Any, path: str) -> str | None:
    """
    Decode a C{TaskPolicy} to its capability mode, or C{None} when the object
    has no C{capability_mode}, so that the server's default mode applies.
    """
    return _Fields(value, path).default("capability_mode", _enum(_MODES), None)


def _decode_control_context(value: Any, path: str) -> ControlContext:
    """
    Decode a C{ControlContext}; its strings are kept exactly as given.
    """
    context = _Fields(value, path)
    return ControlContext(
        control_plane_mode=context.optional("control_plane_mode", _string),
        tenant=context.optional("tenant", _string),
        owner=context.optional("owner", _string),
        expected_runtime_profile=context.optional("expected_runtime_profile", _string),
        requires_strict_sandbox=context.default(
            "requires_strict_sandbox", _bool, False
        ),
        requires_resource_reservation=context.default(
            "requires_resource_reservation", _bool, False
        ),
        labels=context.default("labels", _string_map, {}),
    )


class _Fields:
    """
    The members of one JSON object being decoded, with its path for messages.

    Keyword arguments are evaluated left to right, so the decoders above
    report the first bad field in the order the contract lists the fields.
    """

    def __init__(self, value: Any, path: str) -> None:
        self._object = _object(value, path or "request body")
        self._prefix = f"{path}." if path else ""

    def required(self, key: str, decode: _Decoder[_T]) -> _T:
        """
        A required field: absent is an error, C{null} a type error.
        """
        if key not in self._object:
            fail(self._prefix + key, "missing required field")
        return decode(self._object[key], self._prefix + key)

    def default(self, key: str, decode: _Decoder[_T], default: _T) -> _T:
        """
        A field that takes C{default} when absent; C{null} is a type error.
        """
        if key not in self._object:
            return default
        return decode(self._object[key], self._prefix + key)

    def optional(self, key: str, decode: _Decoder[_T]) -> _T | None:
        """
        An "or null" field: absent and C{null} both give C{None}.
        """
        value = self._object.get(key)
        if value is None:
            return None
        return decode(value, self._prefix + key)


def _object(value: Any, path: str) -> dict[str, Any]:
    """
    Require a JSON object.
    """
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {_describe(value)}")
    return value


def _string(value: Any, path: str) -> str:
    """
    Require a JSON string that can be re-encoded as UTF-8.
    """
    if not isinstance(value, str):
        fail(path, f"expected a string, got {_describe(value)}")
    if not encodable(value):
        fail(path, "string contains a lone UTF-16 surrogate")
    return value


def _bool(value: Any, path: str) -> bool:
    """
    Require a JSON boolean (not 0 or 1).
    """
    if not isinstance(value, bool):
        fail(path, f"expected a boolean, got {_describe(value)}")
    return value


def _uint(value: Any, path: str) -> int:
    """
    Require a JSON integer in 0 .. L{UINT64_MAX}: not a boolean, not a float
    even when it is integral, not negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"expected a non-negative integer, got {_describe(value)}")
    if value < 0:
        fail(path, "expected a non-negative integer, got a negative number")
    if value > UINT64_MAX:
        fail(path, f"integer is larger than the maximum {UINT64_MAX}")
    return int(value)


def _array(value: Any, path: str) -> list[Any]:
    """
    Require a JSON array, its items left as they are.
    """
    if not isinstance(value, list):
        fail(path, f"expected an array, got {_describe(value)}")
    return value


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    """
    Require a JSON array of strings, returned as a tuple.
    """
    if not isinstance(value, (list, tuple)):
        fail(path, f"expected an array of strings, got {_describe(value)}")
    return tuple(_string(item, f"{path}[{index}]") for index, item in enumerate(value))


def _string_map(value: Any, path: str) -> dict[str, str]:
    """
    Require a JSON object whose values are all strings.
    """
    obj = _object(value, path)
    result: dict[str, str] = {}
    for key, item in obj.items():
        if not isinstance(key, str):
            fail(path, f"expected string keys, got {_describe(key)}")
        _string(key, f"{path} key")
        result[key] = _string(item, f"{path}[{show(key)}]")
    return result


def _enum(choices: tuple[str, ...]) -> _Decoder[str]:
    """
    A decoder requiring one of C{choices}.
    """

    def decode(value: Any, path: str) -> str:
        text = _string(value, path)
        if text not in choices:
            expected = ", ".join(show(choice) for choice in choices)
            fail(path, f"unknown value {show(text)}, expected one of {expected}")
        return text

    return decode


def _describe(value: Any) -> str:
    """
    Name the JSON type of C{value} for an error message (without echoing
    strings or huge numbers back).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a value of type {type(value).__name__}"
