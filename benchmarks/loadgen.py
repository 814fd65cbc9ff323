"""
A lean load generator for the throughput figure: many keep-alive HTTP/1.1
clients driven from one thread by one C{selectors} loop.

Each client is sequential, as a real caller is: it submits its share of
tasks one request at a time (one task per request, or with C{batch} that
many per C{POST /api/v1/tasks/batch}), then long-polls each of its tasks
until it is terminal.  The clients run concurrently, interleaved by the
loop.  Compared
with a thread and an C{http.client} connection per client this spends
several times less CPU per request, and on a 2-core machine whatever the
load generator burns is taken from the runtime being measured.

Standard library only.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

TERMINAL = ("success", "failed", "cancelled")


class _Client:
    """
    One sequential client: its request queue and its connection.
    """

    def __init__(self, index: int, port: int, submits: int, wait_ms: int) -> None:
        self.index = index
        self.port = port
        self.submits_left = submits
        self.wait_ms = wait_ms
        self.mine: List[str] = []
        self.polling = 0
        self.sock: Optional[socket.socket] = None
        self.inbox = b""
        self.sent_at = 0.0
        self.done = False

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        return sock


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode("ascii") + b"\r\n" + body


def _parse_response(data: bytes) -> Optional[Tuple[int, bytes, bytes]]:
    """
    The status, body and the bytes after one complete response at the
    start of C{data}, or C{None} while it is incomplete.  Handles
    C{Content-Length} and chunked bodies.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    rest = data[end + 4 :]
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(rest) < length:
            return None
        return status, rest[:length], rest[length:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            line_end = rest.find(b"\r\n")
            if line_end < 0:
                return None
            size = int(rest[:line_end].split(b";")[0], 16)
            if len(rest) < line_end + 2 + size + 2:
                return None
            body += rest[line_end + 2 : line_end + 2 + size]
            rest = rest[line_end + 2 + size + 2 :]
            if size == 0:
                return status, body, rest
    return status, rest, b""


def run_clients(
    port: int, shares: Sequence[int], body: bytes, wait_ms: int, timeout_s: float = 600.0, batch: int = 1
) -> Tuple[List[str], List[float], Dict[str, Tuple[float, Dict[str, Any]]], List[str]]:
    """
    Run one client per share: each submits C{body} that many times (with
    C{batch} above 1, that many tasks per batch request), then long-polls
    (C{?wait_ms=}) each of its tasks until it is terminal.

    @return: the task ids in submission order, the C{perf_counter} time
        each submission was sent, C{task_id -> (time seen terminal, status
        document)}, and the problems met (any makes the run invalid).
    """
    selector = selectors.DefaultSelector()
    clients = [_Client(i, port, share, wait_ms) for i, share in enumerate(shares)]
    order: List[str] = []
    sent: List[float] = []
    done: Dict[str, Tuple[float, Dict[str, Any]]] = {}
    problems: List[str] = []
    submit = _request("POST", "/api/v1/tasks", body)
    batches: Dict[int, bytes] = {}

    def batch_of(count: int) -> bytes:
        if count not in batches:
            tasks = b",".join([body] * count)
            batches[count] = _request("POST", "/api/v1/tasks/batch", b'{"tasks":[' + tasks + b"]}")
        return batches[count]

    def next_request(client: _Client) -> Optional[bytes]:
        if client.submits_left > 0:
            return submit if batch <= 1 else batch_of(min(batch, client.submits_left))
        if client.polling < len(client.mine):
            return _request("GET", f"/api/v1/tasks/{client.mine[client.polling]}?wait_ms={wait_ms}")
        return None

    def send(client: _Client) -> None:
        request = next_request(client)
        if request is None:
            client.done = True
            assert client.sock is not None
            selector.unregister(client.sock)
            client.sock.close()
            return
        assert client.sock is not None
        client.sent_at = time.perf_counter()
        client.sock.sendall(request)

    def accepted(client: _Client, task_id: str) -> None:
        client.mine.append(task_id)
        order.append(task_id)
        sent.append(client.sent_at)

    def answered(client: _Client, status: int, data: bytes) -> None:
        if client.submits_left > 0:
            count = 1 if batch <= 1 else min(batch, client.submits_left)
            client.submits_left -= count
            if status != 200:
                problems.append(f"submit HTTP {status}: {data[:120]!r}")
                return
            if batch <= 1:
                accepted(client, json.loads(data)["task_id"])
                return
            for result in json.loads(data)["results"]:
                if result["http_status"] != 200:
                    problems.append(f"batch item HTTP {result['http_status']}: {json.dumps(result['body'])[:120]}")
                    continue
                accepted(client, result["body"]["task_id"])
            return
        if status != 200:
            problems.append(f"status HTTP {status}: {data[:120]!r}")
            client.polling += 1
            return
        doc = json.loads(data)
        if doc["status"] in TERMINAL:
            done[doc["task_id"]] = (time.perf_counter(), doc)
            client.polling += 1

    for client in clients:
        selector.register(client.connect(), selectors.EVENT_READ, client)
    for client in clients:
        send(client)
    deadline = time.monotonic() + timeout_s
    while not all(client.done for client in clients):
        if time.monotonic() > deadline:
            problems.append(f"not finished after {timeout_s:.0f}s")
            break
        for key, _ in selector.select(1.0):
            client = key.data
            chunk = client.sock.recv(262144)
            if not chunk:
                problems.append(f"client {client.index}: connection closed")
                selector.unregister(client.sock)
                client.done = True
                continue
            client.inbox += chunk
            parsed = _parse_response(client.inbox)
            if parsed is None:
                continue
            status, data, client.inbox = parsed
            answered(client, status, data)
            send(client)
    for client in clients:
        if not client.done and client.sock is not None:
            client.sock.close()
    selector.close()
    return order, sent, done, problems
