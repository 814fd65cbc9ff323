# -*- test-case-name: tests.test_daemon -*-
"""
The plumbing the two supervisor processes (the daemon,
L{execgo.supervisor.daemon}, and the single-task shim,
L{execgo.supervisor.shim}) share around the engine: becoming a child
subreaper, the log file, the C{SIGCHLD} wake-ups of a C{selectors} loop, a
bounded wait, and the engine built from settings.

Standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import time
from typing import Callable, Optional

from execgo import control
from execgo.core.timestamps import format_ms
from execgo.supervisor.engine import Supervisor

PR_SET_CHILD_SUBREAPER = 36

#: The longest single wait of a supervisor loop: C{epoll_wait} takes its
#: timeout in milliseconds as a C int, and a timer further away (a task
#: stored with a huge wall time) must not overflow it.
MAX_WAIT_S = 3600.0


def become_subreaper() -> bool:
    """
    Make this process a child subreaper; C{False} where the OS refuses.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def bounded(delay: Optional[float]) -> float:
    """
    The wait for the next timer, at most L{MAX_WAIT_S} (also with none).
    """
    return MAX_WAIT_S if delay is None else min(delay, MAX_WAIT_S)


class Wakeups:
    """
    Signals as bytes on a pipe, so a C{selectors} loop wakes for them: the
    C{SIGCHLD} of an exited workload above all (its handler does nothing
    else; the loop reaps).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._selector: Optional[selectors.BaseSelector] = None

    def install(self) -> None:
        """
        Route signals to the pipe and give C{SIGCHLD} a handler (the main
        thread only).
        """
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def fileno(self) -> int:
        """
        The end to watch for reading.
        """
        return self._read

    def drain(self) -> None:
        """
        Read off every pending wake-up.
        """
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def wait(self, delay: Optional[float]) -> None:
        """
        Wait for a wake-up, at most C{delay} seconds (L{bounded}), and read
        it off: the whole loop of a process with nothing else to watch.
        """
        if self._selector is None:
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._read, selectors.EVENT_READ)
        if self._selector.select(bounded(delay)):
            self.drain()


def file_log(path: str) -> Callable[[str], None]:
    """
    A logger appending JSON lines to C{path} (errors ignored: the
    supervisor keeps running without its log).
    """

    def log(line: str) -> None:
        stamp = format_ms(time.time_ns() // 1_000_000)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, (json.dumps({"timestamp": stamp, "level": "ERROR", "message": line}) + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    return log


def supervisor_log(data_dir: str) -> Callable[[str], None]:
    """
    The log of a data directory's supervisor processes
    (C{<data_dir>/supervisor.log}).
    """
    return file_log(os.path.join(data_dir, "supervisor.log"))


def build_engine(database: str, settings: control.SupervisorSettings, log: Callable[[str], None]) -> Supervisor:
    """
    The engine over the store C{database}, running tasks with C{settings}.
    """
    supervisor = Supervisor(database, settings.grace_ms / 1000.0, log=log)
    supervisor.configure(settings)
    return supervisor
