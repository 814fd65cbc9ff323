# -*- test-case-name: tests.test_batching -*-
"""
Many small database jobs per thread hop.

Every C{runWithConnection} is a round trip between the reactor thread and
a pool thread: a condition variable, a wake-up of the reactor, and a
fight for the GIL each way.  Under load that handoff, not SQLite, is what
the server spends its time on.  A L{Batcher} keeps at most C{lanes} hops
in flight per pool; jobs that arrive meanwhile wait and then go together
in the next hop, each still run by itself (its own transaction, its own
result or failure).  At low load a job goes at once, alone.
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.python.failure import Failure

Job = Tuple[Callable[..., Any], Tuple[Any, ...]]


def run_jobs(conn: Any, jobs: List[Job]) -> List[Tuple[bool, Any]]:
    """
    Run each job on C{conn} in order; a job's exception is its own result
    and does not stop the others.
    """
    results: List[Tuple[bool, Any]] = []
    for func, args in jobs:
        try:
            results.append((True, func(conn, *args)))
        except Exception:
            results.append((False, Failure()))
    return results


class Batcher:
    """
    Jobs for one connection pool, batched per hop.

    @param pool: the adbapi pool the jobs run in.
    @param lanes: how many hops may be in flight at once (at most the
        pool's connection count).
    """

    def __init__(self, pool: adbapi.ConnectionPool, lanes: int = 1) -> None:
        self.pool = pool
        self.lanes = lanes
        self._waiting: List[Tuple[Callable[..., Any], Tuple[Any, ...], "defer.Deferred[Any]"]] = []
        self._in_flight = 0

    def run(self, func: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        """
        Run C{func(connection, *args)} in the pool, in the next hop.
        """
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append((func, args, d))
        if self._in_flight < self.lanes:
            self._send()
        return d

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        self._in_flight += 1
        jobs = [(func, args) for func, args, _ in batch]
        hop = self.pool.runWithConnection(run_jobs, jobs)
        hop.addBoth(self._settle, [d for _, _, d in batch])

    def _settle(self, results: Any, waiters: List["defer.Deferred[Any]"]) -> None:
        # Jobs queued by the callbacks below wait for the next hop.
        try:
            if isinstance(results, Failure):
                for d in waiters:
                    d.errback(results)
            else:
                for (ok, value), d in zip(results, waiters):
                    if ok:
                        d.callback(value)
                    else:
                        d.errback(value)
        finally:
            self._in_flight -= 1
            if self._waiting and self._in_flight < self.lanes:
                self._send()
