# -*- test-case-name: tests.test_daemon,tests.test_supervisor -*-
"""
The C{internal-shim} subcommand: the supervisor engine for one task, in a
process of its own, with no server connection (it watches the store's
kill flag instead).  For debugging, and as the proof that the engine needs
nothing but the store.

Standard library only (plus C{attrs}).
"""

from __future__ import annotations

import os
from typing import Callable, Optional

from execgo import control
from execgo.host import privileges
from execgo.store import reads
from execgo.supervisor.engine import Supervisor
from execgo.supervisor.plumbing import (
    Wakeups,
    become_subreaper,
    build_engine,
    supervisor_log,
)


def shim_settings(data_dir: str, grace_ms: int, cgroup_root: str) -> control.SupervisorSettings:
    """
    The settings of a shim: its own grace period and cgroup root, this
    process's environment, and the identity and rootfs roots of the
    server's settings file (the default identity when there is none).
    """
    written = control.read_settings(data_dir)
    if written is not None:
        identity = written.identity
    else:
        identity = privileges.resolve_identity(None, None, os.geteuid(), os.getegid())
    return control.SupervisorSettings(
        grace_ms=grace_ms,
        env=control.inherited_env(os.environ),
        cgroup_root=cgroup_root,
        identity=identity,
        rootfs_roots=() if written is None else written.rootfs_roots,
    )


def supervise_one(supervisor: Supervisor, task_id: str, wait: Callable[[Optional[float]], None]) -> None:
    """
    Launch C{task_id}, watch its kill flag and drive the engine until
    nothing is left to do (its outcome written).

    @param wait: waits at most the given delay (C{None}: no timer) for a
        child to exit (L{Wakeups.wait}).
    """
    supervisor.launch(task_id)
    if task_id in supervisor.by_task:
        supervisor.watch_kill_flag(task_id)
    while supervisor.busy:
        supervisor.reap()
        supervisor.run_due_timers()
        if not supervisor.busy:
            break
        wait(supervisor.next_delay())
    supervisor.reap()


def run_shim(database: str, data_dir: str, task_id: str, grace_ms: int, cgroup_root: str) -> int:
    """
    The C{internal-shim} subcommand: restrict itself
    (L{privileges.restrict_self}), become a subreaper and supervise one
    task to completion (L{supervise_one}).

    @return: 0 when the task was finalised or needed nothing; 1 on an
        internal error or an unknown task.
    """
    privileges.restrict_self()
    become_subreaper()
    try:
        supervisor = build_engine(database, shim_settings(data_dir, grace_ms, cgroup_root), supervisor_log(data_dir))
    except Exception:
        return 1
    try:
        if reads.load_task(supervisor.conn, task_id) is None:
            return 1
        wakeups = Wakeups()
        wakeups.install()
        supervise_one(supervisor, task_id, wakeups.wait)
        return 0
    except Exception:
        return 1
    finally:
        supervisor.close()
