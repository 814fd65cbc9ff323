"""
A throwaway PostgreSQL cluster for the tests that need one: C{initdb} and
C{pg_ctl} in a temporary directory, listening on a free loopback port and
on a socket in that directory, from the host's binaries (the highest
version under C{/usr/lib/postgresql/*/bin}, as Debian installs them, or
C{$EXECGO_TEST_PG_BIN}).

C{initdb} refuses to run as root, so as root the cluster belongs to the
C{postgres} account (C{runuser -u postgres}); otherwise to the user running
the tests.  Settings that must survive a restart (port, addresses, socket
directory) are written into the cluster's C{postgresql.conf}, so
C{pg_ctl restart} brings it back where it was.  Durability is off
(C{fsync}, C{synchronous_commit}) unless asked for: a test cluster is
never kept.

L{unavailable} says why there is no cluster on this host (tests skip with
it); L{shared} starts one cluster per test process on first use and stops
it when the process exits.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from typing import List, Optional

OWNER = "postgres"
_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def find_binaries() -> Optional[str]:
    """
    The directory of C{initdb}, C{pg_ctl} and C{psql}: C{$EXECGO_TEST_PG_BIN}
    when set, else the highest PostgreSQL version under
    C{/usr/lib/postgresql}; C{None} when there is none.
    """
    chosen = os.environ.get("EXECGO_TEST_PG_BIN")
    candidates = [chosen] if chosen else sorted(glob.glob(_BIN_GLOB), key=_version, reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, name), os.X_OK) for name in ("initdb", "pg_ctl", "psql")):
            return directory
    return None


def _version(directory: str) -> int:
    """
    The major version in C{/usr/lib/postgresql/<version>/bin} (0 if none).
    """
    name = os.path.basename(os.path.dirname(directory))
    return int(name) if name.isdigit() else 0


def unavailable() -> Optional[str]:
    """
    Why no cluster can be started here (a skip reason), or C{None}.
    """
    if find_binaries() is None:
        return f"PostgreSQL binaries not found under {_BIN_GLOB} (set EXECGO_TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            return f"running as root and there is no '{OWNER}' account to run initdb as"
    return None


def free_port() -> int:
    """
    A loopback TCP port nobody listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """
    One PostgreSQL cluster in a directory of its own.

    @ivar port: its loopback TCP port.
    @ivar durable: keeps PostgreSQL's durability settings (C{fsync},
        C{synchronous_commit}: on), as a benchmark must; off by default.
    @ivar settings: more C{postgresql.conf} settings.
    @ivar directory: its home: C{data/}, the server log C{log} and the
        socket.
    """

    def __init__(
        self, binaries: str, parent: Optional[str] = None, durable: bool = False, settings: Optional[dict] = None
    ) -> None:
        self.binaries = binaries
        self.durable = durable
        self.settings = dict(settings or {})
        self.directory = tempfile.mkdtemp(prefix="execgo-pg-", dir=parent)
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "log")
        self.port = free_port()
        self.running = False
        if os.geteuid() == 0:
            account = pwd.getpwnam(OWNER)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        os.chmod(self.directory, 0o700)

    def _as_owner(self, program: str, *args: str) -> List[str]:
        command = [os.path.join(self.binaries, program), *args]
        return ["runuser", "-u", OWNER, "--", *command] if os.geteuid() == 0 else command

    def _run(self, program: str, *args: str) -> str:
        done = subprocess.run(
            self._as_owner(program, *args), capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def start(self) -> "Cluster":
        """
        Create the cluster (first time only) and start it; returns C{self}.
        """
        if not os.path.exists(self.data):
            self._run("initdb", "-D", self.data, "-A", "trust", "-U", OWNER, "-E", "UTF8", "--no-sync")
            self._configure()
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "start")
        self.running = True
        return self

    def _configure(self) -> None:
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.directory}'",
        }
        if not self.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write("\n# execgo test cluster\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def restart(self) -> None:
        """
        C{pg_ctl restart -m fast}: every connection is cut, the cluster
        comes back on the same port with its data.
        """
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-m", "fast", "restart")

    def stop(self, mode: str = "fast") -> None:
        """
        Stop the cluster (C{mode}: C{smart}, C{fast} or C{immediate}).
        """
        if self.running:
            self._run("pg_ctl", "-D", self.data, "-w", "-m", mode, "stop")
            self.running = False

    def destroy(self) -> None:
        """
        Stop the cluster at once and remove its directory.
        """
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def add_password_role(self, role: str, password: str, database: str) -> None:
        """
        A login role that must give C{password} over TCP, owning a new
        database C{database}.
        """
        self.psql(f"CREATE ROLE {_quoted(role)} LOGIN PASSWORD '{password}'")
        self.psql(f"CREATE DATABASE {_quoted(database)} OWNER {_quoted(role)}")
        hba = os.path.join(self.data, "pg_hba.conf")
        with open(hba, encoding="utf-8") as f:
            rules = f.read()
        with open(hba, "w", encoding="utf-8") as f:
            f.write(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + rules)
        self._run("pg_ctl", "-D", self.data, "reload")

    def url(self, database: str = "postgres") -> str:
        """
        A C{postgresql://} URL for C{database} over loopback TCP.
        """
        return f"postgresql://{OWNER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """
        Run C{sql} with C{psql} and return its unaligned, tuples-only output.
        """
        done = subprocess.run(
            [os.path.join(self.binaries, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.url(database), "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str, template: Optional[str] = None) -> str:
        """
        Create the database C{name} (from C{template} if given) and return
        its URL.
        """
        suffix = f" TEMPLATE {_quoted(template)}" if template else ""
        self.psql(f"CREATE DATABASE {_quoted(name)}{suffix}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """
        Drop the database C{name}, cutting its connections.
        """
        self.psql(f"DROP DATABASE IF EXISTS {_quoted(name)} WITH (FORCE)")


def _quoted(identifier: str) -> str:
    """
    C{identifier} as a quoted SQL identifier.
    """
    return '"' + identifier.replace('"', '""') + '"'


_shared: Optional[Cluster] = None


def shared() -> Cluster:
    """
    The test process's cluster, started on first use and destroyed when
    the process exits.  Callers skip first with L{unavailable}.
    """
    global _shared
    if _shared is None:
        binaries = find_binaries()
        if binaries is None:
            raise RuntimeError(unavailable() or "no PostgreSQL binaries")
        cluster = Cluster(binaries)
        atexit.register(cluster.destroy)
        _shared = cluster.start()
    return _shared
