# -*- test-case-name: tests.test_encoding -*-
"""
The two JSON renderings the runtime writes: compact raw UTF-8 for response
bodies (L{compact}, L{compact_text}) and two-space indentation for
C{result.json}, C{request.json} and the CLI's C{wait}/C{run} (L{pretty}).
Standard library only: the supervisor writes C{result.json} with it.
"""

from __future__ import annotations

import json
from typing import Any, List


def compact_text(value: Any) -> str:
    """
    The compact rendering the API answers with, before its UTF-8 encoding.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def compact(value: Any) -> bytes:
    """
    A response body: compact JSON, raw UTF-8.
    """
    return compact_text(value).encode("utf-8")


def pretty(value: Any) -> str:
    """
    Pretty JSON with two-space indentation, as C{result.json} and the CLI's
    C{wait}/C{run} print it: exactly C{json.dumps(value, indent=2,
    ensure_ascii=False)}, in half the time (the standard library indents
    with its pure-Python encoder; this one escapes strings in C and walks
    the few levels of a task document itself).  Anything but plain JSON
    types goes to the standard library.
    """
    parts: List[str] = []
    try:
        _pretty(value, "", parts)
    except _NotPlain:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return "".join(parts)


class _NotPlain(Exception):
    """
    A value L{_pretty} leaves to the standard library.
    """


_escape = json.encoder.encode_basestring


def _pretty(value: Any, indent: str, out: List[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(_escape(value))
    elif kind is dict:
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        separator = "{\n" + inner
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain()
            out.append(separator)
            out.append(_escape(key))
            out.append(": ")
            _pretty(item, inner, out)
            separator = ",\n" + inner
        out.append("\n" + indent + "}")
    elif kind is list:
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        separator = "[\n" + inner
        for item in value:
            out.append(separator)
            _pretty(item, inner, out)
            separator = ",\n" + inner
        out.append("\n" + indent + "]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int:
        out.append(int.__repr__(value))
    else:
        raise _NotPlain()
