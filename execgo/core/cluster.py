# -*- test-case-name: tests.test_cluster -*-
"""
The nodes of a cluster as values: what a node says of itself when it
joins, what the store holds of it, its states, its lease's timing, and the
C{/api/v1/runtime/cluster} view.

Runtimes started on one PostgreSQL store form one cluster; a runtime on
SQLite is a cluster of one.  A node is alive while its lease in the store
is renewed; the supervisor holds it (it is the process that keeps the
node's workloads, and it outlives a restart of the server).  Pure.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import attrs

from execgo.core import errors
from execgo.core.constants import JSON
from execgo.core.reservation import Reservation
from execgo.core.timestamps import format_ms

NODE_ALIVE = "alive"
NODE_LOST = "lost"
NODE_LEFT = "left"

#: The lease a node holds in the store unless C{--node-lease-ms} says
#: otherwise: long enough to ride out a slow renewal or two, short enough
#: that a lost node's tasks end within seconds.
DEFAULT_NODE_LEASE_MS = 10_000
#: Shorter leases cannot be renewed reliably (a renewal every third of it).
MIN_NODE_LEASE_MS = 1_000
MAX_NODE_LEASE_MS = 3_600_000

#: Label keys: what Kubernetes and Nomad accept for theirs, near enough.
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?\Z")
MAX_LABEL_VALUE_CHARS = 256


def parse_node_label(spec: str) -> Tuple[str, str]:
    """
    One C{--node-label KEY=VALUE}.

    @raise errors.InvalidInput: when it is not of that form, the key is
        not 1 to 128 letters, digits, C{.}, C{_}, C{/} or C{-} (beginning
        and ending with a letter or digit), or the value is longer than
        L{MAX_LABEL_VALUE_CHARS} or holds a control character.
    """
    key, sep, value = spec.partition("=")
    if not sep:
        raise errors.InvalidInput(f"node label {spec!r} must have the form KEY=VALUE")
    if not _LABEL_KEY.match(key):
        raise errors.InvalidInput(
            f"node label {spec!r}: the key must be 1 to 128 letters, digits, '.', '_', '/' or '-',"
            " beginning and ending with a letter or digit"
        )
    if len(value) > MAX_LABEL_VALUE_CHARS or not value.isprintable():
        raise errors.InvalidInput(
            f"node label {spec!r}: the value must be at most {MAX_LABEL_VALUE_CHARS} printable characters"
        )
    return key, value


def parse_node_labels(specs: Iterable[str]) -> Dict[str, str]:
    """
    Every C{--node-label}; a repeated key keeps its last value.
    """
    return dict(parse_node_label(spec) for spec in specs)


def labels_match(wanted: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """
    Whether a node with C{labels} has every label a task's placement asks
    for (C{wanted}).
    """
    return all(labels.get(key) == value for key, value in wanted.items())


def check_advertise_url(url: str) -> str:
    """
    C{--advertise-url}: an C{http} or C{https} URL with a host and nothing
    after its authority but an optional C{/} (other nodes append the API's
    paths to it), no credentials, no white space or control characters.

    @return: the URL as other nodes use it: C{scheme://host[:port]}.
    @raise errors.InvalidInput: when it is anything else.
    """
    if not url.isprintable() or any(c.isspace() for c in url) or "?" in url or "#" in url:
        raise errors.InvalidInput(
            f"invalid --advertise-url {url!r}: expected http://HOST:PORT (no spaces, query or fragment)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise errors.InvalidInput(f"invalid --advertise-url {url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidInput(f"invalid --advertise-url {url!r}: expected http://HOST:PORT or https://HOST:PORT")
    if "@" in parts.netloc:
        raise errors.InvalidInput(f"invalid --advertise-url {url!r}: credentials do not belong in it")
    if parts.path not in ("", "/") or port == 0:
        raise errors.InvalidInput(f"invalid --advertise-url {url!r}: expected http://HOST:PORT with no path")
    return f"{parts.scheme}://{parts.netloc}"


def default_advertise_url(listen_addr: str) -> str:
    """
    C{http://<listen-addr>}, what other nodes use to reach a node that
    gives no C{--advertise-url}.
    """
    return "http://" + listen_addr


def check_node_lease_ms(lease_ms: int) -> int:
    """
    C{--node-lease-ms}, between L{MIN_NODE_LEASE_MS} and L{MAX_NODE_LEASE_MS}.
    """
    if not MIN_NODE_LEASE_MS <= lease_ms <= MAX_NODE_LEASE_MS:
        raise errors.InvalidInput(
            f"--node-lease-ms must be between {MIN_NODE_LEASE_MS} and {MAX_NODE_LEASE_MS}, got {lease_ms}"
        )
    return lease_ms


def renew_interval_s(lease_ms: int) -> float:
    """
    How often the lease holder renews: three tries within one lease.
    """
    return lease_ms / 3000.0


@attrs.frozen
class NodeInfo:
    """
    What a node says of itself when it joins the cluster.

    @ivar instance: the data directory's own random key: a node that comes
        back on the same data directory (a restarted server) is the same
        node; another with the same id while it lives is refused.
    @ivar capacity: what the node may run at once (its ledger's capacity).
    """

    node_id: str
    instance: str
    advertise_url: str
    labels: Mapping[str, str]
    capacity: Reservation


@attrs.frozen
class NodeLease:
    """
    What the lease holder (the node's supervisor) needs: whose lease, and
    how long it runs.
    """

    node_id: str
    instance: str
    lease_ms: int

    def to_json(self) -> JSON:
        """
        Rendered for the supervisor's settings file.
        """
        return {"node_id": self.node_id, "instance": self.instance, "lease_ms": self.lease_ms}

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, object]]) -> "Optional[NodeLease]":
        """
        Read back L{to_json} (C{None}: settings that name no node).

        @raise ValueError: when it is malformed.
        """
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise ValueError("node must be an object")
        node_id, instance, lease_ms = data.get("node_id"), data.get("instance"), data.get("lease_ms")
        if not isinstance(node_id, str) or not isinstance(instance, str):
            raise ValueError("node_id and instance must be strings")
        if isinstance(lease_ms, bool) or not isinstance(lease_ms, int):
            raise ValueError("lease_ms must be an integer")
        try:
            return cls(node_id, instance, check_node_lease_ms(lease_ms))
        except errors.InvalidInput as e:
            raise ValueError(e.detail) from None


@attrs.frozen
class NodeRecord:
    """
    A node as the store holds it, with the tasks it runs now.
    """

    node_id: str
    advertise_url: str
    labels: Mapping[str, str]
    state: str
    started_at_ms: int
    lease_expires_at_ms: int
    running_tasks: int
    capacity: Reservation

    def to_json(self) -> JSON:
        """
        One entry of C{/api/v1/runtime/cluster}, in contract order.
        """
        return {
            "node_id": self.node_id,
            "advertise_url": self.advertise_url,
            "labels": dict(self.labels),
            "state": self.state,
            "started_at": format_ms(self.started_at_ms),
            "lease_expires_at": format_ms(self.lease_expires_at_ms),
            "running_tasks": self.running_tasks,
            "capacity": self.capacity.to_json(),
        }


def cluster_view(nodes: Iterable[NodeRecord]) -> JSON:
    """
    The C{/api/v1/runtime/cluster} body: every node the store knows, by id.
    """
    return {"nodes": [node.to_json() for node in sorted(nodes, key=lambda node: node.node_id)]}
