# -*- test-case-name: tests.test_jsonstream -*-
"""
JSON documents with long strings, rendered piece by piece.

A status snapshot is a few hundred bytes of fields and up to two output
previews of up to C{--max-output-preview-bytes} each.  Rendered whole, a
preview is copied three times over (the escaped text, the joined document,
its UTF-8 bytes), and escaping can make it six times longer (C{\\u0000}
for each NUL byte a workload wrote): 16 MiB of zeros became about 200 MiB
in flight.  L{chunks} renders the document with every long string replaced
by a placeholder, then yields the text between placeholders and each long
string escaped a slice at a time, as UTF-8.  The concatenation is exactly
what the renderer would have produced for the whole value (JSON escapes
each character on its own, so escaping slices and joining them is escaping
the string), while no more than one slice's worth of escaped text exists
at once.

Standard library only: the supervisor writes C{result.json} with it.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Callable, Dict, Iterator, List, Tuple

from execgo.core.encoding import compact_text

#: Strings longer than this (in characters) are streamed in slices of it.
SLICE_CHARS = 64 * 1024

_escape = json.encoder.encode_basestring


def _lighten(value: Any, token: str, slots: List[str]) -> Any:
    """
    C{value} with every string longer than L{SLICE_CHARS} (a value, not a
    key) replaced by C{<token><n>}, the string kept as C{slots[n]}.
    Containers holding none are returned as they are.
    """
    if isinstance(value, str):
        if len(value) <= SLICE_CHARS:
            return value
        slots.append(value)
        return f"{token}{len(slots) - 1}"
    if isinstance(value, dict):
        out: Dict[Any, Any] = {}
        changed = False
        for key, item in value.items():
            light = _lighten(item, token, slots)
            changed = changed or light is not item
            out[key] = light
        return out if changed else value
    if isinstance(value, list):
        items = [_lighten(item, token, slots) for item in value]
        if any(light is not item for light, item in zip(items, value)):
            return items
        return value
    return value


def chunks(value: Any, render: Callable[[Any], str] = compact_text) -> Iterator[bytes]:
    """
    The UTF-8 bytes of C{render(value)}, in pieces of at most about
    L{SLICE_CHARS} characters' worth for the long strings.

    @param render: a renderer that escapes strings as C{json.dumps} with
        C{ensure_ascii=False} does (L{compact_text}, L{execgo.core.encoding.pretty}).
    """
    slots: List[str] = []
    # A random token: no string of the document can be made to match it.
    token = f"execgo-slot-{secrets.token_hex(12)}-"
    light = _lighten(value, token, slots)
    text = render(light)
    if not slots:
        yield text.encode("utf-8")
        return
    found: List[Tuple[int, int]] = []
    for index in range(len(slots)):
        quoted = f'"{token}{index}"'
        found.append((text.index(quoted), index))
    position = 0
    for at, index in sorted(found):
        yield text[position:at].encode("utf-8") + b'"'
        string = slots[index]
        for start in range(0, len(string), SLICE_CHARS):
            yield _escape(string[start : start + SLICE_CHARS])[1:-1].encode("utf-8")
        yield b'"'
        position = at + len(f'"{token}{index}"')
    yield text[position:].encode("utf-8")


def encoded_length(value: Any, render: Callable[[Any], str] = compact_text) -> int:
    """
    The length of C{render(value)} in UTF-8, computed slice by slice (for
    a C{Content-Length} before the body is produced).
    """
    return sum(len(piece) for piece in chunks(value, render))
