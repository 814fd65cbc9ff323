"""
Tests for L{execgo.host.privileges}: who tasks run as, the uids handed out, the
files given to a task and taken back, and killing every process of a uid.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import errors
from execgo.core.plan import RunAs
from execgo.host import privileges
from execgo.host.privileges import RANGE, SELF, USER, TaskIdentity

PASSWD = """root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
odd:x:1879048200:100::/:/bin/sh
"""
GROUP = """root:x:0:
nogroup:x:65534:
weird:x:1879048300:
"""


class IdentityTests(SynchronousTestCase):
    """
    L{privileges.resolve_identity}: the options and the accounts of the
    host decide who tasks run as.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.passwd = os.path.join(directory, "passwd")
        self.group = os.path.join(directory, "group")
        with open(self.passwd, "w") as out:
            out.write(PASSWD)
        with open(self.group, "w") as out:
            out.write(GROUP)

    def resolve(self, uid_range: object = None, user: object = None, euid: int = 0) -> TaskIdentity:
        return privileges.resolve_identity(uid_range, user, euid, euid, self.passwd, self.group)  # type: ignore[arg-type]

    def test_default_range_skips_accounts(self) -> None:
        """
        As root with no option: the default range, minus the ids an
        account or group of the host happens to use; tasks are unprivileged.
        """
        identity = self.resolve()
        self.assertEqual((identity.kind, identity.first, identity.last), (RANGE, *privileges.DEFAULT_TASK_UID_RANGE))
        self.assertEqual(identity.excluded, (1879048200, 1879048300))
        self.assertTrue(identity.drops)
        self.assertTrue(identity.per_task)
        self.assertEqual(identity.size, 65536 - 2)

    def test_explicit_range(self) -> None:
        """
        C{--task-uid-range START-END} is taken as given.
        """
        identity = self.resolve("200000-200009")
        self.assertEqual((identity.first, identity.last, identity.excluded), (200000, 200009, ()))
        self.assertEqual(identity.size, 10)

    def test_range_with_an_account_refused(self) -> None:
        """
        A range holding an account's uid (or a group's gid) would give a
        task that account's files: refused, naming it.
        """
        error = self.assertRaises(errors.InvalidInput, self.resolve, "65000-66000")
        self.assertIn("nobody", error.detail)
        error = self.assertRaises(errors.InvalidInput, self.resolve, "1879048300-1879048300")
        self.assertIn("weird", error.detail)

    def test_bad_ranges(self) -> None:
        """
        Not two ascending decimal uids above 0: refused.
        """
        for text in ("", "5", "a-b", "10-5", "0-10", "-5-10", "1-4294967295", "1 - 2"):
            self.assertRaises(errors.InvalidInput, privileges.parse_uid_range, text)

    def test_task_user(self) -> None:
        """
        C{--task-user NAME} runs every task as that account; C{root} drops
        nothing; an unknown name is refused.
        """
        nobody = self.resolve(user="nobody")
        self.assertEqual((nobody.kind, nobody.uid, nobody.gid, nobody.drops), (USER, 65534, 65534, True))
        self.assertFalse(nobody.per_task)
        self.assertFalse(self.resolve(user="root").drops)
        self.assertRaises(errors.InvalidInput, self.resolve, user="ghost")
        self.assertRaises(errors.InvalidInput, self.resolve, "10-20", "nobody")

    def test_not_root(self) -> None:
        """
        A runtime that is not root runs tasks as itself: nothing dropped.
        """
        identity = self.resolve(euid=1000)
        self.assertEqual((identity.kind, identity.uid, identity.drops), (SELF, 1000, False))
        self.assertEqual(identity.pick({1000}), RunAs(1000, 1000))

    def test_pick_lowest_free(self) -> None:
        """
        Each running task gets the lowest uid no running task holds (and
        no account uses); none when all are taken.
        """
        identity = TaskIdentity(kind=RANGE, owner_uid=0, owner_gid=0, first=10, last=13, excluded=(11,))
        self.assertEqual(identity.pick(set()), RunAs(10, 10))
        self.assertEqual(identity.pick({10}), RunAs(12, 12))
        self.assertEqual(identity.pick({10, 12}), RunAs(13, 13))
        self.assertIsNone(identity.pick({10, 12, 13}))

    def test_json_round_trip(self) -> None:
        """
        The settings file form reads back to the same identity; garbage
        is a C{ValueError}.
        """
        identity = TaskIdentity(kind=RANGE, owner_uid=0, owner_gid=0, first=10, last=13, excluded=(11,))
        self.assertEqual(TaskIdentity.from_json(identity.to_json()), identity)
        self.assertRaises(ValueError, TaskIdentity.from_json, {"kind": "root", "owner_uid": 0, "owner_gid": 0})
        self.assertRaises(ValueError, TaskIdentity.from_json, {"kind": "range"})


class FilesTests(SynchronousTestCase):
    """
    L{privileges.grant} and L{privileges.reclaim} on a real task directory.
    """

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("needs root to change owners")
        self.task_dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.task_dir, "workspace"), mode=0o700)
        self.script = os.path.join(self.task_dir, "script.sh")
        with open(self.script, "w") as out:
            out.write("true\n")
        self.run_as = RunAs(1879048192 + 77, 1879048192 + 77)

    def owner(self, path: str) -> tuple:
        info = os.lstat(path)
        return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)

    def test_workspace_chain(self) -> None:
        """
        The directories from the workspace down to a C{workspace_subdir}.
        """
        top = os.path.join(self.task_dir, "workspace")
        self.assertEqual(privileges.workspace_chain(self.task_dir, top), (top,))
        self.assertEqual(
            privileges.workspace_chain(self.task_dir, os.path.join(top, "a", "b")),
            (top, os.path.join(top, "a"), os.path.join(top, "a", "b")),
        )

    def test_grant_then_reclaim(self) -> None:
        """
        A running task owns its workspace chain (0700) and script; the task
        directory is passable only.  Handed back, everything below the
        workspace (files the task made, links not followed) is the
        runtime's again.
        """
        cwd = os.path.join(self.task_dir, "workspace", "sub")
        privileges.grant(self.task_dir, cwd, self.script, self.run_as)
        uid, gid = self.run_as.uid, self.run_as.gid
        self.assertEqual(self.owner(self.task_dir)[2], 0o711)
        self.assertEqual(self.owner(os.path.join(self.task_dir, "workspace")), (uid, gid, 0o700))
        self.assertEqual(self.owner(cwd), (uid, gid, 0o700))
        self.assertEqual(self.owner(self.script)[:2], (uid, gid))
        made = os.path.join(cwd, "made.txt")
        with open(made, "w") as out:
            out.write("x")
        os.chown(made, uid, gid)
        link = os.path.join(cwd, "to-etc")
        os.symlink("/etc/hostname", link)
        os.lchown(link, uid, gid)
        before = os.stat("/etc/hostname").st_uid if os.path.exists("/etc/hostname") else None
        privileges.reclaim(self.task_dir, self.script, 0, 0)
        for path in (os.path.join(self.task_dir, "workspace"), cwd, made, link, self.script):
            self.assertEqual(self.owner(path)[:2], (0, 0), path)
        self.assertEqual(self.owner(os.path.join(self.task_dir, "workspace"))[2], 0o700)
        if before is not None:
            self.assertEqual(os.stat("/etc/hostname").st_uid, before)

    def test_reclaim_bounded(self) -> None:
        """
        Past its entry budget the walk stops (a task that made millions of
        files cannot hold the supervisor): the top of the workspace is the
        runtime's all the same, and the answer says the walk was cut.
        """
        workspace = os.path.join(self.task_dir, "workspace")
        privileges.grant(self.task_dir, workspace, None, self.run_as)
        for index in range(5):
            path = os.path.join(workspace, f"f{index}")
            with open(path, "w"):
                pass
            os.chown(path, self.run_as.uid, self.run_as.gid)
        self.assertFalse(privileges.reclaim(self.task_dir, None, 0, 0, limit=2))
        self.assertEqual(self.owner(workspace)[:2], (0, 0))
        owners = sorted(os.stat(os.path.join(workspace, f"f{i}")).st_uid for i in range(5))
        self.assertEqual(owners, [0, 0] + [self.run_as.uid] * 3)
        self.assertTrue(privileges.reclaim(self.task_dir, None, 0, 0))

    def test_grant_refuses_a_link(self) -> None:
        """
        A workspace directory that is a link is never given away.
        """
        os.rmdir(os.path.join(self.task_dir, "workspace"))
        os.symlink("/etc", os.path.join(self.task_dir, "workspace"))
        self.assertRaises(
            OSError, privileges.grant, self.task_dir, os.path.join(self.task_dir, "workspace"), None, self.run_as
        )
        self.assertEqual(os.stat("/etc").st_uid, 0)


class KillUserTests(SynchronousTestCase):
    """
    L{privileges.kill_user} with real processes.
    """

    def test_kills_every_process_of_the_uid(self) -> None:
        """
        Processes of the uid die whatever their session (one escaped with
        C{setsid}); a process of another uid is untouched.
        """
        if os.geteuid() != 0:
            raise self.skipTest("needs root to run processes as other uids")
        uid = 1879048192 + 99
        victims = [
            subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[], start_new_session=True)
            for _ in range(2)
        ]
        bystander = subprocess.Popen(["sleep", "60"], user=uid + 1, group=uid + 1, extra_groups=[])
        self.addCleanup(bystander.wait)
        self.addCleanup(bystander.kill)
        privileges.kill_user(uid)
        for victim in victims:
            self.assertEqual(victim.wait(timeout=5), -signal.SIGKILL)
        self.assertIsNone(bystander.poll())

    def test_refuses_root(self) -> None:
        """
        uid 0 (and below) is never a task's: refused without forking.
        """
        self.assertRaises(ValueError, privileges.kill_user, 0)


class RestrictSelfTests(SynchronousTestCase):
    """
    L{privileges.restrict_self}, in a child so this process keeps its own.
    """

    def test_umask_and_no_new_privs(self) -> None:
        """
        umask 077 and C{NoNewPrivs: 1}.
        """
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            privileges.restrict_self()
            with open("/proc/self/status") as status:
                lines = [line for line in status if line.startswith(("Umask", "NoNewPrivs"))]
            os.write(writer, "".join(lines).encode())
            os._exit(0)
        os.close(writer)
        deadline = time.monotonic() + 5
        data = b""
        while time.monotonic() < deadline:
            chunk = os.read(reader, 4096)
            if not chunk:
                break
            data += chunk
        os.close(reader)
        os.waitpid(pid, 0)
        self.assertIn("Umask:\t0077", data.decode())
        self.assertIn("NoNewPrivs:\t1", data.decode())
