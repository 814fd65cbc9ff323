"""
Tests for L{execgo.server.web.page}, the operator page.

L{PageResourceTests} run the real API resource in memory
(L{tests.apifixture.MemoryRuntime} through StubTreq): the page's paths,
headers and errors, and that the API beside it is unchanged.
L{PageFileTests} read the page's files: no inline code, nothing fetched
from elsewhere, no markup made from data.

L{BrowserTests} and L{TokenBrowserTests} drive the page in headless
Chromium (L{tests.webdriver}) against a real server running real tasks
(L{tests.serverfixture.SharedServer}); they skip where Chromium or
ChromeDriver is missing.  With C{EXECGO_SCREENSHOTS} naming a directory,
they save there the screenshots of C{docs/ui.md} (C{ui-tasks.png},
C{ui-task.png}, C{ui-runtime.png}).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from html.parser import HTMLParser
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urljoin

from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.trial.util import suppress as SUPPRESS
from twisted.web.test.requesthelper import DummyRequest

from execgo.core.config import RuntimeConfig
from execgo.server.web import api, openapi, page
from execgo.server.web.auth import Tokens, parse_tokens
from tests import webdriver
from tests.apifixture import MemoryRuntime, tmp_data_dir
from tests.serverfixture import ApiClient, ServerProcess, SharedServer, poll, repository_root, sleep, token_server

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
UI_DIR = os.path.join(repository_root(), "execgo", "server", "web", "ui")
#: Task output that would run a script or create an element if the page
#: ever made markup of it.
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
GRACE = ["--termination-grace-ms", "300"]


def read_ui(name: str) -> str:
    """
    The text of C{execgo/server/web/ui/<name>}.
    """
    with open(os.path.join(UI_DIR, name), encoding="utf-8") as f:
        return f.read()


class Markup(HTMLParser):
    """
    What a document is made of: every start tag with its attributes, and
    the text inside each C{script} and C{style} element.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: List[Tuple[str, Dict[str, Optional[str]]]] = []
        self.inline: List[Tuple[str, str]] = []
        self._open: Optional[str] = None

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None and data.strip():
            self.inline.append((self._open, data))

    def references(self) -> List[str]:
        """
        Every URL the document makes the browser load (C{src}, and
        C{href} of C{link}).
        """
        found = []
        for tag, attrs in self.tags:
            if attrs.get("src"):
                found.append(str(attrs["src"]))
            if tag == "link" and attrs.get("href"):
                found.append(str(attrs["href"]))
        return found


def dummy_request(segments: List[bytes], method: bytes = b"GET") -> Any:
    """
    A L{DummyRequest} for the path C{segments}, with the C{path} a real
    request has.
    """
    request = DummyRequest(segments)
    request.method = method
    request.path = b"/" + b"/".join(segments)  # type: ignore[attr-defined]
    return request


def markup(text: str) -> Markup:
    """
    C{text} parsed.
    """
    parser = Markup()
    parser.feed(text)
    parser.close()
    return parser


class PageResourceTests(SynchronousTestCase):
    """
    The page served by the API's resource, in memory.
    """

    # treq names some headers with str and Twisted with bytes; under -b
    # Twisted's shared header-name cache then compares the two.
    suppress = [SUPPRESS(category=BytesWarning, module="twisted.web.http_headers")]
    tokens: Optional[str] = None

    def setUp(self) -> None:
        data_dir = tmp_data_dir(self)
        tokens = Tokens(parse_tokens(self.tokens)) if self.tokens else None
        self.rt = MemoryRuntime(data_dir, RuntimeConfig(data_dir=data_dir), tokens=tokens)
        self.rt.start()
        self.addCleanup(self.rt.stop)

    def get(self, path: str, method: str = "GET") -> Tuple[int, Dict[bytes, List[bytes]], bytes]:
        """
        One request: status, headers, body.
        """
        return self.rt.request(method, path)

    def assertPageHeaders(self, headers: Dict[bytes, List[bytes]]) -> None:
        """
        C{headers} carry the page's security headers.
        """
        self.assertEqual(headers[b"Content-Security-Policy"], [CSP.encode()])
        self.assertEqual(headers[b"X-Content-Type-Options"], [b"nosniff"])
        self.assertEqual(headers[b"Referrer-Policy"], [b"no-referrer"])
        self.assertEqual(headers[b"X-Frame-Options"], [b"DENY"])
        self.assertEqual(headers[b"Cache-Control"], [b"no-cache"])

    def assertEnvelope(self, answer: Tuple[int, Dict[bytes, List[bytes]], bytes], status: int, code: str) -> None:
        """
        C{answer} is the API's error envelope with C{code}, answered with
        C{status}.
        """
        self.assertEqual(answer[0], status, answer[2])
        self.assertEqual(answer[1][b"Content-Type"], [b"application/json"])
        error = json.loads(answer[2])["error"]
        self.assertEqual(error["code"], code)
        self.assertIsInstance(error["message"], str)

    def test_files(self) -> None:
        """
        Each file is served with its type (charset included), its length,
        the security headers, and exactly the bytes of the package's file.
        """
        for path, name, content_type in (
            ("/ui/app.js", "app.js", b"text/javascript; charset=utf-8"),
            ("/ui/app.css", "app.css", b"text/css; charset=utf-8"),
            ("/", "index.html", b"text/html; charset=utf-8"),
        ):
            code, headers, body = self.get(path)
            self.assertEqual(code, 200, path)
            self.assertEqual(headers[b"Content-Type"], [content_type])
            self.assertPageHeaders(headers)
            self.assertEqual(body, page.read_package_file(name))

    def test_document_at_root_and_ui(self) -> None:
        """
        C{/}, C{/ui/} and C{/ui/index.html} serve the same document, whose
        references resolve, from each, to the same files: the ones served
        under C{/ui/}.
        """
        documents = {}
        for path in ("/", "/ui/", "/ui/index.html"):
            code, headers, body = self.get(path)
            self.assertEqual(code, 200, path)
            self.assertEqual(headers[b"Content-Type"], [b"text/html; charset=utf-8"])
            text = body.decode("utf-8")
            references = markup(text).references()
            base = "http://runtime.test" + path
            resolved = sorted(urljoin(base, ref) for ref in references if not ref.startswith("data:"))
            self.assertEqual(resolved, ["http://runtime.test/ui/app.css", "http://runtime.test/ui/app.js"], path)
            for ref in references:
                text = text.replace(f'"{ref}"', '"' + urljoin(base, ref) + '"')
            documents[path] = text
        self.assertEqual(documents["/"], documents["/ui/"])
        self.assertEqual(documents["/"], documents["/ui/index.html"])

    def test_ui_redirected(self) -> None:
        """
        C{/ui} is sent on to C{/ui/} by a relative redirect (which holds
        behind a path prefix).
        """
        request = dummy_request([b"ui"])
        body = page.PageOrAPI(page.OperatorPage.from_package(), None).render(request)
        self.assertEqual((request.responseCode, body), (301, b""))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"location"), [b"ui/"])
        self.assertEqual(urljoin("http://runtime.test/ui", "ui/"), "http://runtime.test/ui/")
        code, _, followed = self.get("/ui")
        self.assertEqual((code, followed), (200, self.get("/ui/")[2]))

    def test_head(self) -> None:
        """
        C{HEAD} answers the headers of C{GET} and no body.
        """
        code, headers, body = self.get("/ui/app.js", "HEAD")
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(headers[b"Content-Type"], [b"text/javascript; charset=utf-8"])
        self.assertPageHeaders(headers)

    def test_length(self) -> None:
        """
        Every file is sent with its length, C{HEAD} too (checked on the
        resource itself: the in-memory client drops the header).
        """
        resource = page.OperatorPage.from_package()
        for method in (b"GET", b"HEAD"):
            for segments in ([b""], [b"ui", b""], [b"ui", b"app.js"], [b"ui", b"app.css"]):
                request = dummy_request(segments, method)
                body = resource.render(request)
                length = request.responseHeaders.getRawHeaders(b"content-length")
                served = page.page_files()[tuple(segments)].body
                self.assertEqual(length, [b"%d" % len(served)], segments)
                self.assertEqual(body, served if method == b"GET" else b"")

    def test_other_methods(self) -> None:
        """
        Any method but C{GET} and C{HEAD} is a C{405} envelope with
        C{Allow}.
        """
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            for path in ("/", "/ui/", "/ui/app.js"):
                answer = self.get(path, method)
                self.assertEnvelope(answer, 405, "invalid_input")
                self.assertEqual(answer[1][b"Allow"], [b"GET, HEAD"])

    def test_unknown(self) -> None:
        """
        An unknown name under C{/ui/} is a C{404} envelope from the page
        (with its headers); deeper paths are the API's 404.
        """
        for path in ("/ui/x", "/ui/app.jsx", "/ui/APP.JS", "/ui/app.js%20"):
            answer = self.get(path)
            self.assertEnvelope(answer, 404, "not_found")
            self.assertPageHeaders(answer[1])
        for path in ("/ui/a/b", "/ui//app.js", "//"):
            self.assertEnvelope(self.get(path), 404, "not_found")

    def test_no_traversal(self) -> None:
        """
        No path reaches a file outside the table: dot segments, encoded
        slashes and encoded dots all give a 404 envelope, through the HTTP
        stack and as raw path segments.
        """
        for path in (
            "/ui/../setup.py",
            "/ui/..%2fsetup.py",
            "/ui/%2e%2e/%2e%2e/setup.py",
            "/ui/..%2F..%2F..%2Fsetup.py",
            "/ui/%2e%2e%2fpage.py",
            "/ui/..%5cpage.py",
            "/ui/%2fetc%2fpasswd",
        ):
            code, _, body = self.get(path)
            self.assertIn(code, (404, 400), path)
            self.assertIn(b'"error"', body)
        resource = api.RuntimeAPI(self.rt.runtime).resource()
        for segments in ([b"ui", b".."], [b"ui", b"../setup.py"], [b"ui", b"../../setup.py"], [b"ui", b"/etc/passwd"]):
            request = dummy_request(segments)
            body = resource.render(request)
            self.assertEqual(request.responseCode, 404, segments)
            self.assertEqual(json.loads(body)["error"]["code"], "not_found")

    def test_api_unchanged(self) -> None:
        """
        The API's own paths answer as before, their errors included.
        """
        code, headers, body = self.get("/healthz")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.assertNotIn(b"Content-Security-Policy", headers)
        self.assertEqual(self.get("/api/v1/tasks")[0], 200)
        self.assertEnvelope(self.get("/nope"), 404, "not_found")
        self.assertEnvelope(self.get("/api/v1/tasks/"), 404, "not_found")
        self.assertEnvelope(self.get("/api/v1/tasks/%ff"), 400, "invalid_input")
        self.assertEnvelope(self.get("/ui/%ff"), 400, "invalid_input")
        self.assertEnvelope(self.get("/healthz", "POST"), 405, "invalid_input")

    def test_not_in_openapi(self) -> None:
        """
        The page is not one of the API's routes: the OpenAPI document names
        none of its paths.
        """
        paths = openapi.document(api.ROUTES)["paths"]
        self.assertNotIn("/", paths)
        self.assertEqual([p for p in paths if p.startswith("/ui")], [])
        self.assertIn("/api/v1/tasks", paths)


class TokenPageResourceTests(PageResourceTests):
    """
    With tokens, the page's files need none; the API still does.
    """

    tokens = "t-alpha tenant=alpha owner=ann\n"

    def test_served_without_token(self) -> None:
        """
        The files answer without a token, the API's data does not.
        """
        for path in ("/", "/ui/", "/ui/app.js", "/ui/app.css"):
            self.assertEqual(self.get(path)[0], 200, path)
        self.assertEnvelope(self.get("/api/v1/tasks"), 401, "permission_denied")

    def test_api_unchanged(self) -> None:
        """
        The API's own paths answer as before: their data needs a token.
        """
        self.assertEqual(self.get("/healthz")[0], 200)
        self.assertEnvelope(self.get("/api/v1/tasks"), 401, "permission_denied")
        self.assertEnvelope(self.get("/api/v1/tasks/%ff"), 400, "invalid_input")


class PageFileTests(SynchronousTestCase):
    """
    The page's files: what they may contain.
    """

    def test_table_is_the_directory(self) -> None:
        """
        The page serves every file of its directory and nothing else, and
        C{setup.py} ships them.
        """
        self.assertEqual(sorted(os.listdir(UI_DIR)), sorted(page.FILES))
        with open(os.path.join(repository_root(), "setup.py"), encoding="utf-8") as f:
            self.assertIn('"execgo.server.web": ["ui/*"]', f.read())

    def test_no_inline_code(self) -> None:
        """
        The document has no inline script or style, no C{style}
        attribute, no event handler attribute, no C{javascript:} URL.
        """
        document = markup(read_ui("index.html"))
        self.assertEqual(document.inline, [])
        scripts = [attrs for tag, attrs in document.tags if tag == "script"]
        self.assertEqual(scripts, [{"type": "module", "src": "ui/app.js"}])
        for tag, attrs in document.tags:
            self.assertNotEqual(tag, "style")
            for name, value in attrs.items():
                self.assertFalse(name.startswith("on"), (tag, name))
                self.assertNotEqual(name, "style", tag)
                self.assertNotIn("javascript:", (value or "").lower(), (tag, name))

    def test_every_file_referenced(self) -> None:
        """
        The document loads the script and the style sheet, relative to
        where it is served, and nothing else but an empty inline icon.
        """
        references = markup(read_ui("index.html")).references()
        self.assertEqual(sorted(references), ["data:,", "ui/app.css", "ui/app.js"])

    def test_nothing_from_elsewhere(self) -> None:
        """
        No file names another origin: no C{http:}/C{https:} URL (the SVG
        namespace, a name that is never fetched, aside), no
        scheme-relative C{//} URL, no CSS import or external C{url()}.
        """
        for name in page.FILES:
            text = read_ui(name).replace("http://www.w3.org/2000/svg", "")
            self.assertEqual(re.findall(r"(?:https?|wss?|ftp):", text, re.I), [], name)
            self.assertEqual(re.findall(r"""["'`(]\s*//""", text), [], name)
        css = read_ui("app.css")
        self.assertNotIn("@import", css)
        self.assertEqual([u for u in re.findall(r"url\(([^)]*)\)", css) if not u.strip("'\"").startswith("data:")], [])

    def test_no_markup_from_data(self) -> None:
        """
        The script never parses text as markup or code: no C{innerHTML}
        and kin, no C{eval}, no inline C{style} attribute set.
        """
        script = read_ui("app.js")
        for forbidden in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "createContextualFragment",
            "DOMParser",
            'setAttribute("style"',
            "srcdoc",
        ):
            self.assertNotIn(forbidden, script)
        self.assertIsNone(re.search(r"[{,]\s*style\s*:", script))

    def test_small(self) -> None:
        """
        The page stays small: under 60 KiB in all.
        """
        total = sum(os.path.getsize(os.path.join(UI_DIR, name)) for name in page.FILES)
        self.assertLess(total, 60 * 1024)


# -- in a real browser

#: Why the browser tests cannot run here, if they cannot.
MISSING = webdriver.missing()
#: Where to save screenshots (resolved before trial moves into its
#: temporary directory), if anywhere.
SCREENSHOTS = os.path.abspath(os.environ["EXECGO_SCREENSHOTS"]) if os.environ.get("EXECGO_SCREENSHOTS") else None

#: Scripts run in the page (WebDriver runs each as a function body).
ROWS = "return [...document.querySelectorAll('#tasks tbody tr')].map((row) => row.dataset.id)"
ROWS_ARE = """
const ids = [...document.querySelectorAll('#tasks tbody tr')].map((row) => row.dataset.id);
return JSON.stringify(ids.sort()) === JSON.stringify(arguments[0]);
"""
ROW_IS = """
const row = [...document.querySelectorAll('#tasks tbody tr')].find((r) => r.dataset.id === arguments[0]);
return Boolean(row) && (arguments[1] === null || row.dataset.status === arguments[1]);
"""
TEXT = "const node = document.querySelector(arguments[0]); return node ? node.textContent : null"
HOLDS = """
const node = document.querySelector(arguments[0]);
return Boolean(node) && node.textContent.includes(arguments[1]);
"""
SHOWN = "const node = document.querySelector(arguments[0]); return Boolean(node) && !node.hidden"
ENABLED = "const node = document.querySelector(arguments[0]); return Boolean(node) && !node.disabled"
COUNT = "return document.querySelectorAll(arguments[0]).length"
#: What the hostile task's output would have changed, had it run.
NO_SCRIPT_RAN = {"pwned": "undefined", "images": 0, "scripts": 1, "inOutput": 0}
DAMAGE = """
return {
  pwned: typeof window.__pwned,
  images: document.images.length,
  scripts: document.scripts.length,
  inOutput: document.querySelectorAll('pre.output *').length,
};
"""


def sh(script: str, *args: str, **request: Any) -> Dict[str, Any]:
    """
    A submission running C{/bin/sh -c SCRIPT sh ARGS...}, with the other
    fields of C{request}.
    """
    return {"execution": {"kind": "command", "program": "/bin/sh", "args": ["-c", script, "sh", *args]}, **request}


class Page:
    """
    The page in the browser, as a test drives it: waits poll the page
    with scripts (L{poll}), never sleep.
    """

    def __init__(self, reactor: Any, session: webdriver.Session) -> None:
        self.reactor = reactor
        self.session = session

    async def load(self, url: str) -> None:
        """
        Load C{url} afresh (not a same-document hash change).
        """
        await self.session.navigate("about:blank")
        await self.session.navigate(url)

    async def run(self, script: str, *args: Any) -> Any:
        """
        What C{script} returns in the page.
        """
        return await self.session.execute(script, *args)

    async def wait(self, script: str, *args: Any, what: str, timeout: float = 15.0) -> Any:
        """
        Run C{script} until it returns something true; that.
        """

        async def check() -> Any:
            try:
                return await self.session.execute(script, *args)
            except webdriver.WebDriverError:
                return None

        return await poll(self.reactor, check, timeout=timeout, interval=0.05, what=what)

    async def wait_text(self, selector: str, text: str) -> str:
        """
        Wait until the element at C{selector} holds C{text}; all its text.
        """
        await self.wait(HOLDS, selector, text, what=f"{text!r} in {selector}")
        return str(await self.run(TEXT, selector))

    async def wait_rows(self, expected: List[str]) -> None:
        """
        Wait until the task list shows exactly C{expected}, in any order.
        """
        await self.wait(ROWS_ARE, sorted(expected), what=f"the rows {expected}")

    async def wait_row(self, task_id: str, status: Optional[str] = None) -> None:
        """
        Wait until the task list shows C{task_id} (with C{status}).
        """
        await self.wait(ROW_IS, task_id, status, what=f"{task_id} listed as {status or 'anything'}")

    async def type_into(self, selector: str, text: str) -> None:
        """
        Empty the field at C{selector} and type C{text} into it.
        """
        field = await self.session.find(selector)
        await self.session.clear(field)
        if text:
            await self.session.send_keys(field, text)

    async def click(self, selector: str) -> None:
        """
        Click the element at C{selector}.
        """
        await self.session.click(await self.session.find(selector))

    async def script_errors(self) -> List[Dict[str, Any]]:
        """
        The errors the page logged of its own since the last call:
        uncaught exceptions and C{console.error} (the browser's notes of
        answers that were errors, such as a C{401}, aside).
        """
        entries = await self.session.browser_log()
        return [e for e in entries if e.get("level") == "SEVERE" and e.get("source") != "network"]

    async def screenshot(self, name: str) -> None:
        """
        Save the viewport as C{name} in C{$EXECGO_SCREENSHOTS}, when set.
        """
        if SCREENSHOTS:
            os.makedirs(SCREENSHOTS, exist_ok=True)
            await self.session.screenshot(os.path.join(SCREENSHOTS, name))


class BrowserTestCase(TestCase):
    """
    What the browser tests share: the class's browser, and the API.

    @cvar browser: the browser shared by the tests of the class.
    """

    timeout = 120
    skip = MISSING
    browser: webdriver.SharedBrowser

    async def open_page(self) -> Page:
        """
        The class's browser, its earlier log forgotten; the test ends
        with a check that the page logged no error of its own.
        """
        from twisted.internet import reactor

        page = Page(reactor, await self.browser.get(self))
        await page.script_errors()

        async def no_errors() -> None:
            self.assertEqual(await page.script_errors(), [])

        self.addCleanup(no_errors)
        return page

    def auth(self, token: Optional[str]) -> Optional[Dict[str, str]]:
        """
        The C{Authorization} header of C{token}, if any.
        """
        return {"Authorization": f"Bearer {token}"} if token else None

    async def submit(self, client: ApiClient, request: Dict[str, Any], token: Optional[str] = None) -> str:
        """
        Submit C{request} through the API; the task's id.
        """
        reply = await client.request("POST", "/api/v1/tasks", json_body=request, headers=self.auth(token))
        self.assertEqual(reply.code, 200, reply.body)
        return str(reply.json()["task_id"])

    async def finished(self, client: ApiClient, task_id: str, token: Optional[str] = None) -> Dict[str, Any]:
        """
        Wait for C{task_id} to be terminal; its status.
        """
        while True:
            reply = await client.request("GET", f"/api/v1/tasks/{task_id}?wait_ms=10000", headers=self.auth(token))
            status: Dict[str, Any] = reply.json()
            if status["status"] in ("success", "failed", "cancelled"):
                return status

    async def status(self, client: ApiClient, task_id: str) -> str:
        """
        The status of C{task_id} now.
        """
        return str((await client.get(f"/api/v1/tasks/{task_id}")).json()["status"])


class BrowserTests(BrowserTestCase):
    """
    The page in headless Chromium, on a real server without tokens.
    """

    shared: SharedServer

    async def start(self) -> Tuple[ServerProcess, ApiClient, Page]:
        """
        The class's server, a client of its API, and the page.
        """
        server = await self.shared.get(self)
        return server, server.client(self), await self.open_page()

    async def test_new_task_appears(self) -> None:
        """
        A task submitted through the API while the list is open appears at
        its top, and its status follows, without a reload.
        """
        server, client, page = await self.start()
        batch = {"batch": uuid.uuid4().hex[:8]}

        def job(name: str, script: str) -> Dict[str, Any]:
            return sh(script, metadata={"job": name, "commit": "4f2a9c1"}, control_context={"labels": batch})

        ids = [
            await self.submit(client, job(name, script))
            for name, script in (
                ("build", "echo compiling; sleep 0.3"),
                ("unit-tests", "echo 120 passed"),
                ("lint", "echo 2 problems >&2; exit 1"),
                ("package", "sleep 0.2; echo done"),
            )
        ]
        await page.load(f"{server.url}/#/tasks?label=batch:{batch['batch']}")
        await page.wait_rows(ids)
        await page.run("window.__loaded = 'once'")
        task_id = await self.submit(client, job("deploy", "echo deploying; sleep 1; echo deployed"))
        await page.wait_row(task_id)
        self.assertEqual((await page.run(ROWS))[0], task_id)
        await page.wait_row(task_id, "running")
        await self.finished(client, task_id)
        await page.wait_row(task_id, "success")
        self.assertEqual(await page.run("return window.__loaded"), "once")
        for other in ids:
            await self.finished(client, other)
        if SCREENSHOTS:
            long_id = await self.submit(client, job("e2e-nightly", "exec sleep 30"))
            await page.wait_row(long_id, "running")
            await sleep(page.reactor, 1.5)
            await page.screenshot("ui-tasks.png")
            await client.post(f"/api/v1/tasks/{long_id}/kill")
            await self.finished(client, long_id)

    async def test_output_follows(self) -> None:
        """
        A task's page shows its output as it is written: a line printed
        while the page is open appears; the status, the verdict, the
        streams and the event timeline follow to the end.
        """
        server, client, page = await self.start()
        # The task prints its second part once the test says so: a file in
        # a directory the task's own uid can search.
        gate = tempfile.mkdtemp(prefix="execgo-page-")
        self.addCleanup(shutil.rmtree, gate, True)
        os.chmod(gate, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        go = os.path.join(gate, "go")
        script = (
            'for step in fetch configure compile; do echo "[$step] ok"; done; echo "first line"; '
            'echo "warning: cache cold" >&2; '
            'i=0; while [ ! -e "$1" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; '
            'echo "second line"; echo "[link] ok"; echo "built 3 targets in 4.2s"'
        )
        task_id = await self.submit(client, sh(script, go, metadata={"job": "build", "commit": "4f2a9c1"}))
        await page.load(f"{server.url}/#/tasks/{task_id}")
        self.assertNotIn("second line", await page.wait_text("#stdout", "first line"))
        await page.wait_text("#stderr", "warning: cache cold")
        await page.wait_text("#task-status", "running")
        with open(go, "w"):
            pass
        await page.wait_text("#stdout", "built 3 targets")
        await page.wait_text("#task-status", "success")
        await page.wait_text("#verdict", "Succeeded")
        await page.wait(COUNT, "#events li[data-type=finished]", what="the finished event")
        await page.wait_text("#stdout-info", "complete")
        await page.wait_text("#stderr-info", "complete")
        stdout = await page.run(TEXT, "#stdout")
        self.assertEqual(stdout.count("second line"), 1)
        self.assertTrue(stdout.startswith("[fetch] ok\n"))
        await page.screenshot("ui-task.png")

    async def test_kill(self) -> None:
        """
        Kill from the task's page: refused with the API's message for
        another owner, done for the task's owner, who is remembered.
        """
        server, client, page = await self.start()
        task_id = await self.submit(client, sh("exec sleep 60", control_context={"owner": "alice"}))

        async def running() -> bool:
            return await self.status(client, task_id) == "running"

        await poll(page.reactor, running, what="the task to run")
        await page.load(f"{server.url}/#/tasks/{task_id}")
        await page.wait(ENABLED, "#kill", what="the kill button")
        await page.type_into("#owner", "mallory")
        await page.click("#kill")
        await page.wait_text("#kill", "Confirm")
        await page.click("#kill")
        await page.wait_text("#task-notice", "kill requires owner")
        self.assertEqual(await self.status(client, task_id), "running")
        await page.type_into("#owner", "alice")
        await page.click("#kill")
        await page.click("#kill")
        await page.wait_text("#task-status", "cancelled")
        self.assertEqual((await self.finished(client, task_id))["status"], "cancelled")
        await page.wait(COUNT, "#events li[data-type=kill_requested]", what="the kill in the timeline")
        await page.wait("return document.querySelector('#kill').disabled", what="kill disabled")
        self.assertEqual(await page.run("return localStorage.getItem('execgo.owner')"), "alice")
        await page.load(f"{server.url}/#/tasks/{task_id}")
        await page.wait_text("#task-status", "cancelled")
        self.assertEqual(await page.run("return document.querySelector('#owner').value"), "alice")

    async def test_filters(self) -> None:
        """
        The filters by status, tenant and label, and the search by id, show
        only the tasks that match, and the address keeps them.
        """
        server, client, page = await self.start()
        run = uuid.uuid4().hex[:8]

        def task(script: str, tenant: str, **labels: str) -> Dict[str, Any]:
            return sh(script, control_context={"tenant": f"{tenant}-{run}", "labels": {"run": run, **labels}})

        red_ok = await self.submit(client, task("true", "red"))
        red_bad = await self.submit(client, task("exit 3", "red"))
        blue_ok = await self.submit(client, task("true", "blue", tier="gold"))
        for task_id in (red_ok, red_bad, blue_ok):
            await self.finished(client, task_id)
        await page.load(f"{server.url}/")
        await page.type_into("input[name=label]", f"run:{run}")
        await page.wait_rows([red_ok, red_bad, blue_ok])
        await page.click("select[name=status] option[value=failed]")
        await page.wait_rows([red_bad])
        await page.click("select[name=status] option[value='']")
        await page.type_into("input[name=tenant]", f"red-{run}")
        await page.wait_rows([red_ok, red_bad])
        await page.type_into("input[name=tenant]", "")
        await page.type_into("input[name=label]", f"run:{run}, tier:gold")
        await page.wait_rows([blue_ok])
        await page.type_into("input[name=label]", f"run:{run}")
        await page.wait_rows([red_ok, red_bad, blue_ok])
        await page.type_into("input[name=id]", red_ok[:13])
        await page.wait_rows([red_ok])
        self.assertIn(f"label=run%3A{run}", await page.run("return location.hash"))
        await page.type_into("input[name=id]", "no-such-task")
        await page.wait_text(".empty", "Open task no-such-task")

    async def test_hostile_output_stays_text(self) -> None:
        """
        Output, metadata and labels holding markup are shown as text, in
        the list and on the task's page: no script runs, no element is made
        of them.
        """
        server, client, page = await self.start()
        request = sh(
            'printf "%s\\n" "$1"; printf "%s\\n" "$1" >&2',
            HOSTILE,
            metadata={"note": HOSTILE},
            control_context={"labels": {"note": HOSTILE}},
        )
        task_id = await self.submit(client, request)
        await self.finished(client, task_id)
        await page.load(f"{server.url}/")
        await page.type_into("input[name=label]", f"note:{HOSTILE}")
        await page.wait_rows([task_id])
        await page.wait_text("#tasks tbody", "note=" + HOSTILE)
        self.assertEqual(await page.run(DAMAGE), NO_SCRIPT_RAN)
        await page.load(f"{server.url}/#/tasks/{task_id}")
        await page.wait_text("#stderr", HOSTILE)
        await page.wait_text("#stdout", HOSTILE)
        self.assertEqual(await page.run(TEXT, "#stdout"), HOSTILE + "\n")
        await page.wait_text("main", "note" + HOSTILE)
        self.assertEqual(await page.run(DAMAGE), NO_SCRIPT_RAN)

    async def test_degraded_plan(self) -> None:
        """
        A plan that differs from the request is flagged in the list and on
        the task's page, with the runtime's reasons and the limit left
        unenforced (the server runs without cgroups, so C{pids_max} cannot
        be enforced).
        """
        server, client, page = await self.start()
        task_id = await self.submit(client, sh("true", limits={"pids_max": 64}))
        await self.finished(client, task_id)
        await page.load(f"{server.url}/#/tasks?id={task_id}")
        await page.wait_row(task_id, "success")
        self.assertIn("degraded", await page.run(TEXT, "#tasks tbody"))
        await page.click(f"#tasks a[title='{task_id}']")
        await page.wait_text("#degraded", "pids_max")
        self.assertIn("degraded", await page.run(TEXT, "#task-status"))
        self.assertIn("not enforced", await page.wait_text("main", "PIDs64"))

    async def test_runtime(self) -> None:
        """
        The runtime view shows the capacity as bars, the tenants' quotas,
        the node, and charts drawn from samples of C{/metrics}.
        """
        server, client, page = await self.start()
        node = (await client.get("/api/v1/runtime/info")).json()["runtime_id"]
        await page.load(f"{server.url}/#/runtime")
        await page.wait_text("#capacity", "Task slots")
        self.assertEqual(await page.run(COUNT, "#capacity .bar .fill"), 3)
        await page.wait_text("#tenants", "team-a")
        self.assertIn("alive", await page.wait_text("#nodes tbody", node))
        await page.wait(COUNT, "#queue svg polyline", what="the queue chart")
        await page.wait(COUNT, "#throughput svg polyline", what="the throughput chart")
        await page.wait(COUNT, "#outcomes svg", what="the outcomes chart")
        await page.wait_text("#about", node)
        if SCREENSHOTS:
            await self.busy(client, page)

    async def busy(self, client: ApiClient, page: Page) -> None:
        """
        Give the runtime view something to draw (bursts of tasks, some
        failing, some of C{team-a} held by its quota), photograph it, and
        end every task.
        """
        ids = []
        for burst in range(20):
            for n in range(burst % 4 + 1):
                ids.append(await self.submit(client, sh(f"sleep 0.{n + 2}; exit {int(n == 2)}")))
            if burst % 4 == 0:
                ids.append(await self.submit(client, sh("exec sleep 60", control_context={"tenant": "team-a"})))
            await sleep(page.reactor, 2.0)
        await page.screenshot("ui-runtime.png")
        for task_id in ids:
            await client.post(f"/api/v1/tasks/{task_id}/kill")
        for task_id in ids:
            await self.finished(client, task_id)


BrowserTests.shared = SharedServer(
    BrowserTests, GRACE + ["--disable-cgroup", "--tenant-quota", "team-a=slots:2,memory:4294967296"]
)
BrowserTests.browser = webdriver.SharedBrowser(BrowserTests)


class TokenBrowserTests(BrowserTestCase):
    """
    The page in headless Chromium, on a real server with bearer tokens.
    """

    async def test_token(self) -> None:
        """
        The page asks for a token (a refused one says so), keeps it for the
        tab, shows only that tenant's tasks and the admin-only views as
        such; signing out asks again.
        """
        server = await token_server(self, "t-alpha tenant=alpha owner=ann\nt-beta tenant=beta owner=bob\n", GRACE)
        client = server.client(self)
        page = await self.open_page()
        alpha = await self.submit(client, sh("echo alpha"), token="t-alpha")
        beta = await self.submit(client, sh("echo beta"), token="t-beta")
        await self.finished(client, alpha, token="t-alpha")
        await self.finished(client, beta, token="t-beta")

        await page.load(f"{server.url}/")
        await page.wait(SHOWN, "#signin", what="the sign-in form")
        await page.type_into("#token", "t-wrong")
        await page.click("#signin button[type=submit]")
        await page.wait_text("#signin-error", "refused")
        await page.type_into("#token", "t-alpha")
        await page.click("#signin button[type=submit]")
        await page.wait_rows([alpha])
        self.assertFalse(await page.run(SHOWN, "#signin"))
        self.assertEqual(await page.run("return sessionStorage.getItem('execgo.token')"), "t-alpha")

        await page.run("location.hash = '#/runtime'")
        await page.wait_text("#capacity", "Admin only")
        await page.wait_text("#queue", "Admin only")
        await page.wait(COUNT, "#nodes tbody tr", what="the nodes")
        self.assertEqual(await page.run(COUNT, "main p.error:not([hidden])"), 0)

        await page.run("location.hash = arguments[0]", f"#/tasks/{alpha}")
        await page.wait_text("#stdout", "alpha")
        self.assertTrue(await page.run("return document.querySelector('#owner').closest('label').hidden"))
        await page.run("location.hash = arguments[0]", f"#/tasks/{beta}")
        await page.wait_text("#verdict", "Not found")

        await page.click("#signout")
        await page.wait(SHOWN, "#signin", what="the sign-in form again")
        self.assertIsNone(await page.run("return sessionStorage.getItem('execgo.token')"))


TokenBrowserTests.browser = webdriver.SharedBrowser(TokenBrowserTests)
