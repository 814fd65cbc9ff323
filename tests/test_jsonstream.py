"""
Tests for L{execgo.core.jsonstream}: documents with long strings rendered a
slice at a time, byte for byte what the whole rendering gives.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from execgo.core import jsonstream
from execgo.core.encoding import compact, pretty

LONG = jsonstream.SLICE_CHARS * 3 + 17


def _document(stdout: str, stderr: str = "") -> Any:
    return {
        "task_id": "t",
        "status": "success",
        "stdout": stdout,
        "stderr": stderr,
        "usage": {"duration_ms": 5},
        "metadata": {"k": "v", "list": ["a", stdout[:10]]},
    }


class ChunksTests(SynchronousTestCase):
    """
    L{jsonstream.chunks} and L{jsonstream.encoded_length}.
    """

    def assertSame(self, value: Any) -> None:
        """
        Compact and pretty pieces join to the whole renderings, and the
        length is the compact one's.
        """
        whole = compact(value)
        self.assertEqual(b"".join(jsonstream.chunks(value)), whole)
        self.assertEqual(jsonstream.encoded_length(value), len(whole))
        self.assertEqual(b"".join(jsonstream.chunks(value, pretty)), pretty(value).encode("utf-8"))

    def test_short_strings(self) -> None:
        """
        A document without long strings is one piece.
        """
        value = _document("hello", "err")
        self.assertEqual(list(jsonstream.chunks(value)), [compact(value)])
        self.assertSame(value)

    def test_long_text(self) -> None:
        """
        Long previews of ASCII and of wider characters render exactly.
        """
        self.assertSame(_document("x" * LONG, "é€😀" * LONG))

    def test_escapes(self) -> None:
        """
        NUL bytes, quotes, backslashes, newlines and U+FFFD (what invalid
        UTF-8 decodes to) are escaped as C{json.dumps} does, whatever slice
        they fall in.
        """
        text = ("\x00\"\\\n\t\ufffd\u2028" * LONG)[:LONG]
        value = _document(text, text)
        self.assertSame(value)
        self.assertEqual(json.loads(b"".join(jsonstream.chunks(value)))["stdout"], text)

    def test_pieces_are_bounded(self) -> None:
        """
        No piece holds more than one slice of a long string: a preview of
        NUL bytes (six bytes each once escaped) comes in pieces of at most
        six slices' bytes.
        """
        pieces = list(jsonstream.chunks(_document("\x00" * LONG)))
        self.assertGreater(len(pieces), 3)
        self.assertLessEqual(max(len(piece) for piece in pieces), 6 * jsonstream.SLICE_CHARS + 1024)

    def test_placeholder_text_in_document(self) -> None:
        """
        A string of the document that looks like a placeholder stays as it
        is (placeholders are random).
        """
        value = _document("y" * LONG, "execgo-slot-0")
        value["metadata"]["fake"] = "execgo-slot-"
        self.assertSame(value)

    def test_nested_and_listed(self) -> None:
        """
        Long strings inside lists and nested objects are streamed too, and
        a value that is not plain JSON for L{pretty} still renders.
        """
        value = {"a": ["z" * LONG, {"b": "w" * LONG}], "n": None, "f": 1.5, "t": True}
        self.assertSame(value)
