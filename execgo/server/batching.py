# -*- test-case-name: tests.test_batching -*-
"""
Many small database jobs per thread hop.

Every C{runWithConnection} is a round trip between the reactor thread and
a pool thread: a condition variable, a wake-up of the reactor, and a
fight for the GIL each way.  Under load that handoff, not SQLite, is what
the server spends its time on.  A L{Batcher} keeps at most C{lanes} hops
in flight per pool; jobs that arrive meanwhile wait and then go together
in the next hop, each still run by itself (its own result or failure), in
the order they came.  At low load a job goes at once, alone.

Grouped writes (L{Batcher.run_grouped}) go one step further: consecutive
ones in a hop commit together, in one transaction where each runs under
its own savepoint.  Every commit rewrites the pages a write shares with
its neighbours (the newest leaves of the tables and indexes, the tallies)
and takes the store's write lock once: for a burst of submissions one
commit instead of one each saves a quarter of their cost, and the
supervisor meets the lock taken less often.  The first steps of a group
run before any of its writes, so each is told how many writes of its
group are prepared ahead of it and not yet written (a bound it checks,
such as the queue's, counts them as written).
"""

from __future__ import annotations

from typing import Any, Callable, ContextManager, List, Optional, Tuple

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.python.failure import Failure

from execgo.store.backend import backend_of

#: C{(func, args, write)}: C{func(conn, *args)} runs first; when C{write}
#: is given, C{func(conn, *args, pending)} runs first instead (L{run_jobs})
#: and C{write(conn, value)} then runs with its value, grouped.
Job = Tuple[Callable[..., Any], Tuple[Any, ...], Optional[Callable[[Any, Any], Any]]]
Result = Tuple[bool, Any]
Group = Callable[[Any], ContextManager[Any]]


def _call(func: Callable[..., Any], *args: Any) -> Result:
    try:
        return (True, func(*args))
    except Exception:
        return (False, Failure())


def _released(write: Callable[[Any, Any], Any], conn: Any, value: Any) -> Any:
    """
    C{write(conn, value)}, then its savepoint released: a statement of it
    that the store sends late (with the next one) fails the write itself.
    """
    result = write(conn, value)
    conn.execute("RELEASE grouped_write")
    return result


def _alone(group: Group, write: Callable[[Any, Any], Any], conn: Any, value: Any) -> Any:
    """
    C{write(conn, value)} in a C{group(conn)} transaction of its own.
    """
    with group(conn):
        return write(conn, value)


def _write_group(
    conn: Any, group: Optional[Group], writes: List[Tuple[int, Callable[[Any, Any], Any]]], results: List[Result]
) -> None:
    """
    Run C{writes} in one C{group(conn)} transaction, each under a
    savepoint: a write that fails is undone alone and fails alone; a
    commit that fails fails them all.  A write alone needs no savepoint.
    """
    assert group is not None, "grouped writes need a group transaction"
    if len(writes) == 1:
        [(index, write)] = writes
        results[index] = _call(_alone, group, write, conn, results[index][1])
        return
    try:
        with group(conn):
            for index, write in writes:
                # Goes with the write's first statement.
                backend_of(conn).execute_later(conn, "SAVEPOINT grouped_write", ())
                results[index] = _call(_released, write, conn, results[index][1])
                if not results[index][0]:
                    conn.execute("ROLLBACK TO grouped_write")
                    conn.execute("RELEASE grouped_write")
    except Exception:
        failure = Failure()
        for index, _ in writes:
            if results[index][0]:
                results[index] = (False, failure)


def run_jobs(conn: Any, jobs: List[Job], group: Optional[Group] = None) -> List[Result]:
    """
    Run each job on C{conn} in order; a job's exception is its own result
    and does not stop the others.  The writes of consecutive grouped jobs
    share one C{group} transaction, after their first steps; each first
    step is given the number of its group's writes prepared before it
    (C{pending}), which have not run yet.
    """
    results: List[Result] = []
    writes: List[Tuple[int, Callable[[Any, Any], Any]]] = []
    for func, args, write in jobs:
        if write is None:
            if writes:
                _write_group(conn, group, writes, results)
                writes = []
            results.append(_call(func, conn, *args))
            continue
        results.append(_call(func, conn, *args, len(writes)))
        if results[-1][0]:
            writes.append((len(results) - 1, write))
    if writes:
        _write_group(conn, group, writes, results)
    return results


class Batcher:
    """
    Jobs for one connection pool, batched per hop.

    @param pool: the adbapi pool the jobs run in.
    @param lanes: how many hops may be in flight at once (at most the
        pool's connection count).
    @param group: the transaction (a context manager over a connection)
        grouped writes share.
    """

    def __init__(self, pool: adbapi.ConnectionPool, lanes: int = 1, group: Optional[Group] = None) -> None:
        self.pool = pool
        self.lanes = lanes
        self.group = group
        self._waiting: List[Tuple[Job, "defer.Deferred[Any]"]] = []
        self._in_flight = 0

    def run(self, func: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        """
        Run C{func(connection, *args)} in the pool, in the next hop.
        """
        return self._queue((func, args, None))

    def run_grouped(
        self, prepare: Callable[[Any, int], Any], write: Callable[[Any, Any], Any]
    ) -> "defer.Deferred[Any]":
        """
        Run C{prepare(connection, pending)} in the next hop, outside any
        transaction (checks, files), then, unless it failed,
        C{write(connection, prepared)} in the transaction the hop's grouped
        writes share.  C{pending} is the number of writes of that group
        prepared before this one: they have not run yet, and may still
        fail.

        @return: a Deferred firing with what C{write} returns, or failing
            with what C{prepare}, C{write} or the shared commit raised.
        """
        if self.group is None:
            raise TypeError("this batcher has no group transaction")
        return self._queue((prepare, (), write))

    def _queue(self, job: Job) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append((job, d))
        if self._in_flight < self.lanes:
            self._send()
        return d

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        self._in_flight += 1
        hop = self.pool.runWithConnection(run_jobs, [job for job, _ in batch], self.group)
        hop.addBoth(self._settle, [d for _, d in batch])

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
