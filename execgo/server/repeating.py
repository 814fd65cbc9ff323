# -*- test-case-name: tests.test_nodewatch,tests.test_runtime -*-
"""
A job the server runs again and again on the reactor (L{Repeating}): the
GC passes, the watch over the cluster's nodes.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


class Repeating:
    """
    Runs C{job} every C{interval_s}, the first time one interval after
    L{start}; the next run is armed when one ends (runs never overlap),
    and only while C{accepting()}.  A run that fails is logged as
    C{"<name> failed"} and the next one still comes.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        interval_s: float,
        job: Callable[[], Coroutine[Any, Any, Any]],
        accepting: Callable[[], bool],
        name: str,
    ) -> None:
        self.reactor = reactor
        self.interval_s = interval_s
        self.job = job
        self.accepting = accepting
        self.name = name
        self._call: Optional[IDelayedCall] = None

    def start(self) -> None:
        """
        Run the job one interval from now, and so on.
        """
        self._call = self.reactor.callLater(self.interval_s, self._tick)

    def _tick(self) -> None:
        self._call = None
        d = defer.ensureDeferred(self.job())
        d.addErrback(lambda failure: log.warn(f"{self.name} failed", error=str(failure.value)))
        d.addBoth(lambda _: self.start() if self.accepting() else None)

    def stop(self) -> None:
        """
        Cancel the next run (one under way arms another only while
        accepting).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
