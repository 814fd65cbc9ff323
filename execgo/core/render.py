# -*- test-case-name: tests.test_render -*-
"""
Stored tasks and events rendered to their JSON answers: the status
snapshot (a C{TaskStatusResponse}, L{render_status}) and an event record
(L{render_event}), in wire order.

Pure: the output previews come in already read (the store's
L{execgo.store.taskfiles.snapshot} reads them), so the server, the
listing and the supervisor's C{result.json} render alike.
"""

from __future__ import annotations

from typing import Optional, Tuple

from execgo.core.constants import JSON, TERMINAL_STATUSES
from execgo.core.policy import plan_of
from execgo.core.records import Event, TaskPaths, TaskRecord
from execgo.core.results import Usage
from execgo.core.timestamps import format_ms


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
    out["node_id"] = record.node_id
    return out


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
