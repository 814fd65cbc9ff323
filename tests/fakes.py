"""
Shared fakes and builders for the unit tests: task records and new tasks
built without the submit path, a dispatch store whose answers the test
fires by hand, a supervisor link that records what it was told, and a
connection pool that runs the store's SQL at once, without threads.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import attrs
from twisted.internet import defer

from execgo.cli.core import CliEnvironment
from execgo.cli.sync_http import Response
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
from execgo.store import eventlog, opening, reads, taskfiles
from execgo.store.reads import SchedulerState
from execgo.supervisor import launcher
from execgo.supervisor.processes import Reaped

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
    @ivar refuse_starts: how many of the next L{ensure} calls fail, as a
        supervisor that cannot start does.
    """

    def __init__(
        self, pid: Optional[int] = 4242, connected: bool = True, calls: Optional[List[str]] = None
    ) -> None:
        self.pid = pid
        self.slots: Optional[int] = None
        self.connected = connected
        self.launched: List[List[str]] = []
        self.refused: List[List[str]] = []
        self.killed: List[str] = []
        self.calls: List[str] = [] if calls is None else calls
        self.receiver: Any = None
        self.refuse_starts = 0

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
        if self.refuse_starts:
            self.refuse_starts -= 1
            return defer.fail(OSError("the supervisor cannot start"))
        return defer.succeed(self.pid)

    def close(self, leave: bool = False) -> "defer.Deferred[None]":
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
    @ivar place: the directory L{birthplace} names for every group (C{None}:
        children are placed by moving, L{enter} and L{leave}).
    """

    def __init__(self, fail: Optional[str] = None, **verdict: Any) -> None:
        self.fail = fail
        self.verdict = verdict
        self.groups: List[FakeTaskCgroup] = []
        self.calls: List[Tuple[str, Any]] = []
        self.place: Optional[str] = None

    def birthplace(self, group: FakeTaskCgroup) -> Optional[str]:
        """
        L{place}.
        """
        return self.place

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
    caller's thread, on one real connection to the store at C{path} (an
    SQLite file, or a PostgreSQL URL) opened as the supervisor opens its
    own, and the Deferred it returns has fired already.  Real SQL, no
    threads, no reactor.

    @ivar jobs: how many jobs ran.
    """

    def __init__(self, path: str) -> None:
        self.connection = opening.connect(path)
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


FIRST_PID = 40_000


def exit_status(code: int) -> int:
    """
    The wait status of a process that exited with C{code}.
    """
    return code << 8


@attrs.define
class FakeWorkload:
    """
    One spawned workload as the fake kernel sees it.

    @ivar ignores: signals it ignores (C{SIGKILL} is never ignored).
    @ivar exit_on: signal to the exit code it exits with when sent it
        (instead of dying by it).
    @ivar leftovers: processes left in its group once the leader exited
        (each dies at the next C{SIGKILL} unless C{immortal}).
    @ivar status: its wait status once it exited.
    """

    pid: int
    spec: launcher.LaunchSpec
    ignores: Set[int] = attrs.field(factory=set)
    exit_on: Dict[int, int] = attrs.field(factory=dict)
    leftovers: int = 0
    immortal: bool = False
    status: Optional[int] = None
    reaped: bool = False


class FakeProcesses:
    """
    L{execgo.supervisor.processes.Processes} in memory: spawns are
    recorded, signals decide how fake workloads end, and the test ends
    them too (L{exit}).

    @ivar fail: a L{launcher.LaunchError} the next spawn raises.
    @ivar behaviour: keyword arguments given to each new L{FakeWorkload}.
    @ivar signals: every C{(pgid, signum)} sent, in order.
    """

    def __init__(self) -> None:
        self.workloads: Dict[int, FakeWorkload] = {}
        self.signals: List[Tuple[int, int]] = []
        self.fail: Optional[launcher.LaunchError] = None
        self.behaviour: Dict[str, Any] = {}
        self.status_lines: Dict[int, str] = {}
        self.resets = 0
        self.born_in: List[str] = []
        self._next_pid = FIRST_PID

    def spawn(self, spec: launcher.LaunchSpec, cgroup_fd: Optional[int] = None) -> launcher.Spawned:
        """
        Record a workload (or raise L{fail}), and the directory its
        C{cgroup_fd} names, if any (L{born_in}).
        """
        if cgroup_fd is not None:
            self.born_in.append(os.readlink(f"/proc/self/fd/{cgroup_fd}"))
        if self.fail is not None:
            raise self.fail
        pid = self._next_pid
        self._next_pid += 1
        self.workloads[pid] = FakeWorkload(pid, spec, **self.behaviour)
        return launcher.Spawned(pid=pid)

    def read_status(self, status_fd: Optional[int]) -> Optional[str]:
        """
        No sandbox wrapper here: nothing to report.
        """
        return None

    def exited(self) -> Optional[int]:
        """
        The first exited workload not reaped yet.
        """
        for workload in self.workloads.values():
            if workload.status is not None and not workload.reaped:
                return workload.pid
        return None

    def reap(self, pid: int) -> Optional[Reaped]:
        """
        Reap an exited workload, with made-up usage.
        """
        workload = self.workloads.get(pid)
        if workload is None or workload.status is None or workload.reaped:
            return None
        workload.reaped = True
        return Reaped(status=workload.status, user_cpu_ms=7, system_cpu_ms=3, max_rss_bytes=4096)

    def signal_group(self, pgid: int, signum: int) -> bool:
        """
        Record the signal and apply it: a signal not ignored ends the
        leader (by the signal, or with its C{exit_on} code); C{SIGKILL}
        ends the leftovers.
        """
        self.signals.append((pgid, signum))
        workload = self.workloads.get(pgid)
        if workload is None or not self.group_alive(pgid):
            return False
        if workload.status is None and signum not in workload.ignores - {signal.SIGKILL}:
            if signum in workload.exit_on:
                workload.status = exit_status(workload.exit_on[signum])
            else:
                workload.status = signum
        if signum == signal.SIGKILL and not workload.immortal:
            workload.leftovers = 0
        return True

    def group_alive(self, pgid: int) -> bool:
        """
        A leader not reaped, or leftovers.
        """
        workload = self.workloads.get(pgid)
        return workload is not None and (not workload.reaped or workload.leftovers > 0)

    def reset_peak_rss(self) -> bool:
        """
        Count the resets.
        """
        self.resets += 1
        return True

    def exit(self, pid: int, code: int = 0, leftovers: int = 0) -> None:
        """
        The leader of C{pid} exits with C{code}, leaving C{leftovers} in
        its group.
        """
        self.workloads[pid].status = exit_status(code)
        self.workloads[pid].leftovers = leftovers

    def sent(self, pid: int) -> List[int]:
        """
        The signals sent to the group C{pid}, in order.
        """
        return [signum for pgid, signum in self.signals if pgid == pid]


def ok(body: bytes) -> Response:
    """
    A C{200 OK} response with C{body}.
    """
    return Response(200, "OK", body)


@attrs.frozen
class Call:
    """
    One request the CLI made.
    """

    method: str
    url: str
    body: Optional[bytes]
    headers: Mapping[str, str]


Answer = Union[Response, BaseException, Callable[["FakeWorld", Call], Response]]


@attrs.frozen
class Attempt:
    """
    One scripted answer to a stream request: C{chunks} handed over one by
    one, then C{end} returned (a response) or raised (an exception).  With
    C{block}, the stream waits for that event before it ends.
    """

    chunks: Tuple[bytes, ...] = ()
    end: Union[Response, BaseException] = Response(200, "OK", b"")
    block: Optional[threading.Event] = None


def held(world: "FakeWorld", call: Call, body: bytes) -> Response:
    """
    Answer like a server with long-poll: the clock moves by the request's
    C{wait_ms} before the non-terminal answer C{body}.
    """
    wait_ms = int(call.url.rsplit("wait_ms=", 1)[1])
    world.now += wait_ms / 1000.0
    return ok(body)


class FakeWorld:
    """
    The transport and clock a test hands the CLI: requests are recorded and
    answered from a script; C{sleep} advances the fake clock instead of
    blocking.

    @ivar request_seconds: how far the clock moves during each request.
    @ivar streams: per stream (C{stdout}, C{stderr}, C{events}), the
        scripted attempts of the stream requests, in order.
    @ivar tty: what C{stderr_isatty} answers.
    """

    def __init__(
        self,
        answers: Sequence[Answer] = (),
        request_seconds: float = 0.0,
        streams: Optional[Mapping[str, Sequence[Attempt]]] = None,
        tty: bool = False,
    ) -> None:
        self.answers = list(answers)
        self.request_seconds = request_seconds
        self.streams = {name: list(attempts) for name, attempts in (streams or {}).items()}
        self.tty = tty
        self.calls: List[Call] = []
        self.stream_calls: List[Call] = []
        self.sleeps: List[float] = []
        self.now = 1000.0
        self.lock = threading.Lock()

    def stream(
        self,
        method: str,
        url: str,
        on_data: Callable[[bytes], None],
        headers: Optional[Mapping[str, str]] = None,
    ) -> Response:
        call = Call(method, url, None, dict(headers or {}))
        name = url.split("?", 1)[0].rsplit("/", 1)[1]
        with self.lock:
            self.stream_calls.append(call)
            attempts = self.streams.get(name)
            if not attempts:
                raise AssertionError(f"unexpected stream request {call}")
            attempt = attempts.pop(0)
        for chunk in attempt.chunks:
            on_data(chunk)
        if attempt.block is not None:
            attempt.block.wait(30)
        if isinstance(attempt.end, BaseException):
            raise attempt.end
        return attempt.end

    def urls(self, name: str) -> List[str]:
        """
        The URLs of the stream requests for C{name}, path and query after
        the task.
        """
        return [
            c.url.split("/api/v1/tasks/", 1)[1]
            for c in self.stream_calls
            if c.url.split("?", 1)[0].endswith("/" + name)
        ]

    def transport(
        self,
        method: str,
        url: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Response:
        call = Call(method, url, body, dict(headers or {}))
        self.calls.append(call)
        self.now += self.request_seconds
        if not self.answers:
            raise AssertionError(f"unexpected request {call}")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(self, call)
        return answer

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def environment(self) -> CliEnvironment:
        return CliEnvironment(
            transport=self.transport,
            stream=self.stream,
            monotonic=self.monotonic,
            sleep=self.sleep,
            stderr_isatty=lambda: self.tty,
        )


class StoreReads:
    """
    Reads of a test's store connection (C{self.conn}) that the store,
    engine and supervisor tests share.
    """

    conn: Any

    def load(self, task_id: str) -> records.TaskRecord:
        """
        A task that must exist.
        """
        record = reads.load_task(self.conn, task_id)
        assert record is not None
        return record

    def events(self, task_id: str) -> List[str]:
        """
        The task's event types, in order.
        """
        return [event.event_type for event in eventlog.load_events(self.conn, task_id)]
