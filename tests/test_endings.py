"""
Tests for L{execgo.supervisor.endings}: the supervisor's terminal writes
(alone, or gathered into one transaction with the pending start
records), their reports, and their retries when the store refuses, over
a real temporary store and a clock the test moves.
"""

from __future__ import annotations

import os
from typing import Any, List

from execgo import control
from execgo.core import outcome
from execgo.core.records import Outcome
from execgo.store import terminal
from execgo.supervisor import endings
from execgo.supervisor.endings import FINISH_RETRY_S, Endings
from execgo.supervisor.starts import StartRecord, StartRecords
from tests.test_starts import Refusing, StoreCase

SUCCESS = Outcome(status="success", exit_code=0)


class EndingTests(StoreCase):
    """
    L{Endings}: each end written with its C{result.json} and reported;
    the ends of one reaping written together; a refused write retried.
    """

    def setUp(self) -> None:
        super().setUp()
        self.reports: List[control.Report] = []
        self.resets: List[bool] = []
        self.starts = StartRecords(self.conn, self.clock.call_later, self.logged.append)
        self.endings = self.make(self.conn)

    def make(self, conn: object) -> Endings:
        """
        Endings over C{conn}, reporting to L{reports}.
        """
        return Endings(
            conn,  # type: ignore[arg-type]
            self.starts,
            self.clock.call_later,
            self.wall_ms,
            self.reports.append,
            lambda: self.resets.append(True),
            self.logged.append,
        )

    def test_written_and_reported(self) -> None:
        """
        An end is written at once, with its C{result.json}, and reported
        with the snapshot it wrote.
        """
        self.running("t")
        self.endings.finish("t", SUCCESS)
        record = self.load("t")
        self.assertEqual((record.status, record.exit_code), ("success", 0))
        self.assertTrue(os.path.exists(record.paths.result_path))
        [report] = self.reports
        assert isinstance(report, control.Finished) and report.status is not None
        self.assertEqual((report.task_id, report.status["status"]), ("t", "success"))
        self.assertEqual((self.endings.pending, self.resets), ({}, []))

    def test_together_one_transaction(self) -> None:
        """
        The ends finished inside L{Endings.together} wait for its end and
        are written in one transaction with the pending start records,
        then reported in order.
        """
        self.running("a")
        self.running("b")
        self.starts.add(StartRecord("a", 77, self.wall_ms(), None))
        self.trace()
        with self.endings.together():
            self.endings.finish("a", SUCCESS)
            self.endings.finish("b", outcome.cancelled("task cancelled"))
            self.assertEqual(self.load("a").status, "running")
        self.assertEqual((self.statements.count("BEGIN IMMEDIATE"), self.statements.count("COMMIT")), (1, 1))
        self.assertEqual([self.load(task_id).status for task_id in "ab"], ["success", "cancelled"])
        self.assertEqual(self.load("a").pid, 77)
        self.assertEqual(self.starts.pending, {})
        self.assertEqual([report.task_id for report in self.reports], ["a", "b"])  # type: ignore[union-attr]

    def test_refused_retried(self) -> None:
        """
        An end the store refuses is kept pending, logged with its attempt,
        not reported, and written again every L{FINISH_RETRY_S} until the
        store takes it.
        """
        self.running("t")
        refusing = Refusing(self.conn)
        ends = self.make(refusing)
        ends.finish("t", SUCCESS)
        self.advance(FINISH_RETRY_S)
        self.assertEqual(
            self.logged,
            [
                "cannot record the end of t (attempt 1): database is locked",
                "cannot record the end of t (attempt 2): database is locked",
            ],
        )
        self.assertEqual((ends.pending, self.reports), ({"t": SUCCESS}, []))
        refusing.refuse = False
        self.advance(FINISH_RETRY_S)
        self.assertEqual(self.load("t").status, "success")
        self.assertEqual([report.task_id for report in self.reports], ["t"])  # type: ignore[union-attr]
        self.assertEqual(ends.pending, {})
        self.assertIsNone(self.clock.next_delay())

    def test_not_carried(self) -> None:
        """
        The report carries no snapshot when this write did not end the
        task (it had ended already, or another writer ended it between
        the rendering and the write), nor when the snapshot is bigger
        than L{endings.REPORTED_STATUS_MAX_BYTES}.
        """
        self.running("done")
        terminal.finish(self.conn, "done", outcome.cancelled("killed"), self.wall_ms())
        self.endings.finish("done", SUCCESS)
        self.assertEqual(self.load("done").status, "cancelled")
        self.running("raced")
        query = terminal.TerminalWrite.query

        def overtaken(write: terminal.TerminalWrite, conn: Any) -> Any:
            terminal.write_terminal(conn, write.task_id, outcome.cancelled("killed"), self.wall_ms())
            return query(write, conn)

        self.patch(terminal.TerminalWrite, "query", overtaken)
        self.endings.finish("raced", SUCCESS)
        self.assertEqual(self.load("raced").status, "cancelled")
        self.patch(terminal.TerminalWrite, "query", query)
        self.patch(endings, "REPORTED_STATUS_MAX_BYTES", 0)
        self.running("big")
        self.endings.finish("big", SUCCESS)
        self.assertEqual(self.load("big").status, "success")
        self.assertEqual(
            self.reports, [control.Finished("done"), control.Finished("raced"), control.Finished("big")]
        )

    def test_peak_reset_after_a_large_result(self) -> None:
        """
        Rendering a C{result.json} longer than
        L{endings.PEAK_RESET_PREVIEW_CHARS} resets the peak RSS; a shorter
        one does not.
        """
        self.running("small")
        self.endings.finish("small", SUCCESS)
        self.assertEqual(self.resets, [])
        self.patch(endings, "PEAK_RESET_PREVIEW_CHARS", 10)
        self.running("large")
        self.endings.finish("large", SUCCESS)
        self.assertEqual(self.resets, [True])
