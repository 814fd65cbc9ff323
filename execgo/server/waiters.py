# -*- test-case-name: tests.test_api,tests.test_streams -*-
"""
Waiting for something to happen to a task, with a deadline: the basis of
long-poll status requests.

Each waiter gets a fresh Deferred; L{Waiters.notify} fires every waiter of
a key (with C{True}, or with what the notice carries, such as a finished
task's terminal snapshot), and a waiter that times out or is cancelled
(its client went away) leaves no timer and no entry behind.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Waiters:
    """
    Deferreds keyed by task id.

    @param reactor: for the deadlines.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self._waiting: Dict[str, List["defer.Deferred[Any]"]] = {}
        self._timers: Dict[int, IDelayedCall] = {}

    def wait(self, key: str, timeout_s: float) -> "defer.Deferred[Any]":
        """
        A Deferred that fires with the notice (true) when C{key} is
        notified, or with C{False} once C{timeout_s} has passed.  Cancelling
        it just forgets it.
        """

        def forget(d: "defer.Deferred[Any]") -> None:
            self._drop(key, d)

        d: defer.Deferred[Any] = defer.Deferred(forget)
        self._waiting.setdefault(key, []).append(d)
        self._timers[id(d)] = self.reactor.callLater(timeout_s, self._expire, key, d)
        return d

    def _drop(self, key: str, d: "defer.Deferred[Any]") -> None:
        timer = self._timers.pop(id(d), None)
        if timer is not None and timer.active():
            timer.cancel()
        waiting = self._waiting.get(key)
        if waiting is not None:
            if d in waiting:
                waiting.remove(d)
            if not waiting:
                del self._waiting[key]

    def _expire(self, key: str, d: "defer.Deferred[Any]") -> None:
        self._timers.pop(id(d), None)
        self._drop(key, d)
        d.callback(False)

    def notify(self, key: str, notice: Any = True) -> None:
        """
        Fire every waiter of C{key} with C{notice} (anything true).
        """
        for d in self._waiting.pop(key, []):
            timer = self._timers.pop(id(d), None)
            if timer is not None and timer.active():
                timer.cancel()
            d.callback(notice)

    def notify_all(self) -> None:
        """
        Fire every waiter with C{True}: whatever they wait for may have
        happened unseen (each reads its task again).
        """
        for key in list(self._waiting):
            self.notify(key)

    def __len__(self) -> int:
        return sum(len(waiting) for waiting in self._waiting.values())

    def cancel_all(self) -> None:
        """
        Release every waiter now (as if its deadline had passed).
        """
        for key, waiting in list(self._waiting.items()):
            for d in list(waiting):
                self._drop(key, d)
                d.callback(False)
