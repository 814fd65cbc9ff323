# -*- test-case-name: tests.test_rootfs -*-
"""
Where a chroot may lead: a C{rootfs} must lie under one of the operator's
C{--sandbox-rootfs-root} directories.  The submit path checks it
lexically (L{check_rootfs}); the supervisor checks the resolved path again
at launch with L{under_roots}.  Standard library only.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from execgo.core.fields import fail
from execgo.core.models import SandboxPolicy


def under_roots(path: str, roots: Sequence[str]) -> bool:
    """
    Whether C{path} is one of C{roots} or lies below one (both taken as
    given: normalise or resolve them first).
    """
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def check_rootfs(sandbox: SandboxPolicy, roots: Sequence[str]) -> None:
    """
    A chroot's C{rootfs} must be an absolute path, without C{..}, that is
    one of the operator's C{--sandbox-rootfs-root} directories (given
    normalised) or lies below one; without such roots no chroot is
    allowed.  Lexical: the supervisor resolves links at launch and checks
    again.

    @raise InvalidInput: naming the allowed roots.
    """
    if not sandbox.chroot or sandbox.rootfs is None:
        return
    rootfs = sandbox.rootfs
    allowed = ", ".join(roots) if roots else "none are configured"
    if (
        not rootfs.startswith("/")
        or "\0" in rootfs
        or ".." in rootfs.split("/")
        or not under_roots(posixpath.normpath(rootfs), roots)
    ):
        fail(
            "sandbox.rootfs",
            f"must be an absolute path under an allowed root (--sandbox-rootfs-root: {allowed})",
        )
