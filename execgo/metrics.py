# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus text exposition of the task store's figures (C{api.md} 12).

Pure: L{render} turns a L{MetricsSnapshot} into the response body.
"""

from __future__ import annotations

from typing import List

from execgo.taskdb import DURATION_BUCKETS_MS, MetricsSnapshot

CONTENT_TYPE = b"text/plain; version=0.0.4"


def _family(lines: List[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def render(snapshot: MetricsSnapshot) -> str:
    """
    The four families of the contract, in their order.
    """
    lines: List[str] = []
    _family(lines, "execgo_runtime_tasks_total", "counter", "Tasks by status")
    for status, count in snapshot.by_status:
        lines.append(f'execgo_runtime_tasks_total{{status="{status}"}} {count}')
    _family(lines, "execgo_runtime_tasks_running", "gauge", "Tasks currently running")
    lines.append(f"execgo_runtime_tasks_running {snapshot.running}")
    _family(lines, "execgo_runtime_task_errors_total", "counter", "Tasks by error code")
    for code, count in snapshot.by_error:
        lines.append(f'execgo_runtime_task_errors_total{{code="{code}"}} {count}')
    name = "execgo_runtime_task_duration_ms"
    _family(lines, name, "histogram", "Task duration in milliseconds")
    for bound, count in zip(DURATION_BUCKETS_MS, snapshot.buckets):
        lines.append(f'{name}_bucket{{le="{bound}"}} {count}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {snapshot.duration_count}')
    lines.append(f"{name}_sum {snapshot.duration_sum}")
    lines.append(f"{name}_count {snapshot.duration_count}")
    return "\n".join(lines) + "\n"
