# -*- test-case-name: tests.test_page -*-
"""
The operator page (C{docs/ui.md}): three static files of the package,
C{ui/index.html}, C{ui/app.js} and C{ui/app.css}, served at C{/} and under
C{/ui/}, beside the JSON API but not part of it (L{PageOrAPI}).

The files hold no data, so they are served without a token: everything
the page shows it asks the public API for, with the user's own token.
They are read once, when the resource is made, into a fixed table keyed
by request path (L{page_files}): no path a client sends is ever joined to
a directory.  Every answer carries a strict Content-Security-Policy and
its companions (L{SECURITY_HEADERS}): scripts and styles only from this
server and never inline, requests only to it, no frames, no forms that
leave the page.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import attrs
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from execgo.core import errors
from execgo.server.web.site import answer_json

#: The files of the page, in C{execgo/server/web/ui/}, and their types.
FILES: Mapping[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: The document; it names the other files relative to C{/} (C{ui/app.js}).
INDEX = "index.html"
#: What the page's answers allow the browser: its own scripts, styles
#: and API, images inline as C{data:}, nothing else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Headers of every answer of the page, errors included.
SECURITY_HEADERS: Tuple[Tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Revalidated on every load, so an upgraded runtime's page shows at once.
    (b"cache-control", b"no-cache"),
)
ALLOWED_METHODS = (b"GET", b"HEAD")

#: A request path as Twisted splits it (C{request.postpath}).
Path = Tuple[bytes, ...]


@attrs.frozen
class PageFile:
    """
    One file of the page as it is served.
    """

    body: bytes
    content_type: str


def read_package_file(name: str) -> bytes:
    """
    The bytes of C{execgo/server/web/ui/<name>}, wherever the package is
    installed.
    """
    return (resources.files("execgo.server.web") / "ui" / name).read_bytes()


def _index_under_ui(index: bytes) -> bytes:
    """
    The document as served under C{/ui/}: its references to the other
    files made relative to that directory (C{ui/app.js} becomes
    C{app.js}), so they resolve to the same files there, and behind a
    proxy's path prefix too.
    """
    for name in FILES:
        index = index.replace(b'"ui/' + name.encode("ascii") + b'"', b'"' + name.encode("ascii") + b'"')
    return index


def page_files(read: Callable[[str], bytes] = read_package_file) -> Dict[Path, PageFile]:
    """
    Every path the page serves and what it serves there: C{/} and C{/ui/}
    the document, C{/ui/NAME} each file of L{FILES}.

    @param read: reads one file of the page by name.
    """
    table: Dict[Path, PageFile] = {}
    for name, content_type in FILES.items():
        body = read(name)
        if name == INDEX:
            table[(b"",)] = PageFile(body, content_type)
            body = _index_under_ui(body)
            table[(b"ui", b"")] = PageFile(body, content_type)
        table[(b"ui", name.encode("ascii"))] = PageFile(body, content_type)
    return table


def is_page_path(postpath: Sequence[bytes]) -> bool:
    """
    Whether a request path is the page's: exactly C{/}, C{/ui} (sent on
    to C{/ui/}), C{/ui/} or C{/ui/NAME} (one segment, known or not).  Every other path is the
    API's.
    """
    path = list(postpath)
    return path in ([b""], [b"ui"]) or (len(path) == 2 and path[0] == b"ui")


class OperatorPage(Resource):
    """
    Serves the page's paths from a table made at start (L{page_files}):
    C{GET} and C{HEAD} only, C{/ui} redirected to C{/ui/}, an unknown
    C{/ui/NAME} a C{404} with the API's error envelope.
    """

    isLeaf = True

    def __init__(self, files: Mapping[Path, PageFile]) -> None:
        super().__init__()
        self._files = dict(files)

    @classmethod
    def from_package(cls) -> "OperatorPage":
        """
        The page with the files of the installed package (read now).
        """
        return cls(page_files())

    def render(self, request: IRequest) -> bytes:
        """
        Answer one request for a path of the page.
        """
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        if request.method not in ALLOWED_METHODS:
            request.setHeader(b"allow", b", ".join(ALLOWED_METHODS))
            refused: errors.ExecgoError = errors.MethodNotAllowed(
                f"method {request.method.decode('ascii', 'replace')} is not allowed here"
            )
            return answer_json(request, refused.envelope(), refused.http_status)
        path = tuple(request.postpath or ())
        if path == (b"ui",):
            # Relative, so it holds behind a proxy's path prefix too.
            request.setResponseCode(301)
            request.setHeader(b"location", b"ui/")
            request.setHeader(b"content-length", b"0")
            return b""
        found = self._files.get(path)
        if found is None:
            refused = errors.NotFound(f"no route for {request.path.decode('utf-8', 'replace')}")
            refused.prefix = "not found"
            return answer_json(request, refused.envelope(), refused.http_status)
        request.setHeader(b"content-type", found.content_type.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(found.body))
        return b"" if request.method == b"HEAD" else found.body


class PageOrAPI(Resource):
    """
    The root of the site: the page's paths (L{is_page_path}) to the page,
    every other request to the API, unchanged.

    The page stays outside the Klein app, so it is not one of the API's
    routes, which the OpenAPI document describes.
    """

    isLeaf = True

    def __init__(self, page: Resource, api: Any) -> None:
        super().__init__()
        self._page = page
        self._api = api

    def render(self, request: IRequest) -> Any:
        """
        Hand C{request} to the page or to the API.
        """
        postpath: Optional[Sequence[bytes]] = request.postpath
        if postpath is not None and is_page_path(postpath):
            return self._page.render(request)
        return self._api.render(request)
