# -*- test-case-name: tests.test_launcher -*-
"""
Turning a stored task into a running workload process.

L{build_launch} derives the command line, environment, working directory,
limits and identity from a task record and the plan (and resolves a
chroot's root filesystem).  L{spawn} starts the
process through the standard library's C fork/exec path (C{vfork} where the
kernel allows it), in a new session so the workload leads its own process
group, with its output going straight to the task's log files: no pipes, so
the workload neither depends on nor is slowed by its supervisor.  Only a task
with rlimits takes the slower C{preexec_fn} path.

Standard library only: this runs in the supervisor process.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import subprocess
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs

from execgo.control import inherited_env
from execgo.core.constants import PROFILE_LINUX_SANDBOX
from execgo.core.plan import ExecutionPlan, RunAs
from execgo.core.records import TaskRecord
from execgo.core.rootfs import under_roots
from execgo.host import privileges
from execgo.supervisor import sandbox

try:
    from execgo.host import _spawn
except ImportError:  # built without a C compiler: subprocess serves
    _spawn = None  # type: ignore[assignment]

#: What a workload with an identity of its own creates is its own alone.
TASK_UMASK = 0o077

RLimit = Tuple[int, int, int]


class LaunchError(Exception):
    """
    The workload could not be started; the message is the OS error.
    """


class SandboxSetupError(LaunchError):
    """
    The sandbox around the workload could not be set up (e.g. its chroot
    directory does not exist).
    """


@attrs.frozen
class LaunchSpec:
    """
    Everything needed to start one workload.
    """

    argv: Tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    stdout_path: str
    stderr_path: str
    rlimits: Tuple[RLimit, ...] = ()
    script_path: Optional[str] = None
    script_text: Optional[str] = None
    sandbox: Optional[Mapping[str, Any]] = None
    task_dir: Optional[str] = None
    run_as: Optional[RunAs] = None


@attrs.frozen
class Spawned:
    """
    A started workload: its pid (also its process group), and for a
    sandboxed one the read end of the wrapper's status pipe.
    """

    pid: int
    status_fd: Optional[int] = None


def child_environment(
    base: Mapping[str, str], extra: Mapping[str, str], home: Optional[str] = None
) -> dict:
    """
    The workload environment: C{PATH}, C{HOME}, C{LANG}, C{TMPDIR} and
    C{USER} from C{base} when set, overridden by the task's own C{env}.

    @param home: for a task that does not run as the runtime's user, its
        workspace, which replaces C{HOME}; C{USER} (the runtime's user's
        name) is then not passed.
    """
    env = inherited_env(base)
    if home is not None:
        env.pop("USER", None)
        env["HOME"] = home
    env.update(extra)
    return env


def switched_identity(run_as: Optional[RunAs]) -> Optional[RunAs]:
    """
    The identity a workload must be given, or C{None} when it runs as this
    process does (no task identity, or the runtime's own).
    """
    if run_as is None or (run_as.uid == os.geteuid() and run_as.gid == os.getegid()):
        return None
    return run_as


def resolve_rootfs(rootfs: str, roots: Sequence[str]) -> str:
    """
    The real path of a chroot's root filesystem, checked against the
    allowed roots (resolved too), so a link cannot lead the chroot
    anywhere else.  Blocking (a few C{lstat}s).

    @raise SandboxSetupError: when it does not exist or lies elsewhere.
    """
    real = os.path.realpath(rootfs)
    if not os.path.isdir(real):
        raise SandboxSetupError(f"chroot {rootfs}: No such directory")
    if not under_roots(real, [os.path.realpath(root) for root in roots]):
        raise SandboxSetupError(f"chroot {rootfs}: not under an allowed --sandbox-rootfs-root")
    return real


def rlimits_for(plan: ExecutionPlan) -> Tuple[RLimit, ...]:
    """
    The rlimits a plan asks for: C{RLIMIT_CPU} with the hard limit one
    second above the soft one (so the kernel sends C{SIGXCPU} first), and
    C{RLIMIT_AS} when memory is enforced by rlimit rather than by a cgroup.
    """
    enforcement = plan.resource_enforcement
    limits: List[RLimit] = []
    if enforcement.cpu_time_enforced and enforcement.cpu_time_sec is not None:
        seconds = enforcement.cpu_time_sec
        limits.append((resource.RLIMIT_CPU, seconds, seconds + 1))
    memory_mechanism = enforcement.mechanisms.get("memory_bytes", "rlimit")
    if (
        enforcement.memory_enforced
        and enforcement.memory_bytes is not None
        and memory_mechanism == "rlimit"
    ):
        limits.append((resource.RLIMIT_AS, enforcement.memory_bytes, enforcement.memory_bytes))
    return tuple(limits)


def build_launch(
    record: TaskRecord,
    plan: ExecutionPlan,
    base_env: Mapping[str, str],
    rootfs_roots: Sequence[str] = (),
) -> LaunchSpec:
    """
    Derive the launch of a task: its command line (a script is run from
    its file by an interpreter, or by C{/bin/sh -c}), environment, working
    directory, limits, identity and sandbox.

    @raise SandboxSetupError: when its chroot's root filesystem is missing
        or not under one of C{rootfs_roots}.
    """
    execution = record.execution
    run_as = switched_identity(record.run_as)
    workspace = record.paths.workspace_dir
    env = child_environment(base_env, execution.env, workspace if run_as is not None else None)
    script_path = None
    script_text = None
    if execution.kind == "script":
        script_path = record.paths.script_path
        script_text = execution.script or ""
        if execution.interpreter:
            argv: Tuple[str, ...] = (*execution.interpreter, str(script_path))
        else:
            argv = ("/bin/sh", "-c", script_text)
    else:
        argv = (str(execution.program), *execution.args)
    sandbox_config = None
    effective = plan.effective_sandbox
    if effective.profile == PROFILE_LINUX_SANDBOX:
        namespaces = effective.namespaces.to_json() if effective.namespaces else {}
        rootfs = None
        if effective.chroot and effective.rootfs:
            rootfs = resolve_rootfs(effective.rootfs, rootfs_roots)
        sandbox_config = {
            "namespaces": namespaces,
            "hostname": ("execgo-" + record.task_id)[:64],
            "rootfs": rootfs,
            "staging": os.path.join(record.paths.task_dir, "sandbox"),
            "cwd": workspace,
            "argv": list(argv),
            "env": env,
            "uid": None if run_as is None else run_as.uid,
            "gid": None if run_as is None else run_as.gid,
        }
    return LaunchSpec(
        argv=argv,
        env=env,
        cwd=workspace,
        stdout_path=record.paths.stdout_path,
        stderr_path=record.paths.stderr_path,
        rlimits=rlimits_for(plan),
        script_path=script_path,
        script_text=script_text,
        sandbox=sandbox_config,
        task_dir=record.paths.task_dir,
        run_as=run_as,
    )


def _apply_rlimits(rlimits: Sequence[RLimit]) -> Callable[[], None]:
    def preexec() -> None:
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))

    return preexec


@functools.lru_cache(maxsize=None)
def _null_input() -> int:
    """
    A read-only descriptor of the null device, opened once: every workload's
    standard input (the child gets its own copy).
    """
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def prepare(spec: LaunchSpec) -> None:
    """
    Create the working directory (made at submission, normally) and write
    the script file (mode 0700).
    """
    if not os.path.isdir(spec.cwd):
        os.makedirs(spec.cwd, exist_ok=True)
    if spec.script_path is not None:
        fd = os.open(spec.script_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w", encoding="utf-8") as script:
            script.write(spec.script_text or "")
        os.chmod(spec.script_path, 0o700)


def _check_program(config: Mapping[str, Any]) -> None:
    """
    Fail early, as a launch failure, when a sandboxed program cannot be
    found (in the chroot, when there is one: L{resolve_rootfs} has checked
    it exists) on the workload's C{PATH}.
    """
    program = config["argv"][0]
    root = config.get("rootfs") or "/"
    if "/" in program:
        candidates = [program]
    else:
        path = config["env"].get("PATH", os.defpath)
        candidates = [os.path.join(directory or ".", program) for directory in path.split(":")]
    for candidate in candidates:
        if not candidate.startswith("/"):
            candidate = os.path.join(config["cwd"], candidate)
        full = os.path.join(root, candidate.lstrip("/"))
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return
    raise LaunchError(f"[Errno 2] No such file or directory: {program!r}")


def _sandbox_argv(config: Mapping[str, Any], status_fd: int) -> List[str]:
    payload: Dict[str, Any] = dict(config)
    payload["status_fd"] = status_fd
    return [sys.executable, "-I", sandbox.__file__, json.dumps(payload)]


def can_clone_into() -> bool:
    """
    Whether L{spawn} can start a child born in a cgroup v2 directory
    (C{cgroup_fd}): the C{_spawn} extension is built and the kernel has
    C{clone3} with C{CLONE_INTO_CGROUP}.  Asked of the kernel once.
    """
    global _clone_into
    if _clone_into is None:
        _clone_into = _spawn is not None and _spawn.clone_into_supported()
    return _clone_into


_clone_into: Optional[bool] = None


def spawn(spec: LaunchSpec, cgroup_fd: Optional[int] = None) -> Spawned:
    """
    Start the workload (or, for a sandboxed task, the sandbox wrapper that
    becomes it) and return its pid, also its process group and session id.
    The logs are truncated; stdin is the null device.  A task with an
    identity of its own is given its workspace and script first
    (L{privileges.grant}), and runs with that uid and gid, no
    supplementary groups and umask 077; a sandboxed one drops them in the
    wrapper, after the steps that need root.

    @param cgroup_fd: an open cgroup v2 directory the child is born in
        (only where L{can_clone_into}).
    @raise LaunchError: with the OS error when anything fails.
    """
    status_r = status_w = None
    try:
        prepare(spec)
        if spec.run_as is not None and spec.task_dir is not None:
            privileges.grant(spec.task_dir, spec.cwd, spec.script_path, spec.run_as)
        argv = list(spec.argv)
        run_as = spec.run_as
        if spec.sandbox is not None:
            _check_program(spec.sandbox)
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            argv = _sandbox_argv(spec.sandbox, status_w)
            run_as = None
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        stdout = os.open(spec.stdout_path, flags, 0o600)
        try:
            stderr = os.open(spec.stderr_path, flags, 0o600)
            try:
                pid = _start_process(argv, spec, run_as, stdout, stderr, status_w, cgroup_fd)
            finally:
                os.close(stderr)
        finally:
            os.close(stdout)
    except (OSError, ValueError, OverflowError, subprocess.SubprocessError) as e:
        if status_r is not None:
            os.close(status_r)
        raise LaunchError(str(e)) from None
    finally:
        if status_w is not None:
            os.close(status_w)
    if status_r is not None:
        os.set_blocking(status_r, False)
    return Spawned(pid=pid, status_fd=status_r)


def _start_process(
    argv: List[str],
    spec: LaunchSpec,
    run_as: Optional[RunAs],
    stdout: int,
    stderr: int,
    keep_fd: Optional[int],
    cgroup_fd: Optional[int] = None,
) -> int:
    """
    Fork and exec through C{vfork}: with the C{_spawn} extension when it
    was built (it changes the ids in the child, which CPython's own fast
    path refuses to do), else with C{subprocess} (whose path for a change
    of ids forks the whole supervisor, two to three times slower).  With
    C{cgroup_fd} the extension's clone is born in that cgroup.
    """
    if cgroup_fd is not None and not can_clone_into():
        raise ValueError("this host cannot start a child in a cgroup")
    if _spawn is not None:
        environment = os.environ if spec.env is None else spec.env
        return _spawn.spawn(
            _executables(argv[0], environment),
            [os.fsencode(arg) for arg in argv],
            [os.fsencode(f"{name}={value}") for name, value in environment.items()],
            os.fsencode(spec.cwd),
            _null_input(),
            stdout,
            stderr,
            -1 if keep_fd is None else keep_fd,
            -1 if run_as is None else run_as.uid,
            -1 if run_as is None else run_as.gid,
            -1 if run_as is None else TASK_UMASK,
            list(spec.rlimits),
            -1 if cgroup_fd is None else cgroup_fd,
        )
    process = subprocess.Popen(
        argv,
        cwd=spec.cwd,
        env=spec.env,
        stdin=_null_input(),
        stdout=stdout,
        stderr=stderr,
        close_fds=True,
        pass_fds=() if keep_fd is None else (keep_fd,),
        start_new_session=True,
        preexec_fn=_apply_rlimits(spec.rlimits) if spec.rlimits else None,
        user=None if run_as is None else run_as.uid,
        group=None if run_as is None else run_as.gid,
        extra_groups=None if run_as is None else [],
        umask=-1 if run_as is None else TASK_UMASK,
    )
    # The supervisor reaps every child itself (it is a subreaper and needs
    # the rusage); mark the Popen finished so it never waits on the pid.
    process.returncode = 0
    return process.pid


def _executables(program: str, environment: Mapping[str, str]) -> List[bytes]:
    """
    The paths to try for C{program}: itself when it names a path, else
    each directory of the workload's C{PATH} (as C{execvpe} would).
    """
    if "/" in program:
        return [os.fsencode(program)]
    return [os.fsencode(os.path.join(directory, program)) for directory in os.get_exec_path(environment)]


def read_status(status_fd: Optional[int]) -> Optional[str]:
    """
    The sandbox wrapper's failure line, if it wrote one, and close the
    pipe.  C{None} means the workload was exec'd.
    """
    if status_fd is None:
        return None
    try:
        data = os.read(status_fd, 8192)
    except BlockingIOError:
        data = b""
    finally:
        os.close(status_fd)
    line = data.decode("utf-8", "replace").strip()
    return line or None
