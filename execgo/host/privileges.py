# -*- test-case-name: tests.test_privileges -*-
"""
Which rights a workload gets, granted and taken back in one place.

When the runtime runs as root, every running task gets a uid and gid of
its own from a range no account uses (like systemd's C{DynamicUser}), no
supplementary groups, no capabilities, C{no_new_privs} and umask 077; the
store hands out the uids (L{TaskIdentity.pick}, inside the claim
transaction), so no two running tasks ever share one.  The task owns its
workspace (mode 0700) and its script file while it runs; everything else
of the runtime (the store, the token file, other tasks' files, its own
C{request.json} and C{result.json}, cgroup control files) belongs to the
runtime's user with no access for others, and its logs reach it only as
open descriptors.

When the task ends, every process of its uid is killed (L{kill_user}:
C{kill(-1)} from a helper that takes the uid, which reaches processes
that left their process group and session; a task whose cgroups are empty
has nothing left to kill, as it cannot leave them) and its workspace and
script are handed back to the runtime's user (L{reclaim}) before the
terminal write frees the uid for another task.

C{--task-user NAME} runs every task as one account instead (C{root}
keeps the old behaviour: every tenant is then trusted with the host); a
runtime that is not root runs tasks as its own user and drops nothing.

Standard library (plus C{attrs}) only: the supervisor imports it.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from typing import AbstractSet, Any, Dict, Iterable, List, Mapping, Optional, Tuple

import attrs

from execgo.core.config import parse_uid_range
from execgo.core.errors import InvalidInput
from execgo.core.plan import RunAs

#: The default task uid range: 65,536 ids from 0x70000000, a block that
#: systemd leaves unused (below it: container ranges; above 2^31: ids many
#: tools mishandle), and that no account of a normal system uses.
DEFAULT_TASK_UID_RANGE = (0x70000000, 0x70000000 + 65535)

RANGE = "range"
USER = "user"
SELF = "self"

#: The most workspace entries handed back one by one at a task's end.
RECLAIM_ENTRIES = 10_000

#: The modes of what a running task owns, and of the directories it must
#: pass through to reach them (search only: it cannot list them).
OWNED_DIR_MODE = 0o700
PASSAGE_MODE = 0o711


@attrs.frozen
class TaskIdentity:
    """
    Who tasks run as.

    @ivar kind: L{RANGE} (a uid of its own per running task, gid equal),
        L{USER} (one fixed account) or L{SELF} (the runtime's own user:
        nothing is dropped).
    @ivar first: the first uid of the range.
    @ivar last: the last uid of the range.
    @ivar uid: the fixed uid (L{USER}, L{SELF}).
    @ivar gid: the fixed gid (L{USER}, L{SELF}).
    @ivar owner_uid: the runtime's own uid, which a finished task's files
        are handed back to.
    @ivar owner_gid: the runtime's own gid.
    @ivar excluded: ids of the range that an account uses (never handed out).
    """

    kind: str
    owner_uid: int
    owner_gid: int
    first: int = 0
    last: int = -1
    uid: int = 0
    gid: int = 0
    excluded: Tuple[int, ...] = ()

    @property
    def drops(self) -> bool:
        """
        Whether tasks run without the runtime's privileges.
        """
        if self.kind == RANGE:
            return True
        return self.kind == USER and self.uid != 0

    @property
    def per_task(self) -> bool:
        """
        Whether each running task has a uid of its own (so every process
        of that uid is the task's).
        """
        return self.kind == RANGE

    @property
    def size(self) -> int:
        """
        How many tasks can run at once under this identity.
        """
        if self.kind != RANGE:
            return 1 << 62
        return self.last - self.first + 1 - len(self.excluded)

    def pick(self, used: AbstractSet[int]) -> Optional[RunAs]:
        """
        The identity for a task about to run, given the uids running tasks
        hold: the lowest free uid of the range (gid equal), or the fixed
        one; C{None} when the range is exhausted.
        """
        if self.kind != RANGE:
            return RunAs(self.uid, self.gid)
        excluded = set(self.excluded)
        for uid in range(self.first, self.last + 1):
            if uid not in used and uid not in excluded:
                return RunAs(uid, uid)
        return None

    def describe(self) -> str:
        """
        A short text for logs and errors.
        """
        if self.kind == RANGE:
            return f"uids {self.first}-{self.last}"
        return f"uid {self.uid} gid {self.gid}"

    def to_json(self) -> Dict[str, Any]:
        """
        The form kept in the supervisor settings file.
        """
        return attrs.asdict(self, value_serializer=lambda _, __, v: list(v) if isinstance(v, tuple) else v)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TaskIdentity":
        """
        Read back L{to_json}.

        @raise ValueError: when it is malformed.
        """
        try:
            identity = cls(
                kind=str(data["kind"]),
                owner_uid=int(data["owner_uid"]),
                owner_gid=int(data["owner_gid"]),
                first=int(data.get("first", 0)),
                last=int(data.get("last", -1)),
                uid=int(data.get("uid", 0)),
                gid=int(data.get("gid", 0)),
                excluded=tuple(int(i) for i in data.get("excluded", ())),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed task identity: {e}") from None
        if identity.kind not in (RANGE, USER, SELF):
            raise ValueError(f"unknown task identity kind {identity.kind!r}")
        return identity



def _ids(path: str, field: int) -> Dict[int, str]:
    """
    The numeric ids of a passwd-style file (C{field} 2: uid, 3: gid),
    mapped to the names using them; a file that cannot be read has none.
    """
    found: Dict[int, str] = {}
    for line in _lines(path):
        parts = line.split(":")
        if len(parts) > field and parts[field].isdigit():
            found[int(parts[field])] = parts[0]
    return found


def _lookup_user(name: str, passwd: str) -> Tuple[int, int]:
    """
    The uid and gid of the account C{name} (or of C{#UID}/a bare number).
    """
    for line in _lines(passwd):
        parts = line.split(":")
        if len(parts) > 3 and parts[0] == name and parts[2].isdigit() and parts[3].isdigit():
            return int(parts[2]), int(parts[3])
    raise InvalidInput(f"unknown task user '{name}': no such account in {passwd}")


def _lines(path: str) -> Iterable[str]:
    """
    The lines of a small text file, without their newlines; none when it
    cannot be read.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            return [line.rstrip("\n") for line in lines]
    except OSError:
        return []


def resolve_identity(
    task_uid_range: Optional[str],
    task_user: Optional[str],
    euid: int,
    egid: int,
    passwd: str = "/etc/passwd",
    group: str = "/etc/group",
) -> TaskIdentity:
    """
    Who tasks run as, from C{--task-uid-range} and C{--task-user} and the
    runtime's own ids.

    A range given explicitly must not contain the uid of any account (nor
    a gid of any group): such a task would own that account's files.  The
    default range skips any id that an account happens to use.

    @raise InvalidInput: for both options at once, a bad range, a range
        that an account uses, or an unknown user.
    """
    if task_uid_range is not None and task_user is not None:
        raise InvalidInput("--task-uid-range and --task-user exclude each other")
    if euid != 0:
        return TaskIdentity(kind=SELF, owner_uid=euid, owner_gid=egid, uid=euid, gid=egid)
    if task_user is not None:
        uid, gid = _lookup_user(task_user, passwd)
        return TaskIdentity(kind=USER, owner_uid=euid, owner_gid=egid, uid=uid, gid=gid)
    accounts = _ids(passwd, 2)
    groups = _ids(group, 2)
    if task_uid_range is None:
        first, last = DEFAULT_TASK_UID_RANGE
        excluded = tuple(sorted(i for i in set(accounts) | set(groups) if first <= i <= last))
        return TaskIdentity(kind=RANGE, owner_uid=euid, owner_gid=egid, first=first, last=last, excluded=excluded)
    first, last = parse_uid_range(task_uid_range)
    for table, what in ((accounts, "account"), (groups, "group")):
        taken = sorted(i for i in table if first <= i <= last)
        if taken:
            raise InvalidInput(
                f"task uid range {first}-{last} contains the id {taken[0]} of the {what} '{table[taken[0]]}'"
            )
    return TaskIdentity(kind=RANGE, owner_uid=euid, owner_gid=egid, first=first, last=last)


def restrict_self() -> None:
    """
    What every supervisor process does first: umask 077 (what it creates
    is private unless it says otherwise) and C{no_new_privs}, which every
    workload inherits at no cost per spawn (no set-user-id program or file
    capability can raise a task's rights).
    """
    os.umask(0o077)
    from execgo.host.procinfo import set_no_new_privs

    set_no_new_privs()


def open_passage(data_dir: str, passwd: str = "/etc/passwd") -> Tuple[List[str], List[str]]:
    """
    Let tasks pass through the directories above the data directory (they
    reach their workspace and script by absolute path): each one that
    others cannot search and that belongs to the runtime's user gets the
    search bit for others (never the read bit: nothing becomes listable);
    home directories are left alone.  Blocking (a few system calls).

    @return: the directories opened, and those left closed (another
        owner's, or a home directory), for the log.
    """
    homes = {line.split(":")[5] for line in _lines(passwd) if line.count(":") >= 6}
    opened: List[str] = []
    closed: List[str] = []
    directory = os.path.dirname(os.path.abspath(data_dir))
    while True:
        info = os.stat(directory)
        if not info.st_mode & stat.S_IXOTH:
            if info.st_uid == os.geteuid() and directory not in homes and directory != "/":
                os.chmod(directory, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
                opened.append(directory)
            else:
                closed.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            return opened, closed
        directory = parent


def workspace_chain(task_dir: str, workspace_dir: str) -> Tuple[str, ...]:
    """
    The directories from C{<task_dir>/workspace} down to the working
    directory (C{workspace_subdir} may add some).
    """
    top = os.path.join(task_dir, "workspace")
    chain = [top]
    relative = os.path.relpath(workspace_dir, top)
    if relative != ".":
        current = top
        for part in relative.split(os.sep):
            current = os.path.join(current, part)
            chain.append(current)
    return tuple(chain)


def grant(task_dir: str, workspace_dir: str, script_path: Optional[str], run_as: RunAs) -> None:
    """
    Give a task about to run what it owns: its workspace (created when
    missing, mode 0700) and its script file; make its task directory
    passable (mode 0711: it reaches its workspace and script by path, and
    nothing else in it).  Blocking (a few system calls).

    @raise OSError: when a directory of the workspace is a link (the
        runtime made them all: something is wrong) or cannot be given.
    """
    os.chmod(task_dir, PASSAGE_MODE)
    for directory in workspace_chain(task_dir, workspace_dir):
        try:
            os.mkdir(directory, OWNED_DIR_MODE)
        except FileExistsError:
            pass
        if os.path.islink(directory):
            raise OSError(errno.ELOOP, "workspace directory is a link", directory)
        os.chown(directory, run_as.uid, run_as.gid, follow_symlinks=False)
        os.chmod(directory, OWNED_DIR_MODE)
    if script_path is not None and os.path.lexists(script_path):
        os.chown(script_path, run_as.uid, run_as.gid, follow_symlinks=False)


def reclaim(
    task_dir: str,
    script_path: Optional[str],
    owner_uid: int,
    owner_gid: int,
    limit: int = RECLAIM_ENTRIES,
) -> bool:
    """
    Hand a finished task's workspace and script back to the runtime's
    user: the script and the top of the workspace first (from then on no
    process of the task's uid can reach anything below it: that is the
    boundary), then the entries below it, without following links, at most
    C{limit} of them (a task that made millions of files must not hold
    the supervisor, which every task passes through, for long).  Call only
    once no process of the task is left.  Blocking; errors on single
    entries are ignored.

    @return: whether every entry was handed back (C{False}: the walk
        stopped at C{limit}; what is below keeps the task's uid, behind
        the runtime's directory).
    """
    if script_path is not None and os.path.lexists(script_path):
        os.chown(script_path, owner_uid, owner_gid, follow_symlinks=False)
    top = os.path.join(task_dir, "workspace")
    if not os.path.lexists(top) or os.path.islink(top):
        return True
    os.chown(top, owner_uid, owner_gid, follow_symlinks=False)
    os.chmod(top, OWNED_DIR_MODE)
    left = limit
    for _, dirs, files, fd in os.fwalk(top, follow_symlinks=False):
        for name in dirs + files:
            if left <= 0:
                return False
            left -= 1
            try:
                os.chown(name, owner_uid, owner_gid, dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass
    return True


def hand_back(
    identity: Optional[TaskIdentity],
    run_as: Optional[RunAs],
    task_dir: str,
    script_path: Optional[str],
    emptied: bool,
) -> bool:
    """
    What a task's end needs before it is written (which frees the task's
    uid): every process of its uid killed (L{kill_user}), unless its
    cgroups are known C{emptied} (it cannot leave them), and its files
    handed back to the runtime's user (L{reclaim}).  Nothing to do for a
    task that ran as the runtime's own user.  Blocking.

    @return: whether every entry of the workspace was handed back.
    @raise OSError: when the workspace or the script cannot be handed back.
    """
    if identity is None or run_as is None or run_as.uid == identity.owner_uid:
        return True
    if identity.per_task and not emptied:
        kill_user(run_as.uid)
    return reclaim(task_dir, script_path, identity.owner_uid, identity.owner_gid)


def kill_user(uid: int) -> None:
    """
    SIGKILL every process of C{uid}: a forked helper takes the uid and
    calls C{kill(-1, SIGKILL)}, which reaches every process the uid may
    signal (its own, whatever their group or session) but the helper.  The
    kernel walks the process list under a lock that forks wait for, and a
    process with a SIGKILL pending cannot fork, so one pass leaves nothing
    that can run; the second is for good measure.  Blocking (a fork and a
    wait).
    """
    if uid <= 0:
        raise ValueError(f"refusing to kill every process of uid {uid}")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the helper
        try:
            os.setresuid(uid, uid, uid)
            for _ in range(2):
                os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os._exit(0)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
