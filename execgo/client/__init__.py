"""
The Twisted client of an execgo runtime, for other Twisted programs: see
L{execgo.client.execgo_client.ExecgoClient}.  This face names what a caller
needs; the modules beside it hold the parts (HTTP, streams, typed models,
errors, runtime views, and the no-I/O protocol core the command line
shares).

Importing the face loads no Twisted: the names of the treq client itself
(L{ExecgoClient} and its defaults) are loaded on first use, so the command
line can import the no-I/O modules of this package and still start fast.
"""

from typing import TYPE_CHECKING, Any

from execgo.client.errors import (
    ClientError,
    MalformedResponse,
    ServerError,
    TransportError,
    WaitTimeout,
)
from execgo.client.models import (
    SubmitResult,
    TaskError,
    TaskEvent,
    TaskPage,
    TaskStatus,
)
from execgo.client.protocol import DEFAULT_LONG_POLL_MS, DEFAULT_POLL_INTERVAL_MS
from execgo.client.resume import DEFAULT_STREAM_RETRIES
from execgo.client.views import (
    ActiveReservation,
    CapabilitySnapshot,
    ClusterNode,
    Health,
    Platform,
    ResourceCapacity,
    ResourcesView,
    RuntimeInfo,
    RuntimeSettings,
    TenantUsage,
)
from execgo.core.protocol import IDEMPOTENCY_HEADER, OWNER_HEADER

if TYPE_CHECKING:
    from execgo.client.execgo_client import (
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_REQUEST_TIMEOUT,
        ExecgoClient,
    )

__all__ = [
    "ClientError",
    "ServerError",
    "TransportError",
    "MalformedResponse",
    "WaitTimeout",
    "SubmitResult",
    "TaskError",
    "TaskStatus",
    "TaskPage",
    "TaskEvent",
    "Health",
    "Platform",
    "ResourceCapacity",
    "RuntimeInfo",
    "CapabilitySnapshot",
    "RuntimeSettings",
    "ActiveReservation",
    "TenantUsage",
    "ResourcesView",
    "ClusterNode",
    "ExecgoClient",
    "OWNER_HEADER",
    "IDEMPOTENCY_HEADER",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_POLL_INTERVAL_MS",
    "DEFAULT_LONG_POLL_MS",
    "DEFAULT_STREAM_RETRIES",
]

_TWISTED_NAMES = frozenset({"ExecgoClient", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_REQUEST_TIMEOUT"})


def __getattr__(name: str) -> Any:
    """
    Load the names of the treq client when first asked for.
    """
    if name in _TWISTED_NAMES:
        from execgo.client import execgo_client

        return getattr(execgo_client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
