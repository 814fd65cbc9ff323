# -*- test-case-name: tests.test_taskfiles,tests.test_cgroups -*-
"""
Whole-file reads and writes through plain C{os} calls.

A Python file object costs four system calls on top of open, read or
write, and close (C{fstat}, a terminal check, two C{lseek}s) plus a
buffer and a text layer; the per-task path reads and writes a dozen small
files (cgroup control files, log previews, C{request.json} and
C{result.json}), so it uses these instead.  Standard library only.
"""

from __future__ import annotations

import codecs
import os
from typing import Iterable, Optional, Tuple

_READ_CHUNK = 65536
#: Control files are a few lines: reading them in small pieces spares the
#: allocator a 64 KiB buffer (and the page faults of growing and trimming
#: its heap) per read.
_CONTROL_CHUNK = 4096


#: Slices L{read_head_text} reads and decodes at a time.
_TEXT_SLICE = 256 * 1024


def read_head_text(path: str, limit: int) -> Tuple[str, int]:
    """
    At most C{limit} bytes from the start of the regular file C{path},
    decoded as UTF-8 with replacement (exactly as the bytes decoded at
    once), and the file's size when opened.

    It reads and decodes a slice at a time: only one slice of bytes is
    held beside the text, and a thread doing this (the server reads
    previews in its store threads) lets others run between slices rather
    than holding the interpreter for the whole decoding (a 16 MiB preview
    of invalid UTF-8 takes about 180 ms to decode).

    @raise OSError: when the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        wanted = min(limit, size)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts = []
        while wanted > 0:
            data = os.read(fd, min(wanted, _TEXT_SLICE))
            if not data:
                break
            wanted -= len(data)
            parts.append(decoder.decode(data))
        parts.append(decoder.decode(b"", final=True))
        return "".join(parts), size
    finally:
        os.close(fd)


def read_text(path: str, limit: int = -1) -> Optional[str]:
    """
    The text of a control file (cgroup, C{/proc}: they report size 0, so it
    is read to its end), at most C{limit} bytes of it when C{limit} is not
    negative, decoded with replacement; C{None} when it cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = _read_up_to(fd, limit if limit >= 0 else 1 << 62, _CONTROL_CHUNK)
        finally:
            os.close(fd)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace")


def _read_up_to(fd: int, wanted: int, chunk_size: int = _READ_CHUNK) -> bytes:
    parts = []
    while wanted > 0:
        chunk = os.read(fd, min(wanted, chunk_size))
        if not chunk:
            break
        parts.append(chunk)
        wanted -= len(chunk)
    return b"".join(parts)


def write_all(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to C{fd}.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_file(path: str, data: bytes, exclusive: bool = False, mode: int = 0o600) -> None:
    """
    Create (or with C{exclusive}, only create) C{path} holding C{data}.

    @raise FileExistsError: with C{exclusive}, when C{path} exists.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_chunks(path: str, chunks: Iterable[bytes], mode: int = 0o600) -> int:
    """
    Create (or truncate) C{path} holding the concatenation of C{chunks},
    written as they come, so a large document never exists whole in
    memory.

    @return: the bytes written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    written = 0
    try:
        for chunk in chunks:
            write_all(fd, chunk)
            written += len(chunk)
    finally:
        os.close(fd)
    return written


def write_control(path: str, text: str) -> None:
    """
    Write C{text} to an existing control file (cgroup, C{/proc}) in one
    C{write}, as the kernel wants it.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)
