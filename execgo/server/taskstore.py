# -*- test-case-name: tests.test_database -*-
"""
The seam between the server and its task store: L{TaskStore}, every job
the server does with the database, each a method that returns a Deferred
of models.

L{execgo.server.database.Store} is the SQLite backend (the plain
functions of L{execgo.store} run through C{adbapi}).  A second backend
implements this protocol; nothing else in the server reaches a
connection.  The supervisor writes the same rows on its own connection
(L{execgo.store.transitions}, L{execgo.store.terminal}), so a backend
keeps the same guarantees for the changes both processes make:

* every transition is atomic and conditional: it happens only from the
  statuses it names, in one transaction with the events it appends, and
  of two writers racing on one task exactly one takes it;
* a task's events are in the order their changes committed (C{seq}
  ascending within a task), and a terminal status is never visible
  without its terminal event;
* a terminal task is never visible without its C{result.json}, unless its
  row is marked C{result_missing} for L{TaskStore.repair_results};
* nothing blocks the reactor: database work and the file work that goes
  with it run off the reactor thread.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from twisted.internet.defer import Deferred

from execgo.core.cluster import NodeInfo, NodeRecord
from execgo.core.constants import JSON
from execgo.core.models import SubmitRequest
from execgo.core.records import Event, NewTask, Outcome, Scope, TaskRecord
from execgo.core.reservation import Reservation
from execgo.store.gc import Failures
from execgo.store.listing import ListQuery
from execgo.store.logfiles import OpenLog
from execgo.store.reads import SchedulerState
from execgo.store.tallies import MetricsSnapshot
from execgo.store.terminal import UNFINISHED
from execgo.store.transitions import KillResult


class TaskStore(Protocol):
    """
    Every job the server does with its task store.

    @ivar opened_s: when this server opened the store (epoch seconds): a
        task directory without a row made before then is no submission's
        in flight.
    @ivar node_id: the node this server is (C{None}: it takes every task
        as its own): the reservations, recovery and the resources it reads
        are its own node's.
    """

    opened_s: float
    node_id: Optional[str]

    # Schema

    def init_schema(self) -> "Deferred[None]":
        """
        Create or upgrade the schema; idempotent, safe while serving
        (C{/readyz} runs it).
        """

    # Submission

    def submit(
        self,
        task: NewTask,
        request: SubmitRequest,
        max_queued: int,
        check_late: Callable[[], None],
        now_ms: int,
    ) -> "Deferred[None]":
        """
        Persist a validated, planned submission: a stored idempotency key
        is answered first (L{execgo.store.idempotency.Replay},
        L{execgo.store.idempotency.KeyReused}), then the queue bound
        (L{execgo.core.errors.QueueFull}; the submissions persisted
        together with it and checked before it count as queued),
        C{check_late()}, the duplicate
        id (L{execgo.core.errors.Conflict}); then the task's files and its
        row with its first events, atomically: when the row does not
        commit, the files are removed again.
        """

    def settle_conflict(
        self, key: str, digest: Optional[str], task_id: str, scope: Scope
    ) -> "Deferred[Optional[bool]]":
        """
        After a keyed submission lost a race on its task id: raise as
        L{submit} does for a stored key; else C{True} when the id belongs
        to a stored row, C{None} while the winner has not committed.
        """

    # Reading

    def tenant_of(self, task_id: str) -> "Deferred[Tuple[bool, Optional[str]]]":
        """
        Whether the task exists, and its tenant.
        """

    def snapshot(self, task_id: str, now_ms: int) -> "Deferred[Optional[Tuple[JSON, Optional[str]]]]":
        """
        The status snapshot of a task (its previews bounded by the
        server's preview ceiling and budget) and its tenant, or C{None}.
        """

    def list_page(self, query: ListQuery, now_ms: int) -> "Deferred[JSON]":
        """
        One page of the task listing (L{execgo.store.listing.list_page}):
        newest first, keyset-paginated, so a page never shifts under
        submissions.
        """

    def events(self, task_id: str, after_seq: int = 0) -> "Deferred[Optional[List[Event]]]":
        """
        A task's events after C{after_seq}, in the order they committed;
        C{None} for an unknown task.
        """

    def poll_events(self, task_id: str, after_seq: int) -> "Deferred[Tuple[Optional[str], List[Event]]]":
        """
        A task's status (C{None}: unknown), then its events after
        C{after_seq}, read in that order: when the status is terminal,
        the terminal event is among them or came before.
        """

    def open_log(self, task_id: str, name: str) -> "Deferred[Optional[OpenLog]]":
        """
        Open a task's C{stdout} or C{stderr}; C{None} for an unknown task.
        The caller closes the descriptor.
        """

    def read_log(self, task_id: str, fd: int, pos: int, end: Optional[int]) -> "Deferred[Tuple[bytes, bool]]":
        """
        The next chunk of an open log from C{pos}, and whether the stream
        is complete (L{execgo.store.logfiles.read_log}: a follower,
        C{end=None}, completes only once the task is terminal and the
        file holds nothing more).
        """

    def resources(self) -> "Deferred[Tuple[List[TaskRecord], int]]":
        """
        The tasks holding an active reservation, and how many C{accepted}
        tasks hold none.
        """

    def metrics(self) -> "Deferred[MetricsSnapshot]":
        """
        The counts and histograms of C{/metrics}, at a cost that does not
        grow with the number of stored tasks.
        """

    # Transitions

    def kill(self, task_id: str, owner: Optional[str], now_ms: int, any_owner: bool = False) -> "Deferred[KillResult]":
        """
        Check and record a kill request: L{execgo.core.errors.NotFound},
        then the owner check (skipped with C{any_owner});
        a task not yet terminal gets its kill flag, and a queued one is
        cancelled (a terminal write) in the same job.
        """

    def finish(
        self, task_id: str, verdict: Outcome, now_ms: int, from_statuses: Sequence[str] = UNFINISHED
    ) -> "Deferred[bool]":
        """
        The terminal write (L{execgo.store.terminal}): only from one of
        C{from_statuses}, atomically with the release of the reservation
        and the terminal event, C{result.json} in place before the commit
        (or the row marked C{result_missing}).

        @return: whether this call made the task terminal.
        """

    def release_orphan_reservation(self, task_id: str, now_ms: int) -> "Deferred[None]":
        """
        Recovery: release the reservation a still-queued task holds (with
        its C{resource_released} event), if it holds one.
        """

    def mark_recovered(self, task_id: str, reservation: Optional[Reservation], now_ms: int) -> "Deferred[bool]":
        """
        Recovery: a C{running} task whose supervisor lives gets its
        reservation rebuilt when it holds none (given C{reservation}) and
        the event C{recovered}.

        @return: whether the task was C{running}.
        """

    # Recovery and the dispatcher

    def by_status(self, statuses: Sequence[str]) -> "Deferred[List[TaskRecord]]":
        """
        Every task in one of C{statuses}, oldest first.
        """

    def scheduler_state(self, max_queued: int) -> "Deferred[SchedulerState]":
        """
        What the dispatcher rebuilds itself from: the active reservations,
        and up to C{max_queued} queued tasks, oldest first.
        """

    # Collection and repairs

    def gc(self, cutoff_ms: int, limit: int) -> "Deferred[Tuple[List[str], Failures]]":
        """
        Delete up to C{limit} terminal tasks finished at or before
        C{cutoff_ms}, directory first, then row and events; a directory
        that cannot be removed keeps its row.

        @return: the collected ids, and C{(task_id, error)} of the others.
        """

    def mark_missing_results(self, limit: int) -> "Deferred[List[str]]":
        """
        Mark the most recently finished tasks (at most C{limit}) whose
        C{result.json} is missing, for L{repair_results}.

        @return: the ids marked.
        """

    def repair_results(self, now_ms: int, limit: int) -> "Deferred[Tuple[List[str], Failures]]":
        """
        Write the C{result.json} of up to C{limit} marked tasks from their
        rows, and unmark them.

        @return: the ids done, and C{(task_id, error)} of those still
            marked.
        """

    def task_dir_names(self, tasks_dir: str) -> "Deferred[List[str]]":
        """
        The names under C{tasks_dir} that could be task directories.
        """

    def collect_orphans(
        self, tasks_dir: str, names: Sequence[str], now_s: float, remove_limit: int
    ) -> "Deferred[Tuple[List[str], List[str], Failures]]":
        """
        Remove those of C{tasks_dir/NAME} that have no row and are stale
        (L{execgo.store.gc.collect_orphans}), ordered with the submissions
        that make directories, at most C{remove_limit}.

        @return: the names removed, those to look at later, and
            C{(name, error)} of those that could not be removed.
        """

    # The cluster's nodes

    def join_node(self, node: NodeInfo, lease_ms: int, now_ms: int) -> "Deferred[None]":
        """
        Record this node as a member (L{execgo.store.nodes.join}); fails
        with L{execgo.store.nodes.NodeIdTaken} when another live node holds
        its id.
        """
        ...

    def list_nodes(self) -> "Deferred[List[NodeRecord]]":
        """
        Every node the store knows, with the tasks each runs now.
        """
        ...

    def mark_lost_nodes(self, now_ms: int) -> "Deferred[List[str]]":
        """
        Mark the other alive nodes whose lease ran out C{lost} (a node
        whose server lives handles its own supervisor's loss); the ids
        marked.
        """
        ...

    def node_states(self) -> "Deferred[Dict[str, int]]":
        """
        How many nodes are in each state.
        """
        ...

    def load_node(self, node_id: str) -> "Deferred[Optional[NodeRecord]]":
        """
        One node, or C{None} when the store does not know it.
        """
        ...

    def orphaned_tasks(self) -> "Deferred[List[str]]":
        """
        The running tasks of the other nodes that are lost or left.
        """
        ...

    def close(self) -> None:
        """
        Release the store's threads and connections.
        """
