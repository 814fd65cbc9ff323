"""
Tests for L{execgo.core.rootfs}: where a chroot may lead.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.errors import InvalidInput
from execgo.core.models import SandboxPolicy
from execgo.core.rootfs import check_rootfs, under_roots

ROOTS = ("/srv/roots", "/opt/images/")


def chroot(rootfs: str) -> SandboxPolicy:
    """
    A C{linux_sandbox} policy asking for a chroot into C{rootfs}.
    """
    return SandboxPolicy(profile="linux_sandbox", chroot=True, rootfs=rootfs)


class UnderRootsTests(SynchronousTestCase):
    """
    L{under_roots}: a root itself or a path below one, never a sibling
    that merely shares the prefix.
    """

    def test_root_and_below(self) -> None:
        """
        A root, and paths below it, with or without the root's trailing
        slash.
        """
        for path in ("/srv/roots", "/srv/roots/debian", "/opt/images/a/b"):
            self.assertTrue(under_roots(path, ROOTS), path)

    def test_elsewhere(self) -> None:
        """
        A sibling sharing a prefix, a parent, or any path without roots is
        not under them.
        """
        for path in ("/srv/rootsx", "/srv", "/opt/imagesque/a", "/"):
            self.assertFalse(under_roots(path, ROOTS), path)
        self.assertFalse(under_roots("/srv/roots", ()))


class CheckRootfsTests(SynchronousTestCase):
    """
    L{check_rootfs}: the submit path's lexical check.
    """

    def test_allowed(self) -> None:
        """
        An absolute path under a root passes, once normalised; no chroot
        means nothing to check.
        """
        check_rootfs(chroot("/srv/roots/debian"), ROOTS)
        check_rootfs(chroot("/srv/roots/./debian//"), ROOTS)
        check_rootfs(SandboxPolicy(rootfs="relative"), ())

    def test_refused(self) -> None:
        """
        A relative path, a C{..} component, a NUL or a path outside every
        root is refused, naming the field and the allowed roots.
        """
        for rootfs in ("srv/roots/a", "/srv/roots/../etc", "/srv/roots/a\0", "/etc"):
            error = self.assertRaises(InvalidInput, check_rootfs, chroot(rootfs), ROOTS)
            self.assertEqual(
                error.detail,
                "sandbox.rootfs: must be an absolute path under an allowed root"
                " (--sandbox-rootfs-root: /srv/roots, /opt/images/)",
            )

    def test_no_roots(self) -> None:
        """
        Without configured roots no chroot is allowed.
        """
        error = self.assertRaises(InvalidInput, check_rootfs, chroot("/srv/roots"), ())
        self.assertIn("none are configured", error.detail)
