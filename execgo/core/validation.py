# -*- test-case-name: tests.test_validation -*-
"""
The semantic rules of a decoded submission (L{validate_submit}), one group
of fields after the other, stopping at the first failure, and the output
limits checked later in the submit flow (L{check_output_limits},
L{check_output_ceiling}).

The third step of the untrusted-input layer (L{execgo.core.submission}).
Every rule raises L{InvalidInput} naming the field by its path.  Standard
library and the models only.
"""

from __future__ import annotations

import re
from typing import Any

from execgo.core import bounds
from execgo.core.constants import KIND_COMMAND, KIND_SCRIPT, OUTPUT_LIMIT_MAX, PROFILE_LINUX_SANDBOX
from execgo.core.fields import WHITESPACE, fail, is_blank, show
from execgo.core.models import (
    ControlContext,
    ExecutionSpec,
    ResourceLimits,
    SandboxPolicy,
    SubmitRequest,
)

TASK_ID_MAX_LENGTH = 128

_TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def validate_submit(request: SubmitRequest) -> None:
    """
    Apply the semantic rules in this order, stopping at the first failure:
    C{task_id} (L{_validate_task_id}), C{execution}, C{limits} (set limits
    must not be zero), C{sandbox}, C{policy} (no rules), C{control_context}.

    Each group is followed by what the host accepts of it
    (L{execgo.core.bounds}): no NUL in a string that becomes a path, an
    argument or an environment entry, paths and argument strings within
    the kernel's lengths, limits within what C{setrlimit}, the cgroup
    files and the supervisor's timer take.

    The 2^63-1 bound on output limits is not checked here; see
    L{check_output_limits}.

    @raise InvalidInput: for the first rule broken.
    """
    _validate_task_id(request.task_id)
    _validate_execution(request.execution)
    bounds.check_execution(request.execution)
    _validate_limits(request.limits)
    bounds.check_limits(request.limits)
    _validate_sandbox(request.sandbox)
    bounds.check_sandbox(request.sandbox)
    if request.control_context is not None:
        _validate_control_context(request.control_context)


def check_output_limits(request: SubmitRequest) -> None:
    """
    Reject output limits above 2^63-1 (L{OUTPUT_LIMIT_MAX}), which the
    contract checks while persisting, after the capacity and queue checks.

    @raise InvalidInput: if C{stdout_max_bytes} or C{stderr_max_bytes} is too
        large.
    """
    for name in ("stdout_max_bytes", "stderr_max_bytes"):
        if getattr(request.limits, name) > OUTPUT_LIMIT_MAX:
            fail(f"limits.{name}", f"must be at most {OUTPUT_LIMIT_MAX}")


def check_output_ceiling(request: SubmitRequest, ceiling: int) -> None:
    """
    Reject output limits above the server's preview ceiling
    (C{--max-output-preview-bytes}): a status snapshot and C{result.json}
    hold up to that many bytes of each log, so the ceiling is what bounds
    the memory one snapshot takes.  Checked with L{check_output_limits},
    after it (a limit above 2^63-1 keeps the contract's message).

    @raise InvalidInput: naming the field, the ceiling and the flag.
    """
    for name in ("stdout_max_bytes", "stderr_max_bytes"):
        if getattr(request.limits, name) > ceiling:
            fail(f"limits.{name}", f"must be at most {ceiling} (--max-output-preview-bytes)")


def _validate_task_id(task_id: str | None) -> None:
    """
    The C{task_id} rules: non-blank, no surrounding whitespace, only
    C{[A-Za-z0-9._-]}, not C{.} or C{..}, at most 128 characters.
    """
    if task_id is None:
        return
    if is_blank(task_id):
        fail("task_id", "must not be empty")
    if task_id.strip(WHITESPACE) != task_id:
        fail("task_id", "must not have leading or trailing whitespace")
    if _TASK_ID_PATTERN.fullmatch(task_id) is None:
        fail(
            "task_id",
            "may contain only ASCII letters, ASCII digits, '-', '_' and '.'",
        )
    if task_id in (".", ".."):
        fail("task_id", f"must not be {task_id!r}")
    if len(task_id) > TASK_ID_MAX_LENGTH:
        fail("task_id", f"must be at most {TASK_ID_MAX_LENGTH} characters long")


def _validate_execution(execution: ExecutionSpec) -> None:
    """
    The kind-specific C{program}/C{script}/C{interpreter} rules, then the
    C{env} keys.
    """
    if execution.kind == KIND_COMMAND:
        if execution.program is None or is_blank(execution.program):
            fail(
                "execution.program",
                "required and must not be blank for kind 'command'",
            )
        if execution.script is not None and not is_blank(execution.script):
            fail("execution.script", "must be absent, null or blank for kind 'command'")
    elif execution.kind == KIND_SCRIPT:
        if execution.script is None or is_blank(execution.script):
            fail(
                "execution.script",
                "required and must not be blank for kind 'script'",
            )
        if execution.program is not None and not is_blank(execution.program):
            fail("execution.program", "must be absent, null or blank for kind 'script'")
        interpreter = execution.interpreter
        if interpreter is not None:
            if not interpreter:
                fail("execution.interpreter", "must not be empty when present")
            if is_blank(interpreter[0]):
                fail("execution.interpreter[0]", "must not be blank")
    else:
        # Only reachable for a request built in code, not by decode_submit.
        fail("execution.kind", f"unknown value {show(execution.kind)}")
    _validate_map_keys(execution.env, "execution.env")


def _validate_limits(limits: ResourceLimits) -> None:
    """
    C{wall_time_ms} and both output limits must be positive; the optional
    limits, when set, must not be zero.
    """
    for name in ("wall_time_ms", "stdout_max_bytes", "stderr_max_bytes"):
        if getattr(limits, name) <= 0:
            fail(f"limits.{name}", "must be greater than 0")
    for name in ("cpu_time_sec", "memory_bytes", "pids_max"):
        value = getattr(limits, name)
        if value is not None and value <= 0:
            fail(f"limits.{name}", "must be greater than 0 when set")


def _validate_sandbox(sandbox: SandboxPolicy) -> None:
    """
    C{workspace_subdir} must be relative without C{..}; C{chroot} needs a
    non-blank C{rootfs} and the C{linux_sandbox} profile.
    """
    subdir = sandbox.workspace_subdir
    if subdir is not None:
        if subdir.startswith("/"):
            fail(
                "sandbox.workspace_subdir",
                "must be a relative path, not start with '/'",
            )
        if ".." in subdir.split("/"):
            fail("sandbox.workspace_subdir", "must not contain a '..' component")
    if sandbox.chroot:
        if sandbox.rootfs is None or is_blank(sandbox.rootfs):
            fail(
                "sandbox.rootfs",
                "required and must not be blank when chroot is true",
            )
        if sandbox.profile != PROFILE_LINUX_SANDBOX:
            fail(
                "sandbox.chroot",
                f"requires profile {show(PROFILE_LINUX_SANDBOX)}, "
                f"not {show(sandbox.profile)}",
            )


def _validate_control_context(context: ControlContext) -> None:
    """
    Label keys first, then the four strings must not be blank when
    present; no label and none of the strings holds U+0000 (they are
    stored as text, which PostgreSQL cannot hold it in).
    """
    _validate_map_keys(context.labels, "control_context.labels")
    for key, value in context.labels.items():
        if "\0" in key or "\0" in value:
            fail("control_context.labels", f"key {show(key)}: keys and values must not contain U+0000")
    for name in ("control_plane_mode", "tenant", "owner", "expected_runtime_profile"):
        value = getattr(context, name)
        if value is not None and is_blank(value):
            fail(f"control_context.{name}", "must not be blank when present")
        if value is not None and "\0" in value:
            fail(f"control_context.{name}", "must not contain U+0000")


def _validate_map_keys(mapping: Any, path: str) -> None:
    """
    Every key of C{mapping} must be non-blank and free of C{=}.
    """
    for key in mapping:
        if is_blank(key):
            fail(path, f"key {show(key)} must not be blank")
        if "=" in key:
            fail(path, f"key {show(key)} must not contain '='")
