"""
Shared fakes and builders for the unit tests: task records and new tasks
built without the submit path, a dispatch store whose answers the test
fires by hand, a supervisor link that records what it was told, and a
connection pool that runs the store's SQL at once, without threads.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable, List, Optional, Sequence, Tuple

import attrs
from twisted.internet import defer

from execgo.core import records
from execgo.core.constants import MODE_ADAPTIVE
from execgo.core.models import (
    ControlContext,
    ExecutionSpec,
    ResourceLimits,
    SandboxPolicy,
)
from execgo.core.plan import ExecutionPlan, ResourceEnforcement
from execgo.core.reservation import Reservation
from execgo.store import connection, taskfiles
from execgo.store.reads import SchedulerState

DEFAULT_LIMITS = ResourceLimits()
PROCESS_SANDBOX = SandboxPolicy()


def command(program: str = "/bin/true", *args: str, env: Optional[dict] = None) -> ExecutionSpec:
    """
    A C{command} execution spec.
    """
    return ExecutionSpec(kind="command", program=program, args=tuple(args), env=dict(env or {}))


def shell(script: str, interpreter: Optional[Sequence[str]] = None) -> ExecutionSpec:
    """
    A C{script} execution spec, with an optional interpreter.
    """
    return ExecutionSpec(
        kind="script",
        script=script,
        interpreter=None if interpreter is None else tuple(interpreter),
    )


def plan_for(
    limits: ResourceLimits = DEFAULT_LIMITS,
    sandbox: SandboxPolicy = PROCESS_SANDBOX,
    *,
    cpu_enforced: bool = False,
    memory_enforced: bool = False,
    pids_enforced: bool = False,
    cgroup_enforced: bool = False,
    oom_detection: bool = False,
    mechanisms: Optional[dict] = None,
    degraded: bool = False,
    fallback_reasons: Tuple[str, ...] = (),
    capability_warnings: Tuple[str, ...] = (),
) -> ExecutionPlan:
    """
    A hand-made plan for a process-profile task with these limits.
    """
    return ExecutionPlan(
        capability_mode=MODE_ADAPTIVE,
        requested_sandbox=sandbox,
        effective_sandbox=sandbox,
        resource_enforcement=ResourceEnforcement(
            wall_time_ms=limits.wall_time_ms,
            cpu_time_sec=limits.cpu_time_sec,
            cpu_time_enforced=cpu_enforced and limits.cpu_time_sec is not None,
            memory_bytes=limits.memory_bytes,
            memory_enforced=memory_enforced and limits.memory_bytes is not None,
            pids_max=limits.pids_max,
            pids_enforced=pids_enforced and limits.pids_max is not None,
            cgroup_enforced=cgroup_enforced,
            oom_detection=oom_detection,
            mechanisms=dict(mechanisms or {}),
        ),
        degraded=degraded,
        fallback_reasons=fallback_reasons,
        capability_warnings=capability_warnings,
    )


def new_task(
    data_dir: str,
    task_id: str,
    execution: Optional[ExecutionSpec] = None,
    limits: ResourceLimits = DEFAULT_LIMITS,
    sandbox: SandboxPolicy = PROCESS_SANDBOX,
    *,
    metadata: Optional[dict] = None,
    plan: Optional[ExecutionPlan] = None,
    control_context: Optional[ControlContext] = None,
    make_dirs: bool = False,
) -> records.NewTask:
    """
    A L{records.NewTask} laid out under C{data_dir} (with its workspace and
    empty logs created when C{make_dirs}).
    """
    execution = execution or command()
    paths = taskfiles.task_paths(data_dir, task_id, execution, sandbox.workspace_subdir)
    if make_dirs:
        os.makedirs(paths.workspace_dir, exist_ok=True)
        for log in (paths.stdout_path, paths.stderr_path):
            open(log, "ab").close()
    return records.NewTask(
        task_id=task_id,
        execution=execution,
        limits=limits,
        sandbox=sandbox,
        metadata=dict(metadata or {}),
        plan=plan or plan_for(limits, sandbox),
        control_context=control_context,
        paths=paths,
    )


def record(
    task_id: str,
    status: str = "accepted",
    *,
    created_at_ms: int = 1000,
    memory_bytes: Optional[int] = None,
    pids_max: Optional[int] = None,
    tenant: Optional[str] = None,
    reservation: Optional[Reservation] = None,
    reserved_at_ms: Optional[int] = None,
    released_at_ms: Optional[int] = None,
    shim_pid: Optional[int] = None,
    pid: Optional[int] = None,
    data_dir: str = "/data",
    **changes: Any,
) -> records.TaskRecord:
    """
    A stored task as L{execgo.store.reads.load_task} would return it, without a store.
    """
    execution = changes.pop("execution", command())
    limits = changes.pop(
        "limits", ResourceLimits(memory_bytes=memory_bytes, pids_max=pids_max)
    )
    sandbox = changes.pop("sandbox", SandboxPolicy())
    return records.TaskRecord(
        task_id=task_id,
        status=status,
        execution=execution,
        limits=limits,
        sandbox=sandbox,
        metadata=changes.pop("metadata", {}),
        created_at_ms=created_at_ms,
        updated_at_ms=changes.pop("updated_at_ms", created_at_ms),
        paths=taskfiles.task_paths(data_dir, task_id, execution, sandbox.workspace_subdir),
        control_context=None if tenant is None else ControlContext(tenant=tenant),
        reservation=reservation,
        reserved_at_ms=reserved_at_ms,
        released_at_ms=released_at_ms,
        shim_pid=shim_pid,
        pid=pid,
        pgid=pid,
        **changes,
    )


@attrs.define
class StateCall:
    """
    One recorded L{FakeDispatchStore.scheduler_state} call.
    """

    max_queued: int
    deferred: "defer.Deferred[SchedulerState]"


class FakeDispatchStore:
    """
    The dispatcher's store: every C{scheduler_state} call is recorded and
    answered by a Deferred the test fires (so it controls when a cycle
    resumes).
    """

    def __init__(self) -> None:
        self.states: List[StateCall] = []

    def scheduler_state(self, max_queued: int) -> "defer.Deferred[SchedulerState]":
        """
        Record the call; answer with a fresh pending Deferred.
        """
        call = StateCall(max_queued, defer.Deferred())
        self.states.append(call)
        return call.deferred


class FakeLink:
    """
    The supervisor link: connected or not, with a pid, recording every
    launch order it sent and every one it refused for want of a
    connection, and every kill; always healthy.

    @ivar calls: what the server asked of it besides orders
        (C{link.listen}, C{link.ensure}, C{link.close}), in order: a list
        of its own, or the one it was given (to share with other fakes).
    """

    def __init__(
        self, pid: Optional[int] = 4242, connected: bool = True, calls: Optional[List[str]] = None
    ) -> None:
        self.pid = pid
        self.connected = connected
        self.launched: List[List[str]] = []
        self.refused: List[List[str]] = []
        self.killed: List[str] = []
        self.calls: List[str] = [] if calls is None else calls
        self.receiver: Any = None

    def listen(self, receiver: Any) -> None:
        """
        Record who the supervisor's reports would go to.
        """
        self.calls.append("link.listen")
        self.receiver = receiver

    def ensure(self) -> "defer.Deferred[Optional[int]]":
        """
        Record the request for a supervisor: there is one at once, its pid.
        """
        self.calls.append("link.ensure")
        return defer.succeed(self.pid)

    def close(self) -> "defer.Deferred[None]":
        """
        Record the disconnection.
        """
        self.calls.append("link.close")
        self.connected = False
        return defer.succeed(None)

    def launch(self, task_ids: Sequence[str]) -> bool:
        """
        Send (record) the launch order; without a connection, record the
        refusal and answer C{False}.
        """
        if not self.connected:
            self.refused.append(list(task_ids))
            return False
        self.launched.append(list(task_ids))
        return True

    def kill(self, task_id: str) -> bool:
        """
        Record the kill order; whether it could be sent.
        """
        self.killed.append(task_id)
        return self.connected

    def health(self) -> Optional[str]:
        """
        No reason to be unready.
        """
        return None


@attrs.define
class FakeTaskCgroup:
    """
    A per-task cgroup that exists only in memory: it records signals and
    reports the verdict counters it was given.
    """

    task_id: str
    mechanisms: dict
    pids_max: Optional[int]
    oom: bool = False
    peak: Optional[int] = None
    hits: int = 0
    signals: List[int] = attrs.field(factory=list)
    removed: bool = False

    def populated(self) -> bool:
        """
        Nothing is really placed in it.
        """
        return False

    def signal(self, signum: int) -> None:
        """
        Record the signal.
        """
        self.signals.append(signum)

    def oom_killed(self) -> bool:
        """
        The configured OOM verdict.
        """
        return self.oom

    def memory_peak(self) -> Optional[int]:
        """
        The configured peak.
        """
        return self.peak

    def cpu_ms(self) -> Optional[Tuple[int, int]]:
        """
        No CPU accounting in the fake: the rusage figures stand.
        """
        return None

    def pids_limit_hits(self) -> int:
        """
        The configured number of refused forks.
        """
        return self.hits

    def remove(self) -> None:
        """
        Record the removal.
        """
        self.removed = True


class FakeCgroups:
    """
    The supervisor's cgroup facility, in memory: it hands out
    L{FakeTaskCgroup}s and can be told to fail at any step.

    @ivar fail: the step (C{"create"}, C{"enter"}, C{"limit"}) that raises
        C{OSError}, if any.
    """

    def __init__(self, fail: Optional[str] = None, **verdict: Any) -> None:
        self.fail = fail
        self.verdict = verdict
        self.groups: List[FakeTaskCgroup] = []
        self.calls: List[Tuple[str, Any]] = []

    def _maybe_fail(self, step: str) -> None:
        if self.fail == step:
            raise OSError(13, f"Permission denied ({step})")

    def create(self, task_id: str, mechanisms: Any, pids_max: Optional[int]) -> FakeTaskCgroup:
        """
        Record and hand out a group.
        """
        self.calls.append(("create", task_id))
        self._maybe_fail("create")
        group = FakeTaskCgroup(task_id, dict(mechanisms), pids_max, **self.verdict)
        self.groups.append(group)
        return group

    def enter(self, group: FakeTaskCgroup) -> None:
        """
        Record the supervisor stepping in.
        """
        self.calls.append(("enter", group.task_id))
        self._maybe_fail("enter")

    def leave(self, group: FakeTaskCgroup) -> None:
        """
        Record the supervisor stepping out.
        """
        self.calls.append(("leave", group.task_id))

    def limit(self, group: FakeTaskCgroup, memory_bytes: Optional[int], pids_max: Optional[int]) -> None:
        """
        Record the limits.
        """
        self.calls.append(("limit", (memory_bytes, pids_max)))
        self._maybe_fail("limit")


class InlinePool:
    """
    An C{adbapi.ConnectionPool} for tests: each job runs at once, on the
    caller's thread, on one real SQLite connection configured as the
    store configures its own, and the Deferred it returns has fired
    already.  Real SQL, no threads, no reactor.

    @ivar jobs: how many jobs ran.
    """

    def __init__(self, path: str) -> None:
        self.connection = connection.connect(path)
        self.jobs = 0
        self.closed = False

    def runWithConnection(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> "defer.Deferred[Any]":
        """
        C{func(connection, *args, **kwargs)}, then a commit, as adbapi does
        (a rollback when it raises).
        """
        return defer.maybeDeferred(self._run, func, args, kwargs)

    def runInteraction(self, interaction: Callable[..., Any], *args: Any, **kwargs: Any) -> "defer.Deferred[Any]":
        """
        C{interaction(cursor, *args, **kwargs)}, committed as
        L{runWithConnection}.
        """
        return self.runWithConnection(lambda conn, *a, **kw: interaction(conn.cursor(), *a, **kw), *args, **kwargs)

    def _run(self, func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Any) -> Any:
        if self.closed:
            raise sqlite3.ProgrammingError("the pool is closed")
        self.jobs += 1
        try:
            result = func(self.connection, *args, **kwargs)
        except BaseException:
            self.connection.rollback()
            raise
        self.connection.commit()
        return result

    def close(self) -> None:
        """
        Close the connection.
        """
        if not self.closed:
            self.closed = True
            self.connection.close()


def run_now(func: Callable[..., Any], *args: Any, **kwargs: Any) -> "defer.Deferred[Any]":
    """
    C{deferToThread} for tests: run C{func} here and now; its result (or
    failure) in a fired Deferred.
    """
    return defer.maybeDeferred(func, *args, **kwargs)


#: The C{tasks} table as the first stores had it, before the columns later
#: versions added: where every migration starts from.
OLD_TASKS_TABLE = (
    "CREATE TABLE tasks (task_id TEXT PRIMARY KEY NOT NULL, handle_id TEXT NOT NULL,"
    " status TEXT NOT NULL, execution_json TEXT NOT NULL, limits_json TEXT NOT NULL,"
    " sandbox_json TEXT NOT NULL, created_at_ms INTEGER NOT NULL,"
    " updated_at_ms INTEGER NOT NULL, task_dir TEXT NOT NULL, workspace_dir TEXT NOT NULL,"
    " request_path TEXT NOT NULL, result_path TEXT NOT NULL, stdout_path TEXT NOT NULL,"
    " stderr_path TEXT NOT NULL, stdout_max_bytes INTEGER NOT NULL,"
    " stderr_max_bytes INTEGER NOT NULL)"
)


def old_store(test: Any, path: str) -> sqlite3.Connection:
    """
    A new store at C{path} as the first version made it (L{OLD_TASKS_TABLE}
    only), open in autocommit and closed when C{test} ends: insert its rows,
    then initialise the schema over it to see the migration.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    test.addCleanup(conn.close)
    conn.execute(OLD_TASKS_TABLE)
    return conn
