# -*- test-case-name: tests.test_engine,tests.test_supervisor -*-
"""
How the supervisor engine reaps its workloads and judges how each ended
(L{Reaper}): every exited child is reaped; a workload leader's process
group is killed while its zombie still holds the group id, its cgroups
are drained (a bounded wait, L{GROUP_DRAIN_LIMIT_S}), and its verdict is
drawn from its exit, its cgroups' counters, its sandbox wrapper's status
and the store's kill flag.

Standard library only (plus C{attrs}).
"""

from __future__ import annotations

import signal
import sqlite3
from typing import Callable, Dict, List, Optional, Tuple

import attrs

from execgo.core import outcome, policy
from execgo.core.records import Outcome, TaskRecord
from execgo.core.results import Usage
from execgo.host.escalation import kill_now
from execgo.store import connection, eventlog, reads, transitions
from execgo.supervisor.processes import Processes, Reaped
from execgo.supervisor.timers import Timers
from execgo.supervisor.workload import Running

#: How often a group that outlived its leader is sent SIGKILL again.
GROUP_DRAIN_STEP_S = 0.002
#: The longest a task's end waits for its group and cgroups to empty.
GROUP_DRAIN_LIMIT_S = 2.0
#: Seconds between tries to judge a reaped workload while the store
#: cannot be used.
JUDGE_RETRY_S = 1.0

#: C{finish(task_id, verdict, current=...)}: write a task's end.
Finish = Callable[..., None]


@attrs.define
class Judging:
    """
    A reaped workload waiting to be judged: what its cgroups saw, and the
    forks its pids limit refused that are not written yet.
    """

    run: Running
    usage: Usage
    oom_killed: bool
    hits: int


class Reaper:
    """
    Reaps exited children and finishes the workloads among them.

    @param conn: the supervisor's store connection.
    @param clock: the engine's clock (drain steps are scheduled on it).
    @param processes: the edges to the kernel.
    @param wall_ms: wall clock, epoch milliseconds, for what is recorded.
    @param by_pid: the engine's running workloads by leader pid: a
        workload leaves it when its leader is reaped.
    @param by_task: the same by task id: a workload leaves it once its
        group is drained and its end is handed to C{finish}.
    @param finish: writes a task's end
        (L{execgo.supervisor.endings.Endings.finish}).
    @param hand_back: C{hand_back(record, drained)}: gives a task's files
        back before its end is written.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        clock: Timers,
        processes: Processes,
        wall_ms: Callable[[], int],
        by_pid: Dict[int, Running],
        by_task: Dict[str, Running],
        finish: Finish,
        hand_back: Callable[[TaskRecord, bool], None],
    ) -> None:
        self.conn = conn
        self.clock = clock
        self.processes = processes
        self.wall_ms = wall_ms
        self.by_pid = by_pid
        self.by_task = by_task
        self.finish = finish
        self.hand_back = hand_back
        self._judging: Optional[List[Judging]] = None

    def reap_all(self) -> None:
        """
        Reap every exited child.  A workload leader's process group is
        killed before the leader is reaped (while its zombie still holds
        the group id), so nothing of a finished task lingers.  The
        workloads completed in this pass are judged together (one read of
        the store, L{_judge_all}).
        """
        self._judging = []
        try:
            self._reap_exited()
        finally:
            judging, self._judging = self._judging, None
            if judging:
                self._judge_all(judging)

    def _reap_exited(self) -> None:
        while True:
            pid = self.processes.exited()
            if pid is None:
                return
            run = self.by_pid.get(pid)
            if run is not None:
                # Leftovers of the group die while the zombie still holds
                # the group id; the cgroup (setsid escapes) is drained next.
                self.processes.signal_group(pid, signal.SIGKILL)
            reaped = self.processes.reap(pid)
            if reaped is not None and run is not None:
                self._on_exit(run, reaped)

    def _on_exit(self, run: Running, reaped: Reaped) -> None:
        del self.by_pid[run.pid]
        now = self.clock.monotonic()
        run.exit_status = reaped.status
        run.usage = Usage(
            duration_ms=max(0, int((now - run.started_mono) * 1000)),
            user_cpu_ms=reaped.user_cpu_ms,
            system_cpu_ms=reaped.system_cpu_ms,
            max_rss_bytes=reaped.max_rss_bytes,
        )
        for timer in (run.wall_timer, run.kill_timer, run.poll_timer):
            if timer is not None:
                timer.cancel()
        run.drain_deadline = now + GROUP_DRAIN_LIMIT_S
        self._drain(run)

    def _drain(self, run: Running) -> None:
        """
        Finish the task once its process group is empty (bounded wait).
        """
        alive = self.processes.group_alive(run.pid) or (run.cgroup is not None and run.cgroup.populated())
        if alive and self.clock.monotonic() < run.drain_deadline:
            kill_now(run.signaller(self.processes.signal_group))
            self.clock.call_later(GROUP_DRAIN_STEP_S, lambda: self._drain(run))
            return
        self._complete(run, drained=run.cgroup is not None and not alive)

    def _complete(self, run: Running, drained: bool) -> None:
        """
        Write the end of a task whose workload was reaped: its files
        handed back and its cgroups read and removed (once), then judged
        (L{_judge}).

        @param drained: its cgroups are empty (the drain saw them so).
        """
        assert run.exit_status is not None and run.usage is not None
        self.hand_back(run.record, drained)
        usage, oom_killed, hits = self._cgroup_verdict(run, run.usage)
        failure = self._setup_failure(run)
        if failure is not None:
            self.by_task.pop(run.task_id, None)
            self.finish(run.task_id, failure)
            return
        judging = Judging(run, usage, oom_killed, hits)
        if self._judging is not None:
            self._judging.append(judging)
        else:
            self._judge_all([judging])

    def _judge_all(self, judgings: List["Judging"]) -> None:
        """
        Classify the reaped workloads and hand their ends to C{finish},
        after writing what must come before them in the store (the forks
        their pids limits refused, a timeout not recorded yet) and reading
        their kill flags (one read for all).  A store that cannot be used
        now is tried again every L{JUDGE_RETRY_S}; the tasks stay
        supervised meanwhile.
        """
        try:
            for judging in judgings:
                self._write_before_end(judging)
            currents = reads.refresh_all(self.conn, [judging.run.record for judging in judgings])
        except (connection.backend_of(self.conn).Error, OSError):
            self.clock.call_later(JUDGE_RETRY_S, lambda: self._judge_all(judgings))
            return
        for judging, current in zip(judgings, currents):
            self._judge(judging, current)

    def _write_before_end(self, judging: "Judging") -> None:
        """
        Write what must come before the end of C{judging}'s task, once.
        """
        run = judging.run
        if judging.hits:
            self._pids_limit_event(run, judging.hits)
            judging.hits = 0
        if run.timeout_unrecorded:
            transitions.record_timeout(self.conn, run.task_id, self.wall_ms())
            run.timeout_unrecorded = False

    def _judge(self, judging: "Judging", current: Optional[TaskRecord]) -> None:
        """
        Classify the reaped workload and hand its end to C{finish}.
        """
        run = judging.run
        self.by_task.pop(run.task_id, None)
        assert run.exit_status is not None
        kill_flag = current is not None and current.kill_requested
        enforcement = policy.plan_of(run.record).resource_enforcement
        verdict = outcome.classify(
            outcome.Exit(
                status=run.exit_status,
                usage=judging.usage,
                timed_out=run.timed_out,
                cancelled=run.cancel_requested or kill_flag,
                oom_killed=judging.oom_killed,
                cpu_time_sec=enforcement.cpu_time_sec if enforcement.cpu_time_enforced else None,
            )
        )
        if run.fenced:
            verdict = outcome.node_lost(verdict)
        self.finish(run.task_id, verdict, current=current)

    def _cgroup_verdict(self, run: Running, usage: Usage) -> Tuple[Usage, bool, int]:
        """
        What the workload's cgroups saw (its memory peak, its CPU time,
        whether it was OOM-killed, the forks its pids limit refused), read
        before they are removed: its usage with them, the OOM kill and the
        refused forks.
        """
        if run.cgroup is None:
            return usage, False, 0
        oom_killed = run.cgroup.oom_killed()
        usage = attrs.evolve(usage, memory_peak_bytes=run.cgroup.memory_peak())
        cpu = run.cgroup.cpu_ms()
        if cpu is not None:
            usage = attrs.evolve(usage, user_cpu_ms=cpu[0], system_cpu_ms=cpu[1])
        hits = run.cgroup.pids_limit_hits()
        run.cgroup.remove()
        return usage, oom_killed, hits

    def _setup_failure(self, run: Running) -> Optional[Outcome]:
        """
        The verdict of a workload that never ran its command (its sandbox
        wrapper reported a failed exec or setup, or its limits could not
        be set), reading and closing the wrapper's status pipe; C{None}
        for one that did.
        """
        wrapper = self.processes.read_status(run.status_fd)
        run.status_fd = None
        if run.setup_error is None and wrapper is not None:
            kind, _, detail = wrapper.partition(": ")
            if kind == "exec":
                return outcome.failed("launch_failed", f"spawn process: {detail}")
            run.setup_error = f"sandbox: {detail}"
        if run.setup_error is not None:
            return outcome.failed("sandbox_setup_failed", run.setup_error)
        return None

    def _pids_limit_event(self, run: Running, hits: int) -> None:
        limit = policy.plan_of(run.record).resource_enforcement.pids_max
        with connection.transaction(self.conn):
            eventlog.append_event(
                self.conn,
                run.task_id,
                "pids_limit_reached",
                "pids limit reached",
                self.wall_ms(),
                {"pids_max": limit, "refused_forks": hits},
            )
