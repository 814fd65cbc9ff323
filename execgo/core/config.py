# -*- test-case-name: tests.test_config -*-
"""
The server's settings (the options of C{serve}, C{docs/cli.md} section 3) as
one frozen value, with the rules that derive the rest from them.

Pure: no I/O beyond reading the environment mapping it is given.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import attrs

from execgo.core import cluster, databaseurl, errors
from execgo.core.constants import MODE_ADAPTIVE, MODE_STRICT, OUTPUT_LIMIT_MAX, UINT64_MAX

DEFAULT_LISTEN_ADDR = "127.0.0.1:8080"
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup/execgo-runtime"
#: The server's ceiling for a task's inline output previews (16 MiB).
DEFAULT_MAX_OUTPUT_PREVIEW_BYTES = 16 * 1024 * 1024

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def derive_runtime_id(hostname: Optional[str], listen_addr: str) -> str:
    """
    C{<host>-<addr>} with every character outside C{[A-Za-z0-9._-]}
    replaced by C{-}; C{<host>} is C{HOSTNAME} when set and not blank, else
    C{execgo-runtime}.
    """
    host = hostname if hostname is not None and hostname.strip() else "execgo-runtime"
    return _UNSAFE_ID_CHARS.sub("-", host) + "-" + _UNSAFE_ID_CHARS.sub("-", listen_addr)


def parse_listen_addr(value: str) -> Tuple[str, int]:
    """
    Split C{HOST:PORT} (C{[v6]:PORT} for IPv6).

    @raise errors.InvalidInput: when it is not of that form.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise errors.InvalidInput(f"invalid listen address '{value}': expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise errors.InvalidInput(f"invalid listen address '{value}': bracket IPv6 hosts")
    return host, int(port)


def parse_bool_env(name: str, value: str) -> bool:
    """
    A boolean environment variable: exactly C{true} or C{false}.
    """
    if value == "true":
        return True
    if value == "false":
        return False
    raise errors.InvalidInput(f"{name} must be 'true' or 'false', got '{value}'")


def parse_uint_env(name: str, value: str) -> int:
    """
    An unsigned 64-bit decimal environment variable.
    """
    if not value.isascii() or not value.isdigit() or int(value) > UINT64_MAX:
        raise errors.InvalidInput(f"{name} must be a non-negative integer, got '{value}'")
    return int(value)


def parse_mode(value: str) -> str:
    """
    A capability mode: exactly C{adaptive} or C{strict}.
    """
    if value not in (MODE_ADAPTIVE, MODE_STRICT):
        raise errors.InvalidInput(f"capability mode must be 'adaptive' or 'strict', got '{value}'")
    return value


@attrs.frozen
class RuntimeConfig:
    """
    Every server setting, after flags and environment were applied.
    """

    listen_addr: str = DEFAULT_LISTEN_ADDR
    data_dir: str = "data"
    max_running_tasks: int = 4
    max_queued_tasks: int = 128
    termination_grace_ms: int = 5000
    result_retention_secs: int = 604800
    gc_interval_ms: int = 1000
    dispatch_poll_interval_ms: int = 250
    cgroup_root: str = DEFAULT_CGROUP_ROOT
    runtime_id: Optional[str] = None
    default_capability_mode: str = MODE_ADAPTIVE
    disable_linux_sandbox: bool = False
    disable_cgroup: bool = False
    capacity_memory_bytes: Optional[int] = None
    capacity_pids: Optional[int] = None
    tenant_quotas: Tuple[str, ...] = ()
    auth_token_file: Optional[str] = None
    task_uid_range: Optional[str] = None
    task_user: Optional[str] = None
    sandbox_rootfs_roots: Tuple[str, ...] = ()
    max_output_preview_bytes: int = DEFAULT_MAX_OUTPUT_PREVIEW_BYTES
    request_header_timeout_ms: int = 10_000
    idle_connection_timeout_ms: int = 60_000
    max_connections: int = 0
    database_url: Optional[str] = attrs.field(default=None, repr=False)
    advertise_url: Optional[str] = None
    node_labels: Tuple[str, ...] = ()
    node_lease_ms: int = cluster.DEFAULT_NODE_LEASE_MS

    def __attrs_post_init__(self) -> None:
        databaseurl.parse(self.database_url, self.data_dir_abs)
        if self.advertise_url is not None:
            cluster.check_advertise_url(self.advertise_url)
        cluster.parse_node_labels(self.node_labels)
        cluster.check_node_lease_ms(self.node_lease_ms)
        if not 0 < self.max_output_preview_bytes <= OUTPUT_LIMIT_MAX:
            raise errors.InvalidInput(
                f"--max-output-preview-bytes must be between 1 and {OUTPUT_LIMIT_MAX},"
                f" got {self.max_output_preview_bytes}"
            )
        if self.task_uid_range is not None:
            parse_uid_range(self.task_uid_range)
        if self.task_uid_range is not None and self.task_user is not None:
            raise errors.InvalidInput("--task-uid-range and --task-user exclude each other")
        for root in self.sandbox_rootfs_roots:
            if not os.path.isabs(root) or "\0" in root:
                raise errors.InvalidInput(f"--sandbox-rootfs-root must be an absolute path, got '{root}'")

    @property
    def rootfs_roots_abs(self) -> Tuple[str, ...]:
        """
        The allowed rootfs roots, normalised (no C{..}, no trailing slash).
        """
        return tuple(os.path.normpath(root) for root in self.sandbox_rootfs_roots)

    @property
    def data_dir_abs(self) -> str:
        """
        The data directory as an absolute path (every path the runtime
        reports or hands to a workload is absolute).
        """
        return os.path.abspath(self.data_dir)

    @property
    def database_path(self) -> str:
        """
        The SQLite store's file, C{<data_dir>/runtime.db}.
        """
        return os.path.join(self.data_dir_abs, "runtime.db")

    @property
    def database(self) -> databaseurl.DatabaseUrl:
        """
        Where the store lives (C{--database-url}; SQLite in the data
        directory by default).
        """
        return databaseurl.parse(self.database_url, self.data_dir_abs)

    def effective_runtime_id(self, environ: Mapping[str, str]) -> str:
        """
        The configured id, or the one derived from C{HOSTNAME} and the
        listen address.
        """
        if self.runtime_id is not None:
            return self.runtime_id
        return derive_runtime_id(environ.get("HOSTNAME"), self.listen_addr)

    @property
    def effective_advertise_url(self) -> str:
        """
        How other nodes reach this one's API: C{--advertise-url}, or
        C{http://<listen-addr>}.
        """
        if self.advertise_url is not None:
            return cluster.check_advertise_url(self.advertise_url)
        return cluster.default_advertise_url(self.listen_addr)

    @property
    def labels(self) -> Dict[str, str]:
        """
        The node's labels (C{--node-label}), parsed.
        """
        return cluster.parse_node_labels(self.node_labels)

    def to_json(self, runtime_id: str) -> Dict[str, object]:
        """
        The C{/api/v1/runtime/config} body.
        """
        return {
            "runtime_id": runtime_id,
            "listen_addr": self.listen_addr,
            "data_dir": self.data_dir,
            "max_running_tasks": self.max_running_tasks,
            "max_queued_tasks": self.max_queued_tasks,
            "termination_grace_ms": self.termination_grace_ms,
            "result_retention_secs": self.result_retention_secs,
            "gc_interval_ms": self.gc_interval_ms,
            "dispatch_poll_interval_ms": self.dispatch_poll_interval_ms,
            "cgroup_root": self.cgroup_root,
            "default_capability_mode": self.default_capability_mode,
            "cgroup_enabled": not self.disable_cgroup,
            "task_uid_range": self.task_uid_range,
            "task_user": self.task_user,
            "sandbox_rootfs_roots": list(self.sandbox_rootfs_roots),
            "max_output_preview_bytes": self.max_output_preview_bytes,
            "request_header_timeout_ms": self.request_header_timeout_ms,
            "idle_connection_timeout_ms": self.idle_connection_timeout_ms,
            "max_connections": self.max_connections,
            "database": self.database.engine,
            "advertise_url": self.effective_advertise_url,
            "node_labels": self.labels,
            "node_lease_ms": self.node_lease_ms,
        }


def apply_environment(config: RuntimeConfig, environ: Mapping[str, str], given: frozenset) -> RuntimeConfig:
    """
    Fill settings not given on the command line from their environment
    variables (the option wins: C{docs/cli.md} section 1).

    @param given: the names of the settings given as options.
    @raise errors.InvalidInput: for a malformed variable.
    """
    # A keyword bag for attrs.evolve: each value's type is its setting's.
    changes: Dict[str, Any] = {}
    prefix = "EXECGO_RUNTIME_"
    for setting, suffix in (
        ("runtime_id", "ID"),
        ("task_uid_range", "TASK_UID_RANGE"),
        ("task_user", "TASK_USER"),
        ("database_url", "DATABASE_URL"),
        ("advertise_url", "ADVERTISE_URL"),
    ):
        if setting not in given and prefix + suffix in environ:
            changes[setting] = environ[prefix + suffix]
    name = prefix + "DEFAULT_CAPABILITY_MODE"
    if "default_capability_mode" not in given and name in environ:
        try:
            changes["default_capability_mode"] = parse_mode(environ[name])
        except errors.InvalidInput as e:
            raise errors.InvalidInput(f"{name}: {e.detail}") from None
    for setting, suffix in (
        ("disable_linux_sandbox", "DISABLE_LINUX_SANDBOX"),
        ("disable_cgroup", "DISABLE_CGROUP"),
    ):
        if setting not in given and prefix + suffix in environ:
            changes[setting] = parse_bool_env(prefix + suffix, environ[prefix + suffix])
    for setting, suffix in (
        ("capacity_memory_bytes", "CAPACITY_MEMORY_BYTES"),
        ("capacity_pids", "CAPACITY_PIDS"),
        ("max_output_preview_bytes", "MAX_OUTPUT_PREVIEW_BYTES"),
        ("node_lease_ms", "NODE_LEASE_MS"),
    ):
        if setting not in given and prefix + suffix in environ:
            changes[setting] = parse_uint_env(prefix + suffix, environ[prefix + suffix])
    return attrs.evolve(config, **changes)


@attrs.frozen
class Setting:
    """
    One C{serve} option: its flag, the config attribute it sets, its kind
    (C{str}, C{uint}, C{bool}, C{mode} or C{multi}), its environment variable
    and its help text.  Both the click CLI and the twistd plugin are built
    from L{SERVE_SETTINGS}, so they cannot drift apart.
    """

    flag: str
    attr: str
    kind: str
    help: str
    envvar: Optional[str] = None
    metavar: str = "SPEC"


SERVE_SETTINGS: Tuple[Setting, ...] = (
    Setting("listen-addr", "listen_addr", "str", "HOST:PORT to listen on [127.0.0.1:8080]"),
    Setting("data-dir", "data_dir", "str", "data directory (store and task files) [data]"),
    Setting("max-running-tasks", "max_running_tasks", "uint", "concurrent running tasks [4]"),
    Setting("max-queued-tasks", "max_queued_tasks", "uint", "accepted tasks before 429 [128]"),
    Setting("termination-grace-ms", "termination_grace_ms", "uint", "SIGTERM to SIGKILL wait [5000]"),
    Setting("result-retention-secs", "result_retention_secs", "uint", "terminal task retention [604800]"),
    Setting("gc-interval-ms", "gc_interval_ms", "uint", "garbage collection interval [1000]"),
    Setting(
        "dispatch-poll-interval-ms",
        "dispatch_poll_interval_ms",
        "uint",
        "dispatcher safety-net poll interval [250]",
    ),
    Setting("cgroup-root", "cgroup_root", "str", f"per-task cgroup root [{DEFAULT_CGROUP_ROOT}]"),
    Setting("runtime-id", "runtime_id", "str", "runtime id [derived]", "EXECGO_RUNTIME_ID"),
    Setting(
        "default-capability-mode",
        "default_capability_mode",
        "mode",
        "adaptive or strict [adaptive]",
        "EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE",
    ),
    Setting(
        "disable-linux-sandbox",
        "disable_linux_sandbox",
        "bool",
        "disable the linux_sandbox capability",
        "EXECGO_RUNTIME_DISABLE_LINUX_SANDBOX",
    ),
    Setting(
        "disable-cgroup",
        "disable_cgroup",
        "bool",
        "disable per-task cgroups",
        "EXECGO_RUNTIME_DISABLE_CGROUP",
    ),
    Setting(
        "capacity-memory-bytes",
        "capacity_memory_bytes",
        "uint",
        "ledger memory capacity [probed]",
        "EXECGO_RUNTIME_CAPACITY_MEMORY_BYTES",
    ),
    Setting(
        "capacity-pids",
        "capacity_pids",
        "uint",
        "ledger pids capacity [probed]",
        "EXECGO_RUNTIME_CAPACITY_PIDS",
    ),
    Setting(
        "tenant-quota",
        "tenant_quotas",
        "multi",
        "NAME=slots:N[,memory:BYTES][,pids:N], repeatable",
    ),
    Setting(
        "auth-token-file",
        "auth_token_file",
        "str",
        "require bearer tokens listed in this file"
        " (TOKEN tenant=NAME owner=NAME [role=admin] a line; re-read on SIGHUP)",
    ),
    Setting(
        "task-uid-range",
        "task_uid_range",
        "str",
        "uids (gid equal) for running tasks, one each, when run as root [1879048192-1879113727]",
        "EXECGO_RUNTIME_TASK_UID_RANGE",
    ),
    Setting(
        "task-user",
        "task_user",
        "str",
        "run every task as this one account instead (root: trust every tenant with the host)",
        "EXECGO_RUNTIME_TASK_USER",
    ),
    Setting(
        "sandbox-rootfs-root",
        "sandbox_rootfs_roots",
        "multi",
        "a directory chroot root filesystems must lie under, repeatable [none: chroot refused]",
        metavar="DIR",
    ),
    Setting(
        "max-output-preview-bytes",
        "max_output_preview_bytes",
        "uint",
        "ceiling for a task's stdout_max_bytes and stderr_max_bytes (inline previews) [16777216]",
        "EXECGO_RUNTIME_MAX_OUTPUT_PREVIEW_BYTES",
    ),
    Setting(
        "request-header-timeout-ms",
        "request_header_timeout_ms",
        "uint",
        "close a connection whose request headers (then body) take longer; 0: never [10000]",
    ),
    Setting(
        "idle-connection-timeout-ms",
        "idle_connection_timeout_ms",
        "uint",
        "close a connection with no request in flight after this long; 0: never [60000]",
    ),
    Setting(
        "max-connections",
        "max_connections",
        "uint",
        "open client connections at most; 0: derived from the descriptor limit [0]",
    ),
    Setting(
        "database-url",
        "database_url",
        "str",
        "the task store: sqlite: (<data-dir>/runtime.db) or postgresql://USER@HOST:PORT/DB"
        " (password: PGPASSWORD or ~/.pgpass, never on the command line) [sqlite:]",
        "EXECGO_RUNTIME_DATABASE_URL",
        metavar="URL",
    ),
    Setting(
        "advertise-url",
        "advertise_url",
        "str",
        "how the other nodes of a cluster reach this node's API [http://<listen-addr>]",
        "EXECGO_RUNTIME_ADVERTISE_URL",
        metavar="URL",
    ),
    Setting(
        "node-label",
        "node_labels",
        "multi",
        "KEY=VALUE describing this node (tasks may ask for it: placement.node_labels), repeatable",
        metavar="KEY=VALUE",
    ),
    Setting(
        "node-lease-ms",
        "node_lease_ms",
        "uint",
        f"this node's lease in the store: lost when it is not renewed for this long"
        f" [{cluster.DEFAULT_NODE_LEASE_MS}]",
        "EXECGO_RUNTIME_NODE_LEASE_MS",
    ),
)


def build_config(values: Mapping[str, object], environ: Mapping[str, str]) -> RuntimeConfig:
    """
    The configuration from parsed option values (only the options that
    were given, keyed by attribute name) and the environment.

    @raise errors.InvalidInput: for a malformed environment variable.
    """
    # A keyword bag for RuntimeConfig: each value's type is its setting's.
    given: Dict[str, Any] = {name: value for name, value in values.items() if value is not None}
    for name in ("tenant_quotas", "sandbox_rootfs_roots", "node_labels"):
        if name in given:
            given[name] = tuple(given[name])
    config = RuntimeConfig(**given)
    return apply_environment(config, environ, frozenset(given))

def parse_uid_range(text: str) -> Tuple[int, int]:
    """
    C{START-END}: two decimal uids, C{0 < START <= END < 2^32 - 1}.

    @raise InvalidInput: when it is not of that form.
    """
    first, sep, last = text.strip().partition("-")
    if not sep or not (first.isascii() and first.isdigit() and last.isascii() and last.isdigit()):
        raise errors.InvalidInput(f"invalid task uid range '{text}': expected START-END")
    start, end = int(first), int(last)
    if not 0 < start <= end < 2**32 - 1:
        raise errors.InvalidInput(f"invalid task uid range '{text}': need 0 < START <= END < 4294967295")
    return start, end
