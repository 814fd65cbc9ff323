# -*- test-case-name: tests.test_notices -*-
"""
The server's ear on the cluster (L{NoticeListener}): one PostgreSQL
connection of its own that C{LISTEN}s on the store's notice channel
(L{execgo.store.notices}), read on the reactor thread whenever its socket
is readable, so a notice is handled within a round trip of the commit
that sent it and no thread waits for it.

The connection is opened (a blocking call) in a thread.  When it is cut
(a database restart), it is opened again every L{RELISTEN_S}, and once it
is back the runtime is told to look at the store again (C{resync}): the
notices sent meanwhile are lost with the connection.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execgo.store import notices

log = Logger()

#: Seconds between two attempts to listen again after a cut.
RELISTEN_S = 1.0


@implementer(IReadDescriptor)
class _Socket:
    """
    The listening connection's socket, as the reactor watches it.
    """

    def __init__(self, listener: "NoticeListener", conn: Any) -> None:
        self.listener = listener
        self.conn = conn
        self._fileno = conn.pgconn.socket

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "execgo-notices"

    def doRead(self) -> None:
        self.listener.readable(self)

    def connectionLost(self, reason: Failure) -> None:
        self.listener.cut(self, reason.getErrorMessage())


class NoticeListener:
    """
    Receives the store's notices and hands each, parsed, to C{deliver}.

    @param reactor: watches the socket and runs the retries.
    @param connect: opens a listening connection (blocking;
        L{execgo.store.postgres.listen} with the store's URL).
    @param in_thread: runs C{connect} off the reactor thread.
    @param deliver: takes each notice, on the reactor thread.
    @param resync: called once listening again after a cut.
    """

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], Any],
        in_thread: Callable[..., "defer.Deferred[Any]"],
        deliver: Callable[[notices.Notice], None],
        resync: Callable[[], None],
    ) -> None:
        self.reactor: IReactorFDSet = reactor
        self.clock: IReactorTime = reactor
        self.connect = connect
        self.in_thread = in_thread
        self.deliver = deliver
        self.resync = resync
        self._socket: Optional[_Socket] = None
        self._retry: Any = None
        self._stopped = False
        self._cuts = 0

    @property
    def listening(self) -> bool:
        """
        Whether a listening connection is open now.
        """
        return self._socket is not None

    def start(self) -> "defer.Deferred[None]":
        """
        Open the listening connection; fires once it listens (or failed:
        then it is tried again every L{RELISTEN_S}).
        """
        return defer.ensureDeferred(self._open())

    async def _open(self) -> None:
        self._retry = None
        if self._stopped:
            return
        try:
            conn = await self.in_thread(self.connect)
        except Exception as e:
            log.warn("cannot listen for the cluster's notices, trying again in {seconds} s: {error}",
                     seconds=RELISTEN_S, error=str(e))
            self._again()
            return
        if self._stopped:
            conn.close()
            return
        self._socket = _Socket(self, conn)
        self.reactor.addReader(self._socket)
        if self._cuts:
            log.info("listening for the cluster's notices again")
            self.resync()

    def _again(self) -> None:
        if not self._stopped:
            self._retry = self.clock.callLater(RELISTEN_S, lambda: defer.ensureDeferred(self._open()))

    def readable(self, socket: _Socket) -> None:
        """
        Read what arrived and deliver every notice in it.
        """
        pgconn = socket.conn.pgconn
        try:
            pgconn.consume_input()
        except Exception as e:
            self.cut(socket, str(e))
            return
        while True:
            notice = pgconn.notifies()
            if notice is None:
                break
            parsed = notices.parse(notice.extra.decode("utf-8", "replace"))
            if parsed is not None:
                try:
                    self.deliver(parsed)
                except Exception:
                    log.failure("a cluster notice could not be handled", notice=parsed)
        if pgconn.status != 0:  # CONNECTION_OK
            self.cut(socket, "connection lost")

    def cut(self, socket: _Socket, why: str) -> None:
        """
        The listening connection broke: drop it and listen again soon.
        """
        if socket is not self._socket:
            return
        self._socket = None
        self._cuts += 1
        self.reactor.removeReader(socket)
        try:
            socket.conn.close()
        except Exception:
            pass
        log.warn("stopped hearing the cluster's notices ({why}); listening again", why=why)
        self._again()

    def stop(self) -> None:
        """
        Stop listening for good.
        """
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        socket, self._socket = self._socket, None
        if socket is not None:
            self.reactor.removeReader(socket)
            socket.conn.close()
