# -*- test-case-name: tests.test_cli -*-
"""
What the C{execgo-runtime} client subcommands print about a task.

The pretty status of C{wait} and C{run} (C{docs/cli.md} section 6: keys in
wire order at every level, unknown keys and nulls dropped), the exit
code C{--exit-code} derives from a terminal status, the one-line summary
C{run --follow} writes on stderr, and the elapsed-time line.  Pure: no I/O,
no click, no Twisted.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Tuple

from execgo.core.constants import ALL_STATUSES, UINT64_MAX

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1

_S, _B, _U, _I, _ANY, _MAP, _LIST = "string", "bool", "uint", "int32", "any", "map", "list"
_Schema = Tuple[Tuple[str, Any, bool], ...]

_NAMESPACES: _Schema = tuple((name, _B, False) for name in ("mount", "pid", "uts", "ipc", "net"))
_SANDBOX: _Schema = (
    ("profile", _S, True),
    ("workspace_subdir", _S, False),
    ("rootfs", _S, False),
    ("chroot", _B, True),
    ("namespaces", _NAMESPACES, False),
)
_ENFORCEMENT: _Schema = (
    ("wall_time_ms", _U, True),
    ("cpu_time_sec", _U, False),
    ("cpu_time_enforced", _B, True),
    ("memory_bytes", _U, False),
    ("memory_enforced", _B, True),
    ("pids_max", _U, False),
    ("pids_enforced", _B, True),
    ("cgroup_enforced", _B, True),
    ("oom_detection", _B, True),
)
_PLAN: _Schema = (
    ("capability_mode", _S, True),
    ("requested_sandbox", _SANDBOX, True),
    ("effective_sandbox", _SANDBOX, True),
    ("resource_enforcement", _ENFORCEMENT, True),
    ("degraded", _B, True),
    ("fallback_reasons", _LIST, False),
    ("capability_warnings", _LIST, False),
    ("run_as", (("uid", _U, True), ("gid", _U, True)), False),
)
_ERROR: _Schema = (("code", _S, True), ("message", _S, True), ("details", _ANY, False))
_USAGE: _Schema = (
    ("duration_ms", _U, True),
    ("user_cpu_ms", _U, False),
    ("system_cpu_ms", _U, False),
    ("max_rss_bytes", _U, False),
    ("memory_peak_bytes", _U, False),
)
_RESERVATION: _Schema = (
    ("task_slots", _U, True),
    ("memory_bytes", _U, False),
    ("pids", _U, False),
)
_ARTIFACTS: _Schema = (
    ("task_dir", _S, True),
    ("request_path", _S, True),
    ("result_path", _S, True),
    ("stdout_path", _S, True),
    ("stderr_path", _S, True),
    ("script_path", _S, False),
)
TASK_STATUS_SCHEMA: _Schema = (
    ("task_id", _S, True),
    ("handle_id", _S, True),
    ("status", _S, True),
    ("created_at", _S, True),
    ("updated_at", _S, True),
    ("started_at", _S, False),
    ("finished_at", _S, False),
    ("duration_ms", _U, False),
    ("shim_pid", _U, False),
    ("pid", _U, False),
    ("pgid", _I, False),
    ("exit_code", _I, False),
    ("exit_signal", _I, False),
    ("stdout", _S, True),
    ("stderr", _S, True),
    ("stdout_truncated", _B, True),
    ("stderr_truncated", _B, True),
    ("error", _ERROR, False),
    ("usage", _USAGE, False),
    ("execution_plan", _PLAN, False),
    ("reservation", _RESERVATION, False),
    ("artifacts", _ARTIFACTS, True),
    ("metadata", _MAP, False),
    ("node_id", _S, False),
)
"""
The C{TaskStatusResponse} (the status snapshot): C{(key, kind, required)}
in wire order, where C{kind} is a scalar kind or a nested schema.
"""


class MalformedStatus(ValueError):
    """
    A body that is not a task status object; the CLI reports it as a
    C{json error}.
    """


def _normalise_value(kind: Any, value: Any, where: str) -> Any:
    if isinstance(kind, tuple):
        return _normalise_object(kind, value, where)
    if kind == _ANY:
        return value
    if kind == _S:
        ok = isinstance(value, str)
    elif kind == _B:
        ok = isinstance(value, bool)
    elif kind in (_U, _I):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and kind == _U:
            ok = 0 <= value <= UINT64_MAX
        elif ok:
            ok = _INT32_MIN <= value <= _INT32_MAX
    elif kind == _LIST:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # _MAP
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        if ok:
            value = {key: value[key] for key in sorted(value)}
    if not ok:
        raise MalformedStatus(f"invalid value for `{where}`: expected {kind}")
    return value


def _normalise_object(schema: _Schema, value: Any, where: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedStatus(f"invalid type for `{where or 'body'}`: expected an object")
    out: Dict[str, Any] = {}
    for key, kind, required in schema:
        path = f"{where}.{key}" if where else key
        item = value.get(key)
        if item is None:
            if required:
                raise MalformedStatus(f"missing field `{path}`")
            continue
        item = _normalise_value(kind, item, path)
        if kind in (_LIST, _MAP) and not item:
            continue
        out[key] = item
    return out


def decode_task_status(body: bytes) -> Dict[str, Any]:
    """
    Decode a C{TaskStatusResponse}: keys in wire order at every level,
    unknown keys and nulls dropped, string maps sorted, empty optional lists
    and maps left out.

    @raise MalformedStatus: when the body is not such an object.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise MalformedStatus(str(e)) from None
    status = _normalise_object(TASK_STATUS_SCHEMA, document, "")
    if status["status"] not in ALL_STATUSES:
        raise MalformedStatus(f"unknown task status {status['status']!r}")
    return status


def render_task_status(status: Mapping[str, Any]) -> bytes:
    """
    Pretty JSON (2-space indentation, raw UTF-8) plus a newline.
    """
    text = json.dumps(status, indent=2, ensure_ascii=False)
    return text.encode("utf-8", "replace") + b"\n"


def task_exit_code(status: Mapping[str, Any]) -> int:
    """
    The exit status C{--exit-code} gives a terminal task, for shell scripts.

      - C{success}: 0;
      - a wall-time C{timeout}: 1 (the runtime ended the task; how its
        process died is an artefact of the runtime's SIGTERM);
      - a non-zero C{exit_code}: that code (modulo 256, as a shell sees it);
      - an C{exit_signal}: 128 + the signal, as a shell reports it;
      - anything else (a launch failure, a task cancelled before it ran, a
        workload that exited 0 after the runtime killed it): 1.
    """
    if status.get("status") == "success":
        return 0
    error = status.get("error")
    if isinstance(error, Mapping) and error.get("code") == "timeout":
        return 1
    code = status.get("exit_code")
    if isinstance(code, int) and code % 256:
        return code % 256
    signal = status.get("exit_signal")
    if isinstance(signal, int) and 0 < signal < 128:
        return 128 + signal
    return 1


def summary_line(status: Mapping[str, Any]) -> str:
    """
    One line on a terminal task, e.g.
    C{task t1 failed error=exit_nonzero exit_code=3 duration_ms=205}.
    """
    parts = [f"task {status.get('task_id')} {status.get('status')}"]
    error = status.get("error")
    if isinstance(error, Mapping) and error.get("code"):
        parts.append(f"error={error['code']}")
    for key in ("exit_code", "exit_signal", "duration_ms"):
        if status.get(key) is not None:
            parts.append(f"{key}={status[key]}")
    return " ".join(parts)


def elapsed_line(seconds: float) -> str:
    """
    The elapsed-time line C{wait} and C{run} write on a terminal, e.g.
    C{elapsed 1.234s}.
    """
    return f"elapsed {max(seconds, 0.0):.3f}s"
