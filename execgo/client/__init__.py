"""
The clients of an execgo runtime: L{ExecgoClient} for Twisted programs
(L{execgo.client.execgo_client}) and L{AsyncioExecgoClient} for asyncio
programs (L{execgo.client.asyncio_client}), two faces of one
implementation (L{execgo.client.calls}).  This face names what a caller
needs; the modules beside it hold the parts (the calls, the two
transports, streams, typed models, errors, runtime views, and the no-I/O
protocol core the command line shares).

Importing the face loads neither Twisted nor asyncio: each client is
loaded on first use, so the command line can import the no-I/O modules of
this package and still start fast, and an asyncio program never loads
Twisted.
"""

from typing import TYPE_CHECKING, Any

from execgo.client.calls import DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_TIMEOUT
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
    from execgo.client.asyncio_client import AsyncioExecgoClient
    from execgo.client.execgo_client import ExecgoClient

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
    "AsyncioExecgoClient",
    "OWNER_HEADER",
    "IDEMPOTENCY_HEADER",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_POLL_INTERVAL_MS",
    "DEFAULT_LONG_POLL_MS",
    "DEFAULT_STREAM_RETRIES",
]

def __getattr__(name: str) -> Any:
    """
    Load a client when first asked for.
    """
    if name == "ExecgoClient":
        from execgo.client.execgo_client import ExecgoClient

        return ExecgoClient
    if name == "AsyncioExecgoClient":
        from execgo.client.asyncio_client import AsyncioExecgoClient

        return AsyncioExecgoClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
