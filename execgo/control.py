# -*- test-case-name: tests.test_control -*-
"""
The supervisor's control channel, as both ends see it: where its socket
lives, who may use it, and the settings it runs tasks with.

The channel is a Unix stream socket in C{<data_dir>/run/}, a directory
only the runtime's own uid may enter (mode 0700): no other local user can
connect to it, bind it first or replace it.  Both ends also check the
peer's credentials (C{SO_PEERCRED}): the supervisor talks only to a
process of its own uid, and the server only to the supervisor whose pid
the socket reports.  Orders carry task ids and nothing else; what a task
runs with (its environment, cgroup root, grace period, identity, allowed
root filesystems) comes from the store and from L{SupervisorSettings},
which the server writes into the same private directory before it
connects, and which the supervisor reads again on every connection.

Standard library (plus C{attrs}) only: the supervisor imports it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import attrs

from execgo.core.cluster import NodeLease
from execgo.core.reservation import Reservation
from execgo.host.privileges import TaskIdentity

#: The longest line either end accepts.
MAX_LINE = 64 * 1024
#: The longest socket path C{bind}/C{connect} take directly (C{sun_path}
#: holds 108 bytes with the terminating NUL); longer ones go through a
#: descriptor of their directory (L{reachable}).
_SUN_PATH_MAX = 107

RUN_DIR = "run"
SOCKET_NAME = "supervisor.sock"
LOCK_NAME = "supervisor.lock"
SETTINGS_NAME = "settings.json"


class ChannelError(Exception):
    """
    The control directory cannot be used safely (wrong owner, not a
    directory), or a peer is not who it must be.
    """


def run_dir(data_dir: str) -> str:
    """
    The private directory of the control channel: C{<data_dir>/run}.
    """
    return os.path.join(os.path.abspath(data_dir), RUN_DIR)


def prepare_run_dir(data_dir: str) -> str:
    """
    Create the control directory (mode 0700) or check the existing one:
    it must be a real directory owned by this uid; its mode is set to 0700
    whatever it was.  Blocking (a few system calls).

    @raise ChannelError: when it is not a directory of ours.
    @return: its path.
    """
    path = run_dir(data_dir)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path):
        raise ChannelError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise ChannelError(f"{path} belongs to uid {info.st_uid}, not to the runtime's uid {os.geteuid()}")
    os.chmod(path, 0o700)
    return path


def socket_path(data_dir: str) -> str:
    """
    The control socket of a data directory.
    """
    return os.path.join(run_dir(data_dir), SOCKET_NAME)


class reachable:
    """
    A context manager giving a path that C{bind}/C{connect} accept for
    C{path}: C{path} itself when it is short enough, else
    C{/proc/self/fd/<n>/<name>} through a descriptor of its directory,
    held open until the block ends.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def __enter__(self) -> str:
        if len(os.fsencode(self.path)) <= _SUN_PATH_MAX:
            return self.path
        directory, name = os.path.split(self.path)
        self._fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self._fd}/{name}"

    def __exit__(self, *exc_info: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@attrs.frozen
class PeerCredentials:
    """
    The process at the other end of a Unix socket, as the kernel saw it
    when the connection was made.
    """

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """
    C{SO_PEERCRED} of a connected Unix socket.
    """
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return PeerCredentials(pid, uid, gid)


def lock_supervisor(data_dir: str) -> Optional[int]:
    """
    Take the lock that makes one supervisor per data directory (held for
    the process's life).

    @return: the locked descriptor, or C{None} when another supervisor
        holds it.
    """
    path = os.path.join(run_dir(data_dir), LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def bind_listener(data_dir: str) -> socket.socket:
    """
    Bind and listen on the control socket, replacing a stale socket file
    (call with the supervisor lock held: no live supervisor owns it).
    """
    path = socket_path(data_dir)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with reachable(path) as address:
            listener.bind(address)
        os.chmod(path, 0o600)
        listener.listen(64)
    except OSError:
        listener.close()
        raise
    return listener

#: The server's environment variables that workloads inherit.
INHERITED_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "USER")


def inherited_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """
    The part of C{environ} that workloads inherit (L{INHERITED_ENV}).
    """
    return {name: environ[name] for name in INHERITED_ENV if name in environ}


@attrs.frozen
class SupervisorSettings:
    """
    How the supervisor of a data directory runs tasks, as the server that
    talks to it configured it.

    @ivar grace_ms: SIGTERM to SIGKILL.
    @ivar env: what workloads inherit (C{PATH}, C{HOME}, C{LANG},
        C{TMPDIR}, C{USER} of the server's environment).
    @ivar cgroup_root: the per-task cgroup root.
    @ivar identity: which uid and gid tasks run as.
    @ivar rootfs_roots: the directories a chroot's root filesystem must
        lie under.
    @ivar node: the node the supervisor holds the lease of (C{None}, as in
        settings written before nodes existed: none).
    @ivar quotas: the tenant quotas its claims hold to, across a cluster.
    @ivar max_running_tasks: the node's task slots: the supervisor runs at
        most this many workloads at once and keeps the launch orders
        beyond them, in order, until a slot frees (C{None}, as in settings
        written before it existed: every order starts at once).
    @ivar max_output_preview_bytes: the server's preview ceiling, which
        bounds the previews in C{result.json} whatever limits a task was
        stored with (C{None}, as in settings written before it existed:
        the tasks' own limits alone).
    """

    grace_ms: int
    env: Mapping[str, str]
    cgroup_root: str
    identity: TaskIdentity
    rootfs_roots: Tuple[str, ...] = ()
    max_output_preview_bytes: Optional[int] = None
    node: Optional[NodeLease] = None
    quotas: Mapping[str, Reservation] = attrs.field(factory=dict)
    max_running_tasks: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        """
        The settings file's content.
        """
        return {
            "grace_ms": self.grace_ms,
            "env": dict(self.env),
            "cgroup_root": self.cgroup_root,
            "identity": self.identity.to_json(),
            "rootfs_roots": list(self.rootfs_roots),
            "max_output_preview_bytes": self.max_output_preview_bytes,
            "node": None if self.node is None else self.node.to_json(),
            "quotas": {tenant: quota.to_json() for tenant, quota in self.quotas.items()},
            "max_running_tasks": self.max_running_tasks,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SupervisorSettings":
        """
        Read back L{to_json} (the server wrote it; a malformed file is a
        C{ValueError}).
        """
        try:
            env = data["env"]
            if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()
            ):
                raise ValueError("env must map strings to strings")
            return cls(
                grace_ms=int(data["grace_ms"]),
                env=dict(env),
                cgroup_root=str(data["cgroup_root"]),
                identity=TaskIdentity.from_json(data["identity"]),
                rootfs_roots=tuple(str(root) for root in data.get("rootfs_roots", ())),
                max_output_preview_bytes=_optional_positive(data.get("max_output_preview_bytes")),
                node=NodeLease.from_json(data.get("node")),
                quotas={str(tenant): Reservation.from_json(quota) for tenant, quota in data.get("quotas", {}).items()},
                max_running_tasks=_optional_positive(data.get("max_running_tasks")),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed supervisor settings: {e}") from None


def _optional_positive(value: Any) -> Optional[int]:
    """
    A positive integer setting, or C{None} when absent.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def write_settings(data_dir: str, settings: SupervisorSettings) -> None:
    """
    Write the settings file (mode 0600, in the private directory) by
    rename, so a supervisor never reads half of it.  Blocking.
    """
    path = os.path.join(run_dir(data_dir), SETTINGS_NAME)
    temporary = f"{path}.tmp-{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(settings.to_json(), sort_keys=True).encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(temporary, path)


def read_settings(data_dir: str) -> Optional[SupervisorSettings]:
    """
    The settings the server wrote, or C{None} when there are none (yet)
    or they cannot be read.
    """
    path = os.path.join(run_dir(data_dir), SETTINGS_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return None
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    try:
        return SupervisorSettings.from_json(json.loads(data))
    except ValueError:
        return None


# The messages, both ways: JSON lines whose "op" (orders, server to
# supervisor) or "ev" (reports, supervisor to server) names the kind.
# Orders carry ids only.


@attrs.frozen
class Launch:
    """
    Start these dispatched tasks (each still C{accepted}).
    """

    task_ids: Tuple[str, ...]

    def to_json(self) -> Dict[str, Any]:
        """
        The wire form.
        """
        return {"op": "launch", "task_ids": list(self.task_ids)}


@attrs.frozen
class Kill:
    """
    Terminate a task (SIGTERM, then SIGKILL after the grace period).
    """

    task_id: str

    def to_json(self) -> Dict[str, Any]:
        """
        The wire form.
        """
        return {"op": "kill", "task_id": self.task_id}


@attrs.frozen
class Ping:
    """
    Are you there?  (Answered by L{Pong} with the same C{seq}.)
    """

    seq: int

    def to_json(self) -> Dict[str, Any]:
        """
        The wire form.
        """
        return {"op": "ping", "seq": self.seq}


@attrs.frozen
class Shutdown:
    """
    Exit once no workload runs.
    """

    def to_json(self) -> Dict[str, Any]:
        """
        The wire form.
        """
        return {"op": "shutdown"}


@attrs.frozen
class Hello:
    """
    The supervisor's greeting on a new connection: its pid, the tasks it
    runs and the store it runs them on (the SQLite file's path or the
    PostgreSQL URL without its password; C{None} from a supervisor that
    does not say).  C{slots}: the task slots it holds launch orders to
    (L{SupervisorSettings.max_running_tasks}); C{None} from one that
    starts every order at once, which must not be sent more orders than
    slots.
    """

    pid: int
    running: Tuple[str, ...] = ()
    store: Optional[str] = None
    slots: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        """
        The wire form.
        """
        wire: Dict[str, Any] = {"ev": "hello", "pid": self.pid, "running": list(self.running)}
        if self.store is not None:
            wire["store"] = self.store
        if self.slots is not None:
            wire["slots"] = self.slots
        return wire


@attrs.frozen
class Finished:
    """
    A task's end is written; C{status} is its terminal snapshot when that
    is small enough to carry.
    """

    task_id: str
    status: Optional[Dict[str, Any]] = None

    def to_json(self) -> Dict[str, Any]:
        """
        The wire form (C{status} only when carried).
        """
        out: Dict[str, Any] = {"ev": "finished", "task_id": self.task_id}
        if self.status is not None:
            out["status"] = self.status
        return out


@attrs.frozen
class Declined:
    """
    A launch order was not taken: the task is not C{accepted} any more.
    """

    task_id: str

    def to_json(self) -> Dict[str, Any]:
        """
        The wire form.
        """
        return {"ev": "declined", "task_id": self.task_id}


@attrs.frozen
class Pong:
    """
    The answer to a L{Ping}.
    """

    seq: Optional[int]

    def to_json(self) -> Dict[str, Any]:
        """
        The wire form.
        """
        return {"ev": "pong", "seq": self.seq}


Order = Union[Launch, Kill, Ping, Shutdown]
Report = Union[Hello, Finished, Declined, Pong]


def encode(message: Union[Order, Report]) -> bytes:
    """
    One message as a line's content: compact UTF-8 JSON, no newline.
    """
    return json.dumps(message.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _object(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _seq(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def decode_order(line: bytes) -> Optional[Order]:
    """
    The order a line holds, or C{None} for anything else (a malformed or
    unknown line is ignored; fields beyond an order's ids are never read).
    """
    data = _object(line)
    if data is None:
        return None
    op = data.get("op")
    if op == "launch":
        ids = data.get("task_ids")
        if not isinstance(ids, list):
            return None
        return Launch(tuple(task_id for task_id in ids if isinstance(task_id, str)))
    if op == "kill":
        task_id = _text(data.get("task_id"))
        return None if task_id is None else Kill(task_id)
    if op == "ping":
        seq = _seq(data.get("seq"))
        return None if seq is None else Ping(seq)
    if op == "shutdown":
        return Shutdown()
    return None


def decode_report(line: bytes) -> Optional[Report]:
    """
    The report a line holds, or C{None} for anything else.
    """
    data = _object(line)
    if data is None:
        return None
    ev = data.get("ev")
    task_id = _text(data.get("task_id"))
    if ev == "hello":
        pid = _seq(data.get("pid"))
        running = data.get("running")
        if pid is None:
            return None
        store = data.get("store")
        slots = _seq(data.get("slots"))
        return Hello(
            pid,
            tuple(r for r in running if isinstance(r, str)) if isinstance(running, list) else (),
            store if isinstance(store, str) else None,
            slots if slots is not None and slots > 0 else None,
        )
    if ev == "finished" and task_id is not None:
        status = data.get("status")
        return Finished(task_id, status if isinstance(status, dict) else None)
    if ev == "declined" and task_id is not None:
        return Declined(task_id)
    if ev == "pong":
        return Pong(_seq(data.get("seq")))
    return None
