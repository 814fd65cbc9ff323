# -*- test-case-name: tests.test_engine,tests.test_supervisor -*-
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

L{Supervisor} launches workloads and escalates their kills and timeouts
itself, and delegates the rest to collaborators it builds: the start
records (L{execgo.supervisor.starts}), the reaping and verdicts
(L{execgo.supervisor.reaping}) and the endings
(L{execgo.supervisor.endings}).
"""

from __future__ import annotations

import functools
import os
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from execgo.control import Report, SupervisorSettings
from execgo.core import outcome, policy
from execgo.core.constants import STATUS_ACCEPTED
from execgo.core.records import Outcome, TaskRecord
from execgo.core.reservation import Reservation
from execgo.host.cgroups import Cgroups
from execgo.host.escalation import kill_now, terminate
from execgo.host.privileges import TaskIdentity
from execgo.store import connection, opening, reads, schema, transitions
from execgo.store.backend import SQLITE
from execgo.supervisor import spawning, workload
from execgo.supervisor.endings import Endings
from execgo.supervisor.membership import Membership
from execgo.supervisor.processes import HostProcesses, Processes
from execgo.supervisor.reaping import Reaper
from execgo.supervisor.slots import Order, Slots
from execgo.supervisor.starts import StartRecord, StartRecords
from execgo.supervisor.timers import Timer, Timers
from execgo.supervisor.workload import Running

#: The WAL size (pages) at which the supervisor's own commits checkpoint.
SUPERVISOR_CHECKPOINT_PAGES = 10_000
#: How often the single-task shim reads the store's kill flag.
KILL_FLAG_POLL_S = 0.025
#: How soon a claim the store could not take is tried again.
CLAIM_RETRY_S = 1.0
#: The longest the supervisor waits for one answer of a database server
#: (the connection is dropped past it, and opened again on the next use).
STORE_WAIT_LIMIT_S = 10.0


class Supervisor:
    """
    Launches tasks read from the store, enforces wall time and kills,
    reaps, classifies and records outcomes.

    @param db_path: the store: the SQLite file's path or a PostgreSQL URL
        without its password (L{execgo.store.opening.connect}).
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

    @ivar store: where its store is (C{db_path}), as its greeting says.
    @ivar listeners: each is called with every report for connected
        servers (L{emit}).
    @ivar by_pid: the running workloads by leader pid, until the leader
        is reaped.
    @ivar by_task: the running workloads by task id, until their end is
        handed to L{endings}.
    @ivar starts: the start records not written yet (L{StartRecords}).
    @ivar endings: writes and reports the ends of tasks (L{Endings}).
    @ivar reaper: reaps and judges the workloads that exit (L{Reaper}).
    @ivar slots: the node's task slots and the launch orders waiting for
        one (L{Slots}).
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
        self.cgroups = cgroups
        self.detect_cgroups = detect_cgroups or Cgroups.try_detect
        self._facilities: Dict[str, Optional[Cgroups]] = {}
        self.identity = identity
        self.rootfs_roots = rootfs_roots
        self.store = db_path
        self.conn = opening.connect(db_path, STORE_WAIT_LIMIT_S)
        if connection.backend_of(self.conn) is SQLITE:
            # Checkpoints (the only writes SQLite syncs to disk here) are
            # left to the server, off the supervisor's path: only a WAL ten
            # times the usual size, with no server to checkpoint it, makes
            # this connection do one.
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
        #: The node whose tasks this supervisor claims (the settings'), and
        #: its lease when this process holds it (the daemon's).
        self.node_id: Optional[str] = None
        self.membership: Optional[Membership] = None
        #: The tenant quotas its claims hold to, across the cluster's nodes.
        self.quotas: Dict[str, Reservation] = {}
        #: Where the tasks claimed here that another node accepted get
        #: their files (the daemon's data directory; C{None}: where they are).
        self.data_dir: Optional[str] = None
        self.listeners: List[Callable[[Report], None]] = []
        self.slots = Slots()
        self.starts = StartRecords(self.conn, self.clock.call_later, log)
        self.starts.guard = self._guard_lease
        self.starts.on_stale = self._lease_stale
        self.endings = Endings(
            self.conn,
            self.starts,
            self.clock.call_later,
            wall_ms,
            self.emit,
            self.processes.reset_peak_rss,
            log,
            preview_ceiling,
        )
        self.endings.successors = self.claim_successors
        self.reaper = Reaper(
            self.conn,
            self.clock,
            self.processes,
            wall_ms,
            self.by_pid,
            self.by_task,
            self.endings.finish,
            self._hand_back,
        )

    @property
    def preview_ceiling(self) -> Optional[int]:
        """
        What bounds the previews of C{result.json} (C{None}: the tasks'
        limits alone); the endings written from now on use it.
        """
        return self.endings.preview_ceiling

    @preview_ceiling.setter
    def preview_ceiling(self, ceiling: Optional[int]) -> None:
        self.endings.preview_ceiling = ceiling

    @property
    def pending_starts(self) -> Dict[str, StartRecord]:
        """
        The start records not written yet, by task id.
        """
        return self.starts.pending

    @property
    def pending_finishes(self) -> Dict[str, Outcome]:
        """
        The ends the store refused, to be written again, by task id.
        """
        return self.endings.pending

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
        self.node_id = None if settings.node is None else settings.node.node_id
        self.quotas = dict(settings.quotas)
        self.slots.limit = settings.max_running_tasks

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
        Run every timer whose deadline has passed, each L{guard}ed; then
        start the orders the ends they wrote made room for.
        """
        self.clock.run_due(self.guard)
        self.start_held()

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
        return self.launch_all([(task_id, on_declined)])[0]

    def order(self, orders: List[Order], sender: object = None) -> None:
        """
        A server's launch orders: each starts when a slot is free for it,
        in the order they came, and waits in L{slots} until then
        (L{start_held}).

        @param sender: the connection they came by (L{Slots.forget}).
        """
        self.slots.hold([order for order in orders if order[0] not in self.by_task], sender)
        self.start_held()

    @property
    def occupied(self) -> int:
        """
        The slots taken: workloads supervised, and ends the store has not
        taken yet (their reservations are not released).
        """
        return len(self.by_task) + len(self.endings.pending)

    def start_held(self) -> None:
        """
        Launch the launch orders kept in L{slots} that free slots take
        (L{launch_all}, one claim transaction for those taken together).
        """
        while True:
            taken = self.slots.take(self.occupied)
            if not taken:
                return
            self.launch_all(taken)

    def launch_all(self, orders: Sequence[Order]) -> List[bool]:
        """
        L{launch} for each C{(task_id, on_declined)} of C{orders}, the
        claims in one transaction (L{transitions.claim_all}).

        @return: what L{launch} returns, for each order.
        """
        if self.membership is not None and not self.membership.held:
            return self._declined_unheld(orders)
        fresh = self._fresh(orders)
        try:
            with connection.transaction(self.conn):
                written = self.starts.write(self.conn)
                claims = self._claim(list(fresh))
            self.starts.written(written)
        except transitions.StaleLease as e:
            return self._refused_stale(orders, fresh, e)
        except connection.backend_of(self.conn).Error as e:
            self.log(f"cannot take {', '.join(fresh)}: {e}")
            if transitions.refused_for_lease(e):
                self._lease_stale()
            for task_id, on_declined in fresh.items():
                self.call_later(CLAIM_RETRY_S, functools.partial(self.order, [(task_id, on_declined)]))
            return [True for _ in orders]
        return self._take_claims(orders, fresh, claims)

    def claim_successors(self, conn: object) -> Optional[Callable[[bool], None]]:
        """
        In the transaction that writes ends (L{Endings.successors}): claim
        the orders kept in L{slots} that the ends free slots for, so a slot
        turns over in one transaction.

        @return: what to do once the transaction is over, told whether it
            committed: start the claimed tasks, or keep their orders again
            (C{None}: nothing was taken).
        """
        if self.membership is not None and not self.membership.held:
            return None
        taken = self.slots.take(self.occupied)
        if not taken:
            return None
        fresh = self._fresh(taken)
        try:
            claims = self._claim(list(fresh))
        except connection.backend_of(self.conn).Error:
            # The transaction fails with it: the ends are tried again later.
            self.slots.put_back(taken)
            raise
        except transitions.StaleLease as e:
            refused = e

            def decline(committed: bool) -> None:
                self._refused_stale(taken, fresh, refused)

            return decline

        def settle(committed: bool) -> None:
            if committed:
                self._take_claims(taken, fresh, claims)
            else:
                self.slots.put_back(taken)

        return settle

    def _fresh(self, orders: Sequence[Order]) -> Dict[str, Optional[Callable[[], None]]]:
        """
        The orders for tasks not supervised here, one per task.
        """
        fresh: Dict[str, Optional[Callable[[], None]]] = {}
        for task_id, on_declined in orders:
            if task_id not in self.by_task:
                fresh.setdefault(task_id, on_declined)
        return fresh

    def _claim(self, task_ids: List[str]) -> List[transitions.Claimed]:
        """
        Claim C{task_ids} for this supervisor (L{transitions.claim_all}),
        in the open transaction or one of their own.
        """
        return transitions.claim_all(
            self.conn,
            task_ids,
            os.getpid(),
            self.wall_ms(),
            self.identity,
            self.node_id,
            self.data_dir,
            self.quotas,
            self._lease_epoch(),
        )

    def _take_claims(
        self, orders: Sequence[Order], fresh: Dict[str, Optional[Callable[[], None]]], claims: List[transitions.Claimed]
    ) -> List[bool]:
        """
        Start (or end) each claimed task (L{_launched}) and decline the
        orders not taken.

        @return: what L{launch} returns, for each order.
        """
        taken = {task_id: self._launched(task_id, claim) for task_id, claim in zip(fresh, claims)}
        answers = []
        for task_id, on_declined in orders:
            answers.append(taken.get(task_id, True))
            if not answers[-1] and on_declined is not None:
                on_declined()
        return answers

    def _declined_unheld(self, orders: Sequence[Order]) -> List[bool]:
        """
        A node without its lease claims nothing: another may count it
        lost.  (An order for a task running here is not a claim.)
        """
        running = [task_id in self.by_task for task_id, _ in orders]
        for (_, on_declined), here in zip(orders, running):
            if not here and on_declined is not None:
                on_declined()
        return running

    def _refused_stale(
        self, orders: Sequence[Order], fresh: Dict[str, Optional[Callable[[], None]]], error: Exception
    ) -> List[bool]:
        """
        Nothing was claimed: the node's lease is gone; it fences and joins
        again (L{Membership}), and the orders are declined.
        """
        self.log(f"claims refused: {error}")
        self._lease_stale()
        for on_declined in fresh.values():
            if on_declined is not None:
                on_declined()
        return [task_id in self.by_task for task_id, _ in orders]

    def _lease_stale(self) -> None:
        """
        The store refused a write made under this node's lease: fence now
        and join again (L{Membership.lost}).
        """
        if self.membership is not None and hasattr(self.membership, "lost"):
            self.membership.lost()

    def _guard_lease(self, conn: object) -> None:
        """
        The lease guard of every write transaction (L{StartRecords.guard}):
        the transaction fails unless this node still holds the lease it
        runs under (L{transitions.guard_lease}); nothing on a store no other
        node shares.
        """
        epoch = self._lease_epoch()
        if epoch is not None and self.node_id is not None and connection.backend_of(self.conn) is not SQLITE:
            transitions.guard_lease(conn, self.node_id, epoch, self.wall_ms())  # type: ignore[arg-type]

    def _lease_epoch(self) -> Optional[int]:
        """
        The epoch of the lease claims are made under, when this process
        holds one that fences (a cluster's node, whose id is
        L{node_id}); else C{None}.
        """
        membership = self.membership
        if membership is None or not getattr(membership, "fencing", False):
            return None
        return membership.epoch

    def _launched(self, task_id: str, claimed: transitions.Claimed) -> bool:
        """
        Start a task as its claim left it (L{transitions.claim_all}), or end
        it when it cannot run; C{False} when it is declined.
        """
        if isinstance(claimed, transitions.NoIdentity):
            self.endings.finish(
                task_id, outcome.failed("launch_failed", f"no free task uid: all of {claimed} are in use")
            )
            return True
        if isinstance(claimed, transitions.OverQuota):
            # Stays queued: its dispatcher frees its hold and tries later.
            return False
        if isinstance(claimed, transitions.NoFiles):
            self.endings.finish(task_id, outcome.failed("launch_failed", str(claimed)))
            return True
        if claimed is None:
            return False
        if claimed.status == STATUS_ACCEPTED:
            self.endings.finish(task_id, outcome.cancelled("task cancelled before execution"))
            return True
        try:
            self._start(claimed, self.cgroups)
        except Exception as e:
            self.log("supervisor error: " + traceback.format_exc())
            self._refuse(claimed, outcome.failed("internal", f"supervisor error: {e}"))
        return True

    def _facility(self, cgroup_root: str) -> Optional[Cgroups]:
        """
        The cgroup facility for a root (detected once per root).
        """
        if cgroup_root not in self._facilities:
            self._facilities[cgroup_root] = self.detect_cgroups(cgroup_root)
        return self._facilities[cgroup_root]

    def _start(self, record: TaskRecord, facility: Optional[Cgroups]) -> None:
        """
        Start the workload of a claimed task in its cgroups
        (L{spawning.spawn_into_groups}), set its limits, record its start
        (L{StartRecords}) and set its wall timer; or write its end when it
        cannot be started.
        """
        plan = policy.plan_of(record)
        try:
            spawn = spawning.spawn_into_groups(record, plan, facility, self.processes, self.base_env, self.rootfs_roots)
        except spawning.NotStarted as refused:
            self._refuse(record, refused.verdict)
            return
        pid = spawn.spawned.pid
        run = Running(
            task_id=record.task_id,
            pid=pid,
            status_fd=spawn.spawned.status_fd,
            started_mono=self.clock.monotonic(),
            record=record,
            cgroup=spawn.group,
            grace_s=self.grace_s,
        )
        self.by_pid[pid] = run
        self.by_task[record.task_id] = run
        enforcement = plan.resource_enforcement
        if spawn.group is not None:
            try:
                assert facility is not None
                spawning.set_limits(enforcement, facility, spawn.group)
            except OSError as e:
                # The workload is already running: it must not survive.
                kill_now(run.signaller(self.processes.signal_group))
                run.setup_error = f"configure cgroup: {e}"
        self.starts.add(StartRecord(record.task_id, pid, self.wall_ms(), spawn.spec.script_path))
        run.wall_timer = self.call_later(enforcement.wall_time_ms / 1000.0, lambda: self._on_timeout(run))

    def _refuse(self, record: TaskRecord, verdict: Outcome) -> None:
        """
        End a claimed task whose workload did not start: its files handed
        back (nothing of it runs), its end written.
        """
        self._hand_back(record, drained=True)
        self.endings.finish(record.task_id, verdict)

    def _hand_back(self, record: TaskRecord, drained: bool) -> None:
        """
        Before a task's end is written: its files handed back
        (L{workload.hand_back}) under the identity configured now.

        @param drained: the task's cgroups are known empty.
        """
        workload.hand_back(self.identity, record, drained, self.log)

    # Timeout and kill

    def _on_timeout(self, run: Running) -> None:
        if run.exit_status is not None or run.timed_out:
            return
        run.timed_out = True
        self._terminate(run)
        self.starts.flush()
        try:
            transitions.record_timeout(self.conn, run.task_id, self.wall_ms())
        except (connection.backend_of(self.conn).Error, OSError) as e:
            # Recorded before the task's end is judged (the reaper tries again).
            self.log(f"cannot record the timeout of {run.task_id} yet: {e}")
            run.timeout_unrecorded = True

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
        signaller = run.signaller(self.processes.signal_group)
        run.kill_timer = terminate(signaller, run.grace_s, self.call_later, run.kill_timer)

    def fence(self) -> None:
        """
        Kill every workload now (SIGKILL to its group and cgroups): the
        node could not keep its lease (L{Membership}).  Each ends
        C{failed}, C{internal}, C{node_lost}, as the other nodes end the
        tasks of a node they find lost.
        """
        for run in list(self.by_task.values()):
            if run.exit_status is None:
                run.fenced = True
                kill_now(run.signaller(self.processes.signal_group))

    def watch_kill_flag(self, task_id: str) -> None:
        """
        Poll the store's kill flag of a task (for the single-task shim,
        which has no server connection to be told through).
        """
        run = self.by_task.get(task_id)
        if run is None or run.exit_status is not None:
            return
        if not run.cancel_requested:
            try:
                record = reads.load_task(self.conn, task_id)
            except (connection.backend_of(self.conn).Error, OSError):
                record = None
            if record is not None and record.kill_requested:
                self.kill(task_id)
        run.poll_timer = self.call_later(KILL_FLAG_POLL_S, lambda: self.watch_kill_flag(task_id))

    # Reaping

    def reap(self) -> None:
        """
        Reap every exited child (L{Reaper.reap_all}); the ends met are
        written together, in one transaction, when the reaping is done
        (L{Endings.together}).
        """
        with self.endings.together():
            self.reaper.reap_all()
        self.start_held()

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
        self.starts.flush()
        self.conn.close()
