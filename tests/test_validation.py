"""
Tests for the untrusted-input layer of task submission
(L{execgo.core.submission}): strict JSON (L{execgo.core.strictjson}),
decoding (L{execgo.core.decoding}) and the rules
(L{execgo.core.validation}).
"""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.decoding import UINT64_MAX, decode_submit
from execgo.core.errors import InvalidInput, PayloadTooLarge
from execgo.core.models import (
    ControlContext,
    ExecutionSpec,
    Namespaces,
    ResourceLimits,
    SandboxPolicy,
    SubmitRequest,
)
from execgo.core.strictjson import MAX_BODY_BYTES, parse_json_body
from execgo.core.submission import parse_submit
from execgo.core.validation import (
    OUTPUT_LIMIT_MAX,
    check_output_ceiling,
    check_output_limits,
    validate_submit,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

Path = tuple[Any, ...]

UINT_PATHS: list[Path] = [
    ("limits", "wall_time_ms"),
    ("limits", "cpu_time_sec"),
    ("limits", "memory_bytes"),
    ("limits", "pids_max"),
    ("limits", "stdout_max_bytes"),
    ("limits", "stderr_max_bytes"),
]

STRING_PATHS: list[Path] = [
    ("task_id",),
    ("execution", "program"),
    ("execution", "script"),
    ("sandbox", "workspace_subdir"),
    ("sandbox", "rootfs"),
    ("control_context", "control_plane_mode"),
    ("control_context", "tenant"),
    ("control_context", "owner"),
    ("control_context", "expected_runtime_profile"),
]

BOOL_PATHS: list[Path] = [
    ("sandbox", "chroot"),
    ("sandbox", "namespaces", "mount"),
    ("sandbox", "namespaces", "pid"),
    ("sandbox", "namespaces", "uts"),
    ("sandbox", "namespaces", "ipc"),
    ("sandbox", "namespaces", "net"),
    ("control_context", "requires_strict_sandbox"),
    ("control_context", "requires_resource_reservation"),
]

STRING_MAP_FIELDS = ("execution.env", "metadata", "control_context.labels")

STRING_MAP_PATHS: list[Path] = [
    ("execution", "env"),
    ("metadata",),
    ("control_context", "labels"),
]

# Fields whose type says "or null": null must mean exactly what absence means.
NULLABLE_PATHS: list[Path] = [
    ("task_id",),
    ("execution", "program"),
    ("execution", "script"),
    ("execution", "interpreter"),
    ("limits", "cpu_time_sec"),
    ("limits", "memory_bytes"),
    ("limits", "pids_max"),
    ("sandbox", "workspace_subdir"),
    ("sandbox", "rootfs"),
    ("sandbox", "namespaces"),
    ("policy",),
    ("control_context",),
    ("control_context", "control_plane_mode"),
    ("control_context", "tenant"),
    ("control_context", "owner"),
    ("control_context", "expected_runtime_profile"),
]

# Fields whose type does not say "or null".
NON_NULLABLE_PATHS: list[Path] = [
    ("execution",),
    ("execution", "kind"),
    ("execution", "args"),
    ("execution", "args", 0),
    ("execution", "env"),
    ("execution", "env", "K"),
    ("execution", "interpreter", 0),
    ("limits",),
    ("limits", "wall_time_ms"),
    ("limits", "stdout_max_bytes"),
    ("limits", "stderr_max_bytes"),
    ("sandbox",),
    ("sandbox", "profile"),
    ("sandbox", "chroot"),
    ("sandbox", "namespaces", "net"),
    ("policy", "capability_mode"),
    ("control_context", "requires_strict_sandbox"),
    ("control_context", "requires_resource_reservation"),
    ("control_context", "labels"),
    ("control_context", "labels", "k"),
    ("metadata",),
    ("metadata", "k"),
]


def minimal() -> dict[str, Any]:
    """
    The smallest valid submit request.
    """
    return {"execution": {"kind": "command", "program": "true"}}


def full() -> dict[str, Any]:
    """
    A valid request that sets every field the contract defines, with the
    containers the path tables reach into already present.
    """
    return {
        "task_id": "task-1",
        "execution": {
            "kind": "command",
            "program": "echo",
            "args": ["a", "b"],
            "interpreter": ["sh"],
            "env": {"K": "v"},
        },
        "limits": {
            "wall_time_ms": 1000,
            "cpu_time_sec": 2,
            "memory_bytes": 3,
            "pids_max": 4,
            "stdout_max_bytes": 5,
            "stderr_max_bytes": 6,
        },
        "sandbox": {
            "profile": "linux_sandbox",
            "workspace_subdir": "w",
            "rootfs": "/srv/root",
            "chroot": True,
            "namespaces": {
                "mount": True,
                "pid": False,
                "uts": True,
                "ipc": False,
                "net": True,
            },
        },
        "policy": {"capability_mode": "strict"},
        "control_context": {
            "control_plane_mode": "managed",
            "tenant": "alice",
            "owner": "bob",
            "expected_runtime_profile": "linux",
            "requires_strict_sandbox": True,
            "requires_resource_reservation": True,
            "labels": {"k": "v"},
        },
        "metadata": {"k": "v"},
    }


def with_value(base: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    """
    A deep copy of C{base} with the item at C{path} set to C{value}, creating
    missing intermediate objects.
    """
    result = copy.deepcopy(base)
    node: Any = result
    for key in path[:-1]:
        if isinstance(node, dict) and not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return result


def without(base: dict[str, Any], path: Path) -> dict[str, Any]:
    """
    A deep copy of C{base} without the item at C{path}.
    """
    result = copy.deepcopy(base)
    node: Any = result
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return result


def has_object(base: dict[str, Any], path: Path) -> bool:
    """
    Whether C{base} holds an object at C{path}.
    """
    node: Any = base
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return isinstance(node, dict)


def dotted(path: Path) -> str:
    """
    The field path as the error details spell it: C{a.b[0]}, C{a.b["k"]}.
    """
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        elif text in STRING_MAP_FIELDS:
            text += f"[{json.dumps(key)}]"
        else:
            text += f".{key}" if text else key
    return text


def model(**changes: Any) -> SubmitRequest:
    """
    A valid command request model with C{changes} applied.
    """
    fields: dict[str, Any] = {"execution": ExecutionSpec(kind="command", program="true")}
    fields.update(changes)
    return SubmitRequest(**fields)


class _InvalidInputMixin:
    """
    Assertions shared by the test cases below.
    """

    def assertInvalid(
        self,
        function: Callable[..., Any],
        argument: Any,
        path: str | None = None,
        contains: str | None = None,
        exception: type = InvalidInput,
    ) -> InvalidInput:
        """
        Assert C{function(argument)} raises exactly C{exception}, whose detail
        names C{path} first (when given) and contains C{contains}.
        """
        try:
            function(argument)
        except InvalidInput as error:
            self.assertIs(  # type: ignore[attr-defined]
                type(error), exception, f"{argument!r}: {error.message}"
            )
            self.assertTrue(  # type: ignore[attr-defined]
                error.message.startswith("invalid input: "), error.message
            )
            if path is not None:
                self.assertTrue(  # type: ignore[attr-defined]
                    error.detail.startswith(path + ":"),
                    f"{argument!r}: expected detail about {path!r}, got "
                    f"{error.detail!r}",
                )
            if contains is not None:
                self.assertIn(contains, error.detail)  # type: ignore[attr-defined]
            return error
        self.fail(  # type: ignore[attr-defined]
            f"{function.__name__}({argument!r}) did not raise {exception.__name__}"
        )
        raise AssertionError("unreachable")


class PathHelperTests(SynchronousTestCase):
    """
    The table helpers of this module build what the tables mean.
    """

    def test_dotted(self) -> None:
        """
        L{dotted} spells array indices and map keys as the details do.
        """
        self.assertEqual(dotted(("limits", "pids_max")), "limits.pids_max")
        self.assertEqual(dotted(("execution", "args", 2)), "execution.args[2]")
        self.assertEqual(dotted(("execution", "env", "K")), 'execution.env["K"]')
        self.assertEqual(dotted(("metadata", "k")), 'metadata["k"]')
        self.assertEqual(
            dotted(("control_context", "labels", "k")), 'control_context.labels["k"]'
        )

    def test_with_value_and_without(self) -> None:
        """
        L{with_value} sets through missing containers and L{without} removes,
        neither touching the original; L{has_object} finds objects.
        """
        base = minimal()
        changed = with_value(base, ("limits", "pids_max"), 3)
        self.assertEqual(changed["limits"], {"pids_max": 3})
        self.assertNotIn("limits", base)
        removed = without(base, ("execution", "program"))
        self.assertEqual(removed["execution"], {"kind": "command"})
        self.assertEqual(base, minimal())
        self.assertTrue(has_object(full(), ("sandbox", "namespaces")))
        self.assertFalse(has_object(minimal(), ("limits",)))
        self.assertFalse(has_object(full(), ("task_id",)))


class ParseJsonBodyTests(_InvalidInputMixin, SynchronousTestCase):
    """
    L{parse_json_body} turns bytes into one JSON value or L{InvalidInput}.
    """

    def test_valid(self) -> None:
        """
        Any JSON value is returned as Python data, surrounded by JSON white
        space or not; non-ASCII UTF-8 and escaped surrogate pairs decode.
        """
        self.assertEqual(
            parse_json_body(b' \n{"a": [1, 2.5, true, null, "\xc3\xa9"]}\r\n\t'),
            {"a": [1, 2.5, True, None, "\u00e9"]},
        )
        self.assertEqual(parse_json_body(b"[]"), [])
        self.assertEqual(parse_json_body(b'"\\ud83d\\ude00"'), "\U0001f600")
        self.assertEqual(parse_json_body(b'"\\\\ud800"'), "\\ud800")
        self.assertEqual(parse_json_body(b"7"), 7)

    def test_size_limit(self) -> None:
        """
        A body of exactly L{MAX_BODY_BYTES} is parsed; one byte more is
        L{PayloadTooLarge}, which is an C{invalid_input} with HTTP 413,
        raised before the content is looked at.
        """
        self.assertEqual(MAX_BODY_BYTES, 2 * 1024 * 1024)
        body = b"{}" + b" " * (MAX_BODY_BYTES - 2)
        self.assertEqual(parse_json_body(body), {})
        error = self.assertInvalid(
            parse_json_body, body + b" ", exception=PayloadTooLarge
        )
        self.assertIsInstance(error, InvalidInput)
        self.assertEqual(error.http_status, 413)
        self.assertEqual(error.code, "invalid_input")
        self.assertIn(str(MAX_BODY_BYTES), error.detail)
        self.assertInvalid(
            parse_json_body, b"\xff" * (MAX_BODY_BYTES + 1), exception=PayloadTooLarge
        )

    def test_invalid(self) -> None:
        """
        Bodies that are not strict UTF-8 JSON raise L{InvalidInput} (HTTP
        400) mentioning JSON or UTF-8.
        """
        cases = [
            (b"", "JSON"),
            (b"   ", "JSON"),
            (b"{", "JSON"),
            (b'{"a": 1,}', "JSON"),
            (b"[1, 2", "JSON"),
            (b'{"a": 1} x', "JSON"),
            (b"{} {}", "JSON"),
            (b"{'a': 1}", "JSON"),
            (b'{"a": 01}', "JSON"),
            (b'{"a": .5}', "JSON"),
            (b'{"a": +1}', "JSON"),
            (b'{"a": "\x01"}', "JSON"),
            (b'{"a": "\\x41"}', "JSON"),
            (b"NaN", "NaN"),
            (b'{"a": Infinity}', "Infinity"),
            (b'{"a": [-Infinity]}', "-Infinity"),
            (b'{"a": 1, "a": 1}', "duplicate key"),
            (b'{"x": {"b": 1, "b": 2}}', "duplicate key"),
            (b"\xef\xbb\xbf{}", "JSON"),
            (b"\xff{}", "UTF-8"),
            (b'{"a": "\xc3"}', "UTF-8"),
            (b'{"a": "\xed\xa0\x80"}', "UTF-8"),
            ('{"a": 1}'.encode("utf-16"), "UTF-8"),
            (b"[" * 100_000, "nested too deeply"),
            (b'{"a": ' * 50_000, "nested too deeply"),
            (b"1" * 5000, "too many digits"),
            (b'"\\ud800"', "surrogate"),
            (b'{"k": ["ok", {"\\udc00": 1}]}', "surrogate"),
            (b'"\\ude00\\ud83d"', "surrogate"),
        ]
        for body, contains in cases:
            error = self.assertInvalid(parse_json_body, body, contains=contains)
            self.assertEqual(error.http_status, 400)

    def test_type_errors_are_not_syntax_errors(self) -> None:
        """
        Syntactically valid JSON of any shape is not rejected here.
        """
        for body in (b"null", b"true", b"1e400", b"-0", b'"x"', b"[[[]]]"):
            parse_json_body(body)
        self.assertEqual(parse_json_body(b"1e400"), float("inf"))


class DecodeSubmitTests(_InvalidInputMixin, SynchronousTestCase):
    """
    L{decode_submit} enforces the schema of a C{SubmitTaskRequest} and fills
    defaults.
    """

    def test_minimal_defaults(self) -> None:
        """
        A request with only an execution gets every default of the contract.
        """
        request = decode_submit(minimal())
        self.assertEqual(
            request,
            SubmitRequest(
                execution=ExecutionSpec(
                    kind="command",
                    program="true",
                    args=(),
                    script=None,
                    interpreter=None,
                    env={},
                ),
                task_id=None,
                limits=ResourceLimits(
                    wall_time_ms=300_000,
                    cpu_time_sec=None,
                    memory_bytes=None,
                    pids_max=None,
                    stdout_max_bytes=4_194_304,
                    stderr_max_bytes=4_194_304,
                ),
                sandbox=SandboxPolicy(
                    profile="process",
                    workspace_subdir=None,
                    rootfs=None,
                    chroot=False,
                    namespaces=None,
                ),
                capability_mode=None,
                control_context=None,
                metadata={},
            ),
        )

    def test_full(self) -> None:
        """
        Every field of a complete request lands in the model, with arrays as
        tuples and string maps as dicts.
        """
        request = decode_submit(full())
        self.assertEqual(
            request,
            SubmitRequest(
                task_id="task-1",
                execution=ExecutionSpec(
                    kind="command",
                    program="echo",
                    args=("a", "b"),
                    interpreter=("sh",),
                    env={"K": "v"},
                ),
                limits=ResourceLimits(
                    wall_time_ms=1000,
                    cpu_time_sec=2,
                    memory_bytes=3,
                    pids_max=4,
                    stdout_max_bytes=5,
                    stderr_max_bytes=6,
                ),
                sandbox=SandboxPolicy(
                    profile="linux_sandbox",
                    workspace_subdir="w",
                    rootfs="/srv/root",
                    chroot=True,
                    namespaces=Namespaces(
                        mount=True, pid=False, uts=True, ipc=False, net=True
                    ),
                ),
                capability_mode="strict",
                control_context=ControlContext(
                    control_plane_mode="managed",
                    tenant="alice",
                    owner="bob",
                    expected_runtime_profile="linux",
                    requires_strict_sandbox=True,
                    requires_resource_reservation=True,
                    labels={"k": "v"},
                ),
                metadata={"k": "v"},
            ),
        )
        self.assertIsInstance(request.execution.args, tuple)
        self.assertIsInstance(request.execution.interpreter, tuple)
        self.assertIsInstance(request.execution.env, dict)

    def test_decoded_containers_are_copies(self) -> None:
        """
        Mutating the parsed input afterwards does not change the model.
        """
        body = full()
        request = decode_submit(body)
        body["execution"]["env"]["K"] = "changed"
        body["metadata"]["new"] = "x"
        body["control_context"]["labels"].clear()
        self.assertEqual(request.execution.env, {"K": "v"})
        self.assertEqual(request.metadata, {"k": "v"})
        self.assertEqual(request.control_context, decode_submit(full()).control_context)

    def test_body_not_an_object(self) -> None:
        """
        Any JSON value but an object is rejected as the request body.
        """
        for body in ([], [minimal()], "x", 1, 1.5, True, None):
            self.assertInvalid(
                decode_submit, body, "request body", "expected an object"
            )

    def test_missing_required(self) -> None:
        """
        C{execution} and C{execution.kind} are required.
        """
        self.assertInvalid(decode_submit, {}, "execution", "missing required field")
        self.assertInvalid(
            decode_submit, {"task_id": "x"}, "execution", "missing required field"
        )
        self.assertInvalid(
            decode_submit,
            {"execution": {"program": "ls"}},
            "execution.kind",
            "missing required field",
        )

    def test_command_fields_not_required_by_schema(self) -> None:
        """
        The kind-specific requirements (C{program}, C{script}) are semantic
        rules, so decoding accepts a command without a program.
        """
        request = decode_submit({"execution": {"kind": "command"}})
        self.assertIsNone(request.execution.program)
        request = decode_submit({"execution": {"kind": "script"}})
        self.assertIsNone(request.execution.script)

    def test_null_where_not_allowed(self) -> None:
        """
        C{null} in a field whose type does not say "or null" is rejected with
        the field path, at every nesting level.
        """
        for path in NON_NULLABLE_PATHS:
            self.assertInvalid(
                decode_submit, with_value(full(), path, None), dotted(path), "null"
            )

    def test_null_means_absent(self) -> None:
        """
        C{null} in an "or null" field decodes exactly like the absent key.
        """
        for base in (minimal(), full()):
            for path in NULLABLE_PATHS:
                nulled = with_value(base, path, None)
                absent = without(nulled, path)
                self.assertEqual(
                    decode_submit(nulled), decode_submit(absent), repr(path)
                )

    def test_uint_slots(self) -> None:
        """
        Unsigned-integer fields take JSON integers from 0 to 2^64-1 and
        reject booleans, floats (even integral ones), negative or too large
        numbers, strings and containers.
        """
        bad = [
            (True, "expected a non-negative integer, got a boolean"),
            (False, "expected a non-negative integer, got a boolean"),
            (1.0, "got a number with a fraction or exponent"),
            (0.0, "got a number with a fraction or exponent"),
            (1.5, "got a number with a fraction or exponent"),
            (1e20, "got a number with a fraction or exponent"),
            (float("inf"), "got a number with a fraction or exponent"),
            (-1, "expected a non-negative integer, got a negative number"),
            (-(2**64), "expected a non-negative integer, got a negative number"),
            (UINT64_MAX + 1, "larger than the maximum 18446744073709551615"),
            (10**30, "larger than the maximum"),
            ("5", "expected a non-negative integer, got a string"),
            ([], "got an array"),
            ({}, "got an object"),
        ]
        for path in UINT_PATHS:
            for value, contains in bad:
                self.assertInvalid(
                    decode_submit,
                    with_value(minimal(), path, value),
                    dotted(path),
                    contains,
                )
            for value in (0, 1, UINT64_MAX):
                request = decode_submit(with_value(minimal(), path, value))
                self.assertEqual(getattr(request.limits, path[1]), value)
                self.assertIs(type(getattr(request.limits, path[1])), int)

    def test_string_slots(self) -> None:
        """
        String fields reject every other JSON type.
        """
        for path in STRING_PATHS:
            for value, kind in [
                (1, "an integer"),
                (1.5, "a number"),
                (True, "a boolean"),
                ([], "an array"),
                (["x"], "an array"),
                ({}, "an object"),
            ]:
                self.assertInvalid(
                    decode_submit,
                    with_value(full(), path, value),
                    dotted(path),
                    f"expected a string, got {kind}",
                )

    def test_bool_slots(self) -> None:
        """
        Boolean fields accept only C{true} and C{false}, not 0, 1 or strings.
        """
        for path in BOOL_PATHS:
            values: tuple[Any, ...] = (0, 1, "true", "false", [], {}, 1.0)
            for value in values:
                self.assertInvalid(
                    decode_submit,
                    with_value(full(), path, value),
                    dotted(path),
                    "expected a boolean",
                )

    def test_container_types(self) -> None:
        """
        Object and array fields reject the wrong JSON container or a scalar.
        """
        cases: list[tuple[Path, Any, str]] = [
            (("execution",), [], "expected an object"),
            (("execution",), "ls", "expected an object"),
            (("execution", "args"), "ls -l", "expected an array of strings"),
            (("execution", "args"), {"0": "x"}, "expected an array of strings"),
            (("execution", "interpreter"), "sh", "expected an array of strings"),
            (("execution", "env"), [["K", "v"]], "expected an object"),
            (("execution", "env"), "K=v", "expected an object"),
            (("limits",), [], "expected an object"),
            (("limits",), 5, "expected an object"),
            (("sandbox",), "process", "expected an object"),
            (("sandbox", "namespaces"), True, "expected an object"),
            (("sandbox", "namespaces"), ["net"], "expected an object"),
            (("policy",), "strict", "expected an object"),
            (("policy",), [], "expected an object"),
            (("control_context",), [], "expected an object"),
            (("control_context",), "alice", "expected an object"),
            (("control_context", "labels"), ["k"], "expected an object"),
            (("metadata",), "x", "expected an object"),
            (("metadata",), [], "expected an object"),
        ]
        for path, value, contains in cases:
            self.assertInvalid(
                decode_submit, with_value(full(), path, value), dotted(path), contains
            )

    def test_nested_element_paths(self) -> None:
        """
        A bad element inside an array or a string map is named by its index
        or key.
        """
        body = with_value(minimal(), ("execution", "args"), ["a", "b", 3])
        error = self.assertInvalid(decode_submit, body)
        self.assertEqual(error.detail, "execution.args[2]: expected a string, got an integer")
        body = with_value(full(), ("execution", "interpreter"), ["sh", None])
        self.assertInvalid(decode_submit, body, "execution.interpreter[1]", "null")
        for path in STRING_MAP_PATHS:
            for value, contains in [
                (1, "an integer"),
                (True, "a boolean"),
                (["v"], "an array"),
                ({"v": "w"}, "an object"),
            ]:
                body = with_value(full(), path, {"good": "v", "bad key": value})
                error = self.assertInvalid(decode_submit, body)
                self.assertEqual(
                    error.detail,
                    f'{dotted(path)}["bad key"]: expected a string, got {contains}',
                )

    def test_unknown_enum_values(self) -> None:
        """
        Enum fields accept only the contract's spellings, case-sensitively.
        """
        cases: list[tuple[Path, list[str]]] = [
            (("execution", "kind"), ["Command", "shell", "", " command"]),
            (("sandbox", "profile"), ["docker", "Process", "linux-sandbox", ""]),
            (("policy", "capability_mode"), ["STRICT", "best_effort", ""]),
        ]
        for path, values in cases:
            for value in values:
                self.assertInvalid(
                    decode_submit,
                    with_value(full(), path, value),
                    dotted(path),
                    f"unknown value {json.dumps(value)}",
                )
            self.assertInvalid(
                decode_submit, with_value(full(), path, 1), dotted(path), "string"
            )

    def test_enum_values(self) -> None:
        """
        Every known enum value decodes to itself.
        """
        for kind in ("command", "script"):
            body = with_value(minimal(), ("execution", "kind"), kind)
            self.assertEqual(decode_submit(body).execution.kind, kind)
        for profile in ("process", "linux_sandbox"):
            body = with_value(minimal(), ("sandbox", "profile"), profile)
            self.assertEqual(decode_submit(body).sandbox.profile, profile)
        for mode in ("adaptive", "strict"):
            body = with_value(minimal(), ("policy", "capability_mode"), mode)
            self.assertEqual(decode_submit(body).capability_mode, mode)

    def test_policy_without_mode(self) -> None:
        """
        A C{policy} that is absent, C{null}, or an object without
        C{capability_mode} leaves the mode unset, so the server's default
        mode applies.
        """
        self.assertIsNone(decode_submit(minimal()).capability_mode)
        for policy in (None, {}, {"other": "strict"}):
            body = with_value(minimal(), ("policy",), policy)
            self.assertIsNone(decode_submit(body).capability_mode, repr(policy))

    def test_namespaces_defaults(self) -> None:
        """
        A C{namespaces} object takes each missing key's own default; a
        missing or null one stays unset.
        """
        for given_value, expected in [
            ({}, Namespaces()),
            ({"net": True}, Namespaces(net=True)),
            ({"mount": False, "ipc": False}, Namespaces(mount=False, ipc=False)),
        ]:
            body = with_value(minimal(), ("sandbox", "namespaces"), given_value)
            self.assertEqual(decode_submit(body).sandbox.namespaces, expected)
        self.assertEqual(
            Namespaces(), Namespaces(mount=True, pid=True, uts=True, ipc=True, net=False)
        )
        body = with_value(minimal(), ("sandbox", "profile"), "linux_sandbox")
        self.assertIsNone(decode_submit(body).sandbox.namespaces)

    def test_partial_objects_take_defaults(self) -> None:
        """
        Objects with some keys missing get the defaults for the rest.
        """
        body = with_value(minimal(), ("limits", "pids_max"), 7)
        self.assertEqual(decode_submit(body).limits, ResourceLimits(pids_max=7))
        body = with_value(minimal(), ("sandbox", "workspace_subdir"), "w")
        self.assertEqual(
            decode_submit(body).sandbox, SandboxPolicy(workspace_subdir="w")
        )
        body = with_value(minimal(), ("control_context",), {})
        self.assertEqual(decode_submit(body).control_context, ControlContext())
        body = with_value(minimal(), ("control_context", "owner"), "bob")
        self.assertEqual(decode_submit(body).control_context, ControlContext(owner="bob"))

    def test_unknown_keys_ignored(self) -> None:
        """
        Unknown keys at every level, whatever their value, change nothing.
        """
        for base in (minimal(), full()):
            expected = decode_submit(base)
            for container in [
                (),
                ("execution",),
                ("limits",),
                ("sandbox",),
                ("sandbox", "namespaces"),
                ("policy",),
                ("control_context",),
            ]:
                if not has_object(base, container):
                    # Adding the container would change the request.
                    continue
                for value in (None, 1, -1.5, "x", [None], {"a": None}, True):
                    body = with_value(base, container + ("unknown_key",), value)
                    self.assertEqual(decode_submit(body), expected, repr(container))

    def test_strings_kept_as_given(self) -> None:
        """
        Decoding does not trim or otherwise change strings.
        """
        body = full()
        body["task_id"] = " id "
        body["execution"]["program"] = "  ls "
        body["control_context"]["tenant"] = " alice "
        body["metadata"] = {" k ": " v "}
        request = decode_submit(body)
        self.assertEqual(request.task_id, " id ")
        self.assertEqual(request.execution.program, "  ls ")
        self.assertEqual(request.tenant, " alice ")
        self.assertEqual(request.metadata, {" k ": " v "})

    def test_unencodable_strings(self) -> None:
        """
        A string holding a lone surrogate (possible when the value did not
        come from L{parse_json_body}) is rejected where it is kept.
        """
        self.assertInvalid(
            decode_submit,
            with_value(minimal(), ("execution", "program"), "a\ud800"),
            "execution.program",
            "surrogate",
        )
        self.assertInvalid(
            decode_submit,
            with_value(minimal(), ("metadata",), {"\udc00": "v"}),
            "metadata key",
            "surrogate",
        )
        self.assertInvalid(
            decode_submit,
            with_value(minimal(), ("execution", "args"), ["\udc00"]),
            "execution.args[0]",
        )

    def test_first_error_in_field_order(self) -> None:
        """
        With several schema errors, the one in the earliest field (in the
        contract's order) is reported.
        """
        cases: list[tuple[list[tuple[Path, Any]], str]] = [
            ([(("task_id",), 1), (("execution",), None)], "task_id"),
            ([(("execution", "kind"), "x"), (("limits",), None)], "execution.kind"),
            (
                [(("execution", "kind"), "x"), (("execution", "env"), [])],
                "execution.kind",
            ),
            ([(("limits", "wall_time_ms"), -1), (("sandbox",), 1)], "limits.wall_time_ms"),
            ([(("sandbox", "chroot"), 1), (("policy",), 1)], "sandbox.chroot"),
            ([(("policy",), 1), (("control_context",), 1)], "policy"),
            ([(("control_context",), 1), (("metadata",), 1)], "control_context"),
        ]
        for changes, path in cases:
            body = full()
            for change_path, value in changes:
                body = with_value(body, change_path, value)
            self.assertInvalid(decode_submit, body, path)

    def test_round_trip(self) -> None:
        """
        The wire form a model renders decodes back to an equal model,
        directly and through JSON text.
        """
        requests = [
            decode_submit(minimal()),
            decode_submit(full()),
            model(),
            model(
                execution=ExecutionSpec(
                    kind="script",
                    script="echo hi\n",
                    interpreter=("bash", "-e"),
                    env={"B": "2", "A": "1"},
                    args=("kept",),
                ),
                limits=ResourceLimits(stdout_max_bytes=UINT64_MAX),
                sandbox=SandboxPolicy(namespaces=Namespaces(net=True)),
                capability_mode="adaptive",
                control_context=ControlContext(tenant="t"),
                metadata={"\u00e9": "\U0001f600"},
            ),
        ]
        for request in requests:
            self.assertEqual(decode_submit(request.to_json()), request)
            text = json.dumps(request.to_json(), ensure_ascii=False).encode("utf-8")
            self.assertEqual(decode_submit(parse_json_body(text)), request)


class ValidateSubmitTests(_InvalidInputMixin, SynchronousTestCase):
    """
    L{validate_submit} applies the semantic rules in order.
    """

    def test_valid(self) -> None:
        """
        Requests within every rule pass.
        """
        for request in [
            model(),
            decode_submit(full()),
            model(
                execution=ExecutionSpec(
                    kind="script", script="x", program="  ", interpreter=("python3",)
                )
            ),
            model(execution=ExecutionSpec(kind="script", script="x", program="")),
            model(execution=ExecutionSpec(kind="script", script="x", args=("a",))),
            model(execution=ExecutionSpec(kind="command", program="ls", script=" \n")),
            model(
                execution=ExecutionSpec(
                    kind="command", program="ls", interpreter=(), env={" A": "", "B ": "="}
                )
            ),
            model(
                execution=ExecutionSpec(kind="command", program="ls", interpreter=(" ",))
            ),
            model(limits=ResourceLimits(wall_time_ms=1, cpu_time_sec=1, memory_bytes=1, pids_max=1)),
            model(limits=ResourceLimits(stdout_max_bytes=UINT64_MAX)),
            model(sandbox=SandboxPolicy(rootfs="", chroot=False)),
            model(sandbox=SandboxPolicy(profile="linux_sandbox", chroot=True, rootfs="r")),
            model(control_context=ControlContext(labels={"x y": "="}, tenant=" t ")),
            model(metadata={"": "", "=": " "}),
        ]:
            validate_submit(request)

    def test_task_id(self) -> None:
        """
        C{task_id} must be 1 to 128 characters of C{[A-Za-z0-9._-]}, without
        surrounding white space, and not C{.} or C{..}.
        """
        for task_id in [
            "a",
            "A-b_c.1",
            "2b0f3c8e-6a41-4c39-9a57-0c1d2e3f4a5b",
            "...",
            ".hidden",
            "a..b",
            "-",
            "x" * 128,
        ]:
            validate_submit(model(task_id=task_id))
        for task_id, contains in [
            ("", "empty"),
            ("   ", "empty"),
            ("\u3000", "empty"),
            (" a", "whitespace"),
            ("a ", "whitespace"),
            ("\ta", "whitespace"),
            ("a\n", "whitespace"),
            ("a\u00a0", "whitespace"),
            ("a b", "ASCII"),
            ("a/b", "ASCII"),
            ("a\\b", "ASCII"),
            ("\u00e9t\u00e9", "ASCII"),
            ("\uff41", "ASCII"),
            ("a\x00", "ASCII"),
            ("a:b", "ASCII"),
            ("a\x1c", "ASCII"),
            (".", "'.'"),
            ("..", "'..'"),
            ("x" * 129, "128"),
        ]:
            self.assertInvalid(validate_submit, model(task_id=task_id), "task_id", contains)

    def test_command_rules(self) -> None:
        """
        A command needs a non-blank C{program} and must not carry a script.
        """
        for execution, path in [
            (ExecutionSpec(kind="command"), "execution.program"),
            (ExecutionSpec(kind="command", program=""), "execution.program"),
            (ExecutionSpec(kind="command", program=" \t\n"), "execution.program"),
            (ExecutionSpec(kind="command", program="\u2003"), "execution.program"),
            (ExecutionSpec(kind="command", program="ls", script="x"), "execution.script"),
            (ExecutionSpec(kind="command", program="ls", script=" x "), "execution.script"),
        ]:
            self.assertInvalid(validate_submit, model(execution=execution), path)

    def test_script_rules(self) -> None:
        """
        A script needs a non-blank C{script}, must not carry a program, and a
        given interpreter must be non-empty with a non-blank first element.
        """
        for execution, path in [
            (ExecutionSpec(kind="script"), "execution.script"),
            (ExecutionSpec(kind="script", script=""), "execution.script"),
            (ExecutionSpec(kind="script", script="\n\n"), "execution.script"),
            (ExecutionSpec(kind="script", script="x", program="sh"), "execution.program"),
            (ExecutionSpec(kind="script", script="x", interpreter=()), "execution.interpreter"),
            (
                ExecutionSpec(kind="script", script="x", interpreter=("", "-c")),
                "execution.interpreter[0]",
            ),
            (
                ExecutionSpec(kind="script", script="x", interpreter=(" ",)),
                "execution.interpreter[0]",
            ),
        ]:
            self.assertInvalid(validate_submit, model(execution=execution), path)

    def test_blank_means_unicode_white_space(self) -> None:
        """
        "Blank" means empty after trimming Unicode White_Space: the ASCII
        information separators (0x1c-0x1f), which Python's C{str.strip}
        would also remove, are content.
        """
        for text in ("\x1c", "\x1f", "\x1d\x1e"):
            validate_submit(
                model(execution=ExecutionSpec(kind="command", program=text))
            )
            validate_submit(model(control_context=ControlContext(owner=text)))
        for text in ("", "\u0085", "\u00a0", "\u2007", "\u202f", "\u205f"):
            self.assertInvalid(
                validate_submit,
                model(execution=ExecutionSpec(kind="command", program=text)),
                "execution.program",
            )

    def test_unknown_kind_in_model(self) -> None:
        """
        A model built in code with an unknown kind is rejected, not run.
        """
        self.assertInvalid(
            validate_submit,
            model(execution=ExecutionSpec(kind="shell", program="ls")),
            "execution.kind",
        )

    def test_map_keys(self) -> None:
        """
        C{env} and C{labels} keys must be non-blank and free of C{=}.
        """
        for key, contains in [
            ("", "blank"),
            ("  ", "blank"),
            ("\u2028", "blank"),
            ("A=B", "'='"),
            ("=", "'='"),
        ]:
            env = {"OK": "1", key: "v"}
            env_request = model(
                execution=ExecutionSpec(kind="command", program="ls", env=env)
            )
            self.assertInvalid(validate_submit, env_request, "execution.env", contains)
            label_request = model(control_context=ControlContext(labels={key: "v"}))
            self.assertInvalid(
                validate_submit, label_request, "control_context.labels", contains
            )

    def test_limits(self) -> None:
        """
        Zero C{wall_time_ms}, output limits, and zero optional limits
        (C{cpu_time_sec}, C{memory_bytes}, C{pids_max}) are rejected.
        """
        for name in (
            "wall_time_ms",
            "stdout_max_bytes",
            "stderr_max_bytes",
            "cpu_time_sec",
            "memory_bytes",
            "pids_max",
        ):
            request = model(limits=ResourceLimits(**{name: 0}))
            self.assertInvalid(validate_submit, request, f"limits.{name}", "greater than 0")
            validate_submit(model(limits=ResourceLimits(**{name: 1})))

    def test_workspace_subdir(self) -> None:
        """
        C{workspace_subdir} must be relative with no C{..} component; C{.}
        components and the empty string are fine.
        """
        for subdir in ["", ".", "./a", "a/./b", "a/b/", "a..b", "..a", "a/...", "a//b"]:
            request = model(sandbox=SandboxPolicy(workspace_subdir=subdir))
            validate_submit(request)
        for subdir, contains in [
            ("/", "relative"),
            ("/tmp", "relative"),
            ("//x", "relative"),
            ("..", ".."),
            ("../a", ".."),
            ("a/..", ".."),
            ("a/../b", ".."),
            ("a/../../..", ".."),
        ]:
            request = model(sandbox=SandboxPolicy(workspace_subdir=subdir))
            self.assertInvalid(
                validate_submit, request, "sandbox.workspace_subdir", contains
            )

    def test_chroot(self) -> None:
        """
        C{chroot} needs a non-blank C{rootfs} (checked first) and the
        C{linux_sandbox} profile.
        """
        for sandbox, path in [
            (SandboxPolicy(profile="linux_sandbox", chroot=True), "sandbox.rootfs"),
            (
                SandboxPolicy(profile="linux_sandbox", chroot=True, rootfs=" "),
                "sandbox.rootfs",
            ),
            (SandboxPolicy(profile="process", chroot=True), "sandbox.rootfs"),
            (SandboxPolicy(profile="process", chroot=True, rootfs="/r"), "sandbox.chroot"),
        ]:
            self.assertInvalid(validate_submit, model(sandbox=sandbox), path)

    def test_control_context_strings(self) -> None:
        """
        The four control-context strings must not be blank when present.
        """
        for name in ("control_plane_mode", "tenant", "owner", "expected_runtime_profile"):
            for value in ("", " ", "\n\t"):
                fields: dict[str, Any] = {name: value}
                request = model(control_context=ControlContext(**fields))
                self.assertInvalid(
                    validate_submit, request, f"control_context.{name}", "blank"
                )
            fields = {name: " x "}
            request = model(control_context=ControlContext(**fields))
            validate_submit(request)
            self.assertEqual(request.control_context, ControlContext(**fields))

    def test_output_bound_not_checked(self) -> None:
        """
        The 2^63-1 bound on output limits is left to L{check_output_limits}.
        """
        request = model(
            limits=ResourceLimits(stdout_max_bytes=UINT64_MAX, stderr_max_bytes=UINT64_MAX)
        )
        validate_submit(request)

    def test_order(self) -> None:
        """
        A request breaking two rules reports the one checked first: task_id,
        execution (program/script/interpreter, then env), limits (wall time,
        outputs, then the optional limits), sandbox (subdir, rootfs,
        profile), control context (labels, then the strings).
        """
        bad_id = {"task_id": ".."}
        no_program = {"execution": ExecutionSpec(kind="command", env={"=": "v"}, script="s")}
        script_and_program = {
            "execution": ExecutionSpec(kind="command", program="ls", script="s", env={"": ""})
        }
        bad_interpreter = {
            "execution": ExecutionSpec(
                kind="script", script="x", interpreter=(), env={"": ""}
            )
        }
        bad_env = {"execution": ExecutionSpec(kind="command", program="ls", env={"": ""})}
        zero_wall = {
            "limits": ResourceLimits(wall_time_ms=0, stdout_max_bytes=0, memory_bytes=0)
        }
        zero_stdout = {"limits": ResourceLimits(stdout_max_bytes=0, stderr_max_bytes=0)}
        zero_stderr = {"limits": ResourceLimits(stderr_max_bytes=0, cpu_time_sec=0)}
        zero_cpu = {"limits": ResourceLimits(cpu_time_sec=0, memory_bytes=0, pids_max=0)}
        zero_memory = {"limits": ResourceLimits(memory_bytes=0, pids_max=0)}
        zero_pids = {"limits": ResourceLimits(pids_max=0)}
        bad_subdir = {
            "sandbox": SandboxPolicy(workspace_subdir="/abs", chroot=True, profile="process")
        }
        no_rootfs = {"sandbox": SandboxPolicy(chroot=True, profile="process")}
        wrong_profile = {"sandbox": SandboxPolicy(chroot=True, rootfs="/r")}
        bad_label = {
            "control_context": ControlContext(labels={"a=b": "c"}, tenant="", owner="")
        }
        blank_mode = {"control_context": ControlContext(control_plane_mode=" ", tenant="")}
        blank_tenant = {"control_context": ControlContext(tenant=" ", owner="")}
        blank_owner = {"control_context": ControlContext(owner="", expected_runtime_profile="")}
        blank_profile = {"control_context": ControlContext(expected_runtime_profile="")}
        ordered: list[tuple[dict[str, Any], str]] = [
            (bad_id, "task_id"),
            (no_program, "execution.program"),
            (script_and_program, "execution.script"),
            (bad_interpreter, "execution.interpreter"),
            (bad_env, "execution.env"),
            (zero_wall, "limits.wall_time_ms"),
            (zero_stdout, "limits.stdout_max_bytes"),
            (zero_stderr, "limits.stderr_max_bytes"),
            (zero_cpu, "limits.cpu_time_sec"),
            (zero_memory, "limits.memory_bytes"),
            (zero_pids, "limits.pids_max"),
            (bad_subdir, "sandbox.workspace_subdir"),
            (no_rootfs, "sandbox.rootfs"),
            (wrong_profile, "sandbox.chroot"),
            (bad_label, "control_context.labels"),
            (blank_mode, "control_context.control_plane_mode"),
            (blank_tenant, "control_context.tenant"),
            (blank_owner, "control_context.owner"),
            (blank_profile, "control_context.expected_runtime_profile"),
        ]
        for earlier_index, (earlier, path) in enumerate(ordered):
            self.assertInvalid(validate_submit, model(**earlier), path)
            for later, _ in ordered[earlier_index + 1 :]:
                if set(later) & set(earlier):
                    # Same field: a later case of the same group cannot be
                    # combined without replacing the earlier one.
                    continue
                self.assertInvalid(validate_submit, model(**{**later, **earlier}), path)


class CheckOutputLimitsTests(_InvalidInputMixin, SynchronousTestCase):
    """
    L{check_output_limits} bounds the output limits by 2^63-1.
    """

    def test_bound(self) -> None:
        """
        2^63-1 is accepted and anything above it rejected, for both streams.
        """
        self.assertEqual(OUTPUT_LIMIT_MAX, 2**63 - 1)
        both = ResourceLimits(
            stdout_max_bytes=OUTPUT_LIMIT_MAX, stderr_max_bytes=OUTPUT_LIMIT_MAX
        )
        check_output_limits(model(limits=both))
        for name in ("stdout_max_bytes", "stderr_max_bytes"):
            for value in (OUTPUT_LIMIT_MAX + 1, UINT64_MAX):
                request = model(limits=ResourceLimits(**{name: value}))
                self.assertInvalid(
                    check_output_limits, request, f"limits.{name}", str(OUTPUT_LIMIT_MAX)
                )

    def test_stdout_first(self) -> None:
        """
        With both limits too large, C{stdout_max_bytes} is reported.
        """
        request = model(
            limits=ResourceLimits(stdout_max_bytes=UINT64_MAX, stderr_max_bytes=UINT64_MAX)
        )
        self.assertInvalid(check_output_limits, request, "limits.stdout_max_bytes")


class CheckOutputCeilingTests(_InvalidInputMixin, SynchronousTestCase):
    """
    L{check_output_ceiling} bounds the output limits by the server's
    C{--max-output-preview-bytes}.
    """

    def test_at_ceiling(self) -> None:
        """
        Limits equal to the ceiling (and below it) are accepted.
        """
        check_output_ceiling(model(limits=ResourceLimits(stdout_max_bytes=4096, stderr_max_bytes=4096)), 4096)
        check_output_ceiling(model(limits=ResourceLimits(stdout_max_bytes=1, stderr_max_bytes=4095)), 4096)

    def test_above_ceiling(self) -> None:
        """
        One byte above the ceiling is C{invalid_input} naming the field,
        the ceiling and the flag, for either stream.
        """
        for name in ("stdout_max_bytes", "stderr_max_bytes"):
            request = model(limits=ResourceLimits(**{name: 16777217}))
            error = self.assertInvalid(lambda r: check_output_ceiling(r, 16777216), request, f"limits.{name}")
            self.assertEqual(
                error.detail, f"limits.{name}: must be at most 16777216 (--max-output-preview-bytes)"
            )

    def test_stdout_first(self) -> None:
        """
        With both limits above the ceiling, C{stdout_max_bytes} is reported.
        """
        request = model(limits=ResourceLimits(stdout_max_bytes=10, stderr_max_bytes=10))
        self.assertInvalid(lambda r: check_output_ceiling(r, 5), request, "limits.stdout_max_bytes")


class ParseSubmitTests(_InvalidInputMixin, SynchronousTestCase):
    """
    L{parse_submit} chains parsing, decoding and validation.
    """

    def test_valid(self) -> None:
        """
        A valid body gives the decoded request.
        """
        body = json.dumps(full()).encode("utf-8")
        self.assertEqual(parse_submit(body), decode_submit(full()))

    def test_each_stage(self) -> None:
        """
        Failures of every stage surface, and the output bound does not.
        """
        self.assertInvalid(
            parse_submit, b" " * (MAX_BODY_BYTES + 1), exception=PayloadTooLarge
        )
        self.assertInvalid(parse_submit, b"{", contains="not valid JSON")
        self.assertInvalid(parse_submit, b"[]", "request body")
        self.assertInvalid(
            parse_submit,
            b'{"execution": {"kind": "command", "program": " "}}',
            "execution.program",
        )
        body = with_value(minimal(), ("limits", "stderr_max_bytes"), UINT64_MAX)
        request = parse_submit(json.dumps(body).encode("ascii"))
        self.assertEqual(request.limits.stderr_max_bytes, UINT64_MAX)
        self.assertInvalid(check_output_limits, request, "limits.stderr_max_bytes")

    def test_schema_before_rules(self) -> None:
        """
        A schema error is reported even when an earlier field breaks a rule.
        """
        body = with_value(minimal(), ("task_id",), "..")
        body = with_value(body, ("metadata",), {"k": 1})
        self.assertInvalid(parse_submit, json.dumps(body).encode(), 'metadata["k"]')


class ImportTests(SynchronousTestCase):
    """
    The layer stays light enough for the CLI and the supervisor.
    """

    def test_no_twisted(self) -> None:
        """
        Importing L{execgo.core.submission} (and so every step) does not
        import Twisted.
        """
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import execgo.core.submission, sys; print('twisted' in sys.modules)",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "False"), result.stderr)


def _mutations(rng: random.Random) -> Iterator[Any]:
    """
    Random JSON values, biased toward the awkward ones.
    """
    scalars: Sequence[Any] = [
        None,
        True,
        False,
        0,
        -1,
        1,
        UINT64_MAX,
        UINT64_MAX + 1,
        1.5,
        1.0,
        "",
        " ",
        "..",
        "/",
        "a=b",
        "command",
        "script",
        "linux_sandbox",
        "strict",
    ]
    while True:
        choice = rng.random()
        if choice < 0.7:
            yield rng.choice(scalars)
        elif choice < 0.85:
            yield [rng.choice(scalars) for _ in range(rng.randrange(3))]
        else:
            yield {rng.choice(["", "k", "=", "net"]): rng.choice(scalars)}


def _all_paths(value: Any, prefix: Path = ()) -> list[Path]:
    """
    Every path into C{value}'s objects and arrays.
    """
    paths: list[Path] = []
    if isinstance(value, dict):
        for key, item in value.items():
            paths.append(prefix + (key,))
            paths.extend(_all_paths(item, prefix + (key,)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.append(prefix + (index,))
            paths.extend(_all_paths(item, prefix + (index,)))
    return paths


class RobustnessTests(_InvalidInputMixin, SynchronousTestCase):
    """
    No input makes the submit layer raise anything but L{InvalidInput}.
    """

    def test_random_mutations(self) -> None:
        """
        Replacing one to three values of a full request at random, the
        result is either a valid request or an L{InvalidInput}.
        """
        rng = random.Random(20260423)
        values = _mutations(rng)
        outcomes = {"valid": 0, "invalid": 0}
        for _ in range(2000):
            body = full()
            for _ in range(rng.randrange(1, 4)):
                body = with_value(body, rng.choice(_all_paths(body)), next(values))
            try:
                request = parse_submit(json.dumps(body).encode("utf-8"))
                check_output_limits(request)
            except InvalidInput as error:
                self.assertTrue(error.message.startswith("invalid input: "))
                outcomes["invalid"] += 1
            else:
                outcomes["valid"] += 1
        self.assertTrue(outcomes["valid"] and outcomes["invalid"], outcomes)

    def test_random_bytes(self) -> None:
        """
        Random byte strings and truncations of a valid body never raise
        anything but L{InvalidInput}.
        """
        rng = random.Random(7)
        valid = json.dumps(full()).encode("utf-8")
        for length in range(len(valid)):
            self.assertRaises(InvalidInput, parse_submit, valid[:length])
        for _ in range(500):
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
            try:
                parse_submit(blob)
            except InvalidInput:
                pass


if HAVE_HYPOTHESIS:

    _json = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=20,
    )

    def _near(keys: dict[str, Any]) -> Any:
        """
        Objects with the contract's keys, each holding a plausible value or
        arbitrary JSON; or arbitrary JSON instead of the object.
        """
        return st.fixed_dictionaries(
            {}, optional={key: value | _json for key, value in keys.items()}
        ) | _json

    _uint = st.integers(min_value=-2, max_value=2**64 + 2)
    _text = st.sampled_from(["", " ", "x", "a=b", "/abs", "..", "a/b"]) | st.text(max_size=6)
    _requests = _near(
        {
            "task_id": st.none() | _text,
            "execution": _near(
                {
                    "kind": st.sampled_from(["command", "script", "other"]),
                    "program": st.none() | _text,
                    "args": st.lists(_text, max_size=3),
                    "script": st.none() | _text,
                    "interpreter": st.none() | st.lists(_text, max_size=3),
                    "env": st.dictionaries(_text, _text, max_size=3),
                }
            ),
            "limits": _near(
                {
                    name: st.none() | _uint
                    for name in (
                        "wall_time_ms",
                        "cpu_time_sec",
                        "memory_bytes",
                        "pids_max",
                        "stdout_max_bytes",
                        "stderr_max_bytes",
                    )
                }
            ),
            "sandbox": _near(
                {
                    "profile": st.sampled_from(["process", "linux_sandbox", "x"]),
                    "workspace_subdir": st.none() | _text,
                    "rootfs": st.none() | _text,
                    "chroot": st.booleans(),
                    "namespaces": _near({"mount": st.booleans(), "net": st.booleans()}),
                }
            ),
            "policy": _near({"capability_mode": st.sampled_from(["adaptive", "strict"])}),
            "control_context": _near(
                {
                    "tenant": st.none() | _text,
                    "owner": st.none() | _text,
                    "requires_strict_sandbox": st.booleans(),
                    "labels": st.dictionaries(_text, _text, max_size=3),
                }
            ),
            "metadata": st.dictionaries(_text, _text, max_size=3),
        }
    )

    class PropertyTests(SynchronousTestCase):
        """
        Hypothesis properties of the submit layer.
        """

        @settings(max_examples=300, deadline=None)
        @given(_requests)
        def test_only_invalid_input(self, body: Any) -> None:
            """
            Any JSON value, including near-valid requests, either decodes and
            validates or raises L{InvalidInput}; a decoded request survives
            a round trip through its wire form.
            """
            try:
                request = parse_submit(json.dumps(body).encode("utf-8"))
                check_output_limits(request)
            except InvalidInput as error:
                self.assertTrue(error.message.startswith("invalid input: "))
            else:
                self.assertEqual(decode_submit(request.to_json()), request)

        @settings(max_examples=200, deadline=None)
        @given(st.binary(max_size=64))
        def test_bytes(self, body: bytes) -> None:
            """
            Arbitrary bytes never raise anything but L{InvalidInput}.
            """
            try:
                parse_submit(body)
            except InvalidInput as error:
                self.assertEqual(error.code, "invalid_input")

else:

    class PropertyTests(SynchronousTestCase):  # type: ignore[no-redef]
        """
        Placeholder reporting the property tests as skipped.
        """

        skip = "hypothesis is not installed"

        def test_only_invalid_input(self) -> None:
            """
            See the hypothesis version above.
            """

        def test_bytes(self) -> None:
            """
            See the hypothesis version above.
            """
