# -*- test-case-name: tests.test_runtime,tests.test_integration -*-
"""
The server's recovery of tasks whose supervisor is gone (L{Recovery}): at
start-up, every non-terminal task is recovered, released or failed by
the pure plan of L{execgo.core.recovery}; while serving, a supervisor
whose connection closed is waited out, what it was running is failed
C{internal}, and a new one is started.

A lost task is buried before its end is written: its process group is
killed, its cgroups discarded, every process of its uid killed and its
files handed back (the blocking parts off the reactor thread, through
the injected C{in_thread}).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from execgo.core import outcome, recovery
from execgo.core.constants import STATUS_RUNNING
from execgo.core.records import TaskRecord
from execgo.host import escalation, privileges
from execgo.host.cgroups import Cgroups
from execgo.host.privileges import TaskIdentity
from execgo.host.procinfo import is_supervisor, kill_group
from execgo.server.link import SupervisorLink
from execgo.server.scheduler import Scheduler
from execgo.server.taskstore import TaskStore
from execgo.server.upkeep import Upkeep
from execgo.server.waiters import Waiters

log = Logger()

#: How often a lost supervisor is checked for being gone, and how many
#: times, before what it ran is failed all the same.
GONE_POLL_S = 0.01
GONE_POLLS = 200
#: Seconds between tries to replace a lost supervisor while the store (or
#: the supervisor's start) fails.
REPLACE_RETRY_S = 1.0


class Recovery:
    """
    Recovers, at start-up and while serving, the tasks whose supervisor is
    gone.

    @param reactor: paces the wait for a lost supervisor to be gone.
    @param store: the task store.
    @param scheduler: the dispatcher: rebuilt at start-up, told of the
        loss and of the reservations freed.
    @param link: the supervisor link, asked for a new supervisor.
    @param waiters: the long-polls, answered when a lost task ends.
    @param upkeep: the repairs run after start-up recovery.
    @param now_ms: wall clock, epoch milliseconds.
    @param max_queued: the queue bound the dispatcher is rebuilt with.
    @param accepting: whether the server serves now (a supervisor is
        started again only then).
    @param cgroups: the per-task cgroup facility (C{None} when cgroups are
        off).
    @param identity: who tasks run as, to kill what is left of a lost
        task's uid and hand its files back.
    @param in_thread: runs a blocking call off the reactor thread
        (C{deferToThread}).
    @param supervisor_alive: whether a recorded supervisor pid is a live
        supervisor (L{is_supervisor}).
    @param signal_group: C{signal_group(pgid, signum)}, a group gone being
        no error (L{kill_group}).
    """

    def __init__(
        self,
        *,
        reactor: IReactorTime,
        store: TaskStore,
        scheduler: Scheduler,
        link: SupervisorLink,
        waiters: Waiters,
        upkeep: Upkeep,
        now_ms: Callable[[], int],
        max_queued: int,
        accepting: Callable[[], bool],
        cgroups: Optional[Cgroups] = None,
        identity: Optional[TaskIdentity] = None,
        in_thread: Callable[..., "defer.Deferred[Any]"] = deferToThread,
        supervisor_alive: Callable[[int], bool] = is_supervisor,
        signal_group: Callable[[int, int], object] = kill_group,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.scheduler = scheduler
        self.link = link
        self.waiters = waiters
        self.upkeep = upkeep
        self.now_ms = now_ms
        self.max_queued = max_queued
        self.accepting = accepting
        self.cgroups = cgroups
        self.identity = identity
        self.in_thread = in_thread
        self.supervisor_alive = supervisor_alive
        self.signal_group = signal_group
        self._retry: Any = None

    async def recover(self) -> None:
        """
        Start-up recovery: apply L{recovery.plan_recovery} to every
        non-terminal task, then rebuild the dispatcher from the store;
        then write the C{result.json} files a storage fault left out
        (L{Upkeep.at_start}).
        """
        unfinished = await self.store.by_status(("accepted", "running"))
        for action in recovery.plan_recovery(unfinished, self.supervisor_alive, self.store.node_id):
            now = self.now_ms()
            if action.kind == recovery.RELEASE_ORPHAN:
                await self.store.release_orphan_reservation(action.task_id, now)
            elif action.kind == recovery.RECOVERED:
                await self.store.mark_recovered(action.task_id, action.reservation, now)
            else:
                await self._fail_lost(action, "recovery_lost")
        self.scheduler.load(await self.store.scheduler_state(self.max_queued))
        await self.upkeep.at_start()

    def supervisor_lost(self, pid: int) -> None:
        """
        The supervisor's connection closed: once it is gone, fail what it
        was running, then start a new one (while serving).
        """
        log.warn("lost the supervisor {pid}", pid=pid)
        self.scheduler.supervisor_lost()
        self._replace(pid)

    def _replace(self, pid: int) -> None:
        """
        Fail what the lost supervisor C{pid} ran and start a new one; on
        failure (a store that cannot be used now, a supervisor that cannot
        start) try again every L{REPLACE_RETRY_S} while serving.
        """
        self._retry = None

        def failed(failure: Any) -> None:
            log.failure(
                "replacing the supervisor failed; trying again in {seconds} s", failure, seconds=REPLACE_RETRY_S
            )
            if self.accepting():
                self._retry = self.reactor.callLater(REPLACE_RETRY_S, self._replace, pid)

        defer.ensureDeferred(self._replace_supervisor(pid)).addErrback(failed)

    def stop(self) -> None:
        """
        Call off a pending retry of L{_replace}.
        """
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    async def _replace_supervisor(self, pid: int) -> None:
        for _ in range(GONE_POLLS):
            if not self.supervisor_alive(pid):
                break
            await deferLater(self.reactor, GONE_POLL_S, lambda: None)
        await self.fail_orphans(f"supervisor {pid} exited unexpectedly")
        if self.accepting():
            await self.link.ensure()
            self.scheduler.wake()

    async def fail_orphans(self, message: str) -> None:
        """
        While serving: fail every running task whose supervisor is gone,
        C{internal} with C{message}, and free its reservation.
        """
        running = await self.store.by_status(("running",))
        for action in recovery.plan_recovery(running, self.supervisor_alive, self.store.node_id):
            if action.kind == recovery.LOST:
                await self._fail_lost(action, message)

    async def _fail_lost(self, action: recovery.RecoveryAction, message: str) -> None:
        if action.kill_pgid is not None:
            escalation.kill_now(escalation.group_signaller(action.kill_pgid, self.signal_group))
        if self.cgroups is not None:
            await self.in_thread(self.cgroups.discard, action.task_id)
        if action.record is not None:
            await self.in_thread(self._bury, action.record)
        await self.store.finish(
            action.task_id, outcome.failed("internal", message), self.now_ms(), (STATUS_RUNNING,)
        )
        # Released before its long-polls look again: they read the store.
        self.scheduler.released(action.task_id)
        self.waiters.notify(action.task_id)

    def _bury(self, record: TaskRecord) -> None:
        """
        What is left of a lost task before its end frees its uid: every
        process of that uid killed, its files handed back (blocking: run
        in a thread).
        """
        try:
            privileges.hand_back(
                self.identity, record.run_as, record.paths.task_dir, record.paths.script_path, emptied=False
            )
        except OSError as e:
            log.warn("cannot hand back the files of {task_id}", task_id=record.task_id, error=str(e))
