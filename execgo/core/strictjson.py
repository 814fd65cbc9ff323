# -*- test-case-name: tests.test_validation -*-
"""
Request bodies parsed as strict JSON (L{parse_json_body}): the size limit,
UTF-8, and JSON without the leniencies of C{json.loads} (no C{NaN} or
C{Infinity}, no duplicate keys, no escapes of a lone UTF-16 surrogate).

The first step of the untrusted-input layer (L{execgo.core.submission});
the CLI uses it alone to read a request it sends.  Standard library only.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

from execgo.core.errors import InvalidInput, PayloadTooLarge
from execgo.core.fields import encodable, show

MAX_BODY_BYTES = 2 * 1024 * 1024

# A JSON escape that could decode to a lone UTF-16 surrogate; only bodies
# containing one need the (slower) walk in _find_lone_surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def parse_json_body(body: bytes) -> Any:
    """
    Parse a request body as one JSON value.

    The body must be at most L{MAX_BODY_BYTES} long, strict UTF-8 (no BOM,
    no other encodings), and one JSON value.  Beyond what C{json.loads}
    enforces, the constants C{NaN}, C{Infinity} and C{-Infinity}, duplicate
    keys in one object, and string escapes that decode to a lone UTF-16
    surrogate (which cannot be stored or re-encoded as UTF-8) are rejected.

    @param body: the raw request body.
    @return: the decoded JSON value (C{dict}, C{list}, C{str}, C{int},
        C{float}, C{bool} or C{None}).
    @raise PayloadTooLarge: if the body is longer than L{MAX_BODY_BYTES}.
    @raise InvalidInput: if the body is not valid UTF-8 JSON.
    """
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(
            f"request body is {len(body)} bytes, more than the limit of "
            f"{MAX_BODY_BYTES} bytes"
        )
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(
            f"request body is not valid UTF-8 (invalid byte at offset {error.start})"
        ) from None
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_object,
        )
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"request body is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno})"
        ) from None
    except ValueError:
        # The only other ValueError json.loads raises: an integer literal with
        # more digits than Python converts (sys.get_int_max_str_digits()).
        raise InvalidInput(
            "request body is not valid JSON: a number has too many digits"
        ) from None
    except RecursionError:
        raise InvalidInput(
            "request body is not valid JSON: nested too deeply"
        ) from None
    if _SURROGATE_ESCAPE.search(text) is not None and _find_lone_surrogate(value):
        raise InvalidInput(
            "request body is not valid JSON: a string escape encodes a lone "
            "UTF-16 surrogate"
        )
    return value


def _reject_constant(name: str) -> NoReturn:
    """
    C{json.loads} hook for the non-standard constants C{NaN} and C{Infinity}.
    """
    raise InvalidInput(f"request body is not valid JSON: {name} is not a JSON value")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    C{json.loads} hook building an object and rejecting repeated keys, whose
    meaning JSON leaves open.
    """
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidInput(
                    f"request body is not valid JSON: duplicate key {show(key)}"
                )
            seen.add(key)
    return result


def _find_lone_surrogate(value: Any) -> bool:
    """
    Whether any string (or object key) inside C{value} holds a lone surrogate.
    Iterative, so no nesting depth can overflow the stack.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not encodable(item):
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
    return False
