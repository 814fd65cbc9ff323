"""
Tests for L{execgo.core.timestamps}: RFC 3339 stamps from epoch
milliseconds and nanoseconds.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.timestamps import format_ms, format_ns, parse_ms

WHOLE_MS = 1776939330000
STAMP_MS = WHOLE_MS + 125  # 2026-04-23T10:15:30.125Z


class TimestampTests(SynchronousTestCase):
    """
    L{format_ms} and L{format_ns}.
    """

    def test_ms_fraction(self) -> None:
        """
        A non-zero millisecond part is printed with exactly three digits.
        """
        self.assertEqual(format_ms(STAMP_MS), "2026-04-23T10:15:30.125Z")
        self.assertEqual(format_ms(WHOLE_MS + 5), "2026-04-23T10:15:30.005Z")
        self.assertEqual(format_ms(WHOLE_MS + 100), "2026-04-23T10:15:30.100Z")

    def test_ms_whole(self) -> None:
        """
        A whole second has no fraction at all.
        """
        self.assertEqual(format_ms(WHOLE_MS), "2026-04-23T10:15:30Z")
        self.assertEqual(format_ms(0), "1970-01-01T00:00:00Z")

    def test_ns_shortest(self) -> None:
        """
        Nanosecond stamps use the shortest exact form of 0, 3, 6 or 9
        fraction digits.
        """
        base = WHOLE_MS * 1_000_000
        cases = {
            0: "2026-04-23T10:15:30Z",
            125_000_000: "2026-04-23T10:15:30.125Z",
            1_000_000: "2026-04-23T10:15:30.001Z",
            125_400_000: "2026-04-23T10:15:30.125400Z",
            1_000: "2026-04-23T10:15:30.000001Z",
            731_942_113: "2026-04-23T10:15:30.731942113Z",
            1: "2026-04-23T10:15:30.000000001Z",
            100_000_010: "2026-04-23T10:15:30.100000010Z",
        }
        for nanos, expected in cases.items():
            self.assertEqual(format_ns(base + nanos), expected)


class ParseTests(SynchronousTestCase):
    """
    L{parse_ms} reads back what L{format_ms} writes.
    """

    def test_round_trip(self) -> None:
        """
        Whole seconds and every millisecond fraction come back exactly.
        """
        for ms in (0, 999, 1_000, 1_765_155_000_000, 1_765_155_000_001, 1_765_155_000_999):
            self.assertEqual(parse_ms(format_ms(ms)), ms)

    def test_refused(self) -> None:
        """
        A stamp without C{Z}, or not a stamp at all, is a C{ValueError}.
        """
        for stamp in ("2026-12-07T23:01:20.948", "2026-12-07T23:01:20+01:00", "yesterday Z"):
            self.assertRaises(ValueError, parse_ms, stamp)
