# -*- test-case-name: tests.test_api,tests.test_integration -*-
"""
Prometheus text exposition (the families of C{docs/api.md}, "Metrics").

The four contract families come first, unchanged in name and labels; the
families this runtime adds follow.  Pure: L{render} turns a
L{MetricsSnapshot} (read from trigger-kept tables, so a scrape costs the
same whatever the number of stored tasks) and the ledger's current use
into the response body.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

from execgo.store.tallies import Histogram, MetricsSnapshot

CONTENT_TYPE = b"text/plain; version=0.0.4"
PREFIX = "execgo_runtime_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items())
    return "{" + inner + "}" if inner else ""


def _family(lines: List[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {PREFIX}{name} {help_text}")
    lines.append(f"# TYPE {PREFIX}{name} {kind}")


def _histogram(lines: List[str], name: str, help_text: str, histogram: Histogram) -> None:
    _family(lines, name, "histogram", help_text)
    for bound, count in zip(histogram.bounds, histogram.cumulative()):
        lines.append(f'{PREFIX}{name}_bucket{{le="{bound}"}} {count}')
    lines.append(f'{PREFIX}{name}_bucket{{le="+Inf"}} {histogram.count}')
    lines.append(f"{PREFIX}{name}_sum {histogram.total}")
    lines.append(f"{PREFIX}{name}_count {histogram.count}")


def _contract(lines: List[str], snapshot: MetricsSnapshot) -> None:
    _family(lines, "tasks_total", "counter", "Tasks by status")
    for status, count in snapshot.by_status:
        lines.append(f"{PREFIX}tasks_total{_labels(status=status)} {count}")
    _family(lines, "tasks_running", "gauge", "Tasks currently running")
    lines.append(f"{PREFIX}tasks_running {snapshot.running}")
    _family(lines, "task_errors_total", "counter", "Tasks by error code")
    for code, count in snapshot.by_error:
        lines.append(f"{PREFIX}task_errors_total{_labels(code=code)} {count}")
    _histogram(lines, "task_duration_ms", "Task duration in milliseconds", snapshot.duration)


def render(
    snapshot: MetricsSnapshot,
    ledger: Sequence[Tuple[str, int, int]] = (),
    nodes: Optional[Mapping[str, int]] = None,
    node_running: int = 0,
) -> str:
    """
    The whole exposition.

    @param ledger: C{(resource, reserved, capacity)} for each ledger
        dimension with a known capacity.
    @param nodes: how many of the cluster's nodes are in each state
        (C{None}: no cluster gauges).
    @param node_running: the tasks this node runs (or was sent) now.
    """
    lines: List[str] = []
    _contract(lines, snapshot)
    _family(lines, "tasks_submitted_total", "counter", "Tasks ever submitted, by tenant")
    for tenant, count in snapshot.submitted:
        lines.append(f"{PREFIX}tasks_submitted_total{_labels(tenant=tenant)} {count}")
    _family(
        lines,
        "tasks_finished_total",
        "counter",
        "Tasks ever finished, by status, error code and tenant (never goes down)",
    )
    for status, code, tenant, count in snapshot.finished:
        labels = _labels(status=status, code=code, tenant=tenant)
        lines.append(f"{PREFIX}tasks_finished_total{labels} {count}")
    _family(lines, "tenant_tasks_running", "gauge", "Tasks running, by tenant")
    _family_by_tenant(lines, snapshot, "running", "tenant_tasks_running")
    _family(lines, "tenant_tasks_queued", "gauge", "Tasks waiting in accepted, by tenant")
    _family_by_tenant(lines, snapshot, "accepted", "tenant_tasks_queued")
    _histogram(
        lines,
        "task_queue_wait_ms",
        "Milliseconds from submission to workload start",
        snapshot.queue_wait,
    )
    _histogram(
        lines,
        "task_spawn_latency_ms",
        "Milliseconds from dispatch (reservation) to workload start",
        snapshot.spawn_latency,
    )
    _histogram(lines, "task_run_time_ms", "Milliseconds from start to end of finished tasks", snapshot.run_time)
    _family(lines, "ledger_reserved", "gauge", "Reserved ledger capacity, by resource")
    for resource, reserved, _ in ledger:
        lines.append(f"{PREFIX}ledger_reserved{_labels(resource=resource)} {reserved}")
    _family(lines, "ledger_capacity", "gauge", "Ledger capacity, by resource")
    for resource, _, capacity in ledger:
        lines.append(f"{PREFIX}ledger_capacity{_labels(resource=resource)} {capacity}")
    _family(lines, "ledger_utilisation", "gauge", "Reserved over capacity (0 to 1), by resource")
    for resource, reserved, capacity in ledger:
        ratio = reserved / capacity if capacity else 0.0
        lines.append(f"{PREFIX}ledger_utilisation{_labels(resource=resource)} {ratio:.6g}")
    _family(lines, "node_tasks_running", "gauge", "Tasks this node runs now")
    lines.append(f"{PREFIX}node_tasks_running {node_running}")
    if nodes is not None:
        _family(lines, "cluster_nodes", "gauge", "The cluster's nodes, by state")
        for state, count in sorted(nodes.items()):
            lines.append(f"{PREFIX}cluster_nodes{_labels(state=state)} {count}")
        _family(lines, "cluster_tasks_queued", "gauge", "Tasks waiting in accepted, on the whole cluster")
        lines.append(f"{PREFIX}cluster_tasks_queued {dict(snapshot.by_status).get('accepted', 0)}")
    return "\n".join(lines) + "\n"


def _family_by_tenant(lines: List[str], snapshot: MetricsSnapshot, status: str, name: str) -> None:
    for tenant, row_status, count in snapshot.by_tenant_status:
        if row_status == status:
            lines.append(f"{PREFIX}{name}{_labels(tenant=tenant)} {count}")
