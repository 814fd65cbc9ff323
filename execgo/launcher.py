# -*- test-case-name: tests.test_launcher -*-
"""
Turning a stored task into a running workload process.

L{build_launch} is pure: it derives the command line, environment, working
directory and limits from a task record and the plan.  L{spawn} starts the
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

from execgo import sandbox
from execgo.models import PROFILE_LINUX_SANDBOX, ExecutionPlan
from execgo.records import TaskRecord

INHERITED_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "USER")

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


@attrs.frozen
class Spawned:
    """
    A started workload: its pid (also its process group), and for a
    sandboxed one the read end of the wrapper's status pipe.
    """

    pid: int
    status_fd: Optional[int] = None


def child_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict:
    """
    The workload environment: C{PATH}, C{HOME}, C{LANG}, C{TMPDIR} and
    C{USER} from C{base} when set, overridden by the task's own C{env}.
    """
    env = {name: base[name] for name in INHERITED_ENV if name in base}
    env.update(extra)
    return env


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


def build_launch(record: TaskRecord, plan: ExecutionPlan, base_env: Mapping[str, str]) -> LaunchSpec:
    """
    Derive the launch of a task (C{behavior.md} 7.2).
    """
    execution = record.execution
    env = child_environment(base_env, execution.env)
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
        sandbox_config = {
            "namespaces": namespaces,
            "hostname": ("execgo-" + record.task_id)[:64],
            "rootfs": os.path.abspath(effective.rootfs) if effective.chroot and effective.rootfs else None,
            "cwd": record.paths.workspace_dir,
            "argv": list(argv),
            "env": env,
        }
    return LaunchSpec(
        argv=argv,
        env=env,
        cwd=record.paths.workspace_dir,
        stdout_path=record.paths.stdout_path,
        stderr_path=record.paths.stderr_path,
        rlimits=rlimits_for(plan),
        script_path=script_path,
        script_text=script_text,
        sandbox=sandbox_config,
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
    found (in the chroot, when there is one) on the workload's C{PATH}.
    """
    program = config["argv"][0]
    root = config.get("rootfs") or "/"
    if not os.path.isdir(root):
        raise SandboxSetupError(f"chroot {root}: No such directory")
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


def spawn(spec: LaunchSpec) -> Spawned:
    """
    Start the workload (or, for a sandboxed task, the sandbox wrapper that
    becomes it) and return its pid, also its process group and session id.
    The logs are truncated; stdin is the null device.

    @raise LaunchError: with the OS error when anything fails.
    """
    status_r = status_w = None
    try:
        prepare(spec)
        argv = list(spec.argv)
        if spec.sandbox is not None:
            _check_program(spec.sandbox)
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            argv = _sandbox_argv(spec.sandbox, status_w)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        stdout = os.open(spec.stdout_path, flags, 0o644)
        try:
            stderr = os.open(spec.stderr_path, flags, 0o644)
            try:
                process = subprocess.Popen(
                    argv,
                    cwd=spec.cwd,
                    env=spec.env,
                    stdin=_null_input(),
                    stdout=stdout,
                    stderr=stderr,
                    close_fds=True,
                    pass_fds=() if status_w is None else (status_w,),
                    start_new_session=True,
                    preexec_fn=_apply_rlimits(spec.rlimits) if spec.rlimits else None,
                )
            finally:
                os.close(stderr)
        finally:
            os.close(stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        if status_r is not None:
            os.close(status_r)
        raise LaunchError(str(e)) from None
    finally:
        if status_w is not None:
            os.close(status_w)
    # The supervisor reaps every child itself (it is a subreaper and needs
    # the rusage); mark the Popen finished so it never waits on the pid.
    process.returncode = 0
    if status_r is not None:
        os.set_blocking(status_r, False)
    return Spawned(pid=process.pid, status_fd=status_r)


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
