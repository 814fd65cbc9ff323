# -*- test-case-name: tests.test_auth -*-
"""
Optional bearer-token authentication (off unless C{--auth-token-file} is
given).

The token file has one token a line, C{TOKEN tenant=NAME owner=NAME
[role=admin]}, with C{#} comments and blank lines allowed.  A token stands
for a tenant and an owner: they override whatever a submission's body
claims, and a kill is gated by the token's owner.  The file is read at
start (an error there stops the server) and again on C{SIGHUP} (an error
there keeps the tokens in force and is logged).

With tokens, tenancy is a boundary, and its rules are here: a principal
sees only the tasks of its own tenant (L{visible}); an admin sees and
kills every task and alone reads the views that span tenants
(L{require_admin}).  Without tokens there is no principal (C{None}) and
the runtime is one trust domain.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import attrs

from execgo.core import errors

#: The roles a token may carry (C{role=NAME}); without one a token is a
#: tenant's.
ROLES = ("admin",)
_FORMAT = "'TOKEN tenant=NAME owner=NAME [role=admin]'"


@attrs.frozen
class Principal:
    """
    Who a token speaks for.

    @ivar admin: the token carries C{role=admin}: it sees every tenant.
    """

    tenant: Optional[str] = None
    owner: Optional[str] = None
    admin: bool = False


def visible(principal: Optional[Principal], tenant: Optional[str]) -> bool:
    """
    Whether C{principal} may see (and act on) a task of C{tenant}: always
    without authentication (C{None}) and for an admin, else only a task of
    its own tenant (a token without a tenant sees the tasks without one).
    """
    return principal is None or principal.admin or principal.tenant == tenant


def require_admin(principal: Optional[Principal], what: str) -> None:
    """
    Refuse C{what} (a view that spans tenants) to a principal that is not
    an admin; without authentication everyone may.

    @raise errors.PermissionDenied: for a principal without C{role=admin}.
    """
    if principal is not None and not principal.admin:
        raise errors.PermissionDenied(f"{what} requires a token with role=admin")


def parse_tokens(text: str, source: str = "token file") -> Dict[str, Principal]:
    """
    Parse a token file.

    @raise errors.InvalidInput: naming the line that is wrong.
    """
    tokens: Dict[str, Principal] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token, *fields = line.split()
        values: Dict[str, str] = {}
        for field in fields:
            key, sep, value = field.partition("=")
            if not sep or key not in ("tenant", "owner", "role") or not value:
                raise errors.InvalidInput(f"{source} line {number}: expected {_FORMAT}, got {field!r}")
            if key == "role" and value not in ROLES:
                raise errors.InvalidInput(
                    f"{source} line {number}: unknown role {value!r} (expected {_FORMAT})"
                )
            values[key] = value
        if token in tokens:
            raise errors.InvalidInput(f"{source} line {number}: token listed twice")
        tokens[token] = Principal(
            tenant=values.get("tenant"), owner=values.get("owner"), admin=values.get("role") == "admin"
        )
    return tokens


def read_tokens(path: str) -> Dict[str, Principal]:
    """
    Read and parse a token file (blocking).

    @raise errors.InvalidInput: for a file that cannot be read or parsed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise errors.InvalidInput(f"cannot read token file {path}: {e}") from None
    return parse_tokens(text, path)


def bearer(header: Optional[bytes]) -> Optional[str]:
    """
    The token of an C{Authorization: Bearer <token>} header, if any.
    """
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    try:
        return token.strip().decode("ascii")
    except UnicodeDecodeError:
        return None


class Tokens:
    """
    The tokens in force (replaced wholesale on reload).
    """

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self.tokens = dict(tokens)

    def authenticate(self, header: Optional[bytes]) -> Principal:
        """
        The principal of a request's C{Authorization} header.

        @raise errors.Unauthorized: for a missing or unknown token.
        """
        token = bearer(header)
        if token is None:
            raise errors.Unauthorized("a bearer token is required")
        principal = self.tokens.get(token)
        if principal is None:
            raise errors.Unauthorized("unknown token")
        return principal
