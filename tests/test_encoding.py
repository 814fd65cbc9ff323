"""
Tests for L{execgo.core.encoding}: the compact and pretty JSON renderings.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from execgo.core.encoding import compact, compact_text, pretty

try:
    from hypothesis import given, settings, strategies
except ImportError:  # pragma: no cover - hypothesis is a test extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True


class CompactTests(SynchronousTestCase):
    """
    L{compact} and L{compact_text}: no white space, raw UTF-8.
    """

    def test_compact(self) -> None:
        """
        Separators carry no white space and non-ASCII text is not escaped;
        the bytes are the text's UTF-8.
        """
        value = {"a": [1, "\u00e9\u20ac"], "b": None}
        self.assertEqual(compact_text(value), '{"a":[1,"\u00e9\u20ac"],"b":null}')
        self.assertEqual(compact(value), compact_text(value).encode("utf-8"))


class PrettyTests(SynchronousTestCase):
    """
    L{pretty} writes exactly what C{json.dumps(indent=2,
    ensure_ascii=False)} writes.
    """

    if HAVE_HYPOTHESIS:

        @settings(max_examples=300, deadline=None)
        @given(
            strategies.recursive(
                strategies.none()
                | strategies.booleans()
                | strategies.integers()
                | strategies.floats()
                | strategies.text(),
                lambda children: strategies.lists(children)
                | strategies.dictionaries(strategies.text(), children),
                max_leaves=30,
            )
        )
        def test_same_as_the_standard_library(self, value: Any) -> None:
            """
            Any JSON value, floats, non-ASCII and control characters included.
            """
            self.assertEqual(pretty(value), json.dumps(value, indent=2, ensure_ascii=False))

    def test_other_types(self) -> None:
        """
        Non-string keys and tuples go through the standard library, and
        come out the same.
        """
        for value in ({1: "x", "y": (1, 2)}, {"a": [{"b": {2: None}}]}, (1, [], {})):
            self.assertEqual(pretty(value), json.dumps(value, indent=2, ensure_ascii=False))
