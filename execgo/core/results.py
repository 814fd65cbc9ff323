# -*- test-case-name: tests.test_outcome,tests.test_render -*-
"""
What a finished task reports besides its status: its C{error}
(L{ErrorInfo}) and what its workload consumed (L{Usage}).
"""

from __future__ import annotations

from typing import Optional

import attrs

from execgo.core.constants import JSON


@attrs.frozen
class ErrorInfo:
    """
    A task's C{error}: a code from the ErrorCode list and a message.
    """

    code: str
    message: str

    def to_json(self) -> JSON:
        """
        Render: code, message.
        """
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, data: JSON) -> "ErrorInfo":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(code=data["code"], message=data["message"])


@attrs.frozen
class Usage:
    """
    What a finished workload consumed (the status's C{usage}, a
    C{ResourceUsage} on the wire).
    """

    duration_ms: int
    user_cpu_ms: Optional[int] = None
    system_cpu_ms: Optional[int] = None
    max_rss_bytes: Optional[int] = None
    memory_peak_bytes: Optional[int] = None

    def to_json(self) -> JSON:
        """
        Render: duration_ms then the optional figures that are known.
        """
        out: JSON = {"duration_ms": self.duration_ms}
        for name in ("user_cpu_ms", "system_cpu_ms", "max_rss_bytes", "memory_peak_bytes"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, data: JSON) -> "Usage":
        """
        Read back a trusted rendering of L{to_json}.
        """
        return cls(
            duration_ms=data["duration_ms"],
            user_cpu_ms=data.get("user_cpu_ms"),
            system_cpu_ms=data.get("system_cpu_ms"),
            max_rss_bytes=data.get("max_rss_bytes"),
            memory_peak_bytes=data.get("memory_peak_bytes"),
        )
