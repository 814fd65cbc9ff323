# -*- test-case-name: tests.test_bounds -*-
"""
What the host accepts, checked at submit.

A submission's strings become paths, file names, and the argument and
environment strings of an C{execve}; its limits become rlimits, cgroup
values and a timer of the supervisor.  The kernel, the C library and the
supervisor's event loop each put bounds on those that the JSON schema of
the contract does not (a JSON string may hold U+0000, a JSON integer may
be 2^64-1).  A request past one of them used to be accepted and then fail
at launch (C{launch_failed}, C{sandbox_setup_failed}), or fail the
submission itself with a 500; these checks refuse it at submit with
C{invalid_input}, naming the field and the bound.

Lengths are in bytes of the UTF-8 encoding, as the kernel counts them.

Standard library only, like L{execgo.core.validation}, which calls these from
L{execgo.core.validation.validate_submit}.
"""

from __future__ import annotations

import json
from typing import NoReturn, Optional

from execgo.core.errors import InvalidInput
from execgo.core.models import ExecutionSpec, ResourceLimits, SandboxPolicy

__all__ = [
    "ARG_STRING_MAX_BYTES",
    "CPU_TIME_SEC_MAX",
    "MEMORY_BYTES_MAX",
    "NAME_MAX_BYTES",
    "PATH_MAX_BYTES",
    "PIDS_MAX_MAX",
    "WALL_TIME_MS_MAX",
    "WORKSPACE_SUBDIR_MAX_BYTES",
    "check_execution",
    "check_limits",
    "check_sandbox",
]

#: A path: C{PATH_MAX} (4096) less the terminating NUL.
PATH_MAX_BYTES = 4095
#: One path component: C{NAME_MAX}.
NAME_MAX_BYTES = 255
#: C{sandbox.workspace_subdir}: it is joined below
#: C{<data_dir>/tasks/<task_id>/workspace/}, so with a task id of at most
#: 128 characters this leaves about 2,900 bytes of C{PATH_MAX} for the
#: data directory.
WORKSPACE_SUBDIR_MAX_BYTES = 1024
#: One argument or environment string (C{NAME=value}) of an C{execve}:
#: the kernel's C{MAX_ARG_STRLEN} (32 pages of 4 KiB) less the NUL;
#: longer ones fail with C{E2BIG}.
ARG_STRING_MAX_BYTES = 32 * 4096 - 1
#: The largest value the runtime can hand to C{setrlimit}: C{rlim_t} is 64
#: bits, but both spawn paths (C{resource.setrlimit}, L{execgo.host._spawn})
#: take a signed 64-bit value, and C{RLIM_INFINITY} (2^64-1) would mean
#: no limit at all.
RLIMIT_MAX = 2**63 - 1
#: C{RLIMIT_CPU}: the soft limit is C{cpu_time_sec} and the hard one a
#: second above it (so SIGXCPU comes before SIGKILL); both must fit
#: L{RLIMIT_MAX}.
CPU_TIME_SEC_MAX = RLIMIT_MAX - 1
#: C{RLIMIT_AS} where no cgroup can be used; a memory cgroup takes any
#: 64-bit value (and rounds it down to pages), so the rlimit is the bound.
MEMORY_BYTES_MAX = RLIMIT_MAX
#: The kernel refuses a C{pids.max} (v1 and v2) above C{PID_MAX_LIMIT}
#: (4194304 on 64-bit hosts), and the supervisor writes C{pids_max + 1}
#: while it starts the workload (it counts itself, see L{execgo.host.cgroups}).
PIDS_MAX_MAX = 4 * 1024 * 1024 - 1
#: The wall-time timer is one wait of the supervisor's event loop, and
#: C{epoll_wait} (like C{poll}) takes its timeout as a C int of
#: milliseconds: 2^31-1 ms, about 24.8 days, less a second for the
#: loop's rounding up.  A longer wait raises C{OverflowError} in the loop.
WALL_TIME_MS_MAX = 2**31 - 1 - 1000


def check_execution(execution: ExecutionSpec) -> None:
    """
    The strings of an execution that reach C{execve}: C{program} and
    C{interpreter[0]} are paths; C{args}, C{interpreter}, the script when
    it is run as C{/bin/sh -c SCRIPT} (no interpreter) and every C{env}
    entry are argument or environment strings.  None may hold NUL, and
    each must fit L{ARG_STRING_MAX_BYTES}; the paths must fit
    L{PATH_MAX_BYTES} with components of at most L{NAME_MAX_BYTES}.

    @raise InvalidInput: naming the first string past a bound.
    """
    if execution.program is not None:
        _check_path("execution.program", execution.program, PATH_MAX_BYTES)
    for index, arg in enumerate(execution.args):
        _check_arg(f"execution.args[{index}]", arg)
    interpreter = execution.interpreter or ()
    for index, arg in enumerate(interpreter):
        _check_arg(f"execution.interpreter[{index}]", arg)
    if interpreter:
        _check_path("execution.interpreter[0]", interpreter[0], PATH_MAX_BYTES)
    elif execution.kind == "script" and execution.script is not None:
        _check_arg("execution.script", execution.script)
    for key, value in execution.env.items():
        if "\0" in key:
            _fail("execution.env", f"key {_show(key)} must not contain NUL (U+0000)")
        if "\0" in value:
            _fail(f"execution.env[{_show(key)}]", "must not contain NUL (U+0000)")
        size = _size(key) + 1 + _size(value)
        if size > ARG_STRING_MAX_BYTES:
            _fail(
                f"execution.env[{_show(key)}]",
                f"the entry NAME=value is {size} bytes, more than the kernel's "
                f"limit of {ARG_STRING_MAX_BYTES} bytes for one environment string",
            )


def check_limits(limits: ResourceLimits) -> None:
    """
    Each limit within what the kernel and the supervisor accept:
    L{WALL_TIME_MS_MAX}, L{CPU_TIME_SEC_MAX}, L{MEMORY_BYTES_MAX},
    L{PIDS_MAX_MAX}.  (The output limits have their own bounds, see
    L{execgo.core.validation.check_output_limits}.)

    @raise InvalidInput: naming the limit and its bound.
    """
    _at_most(
        "wall_time_ms",
        limits.wall_time_ms,
        WALL_TIME_MS_MAX,
        "the longest timer the supervisor can set, about 24.8 days",
    )
    _at_most(
        "cpu_time_sec",
        limits.cpu_time_sec,
        CPU_TIME_SEC_MAX,
        "RLIMIT_CPU: the hard limit, one second above it, must fit a signed 64-bit rlim_t "
        "below RLIM_INFINITY",
    )
    _at_most(
        "memory_bytes",
        limits.memory_bytes,
        MEMORY_BYTES_MAX,
        "the largest RLIMIT_AS the runtime can set; also the memory cgroup's bound here",
    )
    _at_most(
        "pids_max",
        limits.pids_max,
        PIDS_MAX_MAX,
        "the kernel's pids.max is at most 4194304, and the supervisor sets one more while "
        "it starts the task",
    )


def check_sandbox(sandbox: SandboxPolicy) -> None:
    """
    C{workspace_subdir} (joined below the task's workspace) and C{rootfs}
    are paths: no NUL, components of at most L{NAME_MAX_BYTES}, in all at
    most L{WORKSPACE_SUBDIR_MAX_BYTES} and L{PATH_MAX_BYTES}.

    @raise InvalidInput: naming the field and the bound.
    """
    if sandbox.workspace_subdir is not None:
        _check_path("sandbox.workspace_subdir", sandbox.workspace_subdir, WORKSPACE_SUBDIR_MAX_BYTES)
    if sandbox.rootfs is not None:
        _check_path("sandbox.rootfs", sandbox.rootfs, PATH_MAX_BYTES)


def _at_most(name: str, value: Optional[int], bound: int, why: str) -> None:
    if value is not None and value > bound:
        _fail(f"limits.{name}", f"must be at most {bound} ({why})")


def _check_arg(path: str, text: str) -> None:
    """
    An argument string: no NUL, at most L{ARG_STRING_MAX_BYTES}.
    """
    if "\0" in text:
        _fail(path, "must not contain NUL (U+0000)")
    size = _size(text)
    if size > ARG_STRING_MAX_BYTES:
        _fail(
            path,
            f"is {size} bytes, more than the kernel's limit of {ARG_STRING_MAX_BYTES} bytes "
            "for one argument string",
        )


def _check_path(path: str, text: str, max_bytes: int) -> None:
    """
    A path: no NUL, at most C{max_bytes}, each component at most
    L{NAME_MAX_BYTES}.
    """
    if "\0" in text:
        _fail(path, "must not contain NUL (U+0000)")
    size = _size(text)
    if size > max_bytes:
        _fail(path, f"is {size} bytes, more than the limit of {max_bytes} bytes for this path")
    if size <= NAME_MAX_BYTES:
        return
    for component in text.split("/"):
        if _size(component) > NAME_MAX_BYTES:
            _fail(
                path,
                f"has a path component of {_size(component)} bytes, more than the file "
                f"system limit of {NAME_MAX_BYTES} bytes",
            )


def _size(text: str) -> int:
    """
    The length of C{text} in UTF-8 (lone surrogates, which the decoder
    refuses, counted as three bytes).
    """
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _show(text: str) -> str:
    """
    Quote a map key for a message: JSON-escaped, cut short.
    """
    if len(text) > 64:
        return json.dumps(text[:64]) + "..."
    return json.dumps(text)


def _fail(path: str, problem: str) -> NoReturn:
    raise InvalidInput(f"{path}: {problem}")
