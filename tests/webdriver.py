"""
A minimal W3C WebDriver client over treq, and headless Chromium driven
through Debian's ChromeDriver, for the operator page's browser tests
(L{tests.test_page}).

L{ChromeDriver} runs C{chromedriver} as a child process whose output goes
to a log file (no pipes, like L{tests.serverfixture.ServerProcess}), so it
can outlive one test.  L{Session} speaks the W3C protocol to it: just what
the tests need (navigate, find, click, type, read text, run a script,
take a screenshot).  L{SharedBrowser} gives the tests of a class one
browser: the first test starts it, the last one's cleanup stops it and
kills whatever Chromium it left.  Waiting is done by polling with
C{deferLater} (L{tests.serverfixture.poll}), never by sleeping.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import signal
from typing import Any, Dict, List, Mapping, Optional, Set

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.serverfixture import clean_environ, free_port, poll, process_alive, sigkill, sleep

#: The key of an element reference in W3C WebDriver answers.
ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"


def find_binary(name: str) -> Optional[str]:
    """
    The path of the program C{name}: on C{PATH}, else in C{/usr/bin}.
    """
    found = shutil.which(name)
    if found is None and os.access(os.path.join("/usr/bin", name), os.X_OK):
        found = os.path.join("/usr/bin", name)
    return found


def missing() -> Optional[str]:
    """
    Why the browser tests cannot run here, or C{None} when they can.
    """
    absent = [name for name in ("chromium", "chromedriver") if find_binary(name) is None]
    if absent:
        return f"needs {' and '.join(absent)} (Debian: apt-get install chromium chromium-driver)"
    return None


class WebDriverError(Exception):
    """
    A command the driver refused: its W3C error code and message.
    """

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message


@attrs.frozen
class Element:
    """
    A reference to an element of the current page.
    """

    id: str


def _children_of(pid: int) -> List[int]:
    """
    Every descendant of C{pid}, read from C{/proc}.
    """
    parents: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            parent = int(stat.rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(entry))
    found: List[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _using(directory: str) -> List[int]:
    """
    The processes whose command line names C{directory} (the browser's
    profile directory, which only our Chromium uses).
    """
    needle = directory.encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


class _Ended(protocol.ProcessProtocol):
    """
    Notes when the driver, which has no pipes to us, ends.
    """

    def __init__(self) -> None:
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.status: Optional[Failure] = None

    def processEnded(self, reason: Failure) -> None:
        self.status = reason
        self.ended.callback(None)


_LIVE: Set["ChromeDriver"] = set()


class ChromeDriver:
    """
    C{chromedriver --port=N} as a child process, and the Chromium options
    of the sessions it starts: headless, without a sandbox (the tests run
    as root, which Chromium's sandbox refuses), with a profile in a
    directory of its own.

    @param directory: an empty directory for its log, its profile and
        Chromium's C{HOME}.
    """

    def __init__(self, reactor: Any, directory: str) -> None:
        self.reactor = reactor
        self.directory = os.path.abspath(directory)
        self.profile = os.path.join(self.directory, "profile")
        self.log_path = os.path.join(self.directory, "chromedriver.log")
        self.port: Optional[int] = None
        self.pid: Optional[int] = None
        self._exit: Optional[_Ended] = None

    @property
    def url(self) -> str:
        """
        C{http://127.0.0.1:<port>}.
        """
        return f"http://127.0.0.1:{self.port}"

    def capabilities(self) -> Dict[str, Any]:
        """
        The capabilities of a new session.
        """
        args = [
            "--headless=new",
            "--no-sandbox",
            # Renderers as the browser's own children (not the zygote's),
            # so the browser reaps them as it exits.
            "--no-zygote",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            "--window-size=1280,900",
        ]
        options = {"binary": find_binary("chromium"), "args": args}
        capabilities = {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            # Keep the console and uncaught errors for Session.browser_log.
            "goog:loggingPrefs": {"browser": "ALL"},
        }
        return {"capabilities": {"alwaysMatch": capabilities}}

    async def start(self, timeout: float = 20.0) -> None:
        """
        Start the driver and wait until it says it is ready.
        """
        os.makedirs(self.profile, exist_ok=True)
        self.port = free_port()
        driver = find_binary("chromedriver")
        assert driver is not None, missing()
        env = clean_environ({"HOME": self.directory})
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        exit_protocol = _Ended()
        try:
            transport = self.reactor.spawnProcess(
                exit_protocol, driver, [driver, f"--port={self.port}"], env=env, childFDs={0: null, 1: log, 2: log}
            )
        finally:
            os.close(null)
            os.close(log)
        self.pid = transport.pid
        self._exit = exit_protocol
        _LIVE.add(self)
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        http = HTTPClient(Agent(self.reactor, pool=pool))

        async def ready() -> bool:
            if exit_protocol.status is not None:
                raise AssertionError(f"chromedriver exited ({exit_protocol.status.value}): {self.log_text()}")
            try:
                response = await http.get(self.url + "/status", timeout=2.0)
                answer = json.loads(await treq.content(response))
            except Exception:
                return False
            return bool(answer.get("value", {}).get("ready"))

        try:
            await poll(self.reactor, ready, timeout=timeout, interval=0.05, what="chromedriver to be ready")
        finally:
            await pool.closeCachedConnections()

    def log_text(self) -> str:
        """
        What the driver wrote.
        """
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def leftovers(self) -> List[int]:
        """
        The driver's processes and every Chromium process of its profile.
        """
        pids = set(_using(self.profile))
        if self.pid is not None and self._exit is not None and self._exit.status is None:
            pids.add(self.pid)
            pids.update(_children_of(self.pid))
        return sorted(pids)

    async def stop(self) -> None:
        """
        Stop the driver (SIGTERM, then SIGKILL) and kill every Chromium
        process it left, then wait until they are all gone.
        """
        browsers = [pid for pid in self.leftovers() if pid != self.pid]
        if self._exit is not None and self._exit.status is None and self.pid is not None:
            os.kill(self.pid, signal.SIGTERM)
            deadline = self.reactor.seconds() + 5.0
            while self._exit.status is None and self.reactor.seconds() < deadline:
                await sleep(self.reactor, 0.02)
            if self._exit.status is None:
                os.kill(self.pid, signal.SIGKILL)
                await self._exit.ended

        def gone() -> bool:
            left = [pid for pid in set(browsers) | set(_using(self.profile)) if process_alive(pid)]
            sigkill(left)
            return not left

        await poll(self.reactor, gone, timeout=10.0, what="Chromium to exit")
        _LIVE.discard(self)

    def kill_now(self) -> None:
        """
        SIGKILL the driver and its Chromium at once (from C{atexit}).
        """
        sigkill(self.leftovers())


def _kill_at_exit() -> None:
    for driver in list(_LIVE):
        driver.kill_now()


atexit.register(_kill_at_exit)


class Session:
    """
    One WebDriver session, spoken to over C{http} (whose pool its owner
    closes).
    """

    def __init__(self, http: HTTPClient, driver_url: str, session_id: str) -> None:
        self.http = http
        self.driver_url = driver_url
        self.session_id = session_id

    @classmethod
    async def create(cls, http: HTTPClient, driver: ChromeDriver) -> "Session":
        """
        Start a browser through C{driver}.
        """
        value = await _command(http, "POST", driver.url + "/session", driver.capabilities())
        return cls(http, driver.url, value["sessionId"])

    async def command(self, method: str, path: str, body: Optional[Mapping[str, Any]] = None) -> Any:
        """
        Send one command of this session; its C{value}.

        @raise WebDriverError: when the driver refuses it.
        """
        return await _command(self.http, method, f"{self.driver_url}/session/{self.session_id}{path}", body)

    async def navigate(self, url: str) -> None:
        """
        Load C{url} and wait for it to load.
        """
        await self.command("POST", "/url", {"url": url})

    async def find(self, css: str) -> Element:
        """
        The first element matching C{css}.
        """
        value = await self.command("POST", "/element", {"using": "css selector", "value": css})
        return Element(value[ELEMENT_KEY])

    async def find_all(self, css: str) -> List[Element]:
        """
        Every element matching C{css}.
        """
        values = await self.command("POST", "/elements", {"using": "css selector", "value": css})
        return [Element(value[ELEMENT_KEY]) for value in values]

    async def click(self, element: Element) -> None:
        """
        Click C{element}, as a user would.
        """
        await self.command("POST", f"/element/{element.id}/click", {})

    async def send_keys(self, element: Element, text: str) -> None:
        """
        Type C{text} into C{element}.
        """
        await self.command("POST", f"/element/{element.id}/value", {"text": text})

    async def clear(self, element: Element) -> None:
        """
        Empty the field C{element}.
        """
        await self.command("POST", f"/element/{element.id}/clear", {})

    async def text(self, element: Element) -> str:
        """
        The rendered text of C{element}.
        """
        return str(await self.command("GET", f"/element/{element.id}/text"))

    async def execute(self, script: str, *args: Any) -> Any:
        """
        Run C{script} (a function body) in the page with C{args}; what it
        returns.
        """
        return await self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    async def browser_log(self) -> List[Dict[str, Any]]:
        """
        The console messages and uncaught errors of the page since the
        last call (ChromeDriver's extension: C{level}, C{source},
        C{message}).
        """
        entries = await self.command("POST", "/se/log", {"type": "browser"})
        return list(entries or [])

    async def screenshot(self, path: str) -> None:
        """
        Save the viewport as a PNG file at C{path}.
        """
        data = await self.command("GET", "/screenshot")
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    async def delete(self) -> None:
        """
        End the session (the driver closes its browser).
        """
        await _command(self.http, "DELETE", f"{self.driver_url}/session/{self.session_id}", None)


async def _command(http: HTTPClient, method: str, url: str, body: Optional[Mapping[str, Any]]) -> Any:
    data = None if body is None else json.dumps(body).encode("utf-8")
    headers = Headers({b"Content-Type": [b"application/json; charset=utf-8"]}) if data is not None else None
    response = await http.request(method, url, data=data, headers=headers, timeout=60.0)
    answer = json.loads(await treq.content(response) or b"{}")
    value = answer.get("value")
    if response.code != 200:
        value = value or {}
        raise WebDriverError(str(value.get("error", response.code)), str(value.get("message", "")))
    return value


class SharedBrowser:
    """
    One browser shared by the tests of a class: the first test that asks
    starts ChromeDriver and a session, the cleanup of the last test of the
    class ends them (as L{tests.serverfixture.SharedServer} does for the
    server).  Each test speaks to it over a connection pool its own
    cleanup closes.
    """

    def __init__(self, test_class: type) -> None:
        self.remaining = len([name for name in dir(test_class) if name.startswith("test")])
        self.driver: Optional[ChromeDriver] = None
        self.session_id: Optional[str] = None

    async def get(self, testcase: TestCase) -> Session:
        """
        The session, for C{testcase}.
        """
        from twisted.internet import reactor

        testcase.addCleanup(self._release)
        pool = HTTPConnectionPool(reactor, persistent=True)
        testcase.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, pool=pool))
        if self.driver is None:
            driver = ChromeDriver(reactor, testcase.mktemp())
            self.driver = driver
            await driver.start()
            self.session_id = (await Session.create(http, driver)).session_id
        assert self.session_id is not None
        return Session(http, self.driver.url, self.session_id)

    async def _release(self) -> None:
        self.remaining -= 1
        if self.remaining > 0 or self.driver is None:
            return
        driver, self.driver = self.driver, None
        try:
            if self.session_id is not None:
                await self._end_session(driver)
        finally:
            await driver.stop()

    async def _end_session(self, driver: ChromeDriver) -> None:
        from twisted.internet import reactor

        pool = HTTPConnectionPool(reactor, persistent=False)
        try:
            await Session(HTTPClient(Agent(reactor, pool=pool)), driver.url, str(self.session_id)).delete()
        except (WebDriverError, OSError, defer.CancelledError):
            pass
        finally:
            self.session_id = None
            await pool.closeCachedConnections()
