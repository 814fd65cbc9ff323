# -*- test-case-name: tests.test_wire -*-
"""
Rendering of stored state to the wire: timestamps, the task status snapshot,
events, and the task directory layout.

Shared by the server (status endpoint) and the supervisor (C{result.json}),
so it imports nothing heavier than C{attrs}.  Functions that read files
(L{read_preview}, L{prepare_result}) block: the server calls them off the
reactor thread.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from execgo.core import jsonstream
from execgo.core.models import (
    MODE_ADAPTIVE,
    PROFILE_LINUX_SANDBOX,
    TERMINAL_STATUSES,
    ExecutionPlan,
    ExecutionSpec,
    ResourceEnforcement,
    Usage,
)
from execgo.core.records import Event, TaskPaths, TaskRecord
from execgo.host.fsio import read_head_text, write_chunks

JSON = Dict[str, Any]

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def format_ms(ms: int) -> str:
    """
    An RFC 3339 UTC timestamp with a C{Z} suffix, from epoch milliseconds:
    no fraction when it is zero, else exactly three digits.
    """
    seconds, millis = divmod(ms, 1000)
    stamp = (_EPOCH + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if millis:
        return f"{stamp}.{millis:03d}Z"
    return f"{stamp}Z"


def format_ns(ns: int) -> str:
    """
    An RFC 3339 UTC timestamp from epoch nanoseconds, with the shortest
    exact fraction of 0, 3, 6 or 9 digits.
    """
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = (_EPOCH + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if not nanos:
        return f"{stamp}Z"
    for digits, scale in ((3, 1_000_000), (6, 1_000)):
        if nanos % scale == 0:
            return f"{stamp}.{nanos // scale:0{digits}d}Z"
    return f"{stamp}.{nanos:09d}Z"


def compact(value: Any) -> bytes:
    """
    A response body: compact JSON, raw UTF-8.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pretty(value: Any) -> str:
    """
    Pretty JSON with two-space indentation, as C{result.json} and the CLI's
    C{wait}/C{run} print it: exactly C{json.dumps(value, indent=2,
    ensure_ascii=False)}, in half the time (the standard library indents
    with its pure-Python encoder; this one escapes strings in C and walks
    the few levels of a task document itself).  Anything but plain JSON
    types goes to the standard library.
    """
    parts: List[str] = []
    try:
        _pretty(value, "", parts)
    except _NotPlain:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return "".join(parts)


class _NotPlain(Exception):
    """
    A value L{_pretty} leaves to the standard library.
    """


_escape = json.encoder.encode_basestring


def _pretty(value: Any, indent: str, out: List[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(_escape(value))
    elif kind is dict:
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        separator = "{\n" + inner
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain()
            out.append(separator)
            out.append(_escape(key))
            out.append(": ")
            _pretty(item, inner, out)
            separator = ",\n" + inner
        out.append("\n" + indent + "}")
    elif kind is list:
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        separator = "[\n" + inner
        for item in value:
            out.append(separator)
            _pretty(item, inner, out)
            separator = ",\n" + inner
        out.append("\n" + indent + "]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int:
        out.append(int.__repr__(value))
    else:
        raise _NotPlain()


def script_extension(interpreter: Optional[Tuple[str, ...]]) -> str:
    """
    The script file extension chosen from C{interpreter[0]}: the first of
    C{python}, C{bash}, C{zsh} and C{node} it contains gives C{py}, C{sh},
    C{zsh} or C{js}; anything else (or no interpreter) gives C{sh}.
    """
    first = interpreter[0] if interpreter else ""
    for needle, extension in (("python", "py"), ("bash", "sh"), ("zsh", "zsh"), ("node", "js")):
        if needle in first:
            return extension
    return "sh"


def task_paths(
    data_dir: str, task_id: str, execution: ExecutionSpec, workspace_subdir: Optional[str]
) -> TaskPaths:
    """
    The file layout of one task under an absolute data directory.
    """
    task_dir = os.path.join(data_dir, "tasks", task_id)
    workspace = os.path.join(task_dir, "workspace")
    if workspace_subdir:
        workspace = os.path.normpath(os.path.join(workspace, workspace_subdir))
    script_path = None
    if execution.kind == "script":
        script_path = os.path.join(
            task_dir, "script." + script_extension(execution.interpreter)
        )
    return TaskPaths(
        task_dir=task_dir,
        workspace_dir=workspace,
        request_path=os.path.join(task_dir, "request.json"),
        result_path=os.path.join(task_dir, "result.json"),
        stdout_path=os.path.join(task_dir, "stdout.log"),
        stderr_path=os.path.join(task_dir, "stderr.log"),
        script_path=script_path,
    )


def read_preview(path: str, max_bytes: int) -> Tuple[str, bool]:
    """
    The head of a log file, decoded with replacement, and whether the file
    is longer than C{max_bytes}.  Read and decoded a slice at a time
    (L{read_head_text}): never more than one slice of bytes beside the
    text; a missing file gives C{("", False)}.
    """
    try:
        text, size = read_head_text(path, max_bytes)
    except FileNotFoundError:
        return "", False
    return text, size > max_bytes


def synthesise_plan(record: TaskRecord) -> ExecutionPlan:
    """
    The plan of a stored task that has none (a row written before plans
    were stored): adaptive, the stored sandbox as both requested and
    effective, every limit set taken as enforced (pids and OOM detection
    only with C{linux_sandbox}), not degraded.
    """
    limits = record.limits
    cgroup = record.sandbox.profile == PROFILE_LINUX_SANDBOX
    return ExecutionPlan(
        capability_mode=MODE_ADAPTIVE,
        requested_sandbox=record.sandbox,
        effective_sandbox=record.sandbox,
        resource_enforcement=ResourceEnforcement(
            wall_time_ms=limits.wall_time_ms,
            cpu_time_sec=limits.cpu_time_sec,
            cpu_time_enforced=limits.cpu_time_sec is not None,
            memory_bytes=limits.memory_bytes,
            memory_enforced=limits.memory_bytes is not None,
            pids_max=limits.pids_max,
            pids_enforced=limits.pids_max is not None and cgroup,
            cgroup_enforced=cgroup,
            oom_detection=limits.memory_bytes is not None and cgroup,
        ),
    )


def plan_of(record: TaskRecord) -> ExecutionPlan:
    """
    The stored plan, or the synthesised one for plan-less rows.
    """
    return record.plan if record.plan is not None else synthesise_plan(record)


def live_duration(record: TaskRecord, now_ms: int) -> Optional[int]:
    """
    The duration to show: recorded when terminal, C{now - started_at}
    (clamped at 0) while running, else unknown.
    """
    if record.status in TERMINAL_STATUSES:
        return record.duration_ms
    if record.started_at_ms is not None:
        return max(0, now_ms - record.started_at_ms)
    return None


def artifacts(paths: TaskPaths) -> JSON:
    """
    The C{artifacts} object of a status snapshot.
    """
    out: JSON = {
        "task_dir": paths.task_dir,
        "request_path": paths.request_path,
        "result_path": paths.result_path,
        "stdout_path": paths.stdout_path,
        "stderr_path": paths.stderr_path,
    }
    if paths.script_path is not None:
        out["script_path"] = paths.script_path
    return out


def render_status(
    record: TaskRecord,
    stdout: Tuple[str, bool],
    stderr: Tuple[str, bool],
    now_ms: int,
    *,
    include_output: bool = True,
) -> JSON:
    """
    The C{TaskStatusResponse} (the status snapshot), in wire order.

    @param stdout: the stdout preview and its truncation flag.
    @param stderr: the same for stderr.
    @param include_output: C{False} leaves the four output keys out, for
        listings.
    """
    out: JSON = {
        "task_id": record.task_id,
        "handle_id": record.task_id,
        "status": record.status,
        "created_at": format_ms(record.created_at_ms),
        "updated_at": format_ms(record.updated_at_ms),
    }
    if record.started_at_ms is not None:
        out["started_at"] = format_ms(record.started_at_ms)
    if record.finished_at_ms is not None:
        out["finished_at"] = format_ms(record.finished_at_ms)
    duration = live_duration(record, now_ms)
    if duration is not None:
        out["duration_ms"] = duration
    for name in ("shim_pid", "pid", "pgid", "exit_code", "exit_signal"):
        value = getattr(record, name)
        if value is not None:
            out[name] = value
    if include_output:
        out["stdout"] = stdout[0]
        out["stderr"] = stderr[0]
        out["stdout_truncated"] = stdout[1]
        out["stderr_truncated"] = stderr[1]
    if record.error is not None:
        out["error"] = record.error.to_json()
    if record.usage is not None:
        out["usage"] = record.usage.to_json()
    elif duration is not None:
        out["usage"] = Usage(duration_ms=duration).to_json()
    plan = plan_of(record).to_json()
    plan["run_as"] = None if record.run_as is None else record.run_as.to_json()
    out["execution_plan"] = plan
    if record.reservation is not None:
        out["reservation"] = record.reservation.to_json()
    out["artifacts"] = artifacts(record.paths)
    if record.metadata:
        out["metadata"] = {key: record.metadata[key] for key in sorted(record.metadata)}
    return out


def snapshot(record: TaskRecord, now_ms: int, ceiling: Optional[int] = None) -> JSON:
    """
    Read both previews (blocking) and render the status snapshot.

    @param ceiling: the server's C{--max-output-preview-bytes}: no preview
        is longer, whatever limits the task was stored with (submissions
        above it are refused, but an older store may hold larger limits).
        C{None}: the task's own limits alone.
    """
    stdout_limit = record.limits.stdout_max_bytes
    stderr_limit = record.limits.stderr_max_bytes
    if ceiling is not None:
        stdout_limit = min(stdout_limit, ceiling)
        stderr_limit = min(stderr_limit, ceiling)
    return render_status(
        record,
        read_preview(record.paths.stdout_path, stdout_limit),
        read_preview(record.paths.stderr_path, stderr_limit),
        now_ms,
    )


def render_event(event: Event) -> JSON:
    """
    An C{EventRecord}: seq, task_id, event_type, timestamp, message?, data?.
    """
    out: JSON = {
        "seq": event.seq,
        "task_id": event.task_id,
        "event_type": event.event_type,
        "timestamp": format_ms(event.timestamp_ms),
    }
    if event.message is not None:
        out["message"] = event.message
    if event.data is not None:
        out["data"] = event.data
    return out


_result_serial = iter(range(1, 1 << 62))


def prepare_result(
    record: TaskRecord,
    now_ms: int,
    rendered: Optional[Callable[[JSON, int], None]] = None,
    ceiling: Optional[int] = None,
) -> "Callable[[bool], None]":
    """
    Render the terminal snapshot of C{record} and write it beside the
    task's C{result.json}; the returned function renames it into place
    (C{True}) or removes it (C{False}).  Whatever fails, no temporary file
    stays behind: one that could not be written whole (or renamed) is
    removed before the error goes on.

    The file is written as it is rendered (L{jsonstream.chunks}): besides
    the snapshot, only a slice of a preview's escaped text is in memory at
    once, however much escaping lengthens it.

    @param rendered: handed the snapshot and the size of the file's UTF-8
        text, which bounds the snapshot's L{compact} encoding (the same
        escapes, less white space).
    @param ceiling: bounds the previews (L{snapshot}).
    """
    final = snapshot(record, now_ms, ceiling)
    path = record.paths.result_path
    temporary = f"{path}.tmp-{os.getpid()}-{next(_result_serial)}"
    try:
        size = write_chunks(temporary, jsonstream.chunks(final, pretty))
        if size == 0:
            raise OSError(errno.EIO, "nothing was written", temporary)
    except BaseException:
        # A file that could not be written whole is no result: a full
        # disk would otherwise keep one empty file per retry.
        _remove_quietly(temporary)
        raise
    if rendered is not None:
        rendered(final, size)

    def settle(took: bool) -> None:
        if took:
            try:
                os.replace(temporary, path)
            except OSError:
                _remove_quietly(temporary)
                raise
        else:
            os.unlink(temporary)

    return settle


def _remove_quietly(path: str) -> None:
    """
    Remove a temporary file if it is there (and can be removed).
    """
    try:
        os.unlink(path)
    except OSError:
        pass
