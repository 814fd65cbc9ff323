# -*- test-case-name: tests.test_validation -*-
"""
How the untrusted-input layer judges text and names what is wrong with it:
the error for the field at a path (L{fail}), a value quoted for a message
(L{show}), and the two tests of text the parser, the decoder and the rules
share (L{is_blank}, L{encodable}).  Standard library only.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from execgo.core.errors import InvalidInput

# "Trimming" in the contract removes Unicode White_Space, which is not quite
# what str.strip() removes (that also strips the ASCII separators 0x1c-0x1f).
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SHOW_LIMIT = 64


def fail(path: str, problem: str) -> NoReturn:
    """
    Raise L{InvalidInput} for the field at C{path} (e.g.
    C{execution.args[2]}): its detail is C{"<path>: <problem>"}.
    """
    raise InvalidInput(f"{path}: {problem}")


def show(text: Any) -> str:
    """
    Quote C{text} for a message as a JSON string, ASCII-only and cut short.
    """
    if not isinstance(text, str):
        return repr(text)
    if len(text) > _SHOW_LIMIT:
        return json.dumps(text[:_SHOW_LIMIT]) + "..."
    return json.dumps(text)


def is_blank(text: str) -> bool:
    """
    Whether C{text} is empty once Unicode white space (L{WHITESPACE}) is
    trimmed.
    """
    return not text.strip(WHITESPACE)


def encodable(text: str) -> bool:
    """
    Whether C{text} can be encoded as UTF-8 (holds no lone surrogate).
    """
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
