"""
The names of the HTTP protocol that the server and its clients (the treq
client and the command line) both use: headers, media types, the
long-poll ceiling and the size of a batch.  Each is defined here once, as
text; the server, which reads and writes raw headers, encodes them to
bytes where it needs them.
"""

from __future__ import annotations

__all__ = [
    "IDEMPOTENCY_HEADER",
    "JSON_TYPE",
    "LOG_OFFSET_HEADER",
    "LOG_SIZE_HEADER",
    "MAX_BATCH_TASKS",
    "MAX_WAIT_MS",
    "NDJSON_TYPE",
    "OCTET_TYPE",
    "OWNER_HEADER",
]

MAX_WAIT_MS = 600_000
"""
The longest a status request may be held with C{?wait_ms=N}, in
milliseconds; a larger C{N} is capped to it.
"""

MAX_BATCH_TASKS = 1000
"""
The most tasks one batch submission (C{POST /api/v1/tasks/batch}) may
carry; its body has the same size bound as a single submission's.
"""

OWNER_HEADER = "x-execgo-owner"
"""
The request header naming the caller that asks to kill a task (a task
submitted with an owner is killed only by it).
"""

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""
The request header of an idempotent submission: a retry with the same key
and request gets the first answer and creates nothing.
"""

LOG_SIZE_HEADER = "X-Execgo-Log-Size"
"""
The response header of a log read: the log's size in bytes when the read
began.
"""

LOG_OFFSET_HEADER = "X-Execgo-Offset"
"""
The response header of a log read: the offset its body starts at.
"""

JSON_TYPE = "application/json"
"""
The media type of every JSON answer and of a submission's body.
"""

NDJSON_TYPE = "application/x-ndjson"
"""
The media type of a followed event stream: one JSON event a line.
"""

OCTET_TYPE = "application/octet-stream"
"""
The media type of a log's bytes.
"""
