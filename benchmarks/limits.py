"""
The memory and listener sections of the benchmark harness,
run by C{benchmarks/run.py}, which hands its own module in as C{h} (the
figures, the server and client helpers live there).

 7. memory: tasks that wrote C{memory_output_bytes} to stdout (text, then
    NUL bytes, the worst case for JSON escaping; the second stored with a
    limit of 2^63-1, as an older store may hold it), read by six
    concurrent status requests: the server's peak RSS during the reads,
    the supervisor's while it rendered C{result.json}.  RSS comes from
    C{/proc} (C{VmHWM} after a C{clear_refs} reset for the server;
    C{VmRSS} sampled every millisecond for the supervisor, which resets
    its own peak after a large rendering).
 8. listener: a server whose descriptor limit is C{nofile} (1,024 by
    default, as C{ulimit -n 1024} gives) with C{slow_clients} clients
    sending their headers a line a second (reconnecting when cut off) and
    C{idle_clients} kept-alive connections that made one request: the
    time C{/healthz} and a submit take on a fresh connection meanwhile.

Standard library only, like the rest of the harness.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import sqlite3
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

MIB = 1 << 20
CEILING = 16 * MIB
STATUS_READERS = 6
OUTPUT_LIMIT_MAX = 2**63 - 1
PROBE_INTERVAL_S = 0.6


class FastSampler(threading.Thread):
    """
    The largest C{VmRSS} of one pid, sampled every millisecond.
    """

    def __init__(self, h: Any, pid: int) -> None:
        super().__init__(daemon=True)
        self.h = h
        self.pid = pid
        self.peak_kib = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        """
        Sample until L{stop}.
        """
        while not self.stopping.is_set():
            value = self.h.proc_status_kib(self.pid, "VmRSS")
            if value is not None and value > self.peak_kib:
                self.peak_kib = value
            self.stopping.wait(0.001)

    def stop(self) -> int:
        """
        Stop; the peak in KiB.
        """
        self.stopping.set()
        self.join()
        return self.peak_kib


def reset_peak(pid: int) -> None:
    """
    Reset C{pid}'s C{VmHWM} to its current RSS (C{clear_refs} 5).
    """
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def widen_limit(database: str, task_id: str) -> None:
    """
    Give a stored task the output limits of an older store (2^63-1), as
    if it had been accepted before the preview ceiling existed.
    """
    conn = sqlite3.connect(database, timeout=10)
    try:
        row = conn.execute("SELECT limits_json FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        limits = json.loads(row[0])
        limits["stdout_max_bytes"] = OUTPUT_LIMIT_MAX
        conn.execute(
            "UPDATE tasks SET limits_json = ?, stdout_max_bytes = ? WHERE task_id = ?",
            (json.dumps(limits), OUTPUT_LIMIT_MAX, task_id),
        )
        conn.commit()
    finally:
        conn.close()


def wait_ended(h: Any, client: Any, task_id: str, timeout: float = 600.0) -> None:
    """
    Wait on the events endpoint (which carries no output) for the end.
    """
    deadline = time.monotonic() + timeout
    while True:
        events = client.get_json(f"/api/v1/tasks/{task_id}/events")
        if any(e["event_type"] in ("finished", "failed", "cancelled") for e in events):
            return
        if time.monotonic() > deadline:
            raise h.BenchError(f"task {task_id} not ended after {timeout:.0f}s")
        time.sleep(0.05)


def concurrent_status(h: Any, port: int, task_id: str, readers: int) -> Tuple[List[Dict[str, Any]], float]:
    """
    C{readers} status requests at once, each on its own connection; the
    decoded snapshots and the seconds until the last one was read.
    """
    docs: List[Optional[Dict[str, Any]]] = [None] * readers
    errors: List[str] = []
    start = threading.Barrier(readers)

    def read(index: int) -> None:
        client = h.Client(port)
        try:
            start.wait()
            status, body = client.request("GET", f"/api/v1/tasks/{task_id}")
            if status != 200:
                errors.append(f"HTTP {status}")
                return
            doc = json.loads(body)
            del body
            # Keep only what is checked: the previews are large.
            docs[index] = {
                "status": doc["status"],
                "stdout_len": len(doc["stdout"]),
                "stdout_truncated": doc["stdout_truncated"],
            }
        except Exception as e:  # noqa: BLE001 -- reported as a failure of the figure
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            client.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=read, args=(index,)) for index in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors:
        raise h.BenchError(f"status reads failed: {errors[:3]}")
    return [doc for doc in docs if doc is not None], seconds


def run_memory(ctx: Any, h: Any) -> List[Any]:
    """
    Section 7: bounded memory per request (see the module docstring).
    """
    size = ctx.sizes.memory_output_bytes
    server = ctx.new_server("memory")
    server.start()
    client = h.Client(server.port)
    results: Dict[str, Dict[str, float]] = {}
    notes: List[str] = []
    valid = True
    try:
        warm = h.wait_terminal(client, client.submit(h.TRUE_TASK), False, 0.005)
        supervisor_pid = int(warm.get("shim_pid") or 0)
        if warm["status"] != "success" or not supervisor_pid:
            raise h.BenchError(f"warm-up task ended {h.describe_failures([warm])}")
        idle_kib = h.proc_status_kib(server.pid, "VmRSS") or 0
        writers = {
            "text": f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {size}",
            "zeros": f"sleep 0.5; head -c {size} /dev/zero",
        }
        for name, script in writers.items():
            log_line = f"memory: {name}: a task writing {size // MIB} MiB to stdout"
            h.log(log_line + (", stored with stdout_max_bytes 2^63-1" if name == "zeros" else ""))
            sampler = FastSampler(h, supervisor_pid)
            sampler.start()
            task_id = client.submit(
                {
                    "execution": {"kind": "command", "program": "sh", "args": ["-c", script]},
                    "limits": {"stdout_max_bytes": CEILING, "wall_time_ms": 600_000},
                }
            )
            if name == "zeros":
                widen_limit(os.path.join(server.data_dir, "runtime.db"), task_id)
            try:
                wait_ended(h, client, task_id)
                time.sleep(0.05)
            finally:
                supervisor_peak = sampler.stop()
            reset_peak(server.pid)
            before = h.proc_status_kib(server.pid, "VmRSS") or 0
            docs, seconds = concurrent_status(h, server.port, task_id, STATUS_READERS)
            server_peak = h.proc_status_kib(server.pid, "VmHWM") or 0
            good = len(docs) == STATUS_READERS and all(
                doc["status"] == "success" and doc["stdout_len"] == min(size, CEILING)
                and doc["stdout_truncated"] == (size > CEILING)
                for doc in docs
            )
            if not good:
                valid = False
                notes.append(f"{name}: unexpected snapshots {docs[:1]}")
            results[name] = {
                "server_peak": server_peak / 1024,
                "server_before": before / 1024,
                "supervisor_peak": supervisor_peak / 1024,
                "seconds": seconds,
            }
            h.log(
                f"memory: {name}: {STATUS_READERS} status reads in {seconds:.2f}s, server peak"
                f" {server_peak / 1024:.1f} MiB, supervisor peak {supervisor_peak / 1024:.1f} MiB"
            )
    finally:
        client.close()
        server.stop()
    idle = idle_kib / 1024
    server_peak = max(item["server_peak"] for item in results.values())
    supervisor_peak = max(item["supervisor_peak"] for item in results.values())
    note = "; ".join(notes) if notes else ""
    detail = ", ".join(
        f"{name}: server {item['server_peak']:.1f} MiB (from {item['server_before']:.1f}) in"
        f" {item['seconds']:.2f}s, supervisor {item['supervisor_peak']:.1f} MiB"
        for name, item in results.items()
    )
    return [
        h.figure(
            "memory.server_peak_rss_mib", server_peak, idle, "idle server VmRSS MiB",
            met=server_peak <= 200, valid=valid,
            note=note or f"{STATUS_READERS} concurrent GETs of a task with {size // MIB} MiB of stdout"
            f" (preview ceiling {CEILING // MIB} MiB); {detail}",
        ),
        h.figure(
            "memory.supervisor_peak_rss_mib", supervisor_peak, None, "",
            met=supervisor_peak <= 100, valid=valid,
            note=note or "max VmRSS sampled every 1 ms while the task ended (result.json rendered)",
        ),
    ]


# -- 8. listener -----------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket) -> bool:
    """
    Whether the server closed C{sock} (reads what is pending, if any).
    """
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return not data


class SlowClients(threading.Thread):
    """
    C{count} clients sending a request's headers a line a second, never
    finishing them; one the server cuts off is replaced at once.
    """

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.socks = [self._open() for _ in range(count)]
        self.replaced = 0
        self.stopping = threading.Event()

    def _open(self) -> socket.socket:
        sock = _connect(self.port)
        sock.send(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        return sock

    def run(self) -> None:
        """
        Every second, one more header line from each; reconnect the ones
        the server closed.
        """
        line = 0
        while not self.stopping.wait(1.0):
            line += 1
            for index, sock in enumerate(self.socks):
                try:
                    if _closed(sock):
                        raise ConnectionError()
                    sock.send(b"X-Slow-%d: 1\r\n" % line)
                except OSError:
                    sock.close()
                    try:
                        self.socks[index] = self._open()
                        self.replaced += 1
                    except OSError:
                        pass

    def close(self) -> None:
        """
        Stop and close every socket.
        """
        self.stopping.set()
        self.join()
        for sock in self.socks:
            sock.close()


def open_idle(port: int, count: int) -> List[socket.socket]:
    """
    C{count} kept-alive connections, each after one C{/healthz} answered.
    """
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        sock.setblocking(False)
        socks.append(sock)
    return socks


def fresh_request(port: int, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, float]:
    """
    One request on a new connection: its status and seconds.
    """
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - began
    finally:
        connection.close()


def run_listener(ctx: Any, h: Any) -> List[Any]:
    """
    Section 8: the listener's limits under slow and idle clients (see the
    module docstring).
    """
    sizes = ctx.sizes
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        # This process holds every client socket.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = ctx.new_server("listener")
    server.nofile = sizes.nofile
    server.start()
    slow: Optional[SlowClients] = None
    idle: List[socket.socket] = []
    samples: Dict[str, List[float]] = {"healthz": [], "submit": []}
    failures: List[str] = []
    try:
        config = h.Client(server.port)
        try:
            cap = config.get_json("/api/v1/runtime/config")["max_connections"]
        finally:
            config.close()
        h.log(f"listener: {sizes.slow_clients} slow clients, {sizes.idle_clients} idle connections,"
              f" ulimit -n {sizes.nofile} (cap {cap})")
        slow = SlowClients(server.port, sizes.slow_clients)
        slow.start()
        idle = open_idle(server.port, sizes.idle_clients)
        body = json.dumps(h.TRUE_TASK).encode()
        for _ in range(sizes.listener_probes):
            for name, method, path, data in (
                ("healthz", "GET", "/healthz", None),
                ("submit", "POST", "/api/v1/tasks", body),
            ):
                try:
                    status, seconds = fresh_request(server.port, method, path, data)
                except OSError as e:
                    failures.append(f"{name}: {type(e).__name__}: {e}")
                    continue
                if status != 200:
                    failures.append(f"{name}: HTTP {status}")
                samples[name].append(seconds * 1000)
            # Spread over more than the request timeout (10 s for 20
            # probes): slow clients are cut off and come back meanwhile.
            time.sleep(PROBE_INTERVAL_S)
        still_idle = sum(1 for sock in idle if not _closed(sock))
        replaced = slow.replaced
    finally:
        if slow is not None:
            slow.close()
        for sock in idle:
            sock.close()
        server.stop()
    valid = not failures and all(samples.values())
    note = "; ".join(failures[:3])
    figures = []
    for name in ("healthz", "submit"):
        values = samples[name] or [float("nan")]
        worst = max(values)
        figures.append(
            h.figure(
                f"listener.{name}_max_ms", worst if samples[name] else None, None, "",
                met=worst <= 100, valid=valid,
                note=note or f"{len(values)} requests on fresh connections, p50 {h.percentile(values, 0.5):.1f} ms,"
                f" with {sizes.slow_clients} slow clients ({replaced} cut off and replaced) and"
                f" {sizes.idle_clients} idle connections ({still_idle} still open at the end);"
                f" ulimit -n {sizes.nofile}, connection cap {cap}",
            )
        )
    return figures
