# -*- test-case-name: tests.test_validation,tests.test_render -*-
"""
The fixed words of the wire and the defaults every part agrees on: task
statuses, execution kinds, capability modes, sandbox profiles, namespace
names, the integer bounds and the default limits; and L{JSON}, the type
of a rendered value.
No imports beyond the standard library, so any module may use them.
"""

from __future__ import annotations

from typing import Any, Dict

#: A value rendered for the wire, or read back from it: a JSON object.
JSON = Dict[str, Any]

STATUS_ACCEPTED = "accepted"
STATUS_RUNNING = "running"
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"
STATUS_CANCELLED = "cancelled"
TERMINAL_STATUSES = frozenset({STATUS_SUCCESS, STATUS_FAILED, STATUS_CANCELLED})
ALL_STATUSES = (
    STATUS_ACCEPTED,
    STATUS_RUNNING,
    STATUS_SUCCESS,
    STATUS_FAILED,
    STATUS_CANCELLED,
)

KIND_COMMAND = "command"
KIND_SCRIPT = "script"
MODE_ADAPTIVE = "adaptive"
MODE_STRICT = "strict"
PROFILE_PROCESS = "process"
PROFILE_LINUX_SANDBOX = "linux_sandbox"
NAMESPACE_NAMES = ("mount", "pid", "uts", "ipc", "net")

#: The largest unsigned 64-bit integer: the contract's bound on every
#: count and size a request or a setting may give.
UINT64_MAX = 2**64 - 1
#: The largest output limit the contract admits at all (2^63-1).
OUTPUT_LIMIT_MAX = 2**63 - 1

DEFAULT_WALL_TIME_MS = 300_000
DEFAULT_OUTPUT_MAX_BYTES = 4_194_304
