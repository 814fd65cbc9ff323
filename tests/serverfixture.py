# -*- test-case-name: tests.test_integration -*-
"""
The real execgo server as a child process, for integration tests.

L{ServerProcess} starts C{python -m execgo serve} (or C{twistd -n execgo
serve}) exactly as a user would, on a free port and a data directory of
the test's choosing, waits for C{/healthz}, and stops it with SIGTERM, then
SIGKILL, or crashes it with SIGKILL.  The child's standard output and error
go to a log file next to the data directory (no pipes), so a server can
outlive one test without leaving anything in the reactor that trial's
janitor would complain about; L{SharedServer} uses that to share one server
between the tests of a class.

L{ApiClient} is a treq client with its own connection pool, closed by the
test that made it.  L{kill_leftovers} finds and removes what a data
directory may leave behind: its supervisor (C{cmdline} names the data
directory) and its workloads (their working directory is inside it).
L{task_cgroup_dirs} finds the per-task cgroups a task left.

Waiting is done with C{deferLater}, never by sleeping; the only blocking
work is reading small C{/proc} files.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import signal
import socket
import sqlite3
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet import defer, protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from execgo.host.procinfo import supervisor_pids, workload_pids
from execgo.store import opening

SERVE_COMMAND: Tuple[str, ...] = (sys.executable, "-m", "execgo", "serve")


def twistd_command() -> Tuple[str, ...]:
    """
    The argv prefix that runs C{twistd -n execgo serve}: the C{twistd}
    script installed next to C{sys.executable}, else Twisted's entry point
    run through C{-c}.  No pid file is written.
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        prefix: Tuple[str, ...] = (sys.executable, script)
    else:
        prefix = (sys.executable, "-c", "from twisted.scripts.twistd import run; run()")
    return prefix + ("-n", "--pidfile=", "execgo", "serve")


def repository_root() -> str:
    """
    The directory that holds the C{execgo} package under test (and the
    C{twisted/plugins} dropin next to it).
    """
    import execgo

    return os.path.dirname(os.path.dirname(os.path.abspath(execgo.__file__)))


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environ(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """
    This process's environment without any C{EXECGO_RUNTIME_*} variable
    or C{RUST_LOG} (so the caller's shell cannot change what a test sees),
    plus C{extra}.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECGO_RUNTIME_")}
    env.pop("RUST_LOG", None)
    env.update(extra or {})
    return env


def sleep(reactor: Any, seconds: float) -> "defer.Deferred[None]":
    """
    A Deferred that fires after C{seconds} (never C{time.sleep}).
    """
    return deferLater(reactor, seconds, lambda: None)


async def poll(
    reactor: Any,
    check: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """
    Call C{check} (plain or async) until it returns something true, and
    return that; fail after C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if reactor.seconds() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await sleep(reactor, interval)


# Processes


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def process_state(pid: int) -> Optional[str]:
    """
    The one-letter state of C{pid} (C{R}, C{S}, C{Z}, ...), or C{None}
    when there is no such process.
    """
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:
        return stat.rsplit(b")", 1)[1].split()[0].decode("ascii")
    except IndexError:
        return None


def process_alive(pid: int) -> bool:
    """
    Whether C{pid} is a live process (a zombie is dead: this host's PID 1
    never reaps, so zombies of orphans may linger).
    """
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def process_exists(pid: int) -> bool:
    """
    Whether C{/proc/<pid>} exists at all, zombies included.
    """
    return process_state(pid) is not None


def sigkill(pids: Sequence[int]) -> None:
    """
    SIGKILL each of C{pids}, ignoring those already gone.
    """
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def kill_leftovers_now(data_dir: str, supervisors: bool = True) -> List[int]:
    """
    SIGKILL the workloads of C{data_dir} and (with C{supervisors}) its
    supervisors, synchronously (also usable from C{atexit}).

    @return: the workload pids signalled (supervisors are expected to
        outlive their server for a while, workloads are not).
    """
    killed: List[int] = []
    for _ in range(3):
        workloads = workload_pids(data_dir)
        pids = workloads + (supervisor_pids(data_dir) if supervisors else [])
        if not pids:
            break
        sigkill(pids)
        killed.extend(pid for pid in workloads if pid not in killed)
    return killed


async def kill_leftovers(reactor: Any, data_dir: str, supervisors: bool = True) -> List[int]:
    """
    SIGKILL whatever of C{data_dir} still runs and wait until it is gone.

    @return: the workload pids that had to be killed.
    """
    killed = kill_leftovers_now(data_dir, supervisors)

    def gone() -> bool:
        left = workload_pids(data_dir)
        if supervisors:
            left += supervisor_pids(data_dir)
        sigkill(left)
        return not left

    await poll(reactor, gone, timeout=5.0, what=f"processes of {data_dir} to die")
    return killed


CGROUP_FS = "/sys/fs/cgroup"
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup/execgo-runtime"


def task_cgroup_dirs(task_id: str, cgroup_root: str = DEFAULT_CGROUP_ROOT) -> List[str]:
    """
    The per-task cgroup directories of C{task_id} that exist: C{<cgroup
    root>/<task_id>} itself (cgroup v2) and the same relative path under
    every v1 hierarchy (and the hybrid C{unified} tree) of L{CGROUP_FS}.
    """
    rel = os.path.relpath(cgroup_root, CGROUP_FS)
    candidates = [os.path.join(cgroup_root, task_id)]
    if not rel.startswith(".."):
        try:
            hierarchies = sorted(os.listdir(CGROUP_FS))
        except OSError:
            hierarchies = []
        for hierarchy in hierarchies:
            candidates.append(os.path.join(CGROUP_FS, hierarchy, rel, task_id))
    return [path for path in candidates if os.path.isdir(path)]


def remove_task_cgroups(task_id: str, cgroup_root: str = DEFAULT_CGROUP_ROOT) -> List[str]:
    """
    Remove the (empty) per-task cgroup directories a task left behind, so
    a test that finds a leak does not leave it on the host.

    @return: the directories that were there.
    """
    found = task_cgroup_dirs(task_id, cgroup_root)
    for path in found:
        try:
            os.rmdir(path)
        except OSError:
            pass
    return found


# HTTP


@attrs.frozen
class Reply:
    """
    One HTTP response: status, lower-cased headers, body.
    """

    code: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """
        The body parsed as JSON.
        """
        return json.loads(self.body)


class ApiClient:
    """
    A treq client for one server, with its own connection pool.

    @param base_url: e.g. C{http://127.0.0.1:8080}.
    """

    def __init__(self, reactor: Any, base_url: str) -> None:
        self.reactor = reactor
        self.base_url = base_url
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 4
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    async def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        json_body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: float = 15.0,
    ) -> Reply:
        """
        Send one request and read the whole response.  C{json_body} is
        sent as compact JSON with C{Content-Type: application/json}.
        """
        sent_headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            sent_headers.setdefault("Content-Type", "application/json")
        response = await self.http.request(
            method,
            self.base_url + path,
            data=body,
            headers={k.encode("latin-1"): [v.encode("latin-1")] for k, v in sent_headers.items()},
            timeout=timeout,
        )
        content = await treq.content(response)
        received = {
            name.decode("latin-1").lower(): b", ".join(values).decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        return Reply(response.code, received, content)

    async def get(self, path: str) -> Reply:
        """
        C{GET path}.
        """
        return await self.request("GET", path)

    async def post(self, path: str, json_body: Any = None, **kwargs: Any) -> Reply:
        """
        C{POST path} with an optional JSON body.
        """
        return await self.request("POST", path, json_body=json_body, **kwargs)

    def close(self) -> "defer.Deferred[None]":
        """
        Close every pooled connection.
        """
        return self.pool.closeCachedConnections()


# The server process


class _Exit(protocol.ProcessProtocol):
    """
    Fires L{ended} with the child's exit status (code or signal); the
    child has no pipes to us.
    """

    def __init__(self) -> None:
        self.ended: defer.Deferred[Tuple[Optional[int], Optional[int]]] = defer.Deferred()
        self.status: Optional[Tuple[Optional[int], Optional[int]]] = None

    def processEnded(self, reason: Failure) -> None:
        self.status = (
            getattr(reason.value, "exitCode", None),
            getattr(reason.value, "signal", None),
        )
        self.ended.callback(self.status)


class ServerStartError(Exception):
    """
    The server exited, or did not answer C{/healthz} in time.
    """


_LIVE: Set["ServerProcess"] = set()


class ServerProcess:
    """
    One real server: C{<command> --listen-addr 127.0.0.1:<port> --data-dir
    <data_dir> <args...>}.

    @param data_dir: passed verbatim (a relative path stays relative); the
        child runs in this process's working directory unless C{cwd} is given.
    @param command: the argv prefix, L{SERVE_COMMAND} by default.
    @param env: the child's whole environment (default L{clean_environ}).
    """

    def __init__(
        self,
        reactor: Any,
        data_dir: str,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        command: Sequence[str] = SERVE_COMMAND,
        cwd: Optional[str] = None,
    ) -> None:
        self.reactor = reactor
        self.data_dir = data_dir
        self.args = list(args)
        self.env = dict(clean_environ() if env is None else env)
        self.command = list(command)
        self.cwd = cwd
        self.log_path = os.path.abspath(data_dir.rstrip("/") + ".server.log")
        self.port: Optional[int] = None
        self.pid: Optional[int] = None
        self._exit: Optional[_Exit] = None
        self.starts = 0

    @property
    def url(self) -> str:
        """
        C{http://127.0.0.1:<port>}.
        """
        return f"http://127.0.0.1:{self.port}"

    @property
    def listen_addr(self) -> str:
        """
        The C{--listen-addr} value, C{127.0.0.1:<port>}.
        """
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """
        Whether the server process has been started and not yet ended.
        """
        return self._exit is not None and self._exit.status is None

    def log_text(self) -> str:
        """
        Everything the server (all its runs) wrote on stdout and stderr.
        """
        data = _read(self.log_path) or b""
        return data.decode("utf-8", "replace")

    def store_reader(self) -> Any:
        """
        A connection that reads the server's store: its C{--database-url}
        when given, else C{runtime.db} in its data directory, read-only.
        """
        if "--database-url" in self.args:
            return opening.connect(self.args[self.args.index("--database-url") + 1])
        database = os.path.join(os.path.abspath(self.data_dir), "runtime.db")
        return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)

    def argv(self) -> List[str]:
        """
        The server's command line for the current port.
        """
        return [
            *self.command,
            "--listen-addr",
            self.listen_addr,
            "--data-dir",
            self.data_dir,
            *self.args,
        ]

    def _spawn(self) -> _Exit:
        exit_protocol = _Exit()
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            argv = self.argv()
            transport = self.reactor.spawnProcess(
                exit_protocol,
                argv[0],
                argv,
                env=self.env,
                path=self.cwd,
                childFDs={0: null, 1: log, 2: log},
            )
        finally:
            os.close(null)
            os.close(log)
        self.pid = transport.pid
        self._exit = exit_protocol
        return exit_protocol

    async def start(self, timeout: float = 20.0, keep_port: bool = False) -> "ServerProcess":
        """
        Start the server and wait until C{/healthz} answers 200.

        @param keep_port: reuse the previous port (a restart); otherwise a
            free port is picked (and re-picked if binding it fails).
        @raise ServerStartError: with the server's output when it exits.
        """
        attempts = 1 if keep_port and self.port is not None else 3
        for attempt in range(attempts):
            if not (keep_port and self.port is not None):
                self.port = free_port()
            offset = len(self.log_text().encode("utf-8"))
            exit_protocol = self._spawn()
            _LIVE.add(self)
            self.starts += 1
            client = ApiClient(self.reactor, self.url)
            try:
                deadline = self.reactor.seconds() + timeout
                while exit_protocol.status is None:
                    try:
                        reply = await client.request("GET", "/healthz", timeout=2.0)
                        if reply.code == 200:
                            return self
                    except Exception:
                        pass
                    if self.reactor.seconds() >= deadline:
                        await self.stop()
                        raise ServerStartError(f"no /healthz after {timeout}s:\n{self.log_text()}")
                    await sleep(self.reactor, 0.05)
            finally:
                await client.close()
            _LIVE.discard(self)
            output = (_read(self.log_path) or b"")[offset:].decode("utf-8", "replace")
            if "cannot listen" not in output or attempt == attempts - 1:
                raise ServerStartError(
                    f"server exited with {exit_protocol.status} during start-up:\n{output}"
                )
        raise ServerStartError("unreachable")

    async def _wait_exit(self, seconds: float) -> bool:
        exit_protocol = self._exit
        if exit_protocol is None:
            return True
        deadline = self.reactor.seconds() + seconds
        while exit_protocol.status is None and self.reactor.seconds() < deadline:
            await sleep(self.reactor, 0.01)
        return exit_protocol.status is not None

    def _signal(self, signum: int) -> None:
        if self.running and self.pid is not None:
            try:
                os.kill(self.pid, signum)
            except OSError:
                pass

    async def stop(self, grace: float = 5.0) -> Optional[Tuple[Optional[int], Optional[int]]]:
        """
        SIGTERM, then SIGKILL after C{grace} seconds; wait for the exit.

        @return: C{(exit code, signal)} of the process, or C{None} if it
            was never started.
        """
        if self._exit is None:
            return None
        if self._exit.status is None:
            self._signal(signal.SIGTERM)
            if not await self._wait_exit(grace):
                self._signal(signal.SIGKILL)
                await self._exit.ended
        _LIVE.discard(self)
        return self._exit.status

    async def crash(self) -> None:
        """
        C{kill -9} the server and wait until it is gone.
        """
        if self._exit is not None and self._exit.status is None:
            self._signal(signal.SIGKILL)
            await self._exit.ended
        _LIVE.discard(self)

    async def shutdown(self) -> None:
        """
        Stop the server and remove every process of its data directory.

        @raise AssertionError: when a workload was still running (every
            test ends its tasks).
        """
        await self.stop()
        killed = await kill_leftovers(self.reactor, self.data_dir)
        if killed:
            raise AssertionError(f"workloads of {self.data_dir} were left running: {killed}")

    def client(self, testcase: TestCase) -> ApiClient:
        """
        An L{ApiClient} for this server whose pool C{testcase} closes.
        """
        api = ApiClient(self.reactor, self.url)
        testcase.addCleanup(api.close)
        return api


def _kill_everything_at_exit() -> None:
    for server in list(_LIVE):
        if server.pid is not None and server.running:
            try:
                os.kill(server.pid, signal.SIGKILL)
            except OSError:
                pass
        kill_leftovers_now(server.data_dir)


atexit.register(_kill_everything_at_exit)


async def token_server(testcase: TestCase, tokens: str, args: Sequence[str] = ()) -> ServerProcess:
    """
    A server started for C{testcase} with C{--auth-token-file} holding
    C{tokens} (and C{args}); stopped by the test's cleanup.
    """
    from twisted.internet import reactor

    base = os.path.abspath(testcase.mktemp())
    os.makedirs(base)
    token_file = os.path.join(base, "tokens")
    with open(token_file, "w") as f:
        f.write(tokens)
    os.chmod(token_file, 0o600)
    server = ServerProcess(reactor, os.path.join(base, "data"), [*args, "--auth-token-file", token_file])
    await server.start()
    testcase.addCleanup(lambda: defer.ensureDeferred(server.shutdown()))
    return server


class SharedServer:
    """
    One server shared by the tests of a class: the first test that asks
    starts it, the cleanup of the last test of the class stops it and kills
    whatever its data directory left.  Each test's own cleanup kills the
    workloads its tasks left behind.  (If only some tests of the class run,
    the server is killed when the test process exits.)

    A class run once per store backend (L{tests.backends.each}) shares one
    server per backend, its store on that backend.

    @param test_class: the L{TestCase} subclass whose tests share it.
    @param args: extra C{serve} arguments.
    @param env: extra environment variables for the server.
    """

    def __init__(
        self,
        test_class: type,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.tests = len([name for name in dir(test_class) if name.startswith("test")])
        self.args = list(args)
        self.env = dict(env or {})
        self.remaining: Dict[str, int] = {}
        self.servers: Dict[str, ServerProcess] = {}

    async def get(self, testcase: TestCase) -> ServerProcess:
        """
        The running shared server of the test's backend (started with a
        data directory from C{testcase.mktemp()} the first time).
        """
        from twisted.internet import reactor

        backend = getattr(testcase, "backend", None)
        key = "sqlite" if backend is None else backend.name
        self.remaining.setdefault(key, self.tests)
        testcase.addCleanup(self._release, reactor, key)
        if key not in self.servers:
            store = [] if backend is None else backend.server_args(testcase, keep=True)
            server = ServerProcess(
                reactor, testcase.mktemp(), self.args + store, env=clean_environ(self.env)
            )
            self.servers[key] = server
            try:
                await server.start()
            except BaseException:
                del self.servers[key]
                raise
        return self.servers[key]

    async def _release(self, reactor: Any, key: str) -> None:
        self.remaining[key] -= 1
        server = self.servers.get(key)
        if server is None:
            return
        if self.remaining[key] <= 0:
            del self.servers[key]
            await server.shutdown()
            return
        killed = await kill_leftovers(reactor, server.data_dir, supervisors=False)
        if killed:
            raise AssertionError(f"workloads of {server.data_dir} were left running: {killed}")


class _Collect(protocol.ProcessProtocol):
    """
    Collect a short-lived child's output and exit status.
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[Tuple[Optional[int], Optional[int]]] = defer.Deferred()
        self.status: Optional[Tuple[Optional[int], Optional[int]]] = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        (self.out if childFD == 1 else self.err).extend(data[: 1 << 20])

    def processEnded(self, reason: Failure) -> None:
        self.status = (
            getattr(reason.value, "exitCode", None),
            getattr(reason.value, "signal", None),
        )
        self.ended.callback(self.status)


async def run_process(
    reactor: Any,
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout: float = 20.0,
    cwd: Optional[str] = None,
) -> Tuple[str, str, Optional[int]]:
    """
    Run a command that is expected to exit by itself (e.g. a C{serve} that
    must refuse to start); SIGKILL it and fail after C{timeout} seconds.

    @return: C{(stdout, stderr, exit code)}.
    """
    collect = _Collect()
    transport = reactor.spawnProcess(collect, argv[0], list(argv), env=dict(env), path=cwd)
    deadline = reactor.seconds() + timeout
    while collect.status is None and reactor.seconds() < deadline:
        await sleep(reactor, 0.02)
    if collect.status is None:
        try:
            transport.signalProcess("KILL")
        except Exception:
            pass
        await collect.ended
        raise AssertionError(f"{argv!r} did not exit within {timeout}s")
    return (
        collect.out.decode("utf-8", "replace"),
        collect.err.decode("utf-8", "replace"),
        collect.status[0],
    )
