# -*- test-case-name: tests.test_service,tests.test_integration -*-
"""
Composition of the server: every part is built here and handed its
dependencies, and started in this order: data
directory, store, capability probe, ledger, recovery, supervisor, loops,
then the listener.  Nothing listens before recovery has finished.

What start-up reaches beyond the reactor (threads, the store's pools, the
host probe, the supervisor) comes in as L{ServiceEdges}, so
C{tests.test_service} runs start-up and stop in memory.
"""

from __future__ import annotations

import functools
import os
import signal
import stat
import sys
import time
from typing import Any, Awaitable, Callable, Mapping, Optional

import attrs
from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from execgo import __version__
from execgo.control import (
    ChannelError,
    SupervisorSettings,
    inherited_env,
    prepare_run_dir,
    write_settings,
)
from execgo.core import errors
from execgo.core.capabilities import Capabilities, build_capabilities
from execgo.core.cluster import NodeInfo, NodeLease
from execgo.core.config import RuntimeConfig, parse_listen_addr
from execgo.core.databaseurl import STORE_RETRY_S, STORE_WAIT_S, DatabaseUrl
from execgo.core.hostfacts import HostFacts
from execgo.core.ledger import Ledger
from execgo.core.quotas import parse_tenant_quotas
from execgo.core.timestamps import format_ns
from execgo.host.cgroups import Cgroups
from execgo.host.privileges import PASSAGE_MODE, open_passage, resolve_identity
from execgo.host.probe import probe_host
from execgo.server.budget import ByteBudget
from execgo.server.database import Store, open_pool
from execgo.server.link import SupervisorLink, supervisor_command
from execgo.server.notices import NoticeListener
from execgo.server.runtime import Runtime
from execgo.server.scheduler import Scheduler
from execgo.server.web.api import RuntimeAPI
from execgo.server.web.auth import Tokens, read_tokens
from execgo.server.web.listener import (
    Listener,
    derive_max_connections,
    raise_descriptor_limit,
)
from execgo.server.web.site import APISite
from execgo.store import nodes, notices, postgres

log = Logger()

DRAIN_TIMEOUT_S = 10.0
#: The preview budget, in ceilings: what large previews read at once may
#: add up to (one task's two logs at the ceiling fill it).
PREVIEW_BUDGET_CEILINGS = 2
#: Connections the kernel queues for accepting (it caps this at
#: C{net.core.somaxconn}).
LISTEN_BACKLOG = 1024


def wall_ms() -> int:
    """
    Wall-clock time in epoch milliseconds.
    """
    return time.time_ns() // 1_000_000


def prepare_data_dir(data_dir: str) -> None:
    """
    Create C{<data_dir>} and C{<data_dir>/tasks}, give both mode 0711
    (tasks pass through them to their own workspace; nobody but the
    runtime can list or read them), and prove them writable by writing a
    probe file (blocking; run in a thread).

    @raise OSError: when the directory cannot be used.
    """
    tasks = os.path.join(data_dir, "tasks")
    os.makedirs(tasks, exist_ok=True)
    for directory in (data_dir, tasks):
        os.chmod(directory, PASSAGE_MODE)
    probe = os.path.join(tasks, f".execgo-runtime-probe-{os.getpid()}")
    with open(probe, "w") as out:
        out.write("probe")
    os.unlink(probe)


def listen_description(listen_addr: str) -> str:
    """
    The Twisted endpoint string for C{HOST:PORT}, with a listen backlog
    of L{LISTEN_BACKLOG} (Twisted's 50 makes a burst of connections wait
    a second for SYN retransmits, cap or no cap).
    """
    host, port = parse_listen_addr(listen_addr)
    escaped = host.replace(":", "\\:")
    if ":" in host:
        return f"tcp6:port={port}:interface={escaped}:backlog={LISTEN_BACKLOG}"
    return f"tcp:port={port}:interface={escaped}:backlog={LISTEN_BACKLOG}"


def private_token_file(path: str) -> Optional[int]:
    """
    Make the token file readable by its owner alone when it is not (a
    task must never read it); blocking.

    @return: the mode it had when it was changed, else C{None}.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077 and os.stat(path).st_uid == os.geteuid():
        os.chmod(path, mode & 0o700)
        return mode
    return None


def private_store(database: str) -> None:
    """
    The store and its WAL side files: the runtime's alone (mode 0600).
    """
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(database + suffix, 0o600)
        except FileNotFoundError:
            pass


def supervisor_link(reactor: Any, database: DatabaseUrl, data_dir: str) -> SupervisorLink:
    """
    The link to the supervisor of C{data_dir}, which it starts with
    L{supervisor_command} when none answers: told the store's location on
    its command line, its password (if any) in its environment.
    """
    command = supervisor_command(database.without_password, data_dir)
    return SupervisorLink(
        reactor, data_dir, command, secret_env=database.secret_env(), store=database.without_password
    )


@attrs.frozen
class ServiceEdges:
    """
    What start-up reaches beyond the reactor and the data directory: the
    thread blocking calls run in, the store's connection pools, the host
    probe and the supervisor.  Tests replace them to run start-up and
    stop in memory.

    @ivar in_thread: runs a blocking call off the reactor thread
        (C{deferToThread}'s signature).
    @ivar open_pool: C{(reactor, database, connections)}: a connection
        pool on the store at a L{DatabaseUrl} (L{open_pool}).
    @ivar probe_host: what the host offers (L{probe_host}); blocking.
    @ivar make_link: C{(reactor, database, data_dir)}: the supervisor link
        (L{supervisor_link}).
    """

    in_thread: Callable[..., "defer.Deferred[Any]"] = deferToThread
    open_pool: Callable[[Any, DatabaseUrl, int], Any] = open_pool
    probe_host: Callable[..., HostFacts] = probe_host
    make_link: Callable[[Any, DatabaseUrl, str], SupervisorLink] = supervisor_link


class RuntimeService(service.Service):
    """
    The whole server as one Twisted service.

    @param reactor: the reactor everything is built on.
    @param environ: the environment (runtime id, probing, workloads).
    @param descriptor_limit: raises this process's descriptor limit as far
        as it goes and returns it (L{raise_descriptor_limit}); the
        connection cap is derived from it.
    @param edges: the blocking calls, pools, probe and supervisor link
        start-up uses.
    @ivar started: fires once the server listens (or fails to start).
    """

    # Twisted's Service declares name as a bare None (no annotation), so
    # mypy takes None for its type; IService documents a str (or None).
    name = "execgo"  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        config: RuntimeConfig,
        environ: Mapping[str, str],
        descriptor_limit: Callable[[], int] = raise_descriptor_limit,
        edges: ServiceEdges = ServiceEdges(),
    ) -> None:
        self.reactor = reactor
        self.descriptor_limit = descriptor_limit
        self.edges = edges
        self.config = config
        self.environ = dict(environ)
        self.quotas = parse_tenant_quotas(config.tenant_quotas)
        parse_listen_addr(config.listen_addr)
        self.identity = resolve_identity(config.task_uid_range, config.task_user, os.geteuid(), os.getegid())
        if self.identity.size < config.max_running_tasks:
            raise errors.InvalidInput(
                f"task uid range {config.task_uid_range} holds {self.identity.size} uids,"
                f" fewer than --max-running-tasks {config.max_running_tasks}"
            )
        self.runtime: Optional[Runtime] = None
        self.site: Optional[APISite] = None
        self.tokens: Optional[Tokens] = None
        self.port: Any = None
        self.listener: Optional[Listener] = None
        self.started: defer.Deferred[Any] = defer.Deferred()
        self._store: Optional[Store] = None
        self._link: Optional[SupervisorLink] = None
        self._scheduler: Optional[Scheduler] = None
        self._listener: Optional[NoticeListener] = None

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._begin)

    def _begin(self) -> None:
        d = defer.ensureDeferred(self.start())
        d.addCallbacks(self.started.callback, self.started.errback)

    async def start(self) -> Any:
        """
        Bring the server up, in order: tokens, data directory, store,
        capability probe, supervisor settings, the runtime's parts,
        recovery, the supervisor, the loops, then the listener; returns
        the listening port.
        """
        self.config = config = self._limit_connections(self.config)
        # Whatever the server creates is private unless it says otherwise.
        os.umask(0o077)
        if config.auth_token_file is not None:
            await self._load_tokens(config.auth_token_file)
        await self._prepare_directories(config.data_dir_abs)
        self._store = store = await self._open_store(config)
        runtime_id = config.effective_runtime_id(self.environ)
        capabilities = await self._probe(config, runtime_id)
        lease = await self._join(store, config, runtime_id, capabilities)
        cgroups = None
        if not config.disable_cgroup:
            cgroups = await self.edges.in_thread(Cgroups.try_detect, config.cgroup_root)
        await self.edges.in_thread(write_settings, config.data_dir_abs, self._supervisor_settings(config, lease))
        self._link = link = self.edges.make_link(self.reactor, config.database, config.data_dir_abs)
        self._scheduler = scheduler = Scheduler(
            self.reactor,
            store,
            link,
            Ledger(capabilities.capacity, self.quotas),
            config.max_queued_tasks,
            config.dispatch_poll_interval_ms / 1000.0,
            wall_ms,
            labels=config.labels,
            node_id=runtime_id,
        )
        self.runtime = runtime = Runtime(
            reactor=self.reactor,
            config=config,
            runtime_id=runtime_id,
            capabilities=capabilities,
            quotas=self.quotas,
            store=store,
            scheduler=scheduler,
            link=link,
            now_ms=wall_ms,
            started_at=format_ns(time.time_ns()),
            version=__version__,
            cgroups=cgroups,
            identity=self.identity,
        )
        link.listen(runtime)
        if config.database.is_postgres:
            # Before recovery reads the store: what commits after is heard.
            self._listener = self._notice_listener(config.database, runtime)
            await self._listener.start()
        await self._patiently(runtime.recover, config.database)
        await link.ensure()
        runtime.accepting = True
        scheduler.start()
        runtime.start_gc()
        self.port = await self._listen(runtime)
        log.info(
            "listening on {listen_addr}",
            listen_addr=config.listen_addr,
            runtime_id=runtime_id,
            max_connections=config.max_connections,
        )
        return self.port

    def _notice_listener(self, database: DatabaseUrl, runtime: Runtime) -> NoticeListener:
        """
        What hears the other nodes of the cluster (L{NoticeListener}) and
        tells the runtime.
        """
        connect = functools.partial(postgres.listen, database.connect_url, database.password, notices.CHANNEL)
        return NoticeListener(self.reactor, connect, self.edges.in_thread, runtime.on_notice, runtime.resync)

    async def _load_tokens(self, path: str) -> None:
        """
        Read the token file, re-read it on SIGHUP, and make it private when
        tasks run under other uids.
        """
        self.tokens = Tokens(await self.edges.in_thread(read_tokens, path))
        self._install_reload()
        if self.identity.drops:
            was = await self.edges.in_thread(private_token_file, path)
            if was is not None:
                log.warn(
                    "token file {path} was mode {mode}: made it readable by its owner alone",
                    path=path,
                    mode=oct(was),
                )

    async def _prepare_directories(self, data_dir: str) -> None:
        """
        Create and check the data directory and the supervisor's run
        directory; open the way to it for tasks under other uids.
        """
        try:
            await self.edges.in_thread(prepare_data_dir, data_dir)
            await self.edges.in_thread(prepare_run_dir, data_dir)
            if self.identity.drops:
                opened, closed = await self.edges.in_thread(open_passage, data_dir)
        except (OSError, ChannelError) as e:
            raise errors.Internal(f"io error: cannot use data directory {data_dir}: {e}") from None
        if self.identity.drops:
            for directory in opened:
                log.warn("made {directory} passable (o+x) so tasks reach their workspace", directory=directory)
            for directory in closed:
                log.warn(
                    "tasks cannot pass through {directory}: they will not reach their workspace"
                    " or script by absolute path (give it o+x or move the data directory)",
                    directory=directory,
                )

    async def _open_store(self, config: RuntimeConfig) -> Store:
        """
        Open the store (a writer pool and a reader pool), create or
        upgrade its schema, and make its files private.
        """
        database = config.database
        store = Store(
            self.edges.open_pool(self.reactor, database, 1),
            self.edges.open_pool(self.reactor, database, 2),
            reader_lanes=2,
            preview_ceiling=config.max_output_preview_bytes,
            budget=ByteBudget(PREVIEW_BUDGET_CEILINGS * config.max_output_preview_bytes),
        )
        try:
            await self._patiently(store.init_schema, database)
            if not database.is_postgres:
                await self.edges.in_thread(private_store, database.without_password)
        except Exception as e:
            store.close()
            kind = "database" if database.is_postgres else "sqlite"
            raise errors.Internal(f"{kind} error: cannot open {database.redacted}: {e}") from None
        log.info("task store: {database}", database=database.redacted)
        if database.password is not None and any(database.password in arg for arg in sys.argv):
            log.warn(
                "the store's password is on this server's command line, which every local user can read:"
                " give the URL in EXECGO_RUNTIME_DATABASE_URL and the password in PGPASSWORD or ~/.pgpass"
            )
        return store

    async def _patiently(self, step: Callable[[], Awaitable[Any]], database: DatabaseUrl) -> Any:
        """
        Run a start-up step that needs the store.  A database server that
        cannot be reached (not started yet, restarting) is tried again
        every L{STORE_RETRY_S} for up to L{STORE_WAIT_S}: a runtime
        started with (or just before) its database, or restarted while it
        restarts, waits for it.  One that refuses for good (no such role or
        database, a wrong password) fails at once.
        """
        deadline = self.reactor.seconds() + STORE_WAIT_S
        while True:
            try:
                return await step()
            except Exception as e:
                waiting = database.is_postgres and errors.from_storage(e).http_status == 503
                if not waiting or self.reactor.seconds() >= deadline:
                    raise
                log.warn(
                    "task store {database} not reachable, trying again in {seconds} s: {error}",
                    database=database.redacted,
                    seconds=STORE_RETRY_S,
                    error=str(e),
                )
            await deferLater(self.reactor, STORE_RETRY_S, lambda: None)

    async def _probe(self, config: RuntimeConfig, runtime_id: str) -> Capabilities:
        """
        Probe the host and take the capability snapshot.
        """
        facts = await self.edges.in_thread(
            self.edges.probe_host,
            config.data_dir_abs,
            config.cgroup_root,
            config.disable_cgroup,
            config.disable_linux_sandbox,
        )
        return build_capabilities(
            facts,
            runtime_id=runtime_id,
            collected_at=format_ns(time.time_ns()),
            max_running_tasks=config.max_running_tasks,
            capacity_memory_bytes=config.capacity_memory_bytes,
            capacity_pids=config.capacity_pids,
            disable_cgroup=config.disable_cgroup,
            disable_linux_sandbox=config.disable_linux_sandbox,
            data_dir=config.data_dir,
            cgroup_root=config.cgroup_root,
            privilege_drop=self.identity.drops,
        )

    async def _join(
        self, store: Store, config: RuntimeConfig, runtime_id: str, capabilities: Capabilities
    ) -> NodeLease:
        """
        Join the cluster that shares the store as node C{runtime_id}
        (L{nodes.join}): refused when another live node holds the id.
        The lease is the supervisor's to hold; this is what it is told.
        """
        store.node_id = runtime_id
        instance = await self.edges.in_thread(nodes.node_instance, config.data_dir_abs)
        node = NodeInfo(
            node_id=runtime_id,
            instance=instance,
            advertise_url=config.effective_advertise_url,
            labels=config.labels,
            capacity=capabilities.capacity,
        )
        await self._patiently(lambda: store.join_node(node, config.node_lease_ms, wall_ms()), config.database)
        return NodeLease(runtime_id, instance, config.node_lease_ms)

    def _supervisor_settings(self, config: RuntimeConfig, lease: Optional[NodeLease] = None) -> SupervisorSettings:
        """
        What the supervisor reads at start: the settings it shares with
        the server, and the node whose lease it holds.
        """
        return SupervisorSettings(
            grace_ms=config.termination_grace_ms,
            env=inherited_env(self.environ),
            cgroup_root=config.cgroup_root,
            identity=self.identity,
            rootfs_roots=config.rootfs_roots_abs,
            max_output_preview_bytes=config.max_output_preview_bytes,
            node=lease,
            quotas=self.quotas,
            max_running_tasks=config.max_running_tasks or None,
        )

    async def _listen(self, runtime: Runtime) -> Any:
        """
        Serve the API on C{--listen-addr}: the site, the listener that
        bounds its connections, the port.
        """
        config = self.config
        idle_ms = config.idle_connection_timeout_ms
        self.site = site = APISite(
            RuntimeAPI(runtime, self.tokens).resource(),
            reactor=self.reactor,
            timeout=idle_ms / 1000.0 if idle_ms else None,
        )
        site.displayTracebacks = False
        header_ms = config.request_header_timeout_ms
        self.listener = Listener(site, header_ms / 1000.0 if header_ms else None, config.max_connections)
        endpoint = endpoints.serverFromString(self.reactor, listen_description(config.listen_addr))
        try:
            return await endpoint.listen(self.listener)
        except Exception as e:
            runtime.accepting = False
            raise errors.Internal(f"io error: cannot listen on {config.listen_addr}: {e}") from None

    def _limit_connections(self, config: RuntimeConfig) -> RuntimeConfig:
        """
        Raise the descriptor limit and fix the connection cap below it:
        the configuration with the cap in force (C{/runtime/config} shows
        it).
        """
        limit = self.descriptor_limit()
        cap = derive_max_connections(limit, config.max_connections)
        if config.max_connections and cap < config.max_connections:
            log.warn(
                "--max-connections {wanted} is too close to the descriptor limit {limit}: using {cap}",
                wanted=config.max_connections,
                limit=limit,
                cap=cap,
            )
        return attrs.evolve(config, max_connections=cap)

    def _install_reload(self) -> None:
        """
        Re-read the token file on SIGHUP (the handler only schedules the
        read; the read runs in a thread).
        """

        def on_hup(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reload_tokens)

        signal.signal(signal.SIGHUP, on_hup)

    def reload_tokens(self) -> "defer.Deferred[None]":
        """
        Replace the tokens with the file's current content; a file that
        cannot be read or parsed leaves the tokens in force.
        """
        if self.tokens is None or self.config.auth_token_file is None:
            return defer.succeed(None)
        tokens = self.tokens

        def loaded(table: Any) -> None:
            tokens.tokens = dict(table)
            log.info("token file reloaded", tokens=len(table))

        def failed(failure: Any) -> None:
            log.warn("token file not reloaded", error=str(failure.value))

        d = self.edges.in_thread(read_tokens, self.config.auth_token_file)
        return d.addCallbacks(loaded, failed)

    async def _drain_requests(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """
        Let requests in flight finish (new submissions get 503 meanwhile)
        and their answers leave, for at most C{timeout_s}: wait on each
        request's own C{notifyFinish}, again while a kept-alive connection
        brings another, then close the connections, which sends what they
        still buffer.
        """
        if self.site is None or self.listener is None:
            return
        deadline = self.reactor.seconds() + timeout_s
        # A cancelled wait on several requests fires with their results
        # rather than an error, so the deadline is checked, not caught.
        while self.site.inflight and self.reactor.seconds() < deadline:
            await self.site.settled().addTimeout(deadline - self.reactor.seconds(), self.reactor)
        try:
            if self.reactor.seconds() >= deadline:
                raise defer.TimeoutError()
            await self.listener.close_all().addTimeout(deadline - self.reactor.seconds(), self.reactor)
        except defer.TimeoutError:
            log.warn("stopping with requests or answers still in flight after {timeout_s} s", timeout_s=timeout_s)

    def stopService(self) -> "defer.Deferred[None]":
        """
        Stop accepting, stop the loops, drop the supervisor connection
        (running tasks keep running and are recovered on the next start)
        and close the store.
        """
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.runtime is not None:
            self.runtime.accepting = False
            self.runtime.stop_timers()
        if self.port is not None:
            # IListeningPort.stopListening may or may not return a Deferred.
            await defer.maybeDeferred(self.port.stopListening)
            self.port = None
        await self._drain_requests()
        if self._listener is not None:
            self._listener.stop()
        if self._scheduler is not None:
            await self._scheduler.stop()
        if self._link is not None:
            await self._link.close(leave=True)
        if self._store is not None:
            self._store.close()
            self._store = None
