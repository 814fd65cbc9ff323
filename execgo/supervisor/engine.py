# -*- test-case-name: tests.test_supervisor -*-
"""
The supervisor engine: it owns, limits, signals and reaps workloads and
writes their outcomes to the store.

One supervisor runs beside the server for a data directory (started with
the hidden C{internal-supervisor} subcommand) and supervises many tasks; the
hidden C{internal-shim} subcommand runs the same engine for a single task.
It is a separate process in its own session, so a crash or restart of the
server does not touch it: it keeps enforcing timeouts and records every
outcome in the store, and a restarted server reconnects to it.

It is a child subreaper, so every descendant of a workload that is orphaned
is reparented to it and reaped here (this host's PID 1 never reaps).

The engine is driven by a loop (the daemon's or the shim's: a
C{selectors} loop over a wake-up pipe for C{SIGCHLD}) that calls L{reap}
and L{run_due_timers} and waits at most L{next_delay}.  Its clock
(L{Timers}) and its edges to the kernel (L{Processes}) are handed in, so
its timers, escalation and verdicts run in tests without processes or
sleeps.  Standard library only (plus C{attrs}): no reactor to import, so
it starts in tens of milliseconds.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import traceback
from typing import Callable, Dict, List, Optional, Tuple

import attrs

from execgo.control import Finished, Report, SupervisorSettings
from execgo.core import outcome, policy
from execgo.core.models import STATUS_ACCEPTED, Usage
from execgo.core.records import Outcome, TaskRecord
from execgo.host import privileges
from execgo.host.cgroups import Cgroups, TaskCgroup
from execgo.host.escalation import Signaller, group_signaller, kill_now, terminate
from execgo.host.privileges import TaskIdentity
from execgo.store import connection, eventlog, reads, schema, terminal, transitions
from execgo.supervisor import launcher
from execgo.supervisor.processes import HostProcesses, Processes, Reaped
from execgo.supervisor.timers import Timer, Timers

#: The largest terminal snapshot (as C{result.json} text, which bounds its
#: compact JSON) sent with a C{finished} report; bigger ones (long output
#: previews, large metadata) are read from the store.
REPORTED_STATUS_MAX_BYTES = 32 * 1024
#: A C{result.json} longer than this (in bytes: its previews are most of
#: it) makes a rendering spike worth forgetting: the supervisor resets its
#: peak RSS after it.
PEAK_RESET_PREVIEW_CHARS = 256 * 1024
#: The WAL size (pages) at which the supervisor's own commits checkpoint.
SUPERVISOR_CHECKPOINT_PAGES = 10_000
KILL_FLAG_POLL_S = 0.025
START_RECORD_DELAY_S = 0.005
GROUP_DRAIN_STEP_S = 0.002
GROUP_DRAIN_LIMIT_S = 2.0
FINISH_RETRY_S = 1.0


@attrs.define
class Ending:
    """
    A task's end in the making: its verdict, the record it is rendered
    from, and its terminal write (L{terminal.TerminalWrite}, once
    prepared), which keeps the snapshot rendered for C{result.json} for
    the report when it is small enough to be reported.
    """

    task_id: str
    verdict: Outcome
    attempt: int = 0
    current: Optional[TaskRecord] = None
    write: Optional[terminal.TerminalWrite] = None


@attrs.define
class Running:
    """
    The supervisor's state for one launched workload: one entity, one place.

    @ivar kill_timer: the SIGKILL a kill or a timeout scheduled (kept once
        it ran: one escalation per workload sends one).
    @ivar grace_s: the grace period the workload was launched with.
    """

    task_id: str
    pid: int
    started_mono: float
    record: TaskRecord
    timed_out: bool = False
    cancel_requested: bool = False
    kill_timer: Optional[Timer] = None
    wall_timer: Optional[Timer] = None
    poll_timer: Optional[Timer] = None
    exit_status: Optional[int] = None
    usage: Optional[Usage] = None
    drain_deadline: float = 0.0
    cgroup: Optional[TaskCgroup] = None
    setup_error: Optional[str] = None
    status_fd: Optional[int] = None
    grace_s: float = 0.0


@attrs.frozen
class StartRecord:
    """
    A workload's start, not yet written to the store.
    """

    task_id: str
    pid: int
    at_ms: int
    script_path: Optional[str]


class Supervisor:
    """
    Launches tasks read from the store, enforces wall time and kills,
    reaps, classifies and records outcomes.

    @param db_path: the store file.
    @param grace_s: seconds between SIGTERM and SIGKILL.
    @param identity: who tasks run as (C{None}: as this process, with
        nothing recorded).
    @param rootfs_roots: the directories a chroot's root filesystem must
        lie under.
    @param preview_ceiling: bounds the previews of C{result.json}
        (C{--max-output-preview-bytes}; C{None}: the tasks' limits alone).
    @param clock: the monotonic clock and timers the engine schedules on
        (the driving loop runs them: L{run_due_timers}).
    @param processes: the edges to the kernel (L{HostProcesses}).
    @param wall_ms: wall clock, epoch milliseconds, for what is recorded.
    @param log: takes each line worth an operator's attention.

    @ivar listeners: each is called with every report for connected
        servers (L{emit}).
    """

    def __init__(
        self,
        db_path: str,
        grace_s: float,
        *,
        clock: Optional[Timers] = None,
        processes: Optional[Processes] = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        base_env: Optional[Dict[str, str]] = None,
        detect_cgroups: Optional[Callable[[str], Optional[Cgroups]]] = None,
        log: Callable[[str], None] = lambda line: None,
        cgroups: Optional[Cgroups] = None,
        identity: Optional[TaskIdentity] = None,
        rootfs_roots: Tuple[str, ...] = (),
        preview_ceiling: Optional[int] = None,
    ) -> None:
        self.preview_ceiling = preview_ceiling
        self.cgroups = cgroups
        self.detect_cgroups = detect_cgroups or Cgroups.try_detect
        self._facilities: Dict[str, Optional[Cgroups]] = {}
        self.identity = identity
        self.rootfs_roots = rootfs_roots
        self.conn = connection.connect(db_path)
        # Checkpoints (the only writes SQLite syncs to disk here) are left
        # to the server, off the supervisor's path: only a WAL ten times
        # the usual size, with no server to checkpoint it, makes this
        # connection do one.
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {SUPERVISOR_CHECKPOINT_PAGES}")
        schema.init_schema(self.conn)
        self.grace_s = grace_s
        self.clock = Timers() if clock is None else clock
        self.processes: Processes = HostProcesses() if processes is None else processes
        self.wall_ms = wall_ms
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.log = log
        self.by_pid: Dict[int, Running] = {}
        self.by_task: Dict[str, Running] = {}
        self.listeners: List[Callable[[Report], None]] = []
        self.pending_finishes: Dict[str, Outcome] = {}
        self.pending_starts: Dict[str, StartRecord] = {}
        self._endings: Optional[List[Ending]] = None
        self._starts_timer: Optional[Timer] = None

    def configure(self, settings: SupervisorSettings) -> None:
        """
        Run the tasks launched from now on with C{settings} (what the
        server that connected last wrote; running tasks keep theirs).
        """
        self.grace_s = settings.grace_ms / 1000.0
        self.base_env = dict(settings.env)
        self.cgroups = self._facility(settings.cgroup_root)
        self.identity = settings.identity
        self.rootfs_roots = settings.rootfs_roots
        self.preview_ceiling = settings.max_output_preview_bytes

    # Timers

    def call_later(self, delay: float, call: Callable[[], object]) -> Timer:
        """
        Schedule C{call} after C{delay} seconds, on the engine's clock.
        """
        return self.clock.call_later(delay, call)

    def next_delay(self) -> Optional[float]:
        """
        Seconds until the next live timer, or C{None} when there is none:
        the longest the driving loop may wait.
        """
        return self.clock.next_delay()

    def run_due_timers(self) -> None:
        """
        Run every timer whose deadline has passed, each L{guard}ed.
        """
        self.clock.run_due(self.guard)

    def guard(self, call: Callable[[], object]) -> None:
        """
        Make C{call}; an exception it raises is logged, not raised: one
        task's trouble must not stop the supervision of the others.
        """
        try:
            call()
        except Exception:
            self.log("supervisor error: " + traceback.format_exc())

    # Notifications

    def emit(self, message: Report) -> None:
        """
        Tell every connected server about a change.
        """
        for listener in list(self.listeners):
            listener(message)

    # Launching

    def launch(self, task_id: str, on_declined: Optional[Callable[[], None]] = None) -> bool:
        """
        Take the C{accepted} task C{task_id} (L{transitions.claim}: it becomes
        C{running} under this supervisor, with a uid of its own) and start
        it.  A store that cannot take the claim now is retried every
        second.

        @param on_declined: called when the task is declined, now or on a
            retry, so whoever sent the order can free what it holds for it.
        @return: C{False} when the task is declined now: it is not
            C{accepted} any more (it ended, or another order took it).
        """
        if task_id in self.by_task:
            return True
        try:
            with connection.transaction(self.conn):
                written = self._write_starts(self.conn)
                record = transitions.claim(self.conn, task_id, os.getpid(), self.wall_ms(), self.identity)
            self._starts_written(written)
        except transitions.NoIdentity as e:
            self._finish(task_id, outcome.failed("launch_failed", f"no free task uid: all of {e} are in use"))
            return True
        except sqlite3.Error as e:
            self.log(f"cannot take {task_id}: {e}")
            self.call_later(FINISH_RETRY_S, lambda: self.launch(task_id, on_declined))
            return True
        if record is None:
            if on_declined is not None:
                on_declined()
            return False
        if record.status == STATUS_ACCEPTED:
            self._finish(task_id, outcome.cancelled("task cancelled before execution"))
            return True
        try:
            self._start(record, self.cgroups)
        except Exception as e:
            self.log("supervisor error: " + traceback.format_exc())
            self._hand_back(record, drained=True)
            self._finish(task_id, outcome.failed("internal", f"supervisor error: {e}"))
        return True

    def _facility(self, cgroup_root: str) -> Optional[Cgroups]:
        """
        The cgroup facility for a root (detected once per root).
        """
        if cgroup_root not in self._facilities:
            self._facilities[cgroup_root] = self.detect_cgroups(cgroup_root)
        return self._facilities[cgroup_root]

    def _start(self, record: TaskRecord, facility: Optional[Cgroups]) -> None:
        plan = policy.plan_of(record)
        enforcement = plan.resource_enforcement
        try:
            spec = launcher.build_launch(record, plan, self.base_env, self.rootfs_roots)
        except launcher.SandboxSetupError as e:
            self._hand_back(record, drained=True)
            self._finish(record.task_id, outcome.failed("sandbox_setup_failed", f"sandbox: {e}"))
            return
        group = None
        if enforcement.cgroup_enforced and facility is not None:
            try:
                group = facility.create(
                    record.task_id,
                    enforcement.mechanisms,
                    enforcement.pids_max if enforcement.pids_enforced else None,
                )
            except OSError as e:
                self._hand_back(record, drained=True)
                self._finish(
                    record.task_id, outcome.failed("sandbox_setup_failed", f"configure cgroup: {e}")
                )
                return
        try:
            spawned = self._spawn_into(spec, group, facility)
        except launcher.LaunchError as e:
            if group is not None:
                group.remove()
            if isinstance(e, launcher.SandboxSetupError):
                verdict = outcome.failed("sandbox_setup_failed", f"sandbox: {e}")
            else:
                verdict = outcome.failed("launch_failed", f"spawn process: {e}")
            self._hand_back(record, drained=True)
            self._finish(record.task_id, verdict)
            return
        pid = spawned.pid
        started_mono = self.clock.monotonic()
        run = Running(
            task_id=record.task_id,
            pid=pid,
            status_fd=spawned.status_fd,
            started_mono=started_mono,
            record=record,
            cgroup=group,
            grace_s=self.grace_s,
        )
        self.by_pid[pid] = run
        self.by_task[record.task_id] = run
        if group is not None:
            try:
                assert facility is not None
                facility.limit(
                    group,
                    enforcement.memory_bytes if enforcement.memory_enforced else None,
                    enforcement.pids_max if enforcement.pids_enforced else None,
                )
            except OSError as e:
                # The workload is already running: it must not survive.
                self._kill_now(run)
                run.setup_error = f"configure cgroup: {e}"
        self._record_start(StartRecord(record.task_id, pid, self.wall_ms(), spec.script_path))
        run.wall_timer = self.call_later(enforcement.wall_time_ms / 1000.0, lambda: self._on_timeout(run))

    # Start records

    def _record_start(self, start: StartRecord) -> None:
        """
        Write a start with the supervisor's next transaction (the next
        claim, or the task's own terminal write when it ends first), and
        at the latest after L{START_RECORD_DELAY_S}: a short task then
        costs two transactions instead of three.
        """
        self.pending_starts[start.task_id] = start
        if self._starts_timer is None:
            self._starts_timer = self.call_later(START_RECORD_DELAY_S, self._flush_starts)

    def _write_starts(self, conn: sqlite3.Connection) -> List[str]:
        """
        Write every pending start inside the open transaction; the ids
        written, to forget once it commits.
        """
        for start in self.pending_starts.values():
            transitions.record_start(conn, start.task_id, start.pid, start.at_ms, start.script_path)
        return list(self.pending_starts)

    def _as_started(self, record: TaskRecord) -> TaskRecord:
        """
        C{record} as it will be once its pending start is written (what
        the terminal write, which writes it first, renders from).
        """
        start = self.pending_starts.get(record.task_id)
        if start is None:
            return record
        return attrs.evolve(
            record,
            pid=start.pid,
            pgid=start.pid,
            started_at_ms=start.at_ms,
            updated_at_ms=start.at_ms,
            paths=attrs.evolve(record.paths, script_path=start.script_path or record.paths.script_path),
        )

    def _starts_written(self, written: List[str]) -> None:
        for task_id in written:
            self.pending_starts.pop(task_id, None)
        if not self.pending_starts and self._starts_timer is not None:
            self._starts_timer.cancel()
            self._starts_timer = None

    def _flush_starts(self) -> None:
        self._starts_timer = None
        if not self.pending_starts:
            return
        try:
            with connection.transaction(self.conn):
                written = self._write_starts(self.conn)
        except (sqlite3.Error, OSError) as e:
            # The workloads run and are supervised; try again later.
            self.log(f"cannot record the start of {sorted(self.pending_starts)}: {e}")
            self._starts_timer = self.call_later(FINISH_RETRY_S, self._flush_starts)
            return
        self._starts_written(written)

    def _spawn_into(
        self, spec: launcher.LaunchSpec, group: Optional[TaskCgroup], facility: Optional[Cgroups]
    ) -> launcher.Spawned:
        """
        Spawn the workload inside its groups: the supervisor steps into
        them for the duration of the spawn, so the child is born there.
        """
        if group is None or facility is None:
            return self.processes.spawn(spec)
        try:
            facility.enter(group)
        except OSError as e:
            facility.leave(group)
            raise launcher.LaunchError(f"cannot enter cgroup: {e}") from None
        try:
            return self.processes.spawn(spec)
        finally:
            facility.leave(group)

    # Timeout and kill

    def _on_timeout(self, run: Running) -> None:
        if run.exit_status is not None or run.timed_out:
            return
        run.timed_out = True
        self._flush_starts()
        transitions.record_timeout(self.conn, run.task_id, self.wall_ms())
        self._terminate(run)

    def kill(self, task_id: str) -> None:
        """
        A kill was requested: SIGTERM the task's process group now, SIGKILL
        after the grace period (L{terminate}).  Repeated kills re-send
        SIGTERM.
        """
        run = self.by_task.get(task_id)
        if run is None:
            # Not launched here (yet): the launch path sees the kill flag.
            return
        run.cancel_requested = True
        self._terminate(run)

    def _terminate(self, run: Running) -> None:
        if run.exit_status is not None:
            return
        run.kill_timer = terminate(self._signaller(run), run.grace_s, self.call_later, run.kill_timer)

    def _kill_now(self, run: Running) -> None:
        kill_now(self._signaller(run))

    def _signaller(self, run: Running) -> Signaller:
        """
        What signals everything of a workload: its process group and its
        cgroups.
        """
        return group_signaller(run.pid, self.processes.signal_group, run.cgroup)

    def watch_kill_flag(self, task_id: str) -> None:
        """
        Poll the store's kill flag of a task (for the single-task shim,
        which has no server connection to be told through).
        """
        run = self.by_task.get(task_id)
        if run is None or run.exit_status is not None:
            return
        if not run.cancel_requested:
            record = reads.load_task(self.conn, task_id)
            if record is not None and record.kill_requested:
                self.kill(task_id)
        run.poll_timer = self.call_later(KILL_FLAG_POLL_S, lambda: self.watch_kill_flag(task_id))

    # Reaping

    def reap(self) -> None:
        """
        Reap every exited child.  A workload leader's process group is
        killed before the leader is reaped (while its zombie still holds
        the group id), so nothing of a finished task lingers.
        """
        self._endings = []
        try:
            self._reap_all()
        finally:
            endings, self._endings = self._endings, None
            if endings:
                self._end(endings)

    def _reap_all(self) -> None:
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
            self._kill_now(run)
            self.call_later(GROUP_DRAIN_STEP_S, lambda: self._drain(run))
            return
        self._complete(run, drained=run.cgroup is not None and not alive)

    def _complete(self, run: Running, drained: bool) -> None:
        """
        Write the end of a task whose workload was reaped.

        @param drained: its cgroups are empty (the drain saw them so).
        """
        self.by_task.pop(run.task_id, None)
        assert run.exit_status is not None and run.usage is not None
        self._hand_back(run.record, drained)
        usage, oom_killed = run.usage, False
        if run.cgroup is not None:
            oom_killed = run.cgroup.oom_killed()
            usage = attrs.evolve(usage, memory_peak_bytes=run.cgroup.memory_peak())
            cpu = run.cgroup.cpu_ms()
            if cpu is not None:
                usage = attrs.evolve(usage, user_cpu_ms=cpu[0], system_cpu_ms=cpu[1])
            hits = run.cgroup.pids_limit_hits()
            if hits:
                self._pids_limit_event(run, hits)
            run.cgroup.remove()
        wrapper = self.processes.read_status(run.status_fd)
        run.status_fd = None
        if run.setup_error is None and wrapper is not None:
            kind, _, detail = wrapper.partition(": ")
            if kind == "exec":
                self._finish(run.task_id, outcome.failed("launch_failed", f"spawn process: {detail}"))
                return
            run.setup_error = f"sandbox: {detail}"
        if run.setup_error is not None:
            self._finish(run.task_id, outcome.failed("sandbox_setup_failed", run.setup_error))
            return
        current = reads.refresh(self.conn, run.record)
        kill_flag = current is not None and current.kill_requested
        enforcement = policy.plan_of(run.record).resource_enforcement
        verdict = outcome.classify(
            outcome.Exit(
                status=run.exit_status,
                usage=usage,
                timed_out=run.timed_out,
                cancelled=run.cancel_requested or kill_flag,
                oom_killed=oom_killed,
                cpu_time_sec=enforcement.cpu_time_sec if enforcement.cpu_time_enforced else None,
            )
        )
        self._finish(run.task_id, verdict, current=current)

    def _hand_back(self, record: TaskRecord, drained: bool) -> None:
        """
        Before a task's end is written: L{privileges.hand_back}, its
        trouble logged.

        @param drained: the task's cgroups are known empty.
        """
        try:
            whole = privileges.hand_back(
                self.identity, record.run_as, record.paths.task_dir, record.paths.script_path, drained
            )
        except OSError as e:
            self.log(f"cannot hand back the files of {record.task_id}: {e}")
            return
        if not whole:
            self.log(
                f"{record.task_id}: handed back its workspace's top and the first"
                f" {privileges.RECLAIM_ENTRIES} entries below it; the rest keep its uid"
            )

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

    def _finish(
        self,
        task_id: str,
        verdict: Outcome,
        attempt: int = 0,
        current: Optional[TaskRecord] = None,
    ) -> None:
        """
        Write the terminal record and, before it commits, C{result.json};
        then tell the servers.  The ends met while reaping are written
        together when the reaping is done (L{reap}): one transaction for
        the tasks that ended at once.
        """
        ending = Ending(task_id, verdict, attempt, current)
        if self._endings is not None:
            self._endings.append(ending)
        else:
            self._end([ending])

    def _end(self, endings: List["Ending"]) -> None:
        """
        Render each task's C{result.json} aside, write every terminal
        record (and the pending start records) in one transaction, then
        report.  A store that cannot take the write (disk full, locked) is
        retried every second, task by task, so no task is left C{running}
        once the store recovers.
        """
        now = self.wall_ms()
        try:
            for ending in endings:
                self._prepare_ending(ending, now)
            written = self._write_endings([e for e in endings if e.write is not None and e.write.eligible])
        except (sqlite3.Error, OSError) as e:
            for ending in endings:
                if ending.write is not None:
                    ending.write.abandon()
                self.log(f"cannot record the end of {ending.task_id} (attempt {ending.attempt + 1}): {e}")
                self._retry_later(ending)
            return
        self._starts_written(written)
        for ending in endings:
            self._report(ending)

    def _prepare_ending(self, ending: "Ending", now: int) -> None:
        """
        The first step of the ending's terminal write: the task as the
        write will find it (its pending start written first), its
        C{result.json} written aside.
        """
        current = ending.current
        if current is None:
            current = reads.load_task(self.conn, ending.task_id)
        ending.write = terminal.TerminalWrite(
            ending.task_id,
            ending.verdict,
            now,
            ceiling=self.preview_ceiling,
            keep_snapshot_bytes=REPORTED_STATUS_MAX_BYTES,
        )
        ending.write.prepare(None if current is None else self._as_started(current))

    def _write_endings(self, endings: List["Ending"]) -> List[str]:
        """
        The terminal writes of C{endings} in one transaction with the
        pending start records (L{terminal.commit}); the start records
        written.
        """
        if not endings:
            return []
        written = terminal.commit(self.conn, [ending.write for ending in endings if ending.write], self._write_starts)
        for ending in endings:
            if ending.write is not None and ending.write.result_missing:
                # Ended all the same; the server writes the file once the
                # data directory takes it.
                self.log(f"cannot write the result.json of {ending.task_id}; marked for repair")
        return written

    def _report(self, ending: "Ending") -> None:
        self.pending_finishes.pop(ending.task_id, None)
        write, ending.write = ending.write, None
        carried = None
        if write is not None and write.took and write.result is not None:
            # Sent as compact JSON, no bigger than the result.json text.
            carried = write.result.snapshot
        self.emit(Finished(ending.task_id, carried))
        if write is not None and write.result is not None and write.result.size > PEAK_RESET_PREVIEW_CHARS:
            # Rendering it took memory for a moment: later workloads
            # would report that peak as theirs (see reset_peak_rss).
            self.processes.reset_peak_rss()

    def _retry_later(self, ending: "Ending") -> None:
        task_id, attempt = ending.task_id, ending.attempt + 1
        self.pending_finishes[task_id] = ending.verdict
        self.call_later(FINISH_RETRY_S, lambda: self._retry_finish(task_id, attempt))

    def _retry_finish(self, task_id: str, attempt: int) -> None:
        verdict = self.pending_finishes.get(task_id)
        if verdict is not None:
            self._finish(task_id, verdict, attempt)

    @property
    def busy(self) -> bool:
        """
        Whether any workload is still supervised here, or an outcome still
        waits to be written.
        """
        return bool(self.by_task) or bool(self.pending_finishes) or bool(self.pending_starts)

    def close(self) -> None:
        """
        Write what is pending and close the store connection.
        """
        self._flush_starts()
        self.conn.close()
