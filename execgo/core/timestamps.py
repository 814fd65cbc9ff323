# -*- test-case-name: tests.test_timestamps -*-
"""
Timestamps as the API, the events and the logs show them: RFC 3339 in UTC
with a C{Z} suffix, from epoch milliseconds (L{format_ms}) or nanoseconds
(L{format_ns}).  Standard library only.
"""

from __future__ import annotations

import datetime

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _whole_seconds(seconds: int) -> str:
    """
    C{YYYY-MM-DDTHH:MM:SS} of whole epoch seconds, in UTC.
    """
    return (_EPOCH + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


def format_ms(ms: int) -> str:
    """
    An RFC 3339 UTC timestamp with a C{Z} suffix, from epoch milliseconds:
    no fraction when it is zero, else exactly three digits.
    """
    seconds, millis = divmod(ms, 1000)
    stamp = _whole_seconds(seconds)
    if millis:
        return f"{stamp}.{millis:03d}Z"
    return f"{stamp}Z"


def format_ns(ns: int) -> str:
    """
    An RFC 3339 UTC timestamp from epoch nanoseconds, with the shortest
    exact fraction of 0, 3, 6 or 9 digits.
    """
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = _whole_seconds(seconds)
    if not nanos:
        return f"{stamp}Z"
    for digits, scale in ((3, 1_000_000), (6, 1_000)):
        if nanos % scale == 0:
            return f"{stamp}.{nanos // scale:0{digits}d}Z"
    return f"{stamp}.{nanos:09d}Z"


def parse_ms(stamp: str) -> int:
    """
    Epoch milliseconds from an RFC 3339 UTC stamp as L{format_ms} (or
    L{format_ns}, to the millisecond) writes it.

    @raise ValueError: when it is not one.
    """
    if not stamp.endswith("Z"):
        raise ValueError(f"not a UTC timestamp: {stamp!r}")
    moment = datetime.datetime.fromisoformat(stamp[:-1]).replace(tzinfo=datetime.timezone.utc)
    delta = moment - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
