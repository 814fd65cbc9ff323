# -*- test-case-name: tests.test_taskfiles -*-
"""
A task's files under the data directory: their layout (L{task_paths}), the
heads of its logs (L{read_preview}), the status snapshot read from them
(L{snapshot}), and C{result.json} (L{prepare_result}).

Shared by the server and the supervisor, so it imports nothing heavier
than C{attrs}.  Functions that read or write files block: the server calls
them off the reactor thread.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Callable, Optional, Tuple

from execgo.core import jsonstream
from execgo.core.constants import JSON
from execgo.core.encoding import pretty
from execgo.core.models import ExecutionSpec
from execgo.core.records import TaskPaths, TaskRecord
from execgo.core.render import render_status
from execgo.host.fsio import read_head_text, write_chunks, write_file


def script_extension(interpreter: Optional[Tuple[str, ...]]) -> str:
    """
    The script file extension chosen from C{interpreter[0]}: the first of
    C{python}, C{bash}, C{zsh} and C{node} it contains gives C{py}, C{sh},
    C{zsh} or C{js}; anything else (or no interpreter) gives C{sh}.
    """
    first = interpreter[0] if interpreter else ""
    for needle, extension in (("python", "py"), ("bash", "sh"), ("zsh", "zsh"), ("node", "js")):
        if needle in first:
            return extension
    return "sh"


def task_paths(
    data_dir: str, task_id: str, execution: ExecutionSpec, workspace_subdir: Optional[str]
) -> TaskPaths:
    """
    The file layout of one task under an absolute data directory.
    """
    task_dir = os.path.join(data_dir, "tasks", task_id)
    workspace = os.path.join(task_dir, "workspace")
    if workspace_subdir:
        workspace = os.path.normpath(os.path.join(workspace, workspace_subdir))
    script_path = None
    if execution.kind == "script":
        script_path = os.path.join(
            task_dir, "script." + script_extension(execution.interpreter)
        )
    return TaskPaths(
        task_dir=task_dir,
        workspace_dir=workspace,
        request_path=os.path.join(task_dir, "request.json"),
        result_path=os.path.join(task_dir, "result.json"),
        stdout_path=os.path.join(task_dir, "stdout.log"),
        stderr_path=os.path.join(task_dir, "stderr.log"),
        script_path=script_path,
    )


def under(path: str, data_dir: str) -> bool:
    """
    Whether C{path} (a task directory) lies in C{data_dir}'s C{tasks}.
    """
    return os.path.dirname(path) == os.path.join(data_dir, "tasks")


def create_claimed(paths: TaskPaths, request_text: Optional[str]) -> None:
    """
    The files of a task this node claimed and another accepted (blocking):
    the task directory and its workspace, C{request.json} as the
    accepting node wrote it (from the row's copy, when it has one) and
    the empty logs.  What an earlier attempt left is reused.
    """
    os.makedirs(paths.workspace_dir, mode=0o700, exist_ok=True)
    if request_text is not None:
        write_file(paths.request_path, pretty(json.loads(request_text)).encode("utf-8"), mode=0o600)
    for log in (paths.stdout_path, paths.stderr_path):
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))


def read_preview(path: str, max_bytes: int) -> Tuple[str, bool]:
    """
    The head of a log file, decoded with replacement, and whether the file
    is longer than C{max_bytes}.  Read and decoded a slice at a time
    (L{read_head_text}): never more than one slice of bytes beside the
    text; a missing file gives C{("", False)}.
    """
    try:
        text, size = read_head_text(path, max_bytes)
    except FileNotFoundError:
        return "", False
    return text, size > max_bytes


def snapshot(record: TaskRecord, now_ms: int, ceiling: Optional[int] = None) -> JSON:
    """
    Read both previews (blocking) and render the status snapshot.

    @param ceiling: the server's C{--max-output-preview-bytes}: no preview
        is longer, whatever limits the task was stored with (submissions
        above it are refused, but an older store may hold larger limits).
        C{None}: the task's own limits alone.
    """
    stdout_limit = record.limits.stdout_max_bytes
    stderr_limit = record.limits.stderr_max_bytes
    if ceiling is not None:
        stdout_limit = min(stdout_limit, ceiling)
        stderr_limit = min(stderr_limit, ceiling)
    return render_status(
        record,
        read_preview(record.paths.stdout_path, stdout_limit),
        read_preview(record.paths.stderr_path, stderr_limit),
        now_ms,
    )


_result_serial = iter(range(1, 1 << 62))


def prepare_result(
    record: TaskRecord,
    now_ms: int,
    rendered: Optional[Callable[[JSON, int], None]] = None,
    ceiling: Optional[int] = None,
) -> "Callable[[bool], None]":
    """
    Render the terminal snapshot of C{record} and write it beside the
    task's C{result.json}; the returned function renames it into place
    (C{True}) or removes it (C{False}).  Whatever fails, no temporary file
    stays behind: one that could not be written whole (or renamed) is
    removed before the error goes on.

    The file is written as it is rendered (L{jsonstream.chunks}): besides
    the snapshot, only a slice of a preview's escaped text is in memory at
    once, however much escaping lengthens it.

    @param rendered: handed the snapshot and the size of the file's UTF-8
        text, which bounds the snapshot's compact encoding
        (L{execgo.core.encoding.compact}: the same escapes, less white
        space).
    @param ceiling: bounds the previews (L{snapshot}).
    """
    final = snapshot(record, now_ms, ceiling)
    path = record.paths.result_path
    temporary = f"{path}.tmp-{os.getpid()}-{next(_result_serial)}"
    try:
        size = write_chunks(temporary, jsonstream.chunks(final, pretty))
        if size == 0:
            raise OSError(errno.EIO, "nothing was written", temporary)
    except BaseException:
        # A file that could not be written whole is no result: a full
        # disk would otherwise keep one empty file per retry.
        _remove_quietly(temporary)
        raise
    if rendered is not None:
        rendered(final, size)

    def settle(took: bool) -> None:
        if took:
            try:
                os.replace(temporary, path)
            except OSError:
                _remove_quietly(temporary)
                raise
        else:
            os.unlink(temporary)

    return settle


def _remove_quietly(path: str) -> None:
    """
    Remove a temporary file if it is there (and can be removed).
    """
    try:
        os.unlink(path)
    except OSError:
        pass
