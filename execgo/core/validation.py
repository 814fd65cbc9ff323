# -*- test-case-name: tests.test_validation -*-
"""
The untrusted-input layer of C{POST /api/v1/tasks}.

Request bytes become a L{SubmitRequest} in three steps, each its own function
so a caller can stop where it needs to (the CLI decodes but does not
validate):

  1. L{parse_json_body}: the 2 MiB size limit, UTF-8 and JSON syntax.
  2. L{decode_submit}: the schema of a C{SubmitTaskRequest}, what a typed
     deserializer would reject (missing keys, wrong JSON types, unknown enum
     values, integers that are not 64-bit unsigned, C{null} in a field that
     is required or has a default), with every default filled in.
  3. L{validate_submit}: the semantic rules, one group of fields after the
     other, stopping at the first failure.

L{check_output_limits} is separate because the 2^63-1 output bound is
checked later in the submit flow, after the capacity, quota and queue
checks.

Whatever the input, these functions raise nothing but L{InvalidInput} (or its
subclass L{PayloadTooLarge}); the API answers every one of those with a C{400}
(C{413}) and the error envelope, code C{invalid_input}, whatever the request's
C{Content-Type}.  Details name the
offending field by its path, e.g. C{execution.args[2]: expected a string, got
an integer}.

This module imports only the standard library, C{attrs} (through the models)
and the L{execgo.core.errors} hierarchy, so the CLI can use it without Twisted.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from execgo.core import bounds
from execgo.core.errors import InvalidInput, PayloadTooLarge
from execgo.core.models import (
    DEFAULT_OUTPUT_MAX_BYTES,
    DEFAULT_WALL_TIME_MS,
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

__all__ = [
    "MAX_BODY_BYTES",
    "OUTPUT_LIMIT_MAX",
    "TASK_ID_MAX_LENGTH",
    "UINT64_MAX",
    "check_output_ceiling",
    "check_output_limits",
    "decode_submit",
    "parse_json_body",
    "parse_submit",
    "validate_submit",
]

MAX_BODY_BYTES = 2 * 1024 * 1024
UINT64_MAX = 2**64 - 1
OUTPUT_LIMIT_MAX = 2**63 - 1
TASK_ID_MAX_LENGTH = 128

KIND_COMMAND = "command"
KIND_SCRIPT = "script"

_KINDS = (KIND_COMMAND, KIND_SCRIPT)
_PROFILES = (PROFILE_PROCESS, PROFILE_LINUX_SANDBOX)
_MODES = (MODE_ADAPTIVE, MODE_STRICT)

# "Trimming" in the contract removes Unicode White_Space, which is not quite
# what str.strip() removes (that also strips the ASCII separators 0x1c-0x1f).
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
# A JSON escape that could decode to a lone UTF-16 surrogate; only bodies
# containing one need the (slower) walk in _find_lone_surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SHOW_LIMIT = 64

_T = TypeVar("_T")
_Decoder = Callable[[Any, str], _T]


# ---------------------------------------------------------------- 1. bytes


def parse_json_body(body: bytes) -> Any:
    """
    Parse a request body as one JSON value.

    The body must be at most L{MAX_BODY_BYTES} long, strict UTF-8 (no BOM,
    no other encodings), and one JSON value.  Beyond what C{json.loads}
    enforces, the constants C{NaN}, C{Infinity} and C{-Infinity}, duplicate
    keys in one object, and string escapes that decode to a lone UTF-16
    surrogate (which cannot be stored or re-encoded as UTF-8) are rejected.

    @param body: the raw request body.
    @return: the decoded JSON value (C{dict}, C{list}, C{str}, C{int},
        C{float}, C{bool} or C{None}).
    @raise PayloadTooLarge: if the body is longer than L{MAX_BODY_BYTES}.
    @raise InvalidInput: if the body is not valid UTF-8 JSON.
    """
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"request body is {len(body)} bytes, more than the limit of "
            f"{MAX_BODY_BYTES} bytes"
        )
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(
            f"request body is not valid UTF-8 (invalid byte at offset {error.start})"
        ) from None
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_object,
        )
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"request body is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno})"
        ) from None
    except ValueError:
        # The only other ValueError json.loads raises: an integer literal with
        # more digits than Python converts (sys.get_int_max_str_digits()).
        raise InvalidInput(
            "request body is not valid JSON: a number has too many digits"
        ) from None
    except RecursionError:
        raise InvalidInput(
            "request body is not valid JSON: nested too deeply"
        ) from None
    if _SURROGATE_ESCAPE.search(text) is not None and _find_lone_surrogate(value):
        raise InvalidInput(
            "request body is not valid JSON: a string escape encodes a lone "
            "UTF-16 surrogate"
        )
    return value


def _reject_constant(name: str) -> NoReturn:
    """
    C{json.loads} hook for the non-standard constants C{NaN} and C{Infinity}.
    """
    raise InvalidInput(f"request body is not valid JSON: {name} is not a JSON value")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    C{json.loads} hook building an object and rejecting repeated keys, whose
    meaning JSON leaves open.
    """
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidInput(
                    f"request body is not valid JSON: duplicate key {_show(key)}"
                )
            seen.add(key)
    return result


def _find_lone_surrogate(value: Any) -> bool:
    """
    Whether any string (or object key) inside C{value} holds a lone surrogate.
    Iterative, so no nesting depth can overflow the stack.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
    return False


# ---------------------------------------------------------------- 2. schema


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

    @param obj: a value as returned by L{parse_json_body}.
    @return: the decoded request, not yet validated (see L{validate_submit}).
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
    )


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
            _fail(self._prefix + key, "missing required field")
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
        _fail(path, f"expected an object, got {_describe(value)}")
    return value


def _string(value: Any, path: str) -> str:
    """
    Require a JSON string that can be re-encoded as UTF-8.
    """
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_describe(value)}")
    if not _encodable(value):
        _fail(path, "string contains a lone UTF-16 surrogate")
    return value


def _bool(value: Any, path: str) -> bool:
    """
    Require a JSON boolean (not 0 or 1).
    """
    if not isinstance(value, bool):
        _fail(path, f"expected a boolean, got {_describe(value)}")
    return value


def _uint(value: Any, path: str) -> int:
    """
    Require a JSON integer in 0 .. L{UINT64_MAX}: not a boolean, not a float
    even when it is integral, not negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected a non-negative integer, got {_describe(value)}")
    if value < 0:
        _fail(path, "expected a non-negative integer, got a negative number")
    if value > UINT64_MAX:
        _fail(path, f"integer is larger than the maximum {UINT64_MAX}")
    return int(value)


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    """
    Require a JSON array of strings, returned as a tuple.
    """
    if not isinstance(value, (list, tuple)):
        _fail(path, f"expected an array of strings, got {_describe(value)}")
    return tuple(_string(item, f"{path}[{index}]") for index, item in enumerate(value))


def _string_map(value: Any, path: str) -> dict[str, str]:
    """
    Require a JSON object whose values are all strings.
    """
    obj = _object(value, path)
    result: dict[str, str] = {}
    for key, item in obj.items():
        if not isinstance(key, str):
            _fail(path, f"expected string keys, got {_describe(key)}")
        _string(key, f"{path} key")
        result[key] = _string(item, f"{path}[{_show(key)}]")
    return result


def _enum(choices: tuple[str, ...]) -> _Decoder[str]:
    """
    A decoder requiring one of C{choices}.
    """

    def decode(value: Any, path: str) -> str:
        text = _string(value, path)
        if text not in choices:
            expected = ", ".join(_show(choice) for choice in choices)
            _fail(path, f"unknown value {_show(text)}, expected one of {expected}")
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


# ---------------------------------------------------------------- 3. rules


def validate_submit(request: SubmitRequest) -> None:
    """
    Apply the semantic rules in this order, stopping at the first failure:
    C{task_id} (L{_validate_task_id}), C{execution}, C{limits} (set limits
    must not be zero), C{sandbox}, C{policy} (no rules), C{control_context}.

    Each group is followed by what the host accepts of it
    (L{execgo.core.bounds}): no NUL in a string that becomes a path, an
    argument or an environment entry, paths and argument strings within
    the kernel's lengths, limits within what C{setrlimit}, the cgroup
    files and the supervisor's timer take.

    The 2^63-1 bound on output limits is not checked here; see
    L{check_output_limits}.

    @raise InvalidInput: for the first rule broken.
    """
    _validate_task_id(request.task_id)
    _validate_execution(request.execution)
    bounds.check_execution(request.execution)
    _validate_limits(request.limits)
    bounds.check_limits(request.limits)
    _validate_sandbox(request.sandbox)
    bounds.check_sandbox(request.sandbox)
    if request.control_context is not None:
        _validate_control_context(request.control_context)


def check_output_limits(request: SubmitRequest) -> None:
    """
    Reject output limits above 2^63-1 (L{OUTPUT_LIMIT_MAX}), which the
    contract checks while persisting, after the capacity and queue checks.

    @raise InvalidInput: if C{stdout_max_bytes} or C{stderr_max_bytes} is too
        large.
    """
    for name in ("stdout_max_bytes", "stderr_max_bytes"):
        if getattr(request.limits, name) > OUTPUT_LIMIT_MAX:
            _fail(f"limits.{name}", f"must be at most {OUTPUT_LIMIT_MAX}")


def check_output_ceiling(request: SubmitRequest, ceiling: int) -> None:
    """
    Reject output limits above the server's preview ceiling
    (C{--max-output-preview-bytes}): a status snapshot and C{result.json}
    hold up to that many bytes of each log, so the ceiling is what bounds
    the memory one snapshot takes.  Checked with L{check_output_limits},
    after it (a limit above 2^63-1 keeps the contract's message).

    @raise InvalidInput: naming the field, the ceiling and the flag.
    """
    for name in ("stdout_max_bytes", "stderr_max_bytes"):
        if getattr(request.limits, name) > ceiling:
            _fail(f"limits.{name}", f"must be at most {ceiling} (--max-output-preview-bytes)")


def under_roots(path: str, roots: Sequence[str]) -> bool:
    """
    Whether C{path} is one of C{roots} or lies below one (both taken as
    given: normalise or resolve them first).
    """
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def check_rootfs(sandbox: SandboxPolicy, roots: Sequence[str]) -> None:
    """
    A chroot's C{rootfs} must be an absolute path, without C{..}, that is
    one of the operator's C{--sandbox-rootfs-root} directories (given
    normalised) or lies below one; without such roots no chroot is
    allowed.  Lexical: the supervisor resolves links at launch and checks
    again.

    @raise InvalidInput: naming the allowed roots.
    """
    if not sandbox.chroot or sandbox.rootfs is None:
        return
    rootfs = sandbox.rootfs
    allowed = ", ".join(roots) if roots else "none are configured"
    if (
        not rootfs.startswith("/")
        or "\0" in rootfs
        or ".." in rootfs.split("/")
        or not under_roots(posixpath.normpath(rootfs), roots)
    ):
        _fail(
            "sandbox.rootfs",
            f"must be an absolute path under an allowed root (--sandbox-rootfs-root: {allowed})",
        )


def parse_submit(body: bytes) -> SubmitRequest:
    """
    Parse, decode and validate a submit body: L{parse_json_body},
    L{decode_submit} and L{validate_submit} (but not L{check_output_limits}).

    @raise PayloadTooLarge: if the body is over L{MAX_BODY_BYTES}.
    @raise InvalidInput: for any other problem with the body.
    """
    request = decode_submit(parse_json_body(body))
    validate_submit(request)
    return request


def _validate_task_id(task_id: str | None) -> None:
    """
    The C{task_id} rules: non-blank, no surrounding whitespace, only
    C{[A-Za-z0-9._-]}, not C{.} or C{..}, at most 128 characters.
    """
    if task_id is None:
        return
    if _is_blank(task_id):
        _fail("task_id", "must not be empty")
    if task_id.strip(_WHITESPACE) != task_id:
        _fail("task_id", "must not have leading or trailing whitespace")
    if _TASK_ID_PATTERN.fullmatch(task_id) is None:
        _fail(
            "task_id",
            "may contain only ASCII letters, ASCII digits, '-', '_' and '.'",
        )
    if task_id in (".", ".."):
        _fail("task_id", f"must not be {task_id!r}")
    if len(task_id) > TASK_ID_MAX_LENGTH:
        _fail("task_id", f"must be at most {TASK_ID_MAX_LENGTH} characters long")


def _validate_execution(execution: ExecutionSpec) -> None:
    """
    The kind-specific C{program}/C{script}/C{interpreter} rules, then the
    C{env} keys.
    """
    if execution.kind == KIND_COMMAND:
        if execution.program is None or _is_blank(execution.program):
            _fail(
                "execution.program",
                "required and must not be blank for kind 'command'",
            )
        if execution.script is not None and not _is_blank(execution.script):
            _fail("execution.script", "must be absent, null or blank for kind 'command'")
    elif execution.kind == KIND_SCRIPT:
        if execution.script is None or _is_blank(execution.script):
            _fail(
                "execution.script",
                "required and must not be blank for kind 'script'",
            )
        if execution.program is not None and not _is_blank(execution.program):
            _fail("execution.program", "must be absent, null or blank for kind 'script'")
        interpreter = execution.interpreter
        if interpreter is not None:
            if not interpreter:
                _fail("execution.interpreter", "must not be empty when present")
            if _is_blank(interpreter[0]):
                _fail("execution.interpreter[0]", "must not be blank")
    else:
        # Only reachable for a request built in code, not by decode_submit.
        _fail("execution.kind", f"unknown value {_show(execution.kind)}")
    _validate_map_keys(execution.env, "execution.env")


def _validate_limits(limits: ResourceLimits) -> None:
    """
    C{wall_time_ms} and both output limits must be positive; the optional
    limits, when set, must not be zero.
    """
    for name in ("wall_time_ms", "stdout_max_bytes", "stderr_max_bytes"):
        if getattr(limits, name) <= 0:
            _fail(f"limits.{name}", "must be greater than 0")
    for name in ("cpu_time_sec", "memory_bytes", "pids_max"):
        value = getattr(limits, name)
        if value is not None and value <= 0:
            _fail(f"limits.{name}", "must be greater than 0 when set")


def _validate_sandbox(sandbox: SandboxPolicy) -> None:
    """
    C{workspace_subdir} must be relative without C{..}; C{chroot} needs a
    non-blank C{rootfs} and the C{linux_sandbox} profile.
    """
    subdir = sandbox.workspace_subdir
    if subdir is not None:
        if subdir.startswith("/"):
            _fail(
                "sandbox.workspace_subdir",
                "must be a relative path, not start with '/'",
            )
        if ".." in subdir.split("/"):
            _fail("sandbox.workspace_subdir", "must not contain a '..' component")
    if sandbox.chroot:
        if sandbox.rootfs is None or _is_blank(sandbox.rootfs):
            _fail(
                "sandbox.rootfs",
                "required and must not be blank when chroot is true",
            )
        if sandbox.profile != PROFILE_LINUX_SANDBOX:
            _fail(
                "sandbox.chroot",
                f"requires profile {_show(PROFILE_LINUX_SANDBOX)}, "
                f"not {_show(sandbox.profile)}",
            )


def _validate_control_context(context: ControlContext) -> None:
    """
    Label keys first, then the four strings must not be blank when present.
    """
    _validate_map_keys(context.labels, "control_context.labels")
    for name in ("control_plane_mode", "tenant", "owner", "expected_runtime_profile"):
        value = getattr(context, name)
        if value is not None and _is_blank(value):
            _fail(f"control_context.{name}", "must not be blank when present")


def _validate_map_keys(mapping: Any, path: str) -> None:
    """
    Every key of C{mapping} must be non-blank and free of C{=}.
    """
    for key in mapping:
        if _is_blank(key):
            _fail(path, f"key {_show(key)} must not be blank")
        if "=" in key:
            _fail(path, f"key {_show(key)} must not contain '='")


# ---------------------------------------------------------------- helpers


def _is_blank(text: str) -> bool:
    """
    Whether C{text} is empty once Unicode white space is trimmed.
    """
    return not text.strip(_WHITESPACE)


def _encodable(text: str) -> bool:
    """
    Whether C{text} can be encoded as UTF-8 (holds no lone surrogate).
    """
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(text: Any) -> str:
    """
    Quote C{text} for a message as a JSON string, ASCII-only and cut short.
    """
    if not isinstance(text, str):
        return repr(text)
    if len(text) > _SHOW_LIMIT:
        return json.dumps(text[:_SHOW_LIMIT]) + "..."
    return json.dumps(text)


def _fail(path: str, problem: str) -> NoReturn:
    """
    Raise L{InvalidInput} for the field at C{path}.
    """
    raise InvalidInput(f"{path}: {problem}")
