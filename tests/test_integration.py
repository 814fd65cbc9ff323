"""
The integration tier: the real server as a process, real workloads, the
real CLI, checked against the documented behaviour (C{docs/api.md},
C{docs/cli.md}, C{docs/architecture.md}).

Servers are started as a user would (L{tests.serverfixture}); tests of a
class share one server where the flags allow it.  Every test ends with no
workload and (once its server is gone) no supervisor of its data directory
left: the fixtures kill leftovers, and the tests that are about killing
check the process tables themselves.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import sys
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests import backends
from tests.serverfixture import (
    ApiClient,
    Reply,
    ServerProcess,
    SharedServer,
    clean_environ,
    free_port,
    kill_leftovers,
    poll,
    process_alive,
    process_exists,
    remove_task_cgroups,
    repository_root,
    run_process,
    sleep,
    task_cgroup_dirs,
    twistd_command,
    workload_pids,
)

VERSION = "1.1.0"
TERMINAL = ("success", "failed", "cancelled")
GRACE = ["--termination-grace-ms", "300"]
SUCCESS_EVENTS = [
    "submitted",
    "accepted",
    "planned",
    "resource_reserved",
    "started",
    "resource_released",
    "finished",
]
STATUS_KEY_ORDER = [
    "task_id",
    "handle_id",
    "status",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "shim_pid",
    "pid",
    "pgid",
    "exit_code",
    "exit_signal",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "error",
    "usage",
    "execution_plan",
    "reservation",
    "artifacts",
    "metadata",
    "node_id",
]
STORE_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z$")
ANY_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.(\d{3}|\d{6}|\d{9}))?Z$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SANDBOX_FALLBACK = "linux_sandbox is unavailable; falling back to process sandbox"
SANDBOX_WARNING = "linux_sandbox is unavailable without root-equivalent namespace permissions"
STABLE_SEMANTICS = [
    "submit",
    "status",
    "events",
    "stdout_stderr",
    "timeout",
    "kill",
    "artifacts",
    "result_persistence",
    "recovery",
]
DEFAULT_LIMITS = {"wall_time_ms": 300000, "stdout_max_bytes": 4194304, "stderr_max_bytes": 4194304}
SIGTERM_MASK = 1 << (signal.SIGTERM - 1)
TREE_SCRIPT = "trap '' TERM\nsh -c 'sleep 60 & sleep 60' &\nsleep 60 &\nwait\n"
EVENT_TYPES = frozenset(
    {
        "submitted",
        "accepted",
        "planned",
        "degraded",
        "resource_reserved",
        "started",
        "kill_requested",
        "timeout_triggered",
        "resource_released",
        "finished",
        "failed",
        "cancelled",
        "recovered",
    }
)


# Request builders


def unique(prefix: str) -> str:
    """
    A task id no other run shares (ids name per-task cgroups, which live
    outside the data directory).
    """
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def command(program: str, *args: str, **fields: Any) -> Dict[str, Any]:
    """
    A C{command} submit request.
    """
    body: Dict[str, Any] = {
        "execution": {"kind": "command", "program": program, "args": list(args)}
    }
    body.update(fields)
    return body


def shell(script: str, **fields: Any) -> Dict[str, Any]:
    """
    A C{command} request running C{/bin/sh -c script}.
    """
    return command("/bin/sh", "-c", script, **fields)


def parse_time(value: str) -> datetime.datetime:
    """
    An RFC 3339 C{...Z} timestamp as an aware datetime (microseconds).
    """
    match = re.match(r"^(.*?)(\.(\d+))?Z$", value)
    assert match is not None, value
    base = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    micros = int((match.group(3) or "0").ljust(9, "0")[:6])
    return base.replace(microsecond=micros, tzinfo=datetime.timezone.utc)


def read_json_file(path: str) -> Tuple[str, Any]:
    """
    A JSON file's text and its value.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text, json.loads(text)


def pretty(value: Any) -> str:
    """
    The pretty form of C{result.json} and of C{wait}'s output (two-space
    indentation, raw UTF-8, no trailing newline).
    """
    return json.dumps(value, indent=2, ensure_ascii=False)


def sigterm_ignored(pid: int) -> bool:
    """
    Whether C{pid}'s C{SigIgn} mask has SIGTERM.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & SIGTERM_MASK)
    except OSError:
        pass
    return False


def remove_cgroup_root(name: str, task_id: str) -> None:
    """
    Remove C{/sys/fs/cgroup/[<hierarchy>/]<name>/<task_id>} and the
    C{<name>} roots themselves (a test-only cgroup root).
    """
    remove_task_cgroups(task_id, f"/sys/fs/cgroup/{name}")
    try:
        hierarchies = os.listdir("/sys/fs/cgroup")
    except OSError:
        hierarchies = []
    for path in [os.path.join("/sys/fs/cgroup", h, name) for h in hierarchies] + [
        os.path.join("/sys/fs/cgroup", name)
    ]:
        try:
            os.rmdir(path)
        except OSError:
            pass


# Shared test steps


class IntegrationMixin:
    """
    Steps shared by every integration test class.

    @ivar api: the L{ApiClient} of the test's server.
    """

    timeout = 60
    api: ApiClient
    server: ServerProcess

    def _reactor(self) -> Any:
        from twisted.internet import reactor

        return reactor

    async def submit(self, body: Mapping[str, Any], api: Optional[ApiClient] = None) -> str:
        """
        Submit C{body}, assert the exact 200 answer, return the task id.
        """
        reply = await (api or self.api).post("/api/v1/tasks", body)
        self.assertEqual(reply.code, 200, reply.body)
        data = reply.json()
        task_id = data["task_id"]
        self.assertEqual(data, {"task_id": task_id, "handle_id": task_id, "status": "accepted"})
        if body.get("task_id") is not None:
            self.assertEqual(task_id, body["task_id"])
        return task_id

    async def status(self, task_id: str, api: Optional[ApiClient] = None) -> Dict[str, Any]:
        """
        The task's status; it must exist.
        """
        reply = await (api or self.api).get(f"/api/v1/tasks/{task_id}")
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.headers.get("content-type"), "application/json")
        return reply.json()

    async def events(self, task_id: str, api: Optional[ApiClient] = None) -> List[Dict[str, Any]]:
        """
        The task's event log; it must exist.
        """
        reply = await (api or self.api).get(f"/api/v1/tasks/{task_id}/events")
        self.assertEqual(reply.code, 200, reply.body)
        return reply.json()

    async def event_types(self, task_id: str, api: Optional[ApiClient] = None) -> List[str]:
        """
        The task's event types, in order.
        """
        return [event["event_type"] for event in await self.events(task_id, api)]

    async def wait_for(
        self, task_id: str, predicate: Any, timeout: float = 15.0, api: Optional[ApiClient] = None
    ) -> Dict[str, Any]:
        """
        Poll the status until C{predicate(status)} holds; return it.
        """

        async def check() -> Optional[Dict[str, Any]]:
            current = await self.status(task_id, api)
            return current if predicate(current) else None

        return await poll(self._reactor(), check, timeout, what=f"task {task_id}")

    async def wait_terminal(
        self, task_id: str, timeout: float = 15.0, api: Optional[ApiClient] = None
    ) -> Dict[str, Any]:
        """
        Poll until the task is terminal.
        """
        return await self.wait_for(task_id, lambda s: s["status"] in TERMINAL, timeout, api)

    async def wait_started(
        self, task_id: str, timeout: float = 15.0, api: Optional[ApiClient] = None
    ) -> Dict[str, Any]:
        """
        Poll until the workload has been launched (C{pid} recorded) and is
        still running.
        """
        current = await self.wait_for(
            task_id, lambda s: "pid" in s or s["status"] in TERMINAL, timeout, api
        )
        self.assertEqual(current["status"], "running", current)
        return current

    async def kill(
        self, task_id: str, owner: Optional[str] = None, api: Optional[ApiClient] = None
    ) -> Reply:
        """
        C{POST .../kill}, with the owner header when given.
        """
        headers = {} if owner is None else {"x-execgo-owner": owner}
        return await (api or self.api).request(
            "POST", f"/api/v1/tasks/{task_id}/kill", headers=headers
        )

    async def cli(
        self, *args: str, env: Optional[Mapping[str, str]] = None
    ) -> Tuple[str, str, int]:
        """
        Run C{python -m execgo <args>} as a real process.

        @return: C{(stdout, stderr, exit code)}.
        """
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "execgo", *args],
            env=clean_environ(env),
            reactor=self._reactor(),
        )
        return out.decode("utf-8"), err.decode("utf-8"), code

    def assert_envelope(
        self, reply: Reply, http_status: int, code: str, prefix: Optional[str] = None
    ) -> Dict[str, Any]:
        """
        The reply is the error envelope with this status and code (and a
        message starting with C{prefix}).
        """
        self.assertEqual(reply.code, http_status, reply.body)
        self.assertEqual(reply.headers.get("content-type"), "application/json")
        body = reply.json()
        self.assertEqual(list(body), ["error"], body)
        error = body["error"]
        self.assertEqual(list(error), ["code", "message"], body)
        self.assertEqual(error["code"], code, body)
        self.assertIsInstance(error["message"], str)
        self.assertTrue(error["message"], body)
        if prefix is not None:
            self.assertTrue(error["message"].startswith(prefix), error["message"])
        return error

    async def kill_tree(self, script: str, min_processes: int, grace_s: float) -> None:
        """
        Run C{script} (a tree of processes that ignore SIGTERM), wait for
        at least C{min_processes} of them, kill the task twice and check
        that it ends C{cancelled} after the grace period with nothing left.
        """
        task_id = unique("tree")
        await self.submit({"task_id": task_id, "execution": {"kind": "script", "script": script}})
        started = await self.wait_started(task_id)
        workspace = os.path.join(self.task_dir(task_id), "workspace")

        def tree_ready() -> Optional[List[int]]:
            pids = workload_pids(workspace)
            return pids if len(pids) >= min_processes else None

        tree = await poll(self._reactor(), tree_ready, timeout=5, what="the process tree")
        await sleep(self._reactor(), 0.05)
        tree = workload_pids(workspace)
        self.assertIn(started["pid"], tree)
        for pid in tree:
            self.assertTrue(sigterm_ignored(pid), f"{pid} does not ignore SIGTERM")
        before = self._reactor().seconds()
        reply = await self.kill(task_id)
        self.assertEqual(reply.code, 200, reply.body)
        again = await self.kill(task_id)
        self.assertEqual(again.code, 200, again.body)
        self.assertEqual(again.json()["status"], "running")
        status = await self.wait_terminal(task_id, timeout=10)
        elapsed = self._reactor().seconds() - before
        self.assertEqual(status["status"], "cancelled", status)
        self.assertEqual(status["error"], {"code": "cancelled", "message": "task cancelled"})
        self.assertEqual(status["exit_signal"], signal.SIGKILL)
        self.assertGreaterEqual(
            elapsed, grace_s - 0.05, "terminal before the grace period: TERM was not ignored?"
        )
        await self.assert_gone(tree)
        types = await self.event_types(task_id)
        self.assertEqual(types.count("kill_requested"), 2)
        self.assertEqual(types[-2:], ["resource_released", "cancelled"])

    def task_dir(self, task_id: str) -> str:
        """
        The absolute task directory under the server's data directory.
        """
        return os.path.join(os.path.abspath(self.server.data_dir), "tasks", task_id)

    async def assert_result_file(self, status: Dict[str, Any]) -> None:
        """
        C{result.json} is pretty-printed and equals the terminal status the
        API shows (every terminal path writes it).  It may appear up to a
        second late: that window is pinned by
        L{TaskExecutionTests.test_result_file_exists_once_terminal}.
        """
        path = status["artifacts"]["result_path"]
        await poll(self._reactor(), lambda: os.path.exists(path), timeout=1.0, what=path)
        text, value = read_json_file(path)
        self.assertEqual(value, status)
        self.assertEqual(text, pretty(value))

    async def assert_gone(self, pids: Sequence[int]) -> None:
        """
        None of C{pids} is alive now, and each has been reaped within 2 s
        (the supervisor, a child subreaper, reaps every descendant).
        """
        alive = [pid for pid in pids if process_alive(pid)]
        self.assertEqual(alive, [], "workload processes survived their task")
        await poll(
            self._reactor(),
            lambda: not any(process_exists(pid) for pid in pids),
            timeout=2.0,
            what=f"{list(pids)} to be reaped",
        )


class SharedServerCase(IntegrationMixin, TestCase):
    """
    A test class whose tests share one server (L{shared}, set per class).
    """

    shared: SharedServer

    def setUp(self) -> "defer.Deferred[None]":
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.server = await type(self).shared.get(self)
        self.api = self.server.client(self)


# Task execution


@backends.each
class TaskExecutionTests(SharedServerCase):
    """
    Workloads run, are limited, killed and classified as
    C{docs/architecture.md} ("Limits and verdicts") says, and what the API
    shows matches the files on disk.
    """

    server_env = {
        "HOSTNAME": "itest host",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp/execgo-itest-tmpdir",
        "USER": "itest-user",
        "EXECGO_ITEST_NOT_PASSED": "secret",
    }

    async def test_command_success(self) -> None:
        """
        A command that succeeds: exit code 0, both streams captured, the
        exact event sequence, C{usage}, absolute artifacts, a normalised
        C{request.json} and a C{result.json} equal to the status.
        """
        task_id = unique("ok")
        await self.submit(
            shell("echo out; echo err >&2", task_id=task_id, metadata={"k": "v", "a": "b"})
        )
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["exit_code"], 0)
        self.assertEqual(status["stdout"], "out\n")
        self.assertEqual(status["stderr"], "err\n")
        self.assertIs(status["stdout_truncated"], False)
        self.assertIs(status["stderr_truncated"], False)
        self.assertEqual(status["handle_id"], task_id)
        self.assertEqual(status["metadata"], {"a": "b", "k": "v"})
        self.assertEqual(list(status["metadata"]), ["a", "k"])
        self.assertEqual(status["reservation"], {"task_slots": 1})
        self.assertEqual(status["pgid"], status["pid"])
        self.assertIsInstance(status["shim_pid"], int)
        self.assertNotIn("error", status)
        self.assertNotIn("exit_signal", status)
        self.assertEqual(list(status), [k for k in STATUS_KEY_ORDER if k in status])
        for key in ("created_at", "updated_at", "started_at", "finished_at"):
            self.assertRegex(status[key], STORE_TIMESTAMP)
        self.assertLessEqual(parse_time(status["created_at"]), parse_time(status["started_at"]))
        self.assertLessEqual(parse_time(status["started_at"]), parse_time(status["finished_at"]))
        self.assertEqual(status["updated_at"], status["finished_at"])
        usage = status["usage"]
        for key in ("duration_ms", "user_cpu_ms", "system_cpu_ms", "max_rss_bytes"):
            self.assertIsInstance(usage[key], int, key)
        self.assertEqual(usage["duration_ms"], status["duration_ms"])
        self.assertGreater(usage["max_rss_bytes"], 0)

        task_dir = self.task_dir(task_id)
        self.assertTrue(os.path.isabs(task_dir))
        self.assertEqual(
            status["artifacts"],
            {
                "task_dir": task_dir,
                "request_path": f"{task_dir}/request.json",
                "result_path": f"{task_dir}/result.json",
                "stdout_path": f"{task_dir}/stdout.log",
                "stderr_path": f"{task_dir}/stderr.log",
            },
        )
        await self.assert_result_file(status)
        text, request = read_json_file(status["artifacts"]["request_path"])
        self.assertEqual(
            request,
            {
                "task_id": task_id,
                "execution": {
                    "kind": "command",
                    "program": "/bin/sh",
                    "args": ["-c", "echo out; echo err >&2"],
                    "env": {},
                },
                "limits": DEFAULT_LIMITS,
                "sandbox": {"profile": "process", "chroot": False},
                "metadata": {"a": "b", "k": "v"},
            },
        )
        self.assertEqual(list(request), ["task_id", "execution", "limits", "sandbox", "metadata"])
        self.assertEqual(text, pretty(request))

        events = await self.events(task_id)
        self.assertEqual([e["event_type"] for e in events], SUCCESS_EVENTS)
        self.assertEqual(
            [e["message"] for e in events],
            [
                "task submitted",
                "task accepted",
                "execution plan resolved",
                "task resources reserved",
                "task started",
                "task resources released",
                "task finished",
            ],
        )
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, sorted(set(seqs)))
        for event in events:
            self.assertEqual(event["task_id"], task_id)
            self.assertRegex(event["timestamp"], STORE_TIMESTAMP)
        planned = events[2]["data"]
        run_as = status["execution_plan"]["run_as"]
        self.assertEqual({**planned, "run_as": run_as}, status["execution_plan"])
        if os.geteuid() == 0:
            # A uid of its own from the default range, gid equal.
            self.assertGreaterEqual(run_as["uid"], 0x70000000)
            self.assertEqual(run_as["gid"], run_as["uid"])
        else:
            self.assertEqual(run_as, {"uid": os.geteuid(), "gid": os.getegid()})
        self.assertEqual(list(planned), sorted(planned))
        self.assertEqual(events[3]["data"], {"task_slots": 1})
        self.assertEqual(events[5]["data"], {"task_slots": 1})

    async def test_script_with_python_interpreter(self) -> None:
        """
        A script task with C{interpreter: ["python3"]} gets its script as
        C{<task_dir>/script.py} by absolute path (so the interpreter finds
        it from the workspace) and runs in the workspace.
        """
        if shutil.which("python3", path=os.environ.get("PATH")) is None:
            raise self.skipTest("python3 is not on PATH")
        task_id = unique("py")
        script = "import os, sys\nprint(sys.argv[0])\nprint(os.getcwd())\n"
        await self.submit(
            {
                "task_id": task_id,
                "execution": {"kind": "script", "script": script, "interpreter": ["python3"]},
            }
        )
        status = await self.wait_terminal(task_id)
        task_dir = self.task_dir(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["artifacts"]["script_path"], f"{task_dir}/script.py")
        self.assertEqual(status["stdout"], f"{task_dir}/script.py\n{task_dir}/workspace\n")
        with open(f"{task_dir}/script.py", encoding="utf-8") as f:
            self.assertEqual(f.read(), script)
        self.assertEqual(os.stat(f"{task_dir}/script.py").st_mode & 0o777, 0o700)
        self.assertEqual(await self.event_types(task_id), SUCCESS_EVENTS)

    async def test_script_without_interpreter(self) -> None:
        """
        A script task without interpreter runs as C{/bin/sh -c <script>}
        (C{args} ignored) in C{workspace/<workspace_subdir>}; the script is
        still written to C{script.sh}.
        """
        task_id = unique("sh")
        script = 'echo "$0"; pwd; echo "$#"'
        await self.submit(
            {
                "task_id": task_id,
                "execution": {"kind": "script", "script": script, "args": ["x", "y"]},
                "sandbox": {"workspace_subdir": "sub/dir"},
            }
        )
        status = await self.wait_terminal(task_id)
        task_dir = self.task_dir(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["stdout"], f"/bin/sh\n{task_dir}/workspace/sub/dir\n0\n")
        self.assertEqual(status["artifacts"]["script_path"], f"{task_dir}/script.sh")
        with open(f"{task_dir}/script.sh", encoding="utf-8") as f:
            self.assertEqual(f.read(), script)
        self.assertEqual(
            status["execution_plan"]["effective_sandbox"],
            {"profile": "process", "workspace_subdir": "sub/dir", "chroot": False},
        )

    async def test_environment(self) -> None:
        """
        The workload sees only C{PATH}, C{HOME}, C{LANG}, C{TMPDIR} and
        C{USER} from the server's environment, overridden and extended by
        the task's C{env}.
        """
        task_id = unique("env")
        await self.submit(
            {
                "task_id": task_id,
                "execution": {
                    "kind": "command",
                    "program": "env",
                    "env": {"EXTRA_VAR": "x=y", "USER": "task-user"},
                },
            }
        )
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        seen = dict(line.split("=", 1) for line in status["stdout"].splitlines())
        server_env = clean_environ(self.server_env)
        expected = {
            name: server_env[name]
            for name in ("PATH", "HOME", "LANG", "TMPDIR")
            if name in server_env
        }
        if os.geteuid() == 0:
            # A task with a uid of its own has its workspace as home.
            expected["HOME"] = os.path.join(self.task_dir(task_id), "workspace")
        expected.update({"USER": "task-user", "EXTRA_VAR": "x=y"})
        self.assertEqual(seen, expected)

    async def test_derived_runtime_id(self) -> None:
        """
        Without C{--runtime-id} the id is C{<HOSTNAME>-<listen addr>} with
        unsafe characters replaced by C{-}.
        """
        reply = await self.api.get("/api/v1/runtime/config")
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json()["runtime_id"], f"itest-host-127.0.0.1-{self.server.port}")

    async def test_exit_nonzero(self) -> None:
        """
        A non-zero exit is C{failed} / C{exit_nonzero} / C{task exited
        with code 3}.
        """
        task_id = unique("exit3")
        await self.submit(shell("echo before; exit 3", task_id=task_id))
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "failed")
        self.assertEqual(status["exit_code"], 3)
        self.assertNotIn("exit_signal", status)
        self.assertEqual(
            status["error"], {"code": "exit_nonzero", "message": "task exited with code 3"}
        )
        self.assertEqual(status["stdout"], "before\n")
        events = await self.events(task_id)
        self.assertEqual([e["event_type"] for e in events], SUCCESS_EVENTS[:-1] + ["failed"])
        self.assertEqual(events[-1]["message"], "task failed")
        await self.assert_result_file(status)

    async def test_launch_failed(self) -> None:
        """
        A program that does not exist (by path, or not on C{PATH}) is
        C{failed} / C{launch_failed} with C{spawn process: ...}, duration
        0, no C{started} event, and a C{result.json}.
        """
        for program in ("/nonexistent/execgo-itest-missing", "execgo-itest-no-such-program"):
            task_id = unique("nolaunch")
            await self.submit(command(program, task_id=task_id))
            status = await self.wait_terminal(task_id)
            self.assertEqual(status["status"], "failed", status)
            self.assertEqual(status["error"]["code"], "launch_failed")
            self.assertTrue(
                status["error"]["message"].startswith("spawn process: "), status["error"]
            )
            self.assertEqual(status["duration_ms"], 0)
            self.assertEqual(status["usage"], {"duration_ms": 0})
            for absent in ("started_at", "pid", "pgid", "exit_code", "exit_signal"):
                self.assertNotIn(absent, status)
            self.assertEqual(
                await self.event_types(task_id),
                [
                    "submitted",
                    "accepted",
                    "planned",
                    "resource_reserved",
                    "resource_released",
                    "failed",
                ],
            )
            await self.assert_result_file(status)

    async def test_timeout(self) -> None:
        """
        A workload past C{wall_time_ms} is terminated: C{failed} /
        C{timeout}, one C{timeout_triggered} event, and its process is gone.
        """
        task_id = unique("timeout")
        await self.submit(shell("sleep 30", task_id=task_id, limits={"wall_time_ms": 300}))
        started = await self.wait_started(task_id)
        status = await self.wait_terminal(task_id, timeout=10)
        self.assertEqual(status["status"], "failed")
        self.assertEqual(
            status["error"], {"code": "timeout", "message": "task exceeded wall_time_ms"}
        )
        self.assertGreaterEqual(status["duration_ms"], 295)
        self.assertLess(status["duration_ms"], 300 + 200, "the timeout took effect late")
        self.assertEqual(
            await self.event_types(task_id),
            SUCCESS_EVENTS[:5] + ["timeout_triggered", "resource_released", "failed"],
        )
        await self.assert_gone([started["pid"]])
        await self.assert_result_file(status)

    async def test_kill_running(self) -> None:
        """
        Killing a running task ends it C{cancelled} / C{task cancelled}
        with a C{kill_requested} event; the kill answer is the snapshot.
        """
        task_id = unique("kill")
        await self.submit(shell("sleep 30", task_id=task_id))
        started = await self.wait_started(task_id)
        for absent in ("finished_at", "error", "exit_code", "exit_signal"):
            self.assertNotIn(absent, started)
        self.assertIsInstance(started["duration_ms"], int)
        self.assertEqual(started["usage"], {"duration_ms": started["duration_ms"]})
        before = self._reactor().seconds()
        reply = await self.kill(task_id)
        self.assertEqual(reply.code, 200, reply.body)
        snapshot = reply.json()
        self.assertEqual(snapshot["task_id"], task_id)
        self.assertIn(snapshot["status"], ("running", "cancelled"))
        status = await self.wait_terminal(task_id, timeout=5)
        self.assertLess(self._reactor().seconds() - before, 0.5, "kill took effect slowly")
        self.assertEqual(status["status"], "cancelled")
        self.assertEqual(status["error"], {"code": "cancelled", "message": "task cancelled"})
        events = await self.events(task_id)
        self.assertEqual(
            [e["event_type"] for e in events],
            SUCCESS_EVENTS[:5] + ["kill_requested", "resource_released", "cancelled"],
        )
        self.assertEqual(events[5]["message"], "kill requested")
        self.assertEqual(events[-1]["message"], "task cancelled")
        await self.assert_gone([started["pid"]])
        await self.assert_result_file(status)

    async def test_kill_escalates_to_sigkill(self) -> None:
        """
        A process tree whose members all ignore SIGTERM (grandchildren
        included) is SIGKILLed after the grace period; the task is
        C{cancelled} only once none of its processes is left.
        """
        await self.kill_tree(TREE_SCRIPT, 4, 0.3)

    async def test_kill_reaches_daemonised_grandchild(self) -> None:
        """
        With a per-task cgroup, the kill also reaches a grandchild that left
        the process group with C{setsid} (signals go to the whole cgroup).
        """
        await self.require_cgroups()
        script = TREE_SCRIPT.replace("wait\n", "setsid sh -c 'sleep 60; true' &\nwait\n")
        await self.kill_tree(script, 5, 0.3)

    async def test_kill_terminal_task(self) -> None:
        """
        Killing a terminal task answers 200 with its snapshot and changes
        nothing: no event, same record.
        """
        task_id = unique("done")
        await self.submit(command("true", task_id=task_id))
        before = await self.wait_terminal(task_id)
        events_before = await self.events(task_id)
        reply = await self.kill(task_id)
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.json(), before)
        self.assertEqual((await self.kill(task_id, "anyone")).json(), before)
        self.assertEqual(await self.status(task_id), before)
        self.assertEqual(await self.events(task_id), events_before)

    async def test_cpu_time_limit(self) -> None:
        """
        A busy loop with C{cpu_time_sec: 1} ends C{failed} /
        C{cpu_limit_exceeded} (the hard C{RLIMIT_CPU} is a second above the
        soft one, so the kernel sends SIGXCPU first).
        """
        task_id = unique("cpu")
        await self.submit(
            shell(
                "while :; do :; done",
                task_id=task_id,
                limits={"cpu_time_sec": 1, "wall_time_ms": 20000},
            )
        )
        status = await self.wait_terminal(task_id, timeout=20)
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(
            status["error"], {"code": "cpu_limit_exceeded", "message": "task exceeded cpu_time_sec"}
        )
        enforcement = status["execution_plan"]["resource_enforcement"]
        self.assertEqual(enforcement["cpu_time_sec"], 1)
        self.assertIs(enforcement["cpu_time_enforced"], True)
        self.assertGreaterEqual(
            status["usage"]["user_cpu_ms"] + status["usage"]["system_cpu_ms"], 500
        )

    async def test_output_cap(self) -> None:
        """
        C{stdout_max_bytes} bounds only the inline preview: exactly that
        many bytes, C{stdout_truncated: true}; the log keeps all 100 KB.  A
        stream exactly at its limit is not truncated.
        """
        task_id = unique("cap")
        await self.submit(
            shell(
                "head -c 102400 /dev/zero | tr '\\0' a; head -c 1000 /dev/zero | tr '\\0' b >&2",
                task_id=task_id,
                limits={"stdout_max_bytes": 1000, "stderr_max_bytes": 1000},
            )
        )
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["stdout"], "a" * 1000)
        self.assertIs(status["stdout_truncated"], True)
        self.assertEqual(status["stderr"], "b" * 1000)
        self.assertIs(status["stderr_truncated"], False)
        self.assertEqual(os.path.getsize(status["artifacts"]["stdout_path"]), 102400)
        await self.assert_result_file(status)

    async def test_invalid_utf8_replaced(self) -> None:
        """
        Invalid UTF-8 in the preview, and a multi-byte character cut at the
        limit, become U+FFFD.
        """
        task_id = unique("utf8")
        await self.submit(
            shell(
                "printf 'ok\\377\\376end\\n'; printf 'ab\\303\\251' >&2",
                task_id=task_id,
                limits={"stderr_max_bytes": 3},
            )
        )
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertEqual(status["stdout"], "ok\ufffd\ufffdend\n")
        self.assertEqual(status["stderr"], "ab\ufffd")
        self.assertIs(status["stderr_truncated"], True)

    async def require_cgroups(self) -> None:
        """
        Skip unless this host gives the runtime writable per-task cgroups.
        """
        caps = (await self.api.get("/api/v1/runtime/capabilities")).json()
        if not caps["resources"]["cgroup_writable"]:
            raise self.skipTest("no writable cgroup on this host")

    async def test_cgroup_lifecycle(self) -> None:
        """
        Where cgroups are writable the workload is in its per-task cgroup
        from its first instruction, and the cgroup is removed when the task
        ends.
        """
        await self.require_cgroups()
        task_id = unique("cg")
        self.addCleanup(remove_task_cgroups, task_id)
        await self.submit(command("cat", "/proc/self/cgroup", task_id=task_id))
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertIs(status["execution_plan"]["resource_enforcement"]["cgroup_enforced"], True)
        mine = [
            line
            for line in status["stdout"].splitlines()
            if line.endswith(f":/execgo-runtime/{task_id}")
        ]
        self.assertTrue(mine, status["stdout"])
        self.assertEqual(task_cgroup_dirs(task_id), [])

    async def test_memory_limit(self) -> None:
        """
        A workload over C{memory_bytes} is OOM-killed in its cgroup:
        C{failed} / C{memory_limit_exceeded}, with C{memory_peak_bytes}.
        """
        await self.require_cgroups()
        if shutil.which("python3", path=os.environ.get("PATH")) is None:
            raise self.skipTest("python3 is not on PATH")
        task_id = unique("oom")
        self.addCleanup(remove_task_cgroups, task_id)
        await self.submit(
            command(
                "python3",
                "-c",
                "import time; a = 'x' * (300 << 20); time.sleep(5)",
                task_id=task_id,
                limits={"memory_bytes": 64 << 20},
            )
        )
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(
            status["error"],
            {"code": "memory_limit_exceeded", "message": "task exceeded memory limit"},
        )
        enforcement = status["execution_plan"]["resource_enforcement"]
        self.assertEqual(
            (
                enforcement["memory_bytes"],
                enforcement["memory_enforced"],
                enforcement["oom_detection"],
            ),
            (64 << 20, True, True),
        )
        self.assertIn("memory_peak_bytes", status["usage"])
        self.assertEqual(status["reservation"], {"task_slots": 1, "memory_bytes": 64 << 20})
        reserved = [e for e in await self.events(task_id) if e["event_type"] == "resource_reserved"]
        self.assertEqual(
            [e["data"] for e in reserved], [{"memory_bytes": 64 << 20, "task_slots": 1}]
        )
        self.assertEqual(list(reserved[0]["data"]), ["memory_bytes", "task_slots"])
        self.assertEqual(task_cgroup_dirs(task_id), [])

    async def test_pids_limit(self) -> None:
        """
        C{pids_max} caps the task's processes through its cgroup: forks
        beyond it fail.
        """
        await self.require_cgroups()
        task_id = unique("pids")
        self.addCleanup(remove_task_cgroups, task_id)
        await self.submit(
            shell(
                "for i in 1 2 3 4 5 6; do sleep 1 & done; wait",
                task_id=task_id,
                limits={"pids_max": 3},
            )
        )
        status = await self.wait_terminal(task_id)
        enforcement = status["execution_plan"]["resource_enforcement"]
        self.assertEqual((enforcement["pids_max"], enforcement["pids_enforced"]), (3, True))
        self.assertEqual(status["status"], "failed", status)
        self.assertIn("fork", status["stderr"].lower())
        self.assertEqual(status["reservation"], {"task_slots": 1, "pids": 3})

    async def test_pids_limit_events_are_contract_events(self) -> None:
        """
        Hitting C{pids_max} adds exactly one event type to the contract's
        (C{EVENT_TYPES}): C{pids_limit_reached}, which says the limit was
        hit.
        """
        await self.require_cgroups()
        task_id = unique("pidsev")
        self.addCleanup(remove_task_cgroups, task_id)
        await self.submit(
            shell(
                "for i in 1 2 3 4 5 6; do sleep 1 & done; wait",
                task_id=task_id,
                limits={"pids_max": 3},
            )
        )
        await self.wait_terminal(task_id)
        # An event says the pids limit was hit: the one event type the
        # runtime adds to the contract's (EVENT_TYPES).
        types = await self.event_types(task_id)
        self.assertEqual(set(types) - EVENT_TYPES, {"pids_limit_reached"})

    async def test_daemonised_grandchild_does_not_outlive_task(self) -> None:
        """
        A grandchild that left the process group (C{setsid}) does not
        outlive a task that exited normally: at the end of a task everything
        it started is killed and reaped.
        """
        await self.require_cgroups()
        task_id = unique("daemon")
        self.addCleanup(remove_task_cgroups, task_id)
        await self.submit(shell("setsid sleep 61 >/dev/null 2>&1 & echo $!", task_id=task_id))
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        await self.assert_gone([int(status["stdout"])])

    async def test_timeout_wins_over_kill(self) -> None:
        """
        A kill that arrives after the timeout fired (workload ignoring
        SIGTERM, so still running) does not change the outcome:
        C{failed} / C{timeout}, killed by SIGKILL after the grace.
        """
        task_id = unique("tokill")
        await self.submit(
            {
                "task_id": task_id,
                "execution": {"kind": "script", "script": "trap '' TERM\nsleep 30\n"},
                "limits": {"wall_time_ms": 200},
            }
        )
        await self.wait_started(task_id)

        async def timed_out() -> bool:
            return "timeout_triggered" in await self.event_types(task_id)

        await poll(self._reactor(), timed_out, timeout=5, what="timeout_triggered")
        reply = await self.kill(task_id)
        self.assertEqual(reply.code, 200, reply.body)
        status = await self.wait_terminal(task_id)
        self.assertEqual(
            status["error"], {"code": "timeout", "message": "task exceeded wall_time_ms"}
        )
        self.assertEqual(status["exit_signal"], signal.SIGKILL)
        types = await self.event_types(task_id)
        self.assertEqual(types.count("timeout_triggered"), 1)
        self.assertEqual(types[-2:], ["resource_released", "failed"])
        self.assertIn("kill_requested", types)

    async def test_many_tasks_at_once(self) -> None:
        """
        Thirty tasks submitted at once on four slots all succeed with their
        own output and event sequence; the ledger is empty afterwards.
        """
        ids = [unique(f"many{i}") for i in range(30)]
        await defer.gatherResults(
            [
                defer.ensureDeferred(self.submit(shell(f"echo {i}", task_id=task_id)))
                for i, task_id in enumerate(ids)
            ]
        )
        for i, task_id in enumerate(ids):
            status = await self.wait_terminal(task_id, timeout=30)
            self.assertEqual((status["status"], status["stdout"]), ("success", f"{i}\n"))
            self.assertEqual(await self.event_types(task_id), SUCCESS_EVENTS)
            await self.assert_result_file(status)
        resources = (await self.api.get("/api/v1/runtime/resources")).json()
        self.assertEqual(resources["active_reservations"], [])
        self.assertEqual(resources["reserved"]["task_slots"], 0)
        self.assertEqual(resources["accepted_waiting_tasks"], 0)

    async def test_result_file_exists_once_terminal(self) -> None:
        """
        As soon as a task is terminal in the store (which is what the API
        shows), its C{result.json} exists.  The store is read directly, far more often than HTTP
        polling could, and each task's output makes its C{result.json}
        take a few milliseconds to render, so a window between the terminal
        write and the file write cannot go unseen.
        """
        missing: List[str] = []
        connection = self.server.store_reader()
        self.addCleanup(connection.close)
        for i in range(6):
            task_id = await self.submit(
                shell("head -c 262144 /dev/zero | tr '\\0' '\\1'", task_id=unique(f"resfile{i}"))
            )
            result_path = os.path.join(self.task_dir(task_id), "result.json")
            deadline = self._reactor().seconds() + 10
            while self._reactor().seconds() < deadline:
                row = connection.execute(
                    "SELECT status FROM tasks WHERE task_id = ?", (task_id,)
                ).fetchone()
                if row is not None and row[0] in TERMINAL:
                    if not os.path.exists(result_path):
                        missing.append(task_id)
                    break
                await sleep(self._reactor(), 0)
            self.assertEqual((await self.status(task_id))["status"], "success")
        self.assertEqual(missing, [], "terminal in the store before result.json existed")


    async def test_kill_right_after_submit(self) -> None:
        """
        Kills that race the dispatch (the task may still be queued, handed
        to the supervisor, or just launched) all end in one C{cancelled}
        record: one terminal event, last, at most one release, and a
        C{result.json}.
        """
        ids = [unique(f"race{i}") for i in range(12)]
        for task_id in ids:
            await self.submit(shell("sleep 30", task_id=task_id))
            reply = await self.kill(task_id)
            self.assertEqual(reply.code, 200, reply.body)
        for task_id in ids:
            status = await self.wait_terminal(task_id, timeout=10)
            self.assertEqual(status["status"], "cancelled", status)
            self.assertIn(
                status["error"]["message"],
                (
                    "task cancelled before execution",
                    "task cancelled before process launch",
                    "task cancelled",
                ),
            )
            await self.assert_result_file(status)
            types = await self.event_types(task_id)
            self.assertEqual(types[-1], "cancelled", types)
            self.assertEqual([t for t in types if t in TERMINAL], ["cancelled"], types)
            self.assertLessEqual(types.count("resource_released"), 1, types)
            self.assertEqual(
                types.count("resource_reserved"), types.count("resource_released"), types
            )
        resources = (await self.api.get("/api/v1/runtime/resources")).json()
        self.assertEqual(resources["active_reservations"], [])

    async def test_concurrent_duplicate_submissions(self) -> None:
        """
        Of ten concurrent submissions with one id exactly one wins; the
        losers get 409 and do not overwrite the winner's C{request.json}
        (the id is checked before anything is written).
        """
        task_id = unique("samedup")
        bodies = [command("true", task_id=task_id, metadata={"n": str(i)}) for i in range(10)]
        replies = await defer.gatherResults(
            [defer.ensureDeferred(self.api.post("/api/v1/tasks", body)) for body in bodies]
        )
        codes = [reply.code for reply in replies]
        self.assertEqual(sorted(codes), [200] + [409] * 9, codes)
        winner = bodies[codes.index(200)]
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["metadata"], winner["metadata"])
        _, request = read_json_file(status["artifacts"]["request_path"])
        self.assertEqual(request["metadata"], winner["metadata"])

    async def test_output_limit_ceiling(self) -> None:
        """
        By default an output limit above 16 MiB (the preview ceiling) is
        refused at submit, naming the ceiling and its flag; the ceiling
        itself is accepted, and its preview allocates only what the log
        holds, never the limit.
        """
        refused = await self.api.post(
            "/api/v1/tasks", shell("echo big", limits={"stdout_max_bytes": 2**63 - 1})
        )
        self.assertEqual(refused.code, 400)
        self.assertEqual(
            refused.json()["error"]["message"],
            "invalid input: limits.stdout_max_bytes: must be at most 16777216 (--max-output-preview-bytes)",
        )
        task_id = unique("ceiling")
        await self.submit(shell("echo small", task_id=task_id, limits={"stdout_max_bytes": 16777216}))
        status = await self.wait_terminal(task_id)
        self.assertEqual(
            (status["status"], status["stdout"], status["stdout_truncated"]), ("success", "small\n", False)
        )

    async def test_owner_gated_kill(self) -> None:
        """
        A task with an owner can only be killed with the exact (trimmed,
        case-sensitive) C{x-execgo-owner} header; the check also applies
        once the task is terminal.  The control context is not echoed.
        """
        task_id = unique("owned")
        await self.submit(
            shell("sleep 30", task_id=task_id, control_context={"owner": "alice", "tenant": "t"})
        )
        started = await self.wait_started(task_id)
        self.assertNotIn("control_context", started)
        for owner in (None, "bob", "ALICE", "", "alic\xe9"):
            self.assert_envelope(
                await self.kill(task_id, owner), 403, "permission_denied", "permission denied: "
            )
        self.assertEqual((await self.status(task_id))["status"], "running")
        self.assertNotIn("kill_requested", await self.event_types(task_id))
        reply = await self.kill(task_id, " alice ")
        self.assertEqual(reply.code, 200, reply.body)
        status = await self.wait_terminal(task_id, timeout=5)
        self.assertEqual(status["status"], "cancelled")
        self.assert_envelope(await self.kill(task_id), 403, "permission_denied")
        self.assertEqual((await self.kill(task_id, "alice")).json(), status)


TaskExecutionTests.shared = SharedServer(
    TaskExecutionTests, GRACE, env=TaskExecutionTests.server_env
)


# Request errors


class RequestErrorTests(SharedServerCase):
    """
    Every rejection uses the error envelope and its status; no request
    gets a 5xx because of what it contains.
    """

    async def submit_raw(self, body: bytes, content_type: str = "application/json") -> Reply:
        """
        POST raw bytes to C{/api/v1/tasks}.
        """
        return await self.api.request(
            "POST", "/api/v1/tasks", body=body, headers={"Content-Type": content_type}
        )

    async def test_invalid_json(self) -> None:
        """
        A body that is not JSON (or empty) is 400 C{invalid_input}.
        """
        for body in (b"{", b"", b"{'a': 1}", b"\xff"):
            self.assert_envelope(
                await self.submit_raw(body), 400, "invalid_input", "invalid input: "
            )

    async def test_not_an_object(self) -> None:
        """
        Valid JSON that is not an object is 400 C{invalid_input}.
        """
        for body in (b"[]", b'"x"', b"5", b"null", b"true"):
            self.assert_envelope(await self.submit_raw(body), 400, "invalid_input")

    async def test_missing_execution(self) -> None:
        """
        No C{execution}, or C{null}, is 400 C{invalid_input}.
        """
        for body in ({}, {"execution": None}, {"task_id": "x"}):
            self.assert_envelope(await self.api.post("/api/v1/tasks", body), 400, "invalid_input")

    async def test_wrong_types(self) -> None:
        """
        Wrong JSON types, unknown enum values, negative, fractional and
        oversized integers, and C{null} where not allowed are all 400
        C{invalid_input} (never 415/422).
        """
        ok = {"kind": "command", "program": "true"}
        bodies = [
            {"execution": {"kind": "command", "program": 5}},
            {"execution": {"kind": "command", "program": "true", "args": "x"}},
            {"execution": {"kind": "command", "program": "true", "args": [1]}},
            {"execution": {"kind": "command", "program": "true", "env": {"A": 1}}},
            {"execution": {"kind": "shell", "program": "true"}},
            {"execution": ok, "limits": None},
            {"execution": ok, "limits": {"wall_time_ms": -1}},
            {"execution": ok, "limits": {"wall_time_ms": 1.5}},
            {"execution": ok, "limits": {"wall_time_ms": "100"}},
            {"execution": ok, "limits": {"wall_time_ms": 18446744073709551616}},
            {"execution": ok, "limits": {"memory_bytes": -5}},
            {"execution": ok, "metadata": {"a": 1}},
            {"execution": ok, "metadata": None},
            {"execution": ok, "sandbox": {"profile": "vm"}},
            {"execution": ok, "sandbox": {"chroot": "yes"}},
            {"execution": ok, "policy": {"capability_mode": "lenient"}},
            {"execution": ok, "control_context": {"requires_strict_sandbox": "true"}},
            {"execution": ok, "task_id": 5},
        ]
        for body in bodies:
            error = self.assert_envelope(
                await self.api.post("/api/v1/tasks", body), 400, "invalid_input"
            )
            self.assertTrue(error["message"].startswith("invalid input: "), (body, error))

    async def test_validation_failures(self) -> None:
        """
        Zero limits and the other semantic rules of submit are 400
        C{invalid_input}.
        """
        ok = {"kind": "command", "program": "true"}
        bodies = [
            {"execution": ok, "limits": {"memory_bytes": 0}},
            {"execution": ok, "limits": {"cpu_time_sec": 0}},
            {"execution": ok, "limits": {"pids_max": 0}},
            {"execution": ok, "limits": {"wall_time_ms": 0}},
            {"execution": ok, "limits": {"stdout_max_bytes": 0}},
            {"execution": ok, "limits": {"stderr_max_bytes": 9223372036854775808}},
            {"execution": {"kind": "command", "program": "  "}},
            {"execution": {"kind": "command"}},
            {"execution": {"kind": "script", "script": " "}},
            {"execution": {"kind": "script", "script": "x", "interpreter": []}},
            {"execution": {"kind": "command", "program": "true", "script": "x"}},
            {"execution": {"kind": "command", "program": "true", "env": {"A=B": "1"}}},
            {"execution": ok, "sandbox": {"workspace_subdir": "../x"}},
            {"execution": ok, "sandbox": {"workspace_subdir": "/abs"}},
            {"execution": ok, "sandbox": {"chroot": True, "rootfs": "/"}},
            {"execution": ok, "control_context": {"owner": " "}},
            {"execution": ok, "control_context": {"labels": {"a=b": "c"}}},
        ]
        for body in bodies:
            self.assert_envelope(await self.api.post("/api/v1/tasks", body), 400, "invalid_input")

    async def test_content_type_ignored(self) -> None:
        """
        The body is parsed as JSON whatever its C{Content-Type} says.
        """
        for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
            task_id = unique("ctype")
            body = json.dumps(command("true", task_id=task_id)).encode()
            reply = await self.submit_raw(body, content_type)
            self.assertEqual(reply.code, 200, (content_type, reply.body))
            self.assertEqual((await self.wait_terminal(task_id))["status"], "success")

    async def test_body_size_limit(self) -> None:
        """
        A body of exactly 2 MiB is accepted; one byte more is 413
        C{invalid_input}.
        """
        task_id = unique("big")
        head = json.dumps(command("true", task_id=task_id))[:-1] + ', "metadata": {"pad": "'
        tail = '"}}'
        limit = 2 * 1024 * 1024
        body = (head + "x" * (limit - len(head) - len(tail)) + tail).encode()
        self.assertEqual(len(body), limit)
        self.assert_envelope(await self.submit_raw(body + b" "), 413, "invalid_input")
        reply = await self.submit_raw(body)
        self.assertEqual(reply.code, 200, reply.body[:200])
        self.assertEqual((await self.wait_terminal(task_id))["status"], "success")

    async def test_unknown_path(self) -> None:
        """
        Unknown paths (trailing slashes included) are 404 C{not_found}.
        """
        for method, path in (
            ("GET", "/nope"),
            ("GET", "/api/v1/tasks/"),
            ("POST", "/api/v1/tasks/"),
            ("GET", "/api/v1/task"),
            ("GET", "/api/v1/tasks/a/b"),
            ("GET", "/healthz/"),
        ):
            self.assert_envelope(await self.api.request(method, path), 404, "not_found")

    async def test_unknown_task(self) -> None:
        """
        An unknown id is 404 C{not_found} on status, kill and events.
        """
        for method, path in (
            ("GET", "/api/v1/tasks/no-such-task"),
            ("POST", "/api/v1/tasks/no-such-task/kill"),
            ("GET", "/api/v1/tasks/no-such-task/events"),
        ):
            self.assert_envelope(
                await self.api.request(method, path), 404, "not_found", "task not found: "
            )

    async def test_wrong_method(self) -> None:
        """
        A known path with the wrong method is 405 with code C{invalid_input}.
        """
        for method, path in (
            ("DELETE", "/api/v1/tasks"),
            ("PUT", "/api/v1/tasks"),
            ("DELETE", "/api/v1/tasks/x"),
            ("GET", "/api/v1/tasks/x/kill"),
            ("POST", "/api/v1/tasks/x/events"),
            ("POST", "/healthz"),
            ("POST", "/api/v1/runtime/info"),
        ):
            self.assert_envelope(await self.api.request(method, path), 405, "invalid_input")

    async def test_duplicate_task_id(self) -> None:
        """
        Reusing an id is 409 C{conflict}, and the first task's files are
        not touched.
        """
        task_id = unique("dup")
        await self.submit(command("true", task_id=task_id, metadata={"first": "1"}))
        first = await self.wait_terminal(task_id)
        with open(first["artifacts"]["request_path"], "rb") as f:
            request_before = f.read()
        with open(first["artifacts"]["result_path"], "rb") as f:
            result_before = f.read()
        error = self.assert_envelope(
            await self.api.post("/api/v1/tasks", shell("exit 1", task_id=task_id)), 409, "conflict"
        )
        self.assertIn(task_id, error["message"])
        with open(first["artifacts"]["request_path"], "rb") as f:
            self.assertEqual(f.read(), request_before)
        with open(first["artifacts"]["result_path"], "rb") as f:
            self.assertEqual(f.read(), result_before)
        self.assertEqual(await self.status(task_id), first)

    async def test_bad_task_ids(self) -> None:
        """
        C{.}, C{..}, surrounding whitespace, more than 128 characters and
        characters outside the allowed set are 400 C{invalid_input}, and
        nothing is written for them.
        """
        tasks_dir = os.path.join(os.path.abspath(self.server.data_dir), "tasks")
        before = sorted(os.listdir(tasks_dir))
        for task_id in (
            ".",
            "..",
            " a",
            "a ",
            "\ta",
            "x" * 129,
            "a/b",
            "",
            "  ",
            "é",
            "a b",
            "a\nb",
        ):
            self.assert_envelope(
                await self.api.post("/api/v1/tasks", command("true", task_id=task_id)),
                400,
                "invalid_input",
            )
        self.assertEqual(sorted(os.listdir(tasks_dir)), before)
        self.assertFalse(os.path.exists(os.path.join(tasks_dir, "request.json")))
        self.assertFalse(os.path.exists(os.path.join(self.server.data_dir, "request.json")))

    async def test_longest_task_id_and_generated_id(self) -> None:
        """
        A 128-character id is accepted; without an id the runtime makes a
        lowercase UUIDv4, and C{request.json} then has no C{task_id}.
        """
        long_id = ("L" + uuid.uuid4().hex) * 4
        long_id = long_id[:128]
        self.assertEqual(len(long_id), 128)
        await self.submit(command("true", task_id=long_id))
        generated = await self.submit(command("true", task_id=None))
        self.assertRegex(generated, UUID4)
        for task_id in (long_id, generated):
            self.assertEqual((await self.wait_terminal(task_id))["status"], "success")
        _, request = read_json_file(os.path.join(self.task_dir(generated), "request.json"))
        self.assertNotIn("task_id", request)


RequestErrorTests.shared = SharedServer(RequestErrorTests, GRACE)


# The command line


class CliTests(SharedServerCase):
    """
    The client subcommands as real processes against a real server
    (C{docs/cli.md} sections 4 to 8): C{wait} and C{run} exit 0 whatever
    the task's outcome; an unknown task, a C{wait} timeout or an
    unreachable server exit 1 with one line on stderr.
    """

    async def test_submit_kill_status(self) -> None:
        """
        C{submit} prints the raw answer, C{kill} cancels the task, C{wait}
        pretty-prints the terminal status and C{status} prints the raw body.
        """
        task_id = unique("cli")
        request = {
            "task_id": task_id,
            "execution": {"kind": "command", "program": "sleep", "args": ["30"]},
        }
        out, err, code = await self.cli(
            "submit", "--server", self.server.url, "--json", json.dumps(request)
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out,
            json.dumps(
                {"task_id": task_id, "handle_id": task_id, "status": "accepted"},
                separators=(",", ":"),
            )
            + "\n",
        )
        await self.wait_started(task_id)
        out, err, code = await self.cli("kill", "--server", self.server.url, task_id)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(json.loads(out)["task_id"], task_id)
        self.assertEqual(out.count("\n"), 1)
        out, err, code = await self.cli(
            "wait", "--server", self.server.url + "/", "--poll-interval-ms", "50", task_id
        )
        self.assertEqual((code, err), (0, ""))
        final = json.loads(out)
        self.assertEqual(final["status"], "cancelled")
        self.assertEqual(out, pretty(final) + "\n")
        self.assertEqual(list(final), [key for key in STATUS_KEY_ORDER if key in final])
        out, err, code = await self.cli("status", "--server", self.server.url, task_id)
        self.assertEqual((code, err), (0, ""))
        raw = await self.api.get(f"/api/v1/tasks/{task_id}")
        self.assertEqual(out.encode("utf-8"), raw.body + b"\n")
        self.assertEqual(json.loads(out), final)

    async def test_submit_batch(self) -> None:
        """
        C{submit --batch} sends a batch (an object with C{tasks}, or the
        array alone), prints the raw answer and exits 0 when every task is
        accepted, 1 with one line naming how many were not; a task that
        cannot be decoded stops it before anything is sent.
        """
        first, second, third = unique("cb"), unique("cb"), unique("cb")

        def request(task_id: str) -> Dict[str, Any]:
            return {"task_id": task_id, "execution": {"kind": "command", "program": "/bin/true"}}

        out, err, code = await self.cli(
            "submit", "--batch", "--server", self.server.url, "--json", json.dumps([request(first), request(second)])
        )
        self.assertEqual((code, err), (0, ""))
        answer = json.loads(out)
        self.assertEqual([r["http_status"] for r in answer["results"]], [200, 200])
        self.assertEqual([r["body"]["task_id"] for r in answer["results"]], [first, second])
        self.assertEqual(out.count("\n"), 1)
        body = json.dumps({"tasks": [request(first), request(third)]})
        out, err, code = await self.cli("submit", "--batch", "--server", self.server.url, "--json", body)
        self.assertEqual((code, err), (1, "refused: 1 of 2 tasks were not accepted\n"))
        answer = json.loads(out)
        self.assertEqual([r["http_status"] for r in answer["results"]], [409, 200])
        self.assertEqual(answer["results"][0]["body"]["error"]["code"], "conflict")
        fourth = unique("cb")
        bad = json.dumps([request(fourth), {"execution": {"kind": "bogus"}}])
        out, err, code = await self.cli("submit", "--batch", "--server", self.server.url, "--json", bad)
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("invalid input: tasks[1]: execution.kind:"), err)
        self.assertEqual(err.count("\n"), 1)
        self.assertEqual((await self.api.get(f"/api/v1/tasks/{fourth}")).code, 404)
        for task_id in (first, second, third):
            self.assertEqual((await self.wait_terminal(task_id))["status"], "success")

    async def test_run_failed_task_exits_zero(self) -> None:
        """
        C{run} prints only the final pretty status and exits 0 even when
        the task failed.
        """
        request = shell("echo é; exit 3")
        out, err, code = await self.cli(
            "run",
            "--server",
            self.server.url,
            "--poll-interval-ms",
            "50",
            "--json",
            json.dumps(request),
        )
        self.assertEqual((code, err), (0, ""))
        final = json.loads(out)
        self.assertEqual(final["status"], "failed")
        self.assertEqual(
            final["error"], {"code": "exit_nonzero", "message": "task exited with code 3"}
        )
        self.assertEqual(final["stdout"], "é\n")
        self.assertEqual(out, pretty(final) + "\n")
        self.assertEqual(await self.status(final["task_id"]), final)
        raw = await self.api.get(f"/api/v1/tasks/{final['task_id']}")
        self.assertIn('"stdout":"é\\n"'.encode("utf-8"), raw.body)

    async def test_wait_timeout_zero(self) -> None:
        """
        C{wait --timeout-ms 0} on a running task exits 1 after one poll with
        C{internal error: wait timeout exceeded} and prints nothing.
        """
        task_id = await self.submit(shell("sleep 30", task_id=unique("waitto")))
        await self.wait_started(task_id)
        out, err, code = await self.cli(
            "wait", "--server", self.server.url, "--timeout-ms", "0", task_id
        )
        self.assertEqual((out, err, code), ("", "internal error: wait timeout exceeded\n", 1))
        self.assertEqual((await self.kill(task_id)).code, 200)
        self.assertEqual((await self.wait_terminal(task_id))["status"], "cancelled")

    async def test_status_unknown_task(self) -> None:
        """
        C{status} of an unknown id prints the 404 envelope on stdout and
        exits 1 with the C{request failed} line.
        """
        out, err, code = await self.cli("status", "--server", self.server.url, "no-such-task")
        self.assertEqual(code, 1)
        self.assertEqual(err, "internal error: request failed with status 404 Not Found\n")
        self.assertTrue(out.endswith("\n"))
        self.assertEqual(json.loads(out)["error"]["code"], "not_found")

    async def test_unreachable_server(self) -> None:
        """
        A server that cannot be reached exits 1 with one C{http error:}
        line and no traceback.
        """
        url = f"http://127.0.0.1:{free_port()}"
        for args in (
            ("status", "--server", url, "x"),
            ("wait", "--server", url, "x"),
            ("kill", "--server", url, "x"),
            ("submit", "--server", url, "--json", json.dumps(command("true"))),
            ("run", "--server", url, "--json", json.dumps(command("true"))),
        ):
            out, err, code = await self.cli(*args)
            self.assertEqual((out, code), ("", 1), args)
            self.assertTrue(err.startswith("http error: "), (args, err))
            self.assertEqual(err.count("\n"), 1, err)
            self.assertNotIn("Traceback", err)

    async def test_kill_owner(self) -> None:
        """
        C{kill} without the owner is refused (403 envelope printed, exit 1);
        C{--owner} and C{EXECGO_RUNTIME_OWNER} supply it; the option wins
        over the variable.
        """
        by_option = await self.submit(
            shell("sleep 30", task_id=unique("own1"), control_context={"owner": "carol"})
        )
        by_env = await self.submit(
            shell("sleep 30", task_id=unique("own2"), control_context={"owner": "dave"})
        )
        await self.wait_started(by_option)
        await self.wait_started(by_env)
        out, err, code = await self.cli("kill", "--server", self.server.url, by_option)
        self.assertEqual(code, 1)
        self.assertEqual(err, "internal error: request failed with status 403 Forbidden\n")
        self.assertEqual(json.loads(out)["error"]["code"], "permission_denied")
        out, err, code = await self.cli(
            "kill",
            "--server",
            self.server.url,
            "--owner",
            "x",
            by_env,
            env={"EXECGO_RUNTIME_OWNER": "dave"},
        )
        self.assertEqual(code, 1, (out, err))
        out, err, code = await self.cli(
            "kill", "--server", self.server.url, "--owner", "carol", by_option
        )
        self.assertEqual((code, err), (0, ""))
        out, err, code = await self.cli(
            "kill", "--server", self.server.url, by_env, env={"EXECGO_RUNTIME_OWNER": "dave"}
        )
        self.assertEqual((code, err), (0, ""))
        for task_id in (by_option, by_env):
            self.assertEqual((await self.wait_terminal(task_id))["status"], "cancelled")

    async def test_local_input_errors(self) -> None:
        """
        C{submit} input that cannot be read or decoded exits 1 with one
        line before anything is sent; C{--file} with C{--json}, or
        neither, is a usage error (exit 2).
        """
        bad_inputs = [
            ("--json", "{"),
            ("--json", "[]"),
            ("--file", os.path.abspath(self.mktemp())),
        ]
        for source in bad_inputs:
            out, err, code = await self.cli("submit", "--server", self.server.url, *source)
            self.assertEqual((out, code), ("", 1), (source, err))
            self.assertEqual(err.count("\n"), 1, err)
            self.assertNotIn("Traceback", err)
        self.assertTrue(
            (await self.cli("submit", "--server", self.server.url, "--file", "/nonexistent"))[
                1
            ].startswith("io error: ")
        )
        self.assertTrue(
            (await self.cli("submit", "--server", self.server.url, "--json", "{"))[1].startswith(
                "json error: "
            )
        )
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            json.dump(command("true"), f)
        for args in (("--file", path, "--json", "{}"), ()):
            out, err, code = await self.cli("submit", "--server", self.server.url, *args)
            self.assertEqual(code, 2, (args, out, err))
        rejected = json.dumps(command("  "))
        out, err, code = await self.cli("run", "--server", self.server.url, "--json", rejected)
        self.assertEqual(
            (code, err), (1, "internal error: request failed with status 400 Bad Request\n")
        )
        self.assertEqual(json.loads(out)["error"]["code"], "invalid_input")
        out, err, code = await self.cli(
            "run", "--server", self.server.url, "--poll-interval-ms", "20", "--file", path
        )
        self.assertEqual((code, json.loads(out)["status"]), (0, "success"), err)

    async def test_version(self) -> None:
        """
        C{--version} prints C{execgo-runtime 1.1.0}.
        """
        self.assertEqual(await self.cli("--version"), (f"execgo-runtime {VERSION}\n", "", 0))


CliTests.shared = SharedServer(CliTests, GRACE)


# Runtime endpoints and plans under configuration


CONFIGURED_ARGS = [
    "--max-running-tasks", "3",
    "--max-queued-tasks", "7",
    "--termination-grace-ms", "1234",
    "--result-retention-secs", "99",
    "--gc-interval-ms", "500",
    "--dispatch-poll-interval-ms", "100",
    "--cgroup-root", "/x",
    "--runtime-id", "rid",
    "--default-capability-mode", "strict",
    "--disable-cgroup",
    "--disable-linux-sandbox",
    "--capacity-memory-bytes", "1000000000",
    "--capacity-pids", "500",
    "--tenant-quota", "alice=slots:2,memory:1000000",
    "--tenant-quota", "bob=slots:0",
    "--max-output-preview-bytes", "9223372036854775807",
    "--request-header-timeout-ms", "5000",
    "--idle-connection-timeout-ms", "30000",
    "--max-connections", "500",
]  # fmt: skip


class ConfiguredServerTests(SharedServerCase):
    """
    A server with every flag given: the runtime endpoints reflect them,
    plans degrade or fail as the mode says, admission applies capacity and
    quotas.  Environment variables lose against the flags.
    """

    async def test_config(self) -> None:
        """
        C{/runtime/config} shows every configured value, in contract order.
        """
        reply = await self.api.get("/api/v1/runtime/config")
        self.assertEqual(reply.code, 200)
        config = reply.json()
        expected = {
            "runtime_id": "rid",
            "listen_addr": self.server.listen_addr,
            "data_dir": self.server.data_dir,
            "max_running_tasks": 3,
            "max_queued_tasks": 7,
            "termination_grace_ms": 1234,
            "result_retention_secs": 99,
            "gc_interval_ms": 500,
            "dispatch_poll_interval_ms": 100,
            "cgroup_root": "/x",
            "default_capability_mode": "strict",
            "cgroup_enabled": False,
            "task_uid_range": None,
            "task_user": None,
            "sandbox_rootfs_roots": [],
            "max_output_preview_bytes": 2**63 - 1,
            "request_header_timeout_ms": 5000,
            "idle_connection_timeout_ms": 30000,
            "max_connections": 500,
            "database": "sqlite",
            "advertise_url": f"http://{self.server.listen_addr}",
            "node_labels": {},
            "node_lease_ms": 10000,
        }
        self.assertEqual(config, expected)
        self.assertEqual(list(config), list(expected))

    async def test_huge_output_limit(self) -> None:
        """
        Where the operator raised the preview ceiling to 2^63-1, the
        contract's largest output limit is accepted and the preview still
        works (it allocates what the log holds, never the limit).
        """
        task_id = unique("hugecap")
        limit = 2**63 - 1
        await self.submit(
            shell(
                "echo small",
                task_id=task_id,
                limits={"stdout_max_bytes": limit, "stderr_max_bytes": limit},
            )
        )
        status = await self.wait_terminal(task_id)
        self.assertEqual((status["status"], status["stdout"]), ("success", "small\n"))
        self.assertIs(status["stdout_truncated"], False)

    async def test_info(self) -> None:
        """
        C{/runtime/info}: id, version 1.1.0, start time, snapshot v1 and
        the capabilities' platform.
        """
        info = (await self.api.get("/api/v1/runtime/info")).json()
        capabilities = (await self.api.get("/api/v1/runtime/capabilities")).json()
        self.assertEqual(
            list(info), ["runtime_id", "version", "started_at", "snapshot_version", "platform"]
        )
        self.assertEqual(info["runtime_id"], "rid")
        self.assertEqual(info["version"], VERSION)
        self.assertEqual(info["snapshot_version"], "v1")
        self.assertRegex(info["started_at"], ANY_TIMESTAMP)
        self.assertEqual(info["platform"], capabilities["platform"])
        self.assertEqual(info["platform"]["os"], "linux")
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
            platform.machine(), platform.machine()
        )
        self.assertEqual(info["platform"]["arch"], machine)
        self.assertEqual(list(info["platform"]), ["os", "arch", "containerized", "kubernetes"])

    async def test_capabilities(self) -> None:
        """
        With the sandbox and cgroups disabled and capacity overrides, the
        snapshot says so: no sandbox, a warning, the overrides, the
        capacity.
        """
        caps = (await self.api.get("/api/v1/runtime/capabilities")).json()
        self.assertEqual(caps["runtime_id"], "rid")
        self.assertEqual(caps["snapshot_version"], "v1")
        self.assertRegex(caps["collected_at"], ANY_TIMESTAMP)
        self.assertEqual(
            caps["execution"], {"command": True, "script": True, "process_group": True}
        )
        self.assertEqual(
            caps["sandbox"],
            {
                "process": True,
                "linux_sandbox": False,
                "chroot": False,
                "namespaces": {
                    "mount": False,
                    "pid": False,
                    "uts": False,
                    "ipc": False,
                    "net": False,
                },
            },
        )
        self.assertEqual(caps["storage"], {"data_dir_writable": True})
        resources = caps["resources"]
        self.assertEqual(
            resources["capacity"], {"task_slots": 3, "memory_bytes": 1000000000, "pids": 500}
        )
        for key, value in (
            ("rlimit_cpu", True),
            ("rlimit_memory", True),
            ("cgroup_writable", False),
            ("memory_limit", True),
            ("pids_limit", False),
            ("oom_detection", False),
            ("cpu_quota", False),
            ("ledger", True),
        ):
            self.assertIs(resources[key], value, key)
        self.assertEqual(caps["stable_semantics"], STABLE_SEMANTICS)
        self.assertEqual(caps["enhanced_semantics"], ["resource_ledger"])
        self.assertEqual(caps["warnings"][0], SANDBOX_WARNING)
        self.assertIs(caps["degraded"], True)
        overrides = {
            "capacity_memory_bytes": "1000000000",
            "capacity_pids": "500",
            "cgroup": "disabled",
            "linux_sandbox": "disabled",
        }
        self.assertEqual(caps["overrides"], overrides)
        self.assertEqual(list(caps["overrides"]), sorted(overrides))

    async def test_cgroup_warning_only_with_cgroup_v2(self) -> None:
        """
        The warning C{cgroup v2 detected but cgroup root is not writable:
        <root>} appears iff C{resources.cgroup_v2} is true and
        C{cgroup_writable} false.
        """
        caps = (await self.api.get("/api/v1/runtime/capabilities")).json()
        warnings = [SANDBOX_WARNING]
        if caps["resources"]["cgroup_v2"]:
            warnings.append("cgroup v2 detected but cgroup root is not writable: /x")
        self.assertEqual(caps["warnings"], warnings)


    async def test_resources(self) -> None:
        """
        C{/runtime/resources} at rest, then with an C{alice} task running:
        the reservation and the tenant sums.
        """
        reply = await self.api.get("/api/v1/runtime/resources")
        self.assertEqual(reply.code, 200)
        capacity = {"task_slots": 3, "memory_bytes": 1000000000, "pids": 500}
        alice_quota = {"task_slots": 2, "memory_bytes": 1000000}
        self.assertEqual(
            reply.json(),
            {
                "runtime_id": "rid",
                "capacity": capacity,
                "reserved": {"task_slots": 0, "memory_bytes": 0, "pids": 0},
                "available": capacity,
                "active_reservations": [],
                "accepted_waiting_tasks": 0,
                "tenants": [
                    {
                        "tenant": "alice",
                        "quota": alice_quota,
                        "reserved": {"task_slots": 0},
                        "available": alice_quota,
                    },
                    {
                        "tenant": "bob",
                        "quota": {"task_slots": 0},
                        "reserved": {"task_slots": 0},
                        "available": {"task_slots": 0},
                    },
                ],
            },
        )
        task_id = await self.submit(
            shell("sleep 30", task_id=unique("alice"), control_context={"tenant": "alice"})
        )
        await self.wait_started(task_id)
        view = (await self.api.get("/api/v1/runtime/resources")).json()
        self.assertEqual(view["reserved"], {"task_slots": 1, "memory_bytes": 0, "pids": 0})
        self.assertEqual(
            view["available"], {"task_slots": 2, "memory_bytes": 1000000000, "pids": 500}
        )
        [active] = view["active_reservations"]
        self.assertEqual(list(active), ["task_id", "status", "reservation", "reserved_at"])
        self.assertEqual(
            (active["task_id"], active["status"], active["reservation"]),
            (task_id, "running", {"task_slots": 1}),
        )
        self.assertRegex(active["reserved_at"], STORE_TIMESTAMP)
        self.assertEqual(
            view["tenants"][0],
            {
                "tenant": "alice",
                "quota": alice_quota,
                "reserved": {"task_slots": 1},
                "available": {"task_slots": 1, "memory_bytes": 1000000},
            },
        )
        self.assertEqual((await self.kill(task_id)).code, 200)
        self.assertEqual((await self.wait_terminal(task_id))["status"], "cancelled")
        view = (await self.api.get("/api/v1/runtime/resources")).json()
        self.assertEqual(view["active_reservations"], [])

    async def test_strict_default_rejects_linux_sandbox(self) -> None:
        """
        With C{--default-capability-mode strict} and the sandbox disabled,
        a C{linux_sandbox} request is 400 C{unsupported_capability} with no
        policy, with a policy without mode (which takes the server's
        default), with a strict policy, and with C{requires_strict_sandbox};
        so is a pids limit no cgroup can enforce.
        """
        sandbox = {"profile": "linux_sandbox"}
        bodies = [
            command("true", sandbox=sandbox),
            command("true", sandbox=sandbox, policy={}),
            command("true", sandbox=sandbox, policy=None),
            command("true", sandbox=sandbox, policy={"capability_mode": "strict"}),
            command(
                "true",
                sandbox=sandbox,
                policy={"capability_mode": "adaptive"},
                control_context={"requires_strict_sandbox": True},
            ),
            command("true", limits={"pids_max": 10}),
        ]
        for body in bodies:
            self.assert_envelope(
                await self.api.post("/api/v1/tasks", body),
                400,
                "unsupported_capability",
                "unsupported capability: ",
            )
        resources = (await self.api.get("/api/v1/runtime/resources")).json()
        self.assertEqual(resources["accepted_waiting_tasks"], 0)

    async def test_adaptive_policy_degrades(self) -> None:
        """
        An adaptive policy lets a C{linux_sandbox} request through degraded
        to the process sandbox (C{workspace_subdir} kept), with the
        fallback reason, the host warnings and a C{degraded} event.
        """
        task_id = unique("degraded")
        await self.submit(
            command(
                "true",
                task_id=task_id,
                sandbox={"profile": "linux_sandbox", "workspace_subdir": "w"},
                policy={"capability_mode": "adaptive"},
            )
        )
        status = await self.wait_terminal(task_id)
        caps = (await self.api.get("/api/v1/runtime/capabilities")).json()
        self.assertEqual(status["status"], "success", status)
        plan = status["execution_plan"]
        self.assertEqual(plan["capability_mode"], "adaptive")
        self.assertIs(plan["degraded"], True)
        self.assertEqual(plan["fallback_reasons"], [SANDBOX_FALLBACK])
        self.assertEqual(plan["requested_sandbox"]["profile"], "linux_sandbox")
        effective = {"profile": "process", "workspace_subdir": "w", "chroot": False}
        self.assertEqual(plan["effective_sandbox"], effective)
        self.assertEqual(plan["capability_warnings"], caps["warnings"])
        events = await self.events(task_id)
        self.assertEqual(
            [e["event_type"] for e in events],
            SUCCESS_EVENTS[:3] + ["degraded"] + SUCCESS_EVENTS[3:],
        )
        self.assertEqual(events[3]["message"], "execution plan degraded")
        self.assertEqual(
            events[3]["data"],
            {
                "effective_sandbox": {
                    "chroot": False,
                    "profile": "process",
                    "workspace_subdir": "w",
                },
                "fallback_reasons": [SANDBOX_FALLBACK],
            },
        )
        self.assertEqual(
            list(events[3]["data"]["effective_sandbox"]), ["chroot", "profile", "workspace_subdir"]
        )

    async def test_insufficient_resources(self) -> None:
        """
        A task above the memory or pids capacity, or above its tenant's
        quota (C{slots:0} rejects every task), is 400
        C{insufficient_resources}; a tenant without quota is only bounded
        by capacity.
        """
        adaptive = {"capability_mode": "adaptive"}
        bodies = [
            command("true", limits={"memory_bytes": 1000000001}),
            command("true", limits={"pids_max": 501}, policy=adaptive),
            command("true", control_context={"tenant": "bob"}),
            command("true", limits={"memory_bytes": 1000001}, control_context={"tenant": "alice"}),
        ]
        for body in bodies:
            self.assert_envelope(
                await self.api.post("/api/v1/tasks", body),
                400,
                "insufficient_resources",
                "insufficient resources: ",
            )
        task_id = await self.submit(
            command("true", limits={"memory_bytes": 900000000}, control_context={"tenant": "carol"})
        )
        self.assertEqual((await self.wait_terminal(task_id))["status"], "success")

    async def test_kill_escalation_without_cgroup(self) -> None:
        """
        With cgroups disabled the kill still reaches the whole process
        group, SIGKILL after the configured 1234 ms grace.
        """
        await self.kill_tree(TREE_SCRIPT, 4, 1.234)

    async def test_health_ready_metrics(self) -> None:
        """
        C{/healthz}, C{/readyz} and C{/metrics} answer as C{docs/api.md} says.
        """
        self.assertEqual(
            (await self.api.get("/healthz")).json(), {"status": "ok", "version": VERSION}
        )
        ready = await self.api.get("/readyz")
        self.assertEqual((ready.code, ready.json()), (200, {"status": "ready", "version": VERSION}))
        metrics = await self.api.get("/metrics")
        self.assertEqual(metrics.code, 200)
        self.assertEqual(metrics.headers["content-type"], "text/plain; version=0.0.4")
        text = metrics.body.decode("utf-8")
        self.assertIn(
            "# TYPE execgo_runtime_tasks_running gauge\nexecgo_runtime_tasks_running ", text
        )
        self.assertIn("# TYPE execgo_runtime_task_duration_ms histogram\n", text)


ConfiguredServerTests.shared = SharedServer(
    ConfiguredServerTests,
    CONFIGURED_ARGS,
    env={"EXECGO_RUNTIME_ID": "from-env", "EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE": "adaptive"},
)


class EnvironmentConfigTests(SharedServerCase):
    """
    The C{EXECGO_RUNTIME_*} variables configure C{serve} when the flags are
    absent.
    """

    async def test_environment_variables(self) -> None:
        """
        C{EXECGO_RUNTIME_ID}, C{..._DISABLE_LINUX_SANDBOX=true},
        C{..._DISABLE_CGROUP=false} and the capacity variables take effect.
        """
        config = (await self.api.get("/api/v1/runtime/config")).json()
        self.assertEqual(config["runtime_id"], "env-rid")
        self.assertIs(config["cgroup_enabled"], True)
        self.assertEqual(config["default_capability_mode"], "adaptive")
        caps = (await self.api.get("/api/v1/runtime/capabilities")).json()
        self.assertEqual(caps["runtime_id"], "env-rid")
        self.assertIs(caps["sandbox"]["linux_sandbox"], False)
        self.assertIn(SANDBOX_WARNING, caps["warnings"])
        self.assertEqual(
            caps["overrides"],
            {
                "capacity_memory_bytes": "123456789",
                "capacity_pids": "777",
                "linux_sandbox": "disabled",
            },
        )
        self.assertEqual(caps["resources"]["capacity"]["pids"], 777)
        self.assertEqual(caps["resources"]["capacity"]["memory_bytes"], 123456789)

    async def test_log_level_from_rust_log(self) -> None:
        """
        Without C{EXECGO_RUNTIME_LOG}, C{RUST_LOG=warn} sets the level: no
        C{INFO} record is written, not even the
        listen and dispatch records.
        """
        task_id = await self.submit(command("true", task_id=unique("quiet")))
        self.assertEqual((await self.wait_terminal(task_id))["status"], "success")
        levels = [
            json.loads(line).get("level")
            for line in self.server.log_text().splitlines()
            if line.startswith("{")
        ]
        self.assertNotIn("INFO", levels)

    async def test_adaptive_default_degrades(self) -> None:
        """
        In the default adaptive mode a C{linux_sandbox} request without
        policy runs degraded, with a C{degraded} event.
        """
        task_id = unique("envdeg")
        await self.submit(command("true", task_id=task_id, sandbox={"profile": "linux_sandbox"}))
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertIs(status["execution_plan"]["degraded"], True)
        self.assertEqual(status["execution_plan"]["fallback_reasons"], [SANDBOX_FALLBACK])
        self.assertEqual(
            status["execution_plan"]["effective_sandbox"], {"profile": "process", "chroot": False}
        )
        self.assertIn("degraded", await self.event_types(task_id))


EnvironmentConfigTests.shared = SharedServer(
    EnvironmentConfigTests,
    GRACE,
    env={
        "EXECGO_RUNTIME_ID": "env-rid",
        "EXECGO_RUNTIME_DISABLE_LINUX_SANDBOX": "true",
        "EXECGO_RUNTIME_DISABLE_CGROUP": "false",
        "EXECGO_RUNTIME_CAPACITY_PIDS": "777",
        "EXECGO_RUNTIME_CAPACITY_MEMORY_BYTES": "123456789",
        "RUST_LOG": "warn",
    },
)


class StartupErrorTests(IntegrationMixin, TestCase):
    """
    C{serve} refuses bad configuration with the contract's exit codes.
    """

    async def serve(
        self, *args: str, env: Optional[Mapping[str, str]] = None
    ) -> Tuple[str, str, Optional[int], str]:
        """
        Run C{serve} on a free port with a fresh data dir; it must exit.
        """
        data_dir = os.path.abspath(self.mktemp())
        argv = [
            sys.executable,
            "-m",
            "execgo",
            "serve",
            "--listen-addr",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            data_dir,
        ]
        try:
            out, err, code = await run_process(
                self._reactor(), argv + list(args), clean_environ(env), timeout=20
            )
        finally:
            await kill_leftovers(self._reactor(), data_dir)
        return out, err, code, data_dir

    async def test_invalid_boolean_environment(self) -> None:
        """
        C{EXECGO_RUNTIME_DISABLE_CGROUP=yes} is a usage error: exit 2,
        before anything is created.
        """
        out, err, code, data_dir = await self.serve(env={"EXECGO_RUNTIME_DISABLE_CGROUP": "yes"})
        self.assertEqual(code, 2, (out, err))
        self.assertIn("EXECGO_RUNTIME_DISABLE_CGROUP", err)
        self.assertFalse(os.path.exists(data_dir))

    async def test_invalid_mode_environment(self) -> None:
        """
        A capability mode other than exactly C{adaptive}/C{strict} is a
        usage error.
        """
        out, err, code, _ = await self.serve(
            env={"EXECGO_RUNTIME_DEFAULT_CAPABILITY_MODE": "STRICT"}
        )
        self.assertEqual(code, 2, (out, err))

    async def test_invalid_tenant_quota(self) -> None:
        """
        A malformed C{--tenant-quota} aborts start-up with exit 1 and an
        C{invalid input:} line.
        """
        for spec in ("alice", "alice=memory:5", "alice=cpu:1,slots:1"):
            out, err, code, _ = await self.serve("--tenant-quota", spec)
            self.assertEqual(code, 1, (spec, out, err))
            self.assertTrue(err.startswith("invalid input:"), (spec, err))
            self.assertNotIn("Traceback", err)

    async def test_address_in_use(self) -> None:
        """
        A listen address that cannot be bound ends C{serve} with exit 1.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            data_dir = os.path.abspath(self.mktemp())
            argv = [
                sys.executable,
                "-m",
                "execgo",
                "serve",
                "--listen-addr",
                f"127.0.0.1:{port}",
                "--data-dir",
                data_dir,
            ]
            try:
                out, err, code = await run_process(
                    self._reactor(), argv, clean_environ(), timeout=20
                )
            finally:
                await kill_leftovers(self._reactor(), data_dir)
        self.assertEqual(code, 1, (out, err))
        self.assertNotIn("Traceback", err)


# Queueing


@backends.each
class QueueTests(SharedServerCase):
    """
    With one slot and a queue of one: killing a queued task, and the
    queue-full rejection.
    """

    async def test_kill_queued_task_and_queue_full(self) -> None:
        """
        A queued task killed is at once C{cancelled} with duration 0 and
        C{task cancelled before execution}, with a C{result.json}; a full
        queue answers 429 C{queue is full}; freed room is usable again.
        """
        long_id = await self.submit(shell("sleep 30", task_id=unique("long")))
        await self.wait_started(long_id)
        queued_id = await self.submit(shell("echo queued", task_id=unique("queued")))
        queued = await self.status(queued_id)
        self.assertEqual(queued["status"], "accepted")
        for absent in (
            "started_at",
            "finished_at",
            "duration_ms",
            "shim_pid",
            "pid",
            "usage",
            "reservation",
            "error",
        ):
            self.assertNotIn(absent, queued)
        self.assertEqual((queued["stdout"], queued["stdout_truncated"]), ("", False))
        error = self.assert_envelope(
            await self.api.post("/api/v1/tasks", command("true", task_id=unique("over"))),
            429,
            "resource_limit_exceeded",
        )
        self.assertEqual(error["message"], "queue is full")
        resources = (await self.api.get("/api/v1/runtime/resources")).json()
        self.assertEqual(resources["accepted_waiting_tasks"], 1)
        self.assertEqual([r["task_id"] for r in resources["active_reservations"]], [long_id])

        reply = await self.kill(queued_id)
        self.assertEqual(reply.code, 200, reply.body)
        cancelled = reply.json()
        self.assertEqual(cancelled["status"], "cancelled")
        self.assertEqual(cancelled["duration_ms"], 0)
        self.assertEqual(
            cancelled["error"], {"code": "cancelled", "message": "task cancelled before execution"}
        )
        for absent in ("started_at", "pid", "shim_pid", "reservation"):
            self.assertNotIn(absent, cancelled)
        status = await self.status(queued_id)
        self.assertEqual(status, cancelled)
        self.assertTrue(os.path.exists(status["artifacts"]["result_path"]))
        await self.assert_result_file(status)
        self.assertEqual(
            await self.event_types(queued_id),
            ["submitted", "accepted", "planned", "kill_requested", "cancelled"],
        )

        after_id = await self.submit(shell("echo after", task_id=unique("after")))
        self.assertEqual((await self.kill(long_id)).code, 200)
        long_status = await self.wait_terminal(long_id)
        self.assertEqual(long_status["status"], "cancelled")
        after = await self.wait_terminal(after_id)
        self.assertEqual((after["status"], after["stdout"]), ("success", "after\n"))
        waited = parse_time(after["started_at"]) - parse_time(long_status["finished_at"])
        self.assertLess(
            waited.total_seconds(), 0.5, "the queued task waited for the 5 s dispatcher poll"
        )

        metrics = (await self.api.get("/metrics")).body.decode("utf-8")
        for line in (
            'execgo_runtime_tasks_total{status="cancelled"} 2',
            'execgo_runtime_tasks_total{status="success"} 1',
            "execgo_runtime_tasks_running 0",
            'execgo_runtime_task_errors_total{code="cancelled"} 2',
            'execgo_runtime_task_duration_ms_bucket{le="+Inf"} 3',
            "execgo_runtime_task_duration_ms_count 3",
        ):
            self.assertIn(line + "\n", metrics)
        self.assertNotIn('status="accepted"', metrics)


QueueTests.shared = SharedServer(
    QueueTests,
    GRACE
    + [
        "--max-running-tasks",
        "1",
        "--max-queued-tasks",
        "1",
        "--dispatch-poll-interval-ms",
        "5000",
    ],
)


class SlotTests(SharedServerCase):
    """
    With two slots: the supervisor is sent launch orders beyond its free
    slots and keeps them; the node never runs more tasks than slots.
    """

    async def test_never_more_than_the_slots(self) -> None:
        """
        Eight short tasks submitted at once all succeed, start in the order
        they were submitted, each after a slot freed (never more than two
        between start and end); while two run, the others are C{accepted}
        and hold nothing in C{/runtime/resources}, and C{/metrics} reserves
        no more slots than there are.
        """
        ids = [await self.submit(shell("sleep 0.3", task_id=unique(f"slot{i}"))) for i in range(8)]
        await self.wait_started(ids[0])
        await self.wait_started(ids[1])
        statuses = [(await self.status(task_id))["status"] for task_id in ids]
        self.assertLessEqual(statuses.count("running"), 2, statuses)
        resources = (await self.api.get("/api/v1/runtime/resources")).json()
        self.assertLessEqual(len(resources["active_reservations"]), 2)
        metrics = (await self.api.get("/metrics")).body.decode("utf-8")
        self.assertIn('execgo_runtime_ledger_capacity{resource="task_slots"} 2\n', metrics)
        reserved = re.search(r'execgo_runtime_ledger_reserved\{resource="task_slots"\} (\d+)', metrics)
        assert reserved is not None
        self.assertLessEqual(int(reserved.group(1)), 2)
        ended = [await self.wait_terminal(task_id) for task_id in ids]
        self.assertEqual([status["status"] for status in ended], ["success"] * 8)
        spans = [(parse_time(s["started_at"]), parse_time(s["finished_at"])) for s in ended]
        self.assertEqual(sorted(spans), spans, "the tasks did not start in the order they were submitted")
        for start, _ in spans:
            running = sum(1 for begun, end in spans if begun <= start < end)
            self.assertLessEqual(running, 2, spans)


SlotTests.shared = SharedServer(SlotTests, GRACE + ["--max-running-tasks", "2"])


# Crashes, recovery, GC, twistd


class OwnServerCase(IntegrationMixin, TestCase):
    """
    Tests that start (and crash, and restart) their own server.
    """

    async def start_server(self, *args: str, **kwargs: Any) -> ServerProcess:
        """
        Start a server on a fresh data dir (and, for a class run per
        backend, a fresh store on the test's backend); the test's cleanup
        stops it and kills everything of its data dir.
        """
        backend = getattr(self, "backend", None)
        store = [] if backend is None else backend.server_args(self)
        server = ServerProcess(self._reactor(), self.mktemp(), [*args, *store], **kwargs)
        self.addCleanup(server.shutdown)
        await server.start()
        self.server = server
        self.api = server.client(self)
        return server

    async def restart(self) -> None:
        """
        Start the (crashed or stopped) server again on the same data dir
        and port, with a fresh client.
        """
        await self.server.start(keep_port=True)
        self.api = self.server.client(self)

    async def result_file(self, task_id: str, timeout: float = 10.0) -> Dict[str, Any]:
        """
        Wait for a task's C{result.json} (written by its supervisor) and
        return its value.
        """
        path = os.path.join(self.task_dir(task_id), "result.json")
        await poll(self._reactor(), lambda: os.path.exists(path), timeout, what=path)
        await sleep(self._reactor(), 0.05)
        return read_json_file(path)[1]


@backends.each
class CrashRecoveryTests(OwnServerCase):
    """
    A server killed with SIGKILL and restarted: running tasks keep running
    and are recorded, timeouts still fire, queued tasks run afterwards.
    """

    async def test_outcomes_recorded_while_server_down(self) -> None:
        """
        While the server is down a running task finishes and another times
        out, both recorded in the store; after the restart they show
        C{success} and C{failed/timeout}, and the queued task runs.
        """
        await self.start_server(*GRACE, "--max-running-tasks", "2")
        finishes = await self.submit(shell("sleep 1; echo done", task_id=unique("finishes")))
        times_out = await self.submit(
            shell("sleep 30", task_id=unique("timesout"), limits={"wall_time_ms": 1000})
        )
        queued = await self.submit(shell("echo queued", task_id=unique("queued")))
        await self.wait_started(finishes)
        await self.wait_started(times_out)
        self.assertEqual((await self.status(queued))["status"], "accepted")
        await self.server.crash()

        finished_result = await self.result_file(finishes)
        timeout_result = await self.result_file(times_out)
        self.assertEqual(finished_result["status"], "success")
        self.assertEqual(timeout_result["status"], "failed")
        self.assertEqual(timeout_result["error"]["code"], "timeout")
        self.assertFalse(os.path.exists(os.path.join(self.task_dir(queued), "result.json")))

        await self.restart()
        status = await self.status(finishes)
        self.assertEqual((status["status"], status["stdout"]), ("success", "done\n"))
        self.assertEqual(status, finished_result)
        self.assertNotIn("recovered", await self.event_types(finishes))
        status = await self.status(times_out)
        self.assertEqual(
            status["error"], {"code": "timeout", "message": "task exceeded wall_time_ms"}
        )
        self.assertIn("timeout_triggered", await self.event_types(times_out))
        status = await self.wait_terminal(queued)
        self.assertEqual((status["status"], status["stdout"]), ("success", "queued\n"))
        self.assertEqual(await self.event_types(queued), SUCCESS_EVENTS)

    async def test_running_task_recovered(self) -> None:
        """
        A task still running when the server restarts is C{recovered} and
        ends C{success}; the queued task behind it runs after it.
        """
        await self.start_server(*GRACE, "--max-running-tasks", "1")
        running = await self.submit(shell("sleep 2; echo survived", task_id=unique("survivor")))
        queued = await self.submit(shell("echo next", task_id=unique("next")))
        started = await self.wait_started(running)
        await self.server.crash()
        await sleep(self._reactor(), 0.3)
        self.assertTrue(process_alive(started["pid"]), "the workload died with the server")
        await self.restart()
        self.assertEqual((await self.status(running))["status"], "running")
        status = await self.wait_terminal(running, timeout=10)
        self.assertEqual((status["status"], status["stdout"]), ("success", "survived\n"))
        events = await self.events(running)
        self.assertEqual(
            [e["event_type"] for e in events],
            SUCCESS_EVENTS[:5] + ["recovered", "resource_released", "finished"],
        )
        self.assertEqual(events[5]["message"], "task recovered")
        await self.assert_result_file(status)
        after = await self.wait_terminal(queued)
        self.assertEqual(after["status"], "success")
        self.assertGreaterEqual(parse_time(after["started_at"]), parse_time(status["finished_at"]))

    async def lose_supervisor(self) -> Tuple[str, Dict[str, Any]]:
        """
        Run a task, crash the server, SIGKILL the task's supervisor and
        restart the server.

        @return: the task id and its status when it was running.
        """
        await self.start_server(*GRACE)
        task_id = await self.submit(shell("sleep 30", task_id=unique("lost")))
        self.addCleanup(remove_task_cgroups, task_id)
        started = await self.wait_started(task_id)
        await self.server.crash()
        os.kill(started["shim_pid"], signal.SIGKILL)
        await poll(
            self._reactor(),
            lambda: not process_alive(started["shim_pid"]),
            5,
            what="supervisor death",
        )
        await self.restart()
        return task_id, started

    async def test_lost_supervisor(self) -> None:
        """
        A running task whose supervisor died with the server is
        C{failed} / C{internal} / C{recovery_lost} after the restart, with
        duration 0 and a C{result.json}; its workload does not survive.
        """
        task_id, started = await self.lose_supervisor()
        status = await self.status(task_id)
        self.assertEqual(status["status"], "failed", status)
        self.assertEqual(status["error"], {"code": "internal", "message": "recovery_lost"})
        self.assertEqual(status["duration_ms"], 0)
        self.assertEqual((await self.event_types(task_id))[-2:], ["resource_released", "failed"])
        await self.assert_result_file(status)
        await poll(
            self._reactor(),
            lambda: not process_alive(started["pid"]),
            2,
            what="the lost workload to die",
        )

    async def test_lost_supervisor_cgroup_removed(self) -> None:
        """
        The per-task cgroup of a task lost in recovery is removed when the
        task ends.
        """
        task_id, _ = await self.lose_supervisor()
        self.assertEqual((await self.status(task_id))["status"], "failed")
        caps = (await self.api.get("/api/v1/runtime/capabilities")).json()
        if not caps["resources"]["cgroup_writable"]:
            raise self.skipTest("no writable cgroup on this host")
        await sleep(self._reactor(), 0.2)
        self.assertEqual(task_cgroup_dirs(task_id), [])


    async def test_supervisor_killed_while_serving(self) -> None:
        """
        If the supervisor dies while the server runs, its running task ends
        C{failed} / C{internal} with a message saying why, and new tasks
        still run under a new supervisor.
        """
        await self.start_server(*GRACE)
        task_id = await self.submit(shell("sleep 30", task_id=unique("orphan")))
        self.addCleanup(remove_task_cgroups, task_id)
        started = await self.wait_started(task_id)
        os.kill(started["shim_pid"], signal.SIGKILL)
        status = await self.wait_terminal(task_id, timeout=10)
        self.assertEqual(
            (status["status"], status["error"]["code"]), ("failed", "internal"), status
        )
        self.assertIn(str(started["shim_pid"]), status["error"]["message"])
        await self.assert_result_file(status)
        await poll(
            self._reactor(),
            lambda: not process_alive(started["pid"]),
            2,
            what="the orphaned workload to die",
        )
        after = await self.submit(command("echo", "again", task_id=unique("again")))
        status = await self.wait_terminal(after)
        self.assertEqual((status["status"], status["stdout"]), ("success", "again\n"))
        self.assertNotEqual(status["shim_pid"], started["shim_pid"])

    async def test_sigterm_leaves_tasks_running(self) -> None:
        """
        Stopping the server with SIGTERM does not stop its running tasks;
        the next server recovers them and they finish.
        """
        await self.start_server(*GRACE)
        # Long enough to outlast a stop and a start on a loaded machine.
        task_id = await self.submit(shell("sleep 5; echo kept", task_id=unique("kept")))
        started = await self.wait_started(task_id)
        exit_status = await self.server.stop()
        self.assertEqual(exit_status, (0, None))
        self.assertTrue(process_alive(started["pid"]))
        await self.restart()
        status = await self.wait_terminal(task_id, timeout=15)
        self.assertEqual((status["status"], status["stdout"]), ("success", "kept\n"), status)
        self.assertIn("recovered", await self.event_types(task_id))

    async def test_sigterm_answers_requests_in_flight(self) -> None:
        """
        A request in flight when SIGTERM arrives (here a long-poll on a
        running task) is answered before the server exits, not cut off:
        the stop drains what it already accepted.
        """
        await self.start_server(*GRACE)
        task_id = await self.submit(shell("sleep 3", task_id=unique("drain")))
        await self.wait_started(task_id)
        in_flight = defer.ensureDeferred(
            self.api.get(f"/api/v1/tasks/{task_id}?wait_ms=20000")
        )
        await sleep(self._reactor(), 0.3)
        self.assertFalse(in_flight.called)
        exit_status = await self.server.stop()
        self.assertEqual(exit_status, (0, None))
        reply = await in_flight
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.json()["status"], "running")
        await self.restart()
        status = await self.wait_terminal(task_id, timeout=10)
        self.assertEqual(status["status"], "success")


class RestartConfigurationTests(OwnServerCase):
    """
    A server restarted on the same data directory with another
    configuration: workloads dispatched by the new server follow the new
    configuration, even if a supervisor started by the old one is reused.
    """

    async def restart_with(self, env: Mapping[str, str], args: Sequence[str]) -> None:
        """
        Stop the server (SIGTERM; its supervisor stays for a while) and
        start it again with a new environment and extra arguments.
        """
        await self.server.stop()
        self.server.env = clean_environ(env)
        self.server.args = [*self.server.args, *args]
        await self.restart()

    async def test_new_environment_reaches_workloads(self) -> None:
        """
        Workloads get C{LANG} (and the other inherited variables) from the
        server that dispatched them, not from an earlier server.
        """
        await self.start_server(*GRACE, env=clean_environ({"LANG": "first-lang"}))
        first = await self.submit(command("env", task_id=unique("envfirst")))
        self.assertIn("LANG=first-lang\n", (await self.wait_terminal(first))["stdout"])
        await self.restart_with({"LANG": "second-lang"}, [])
        second = await self.submit(command("env", task_id=unique("envsecond")))
        self.assertIn("LANG=second-lang\n", (await self.wait_terminal(second))["stdout"])


    async def test_new_cgroup_root_reaches_workloads(self) -> None:
        """
        Per-task cgroups go under the C{--cgroup-root} of the server that
        dispatched the task, not that of an earlier server.
        """
        await self.start_server(*GRACE)
        caps = (await self.api.get("/api/v1/runtime/capabilities")).json()
        if not caps["resources"]["cgroup_writable"]:
            raise self.skipTest("no writable cgroup on this host")
        name = unique("execgo-itest-root")
        task_id = unique("newroot")
        self.addCleanup(remove_cgroup_root, name, task_id)
        await self.restart_with({}, ["--cgroup-root", f"/sys/fs/cgroup/{name}"])
        await self.submit(command("cat", "/proc/self/cgroup", task_id=task_id))
        status = await self.wait_terminal(task_id)
        self.assertEqual(status["status"], "success", status)
        self.assertIn(f":/{name}/{task_id}\n", status["stdout"])



@backends.each
class GarbageCollectionTests(OwnServerCase):
    """
    With zero retention, terminal tasks disappear; running ones stay.
    """

    def assert_structured_log(self, task_id: str) -> None:
        """
        The server's standard output is JSON lines with an C{INFO} listen
        record and a C{task dispatched} record.
        """
        records = [
            json.loads(line) for line in self.server.log_text().splitlines() if line.startswith("{")
        ]
        self.assertTrue(records)
        for record in records:
            self.assertIsInstance(record, dict)
            for key in ("timestamp", "level", "message"):
                self.assertIn(key, record)
        listening = [r for r in records if r.get("listen_addr") == self.server.listen_addr]
        self.assertEqual([r["level"] for r in listening], ["INFO"])
        dispatched = [r for r in records if r["message"] == "task dispatched"]
        self.assertEqual([r.get("task_id") for r in dispatched], [task_id])
        self.assertIsInstance(dispatched[0].get("shim_pid"), int)

    async def test_finished_task_collected(self) -> None:
        """
        A finished task is removed from every endpoint and from disk within
        a few GC intervals; a running task is never collected.
        """
        await self.start_server(*GRACE, "--result-retention-secs", "0", "--gc-interval-ms", "200")
        running = await self.submit(shell("sleep 30", task_id=unique("keep")))
        await self.wait_started(running)
        self.assert_structured_log(running)
        finished = await self.submit(shell("sleep 0.2", task_id=unique("collect")))
        self.assertIn((await self.status(finished))["status"], ("accepted", "running", "success"))
        task_dir = self.task_dir(finished)
        self.assertTrue(os.path.isdir(task_dir))

        async def collected() -> bool:
            return (await self.api.get(f"/api/v1/tasks/{finished}")).code == 404

        await poll(self._reactor(), collected, timeout=10, what="GC of the finished task")
        for method, path in (("GET", "/events"), ("POST", "/kill")):
            self.assert_envelope(
                await self.api.request(method, f"/api/v1/tasks/{finished}{path}"), 404, "not_found"
            )
        self.assertFalse(os.path.exists(task_dir))
        await sleep(self._reactor(), 0.5)
        self.assertEqual((await self.status(running))["status"], "running")
        self.assertTrue(os.path.isdir(self.task_dir(running)))
        self.assertEqual((await self.kill(running)).code, 200)

        async def running_collected() -> bool:
            return (await self.api.get(f"/api/v1/tasks/{running}")).code == 404

        await poll(self._reactor(), running_collected, timeout=10, what="GC of the killed task")


class TwistdTests(OwnServerCase):
    """
    The twistd plugin runs the same server.
    """

    async def test_twistd_serves(self) -> None:
        """
        C{twistd -n execgo serve ...} answers C{/healthz} and runs a task.
        """
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        env = clean_environ({"PYTHONPATH": repository_root()})
        server = ServerProcess(
            self._reactor(),
            os.path.abspath(self.mktemp()),
            GRACE,
            env=env,
            command=twistd_command(),
            cwd=cwd,
        )
        self.addCleanup(server.shutdown)
        await server.start()
        self.server = server
        self.api = server.client(self)
        health = await self.api.get("/healthz")
        self.assertEqual(health.json(), {"status": "ok", "version": VERSION})
        config = (await self.api.get("/api/v1/runtime/config")).json()
        self.assertEqual(config["listen_addr"], server.listen_addr)
        self.assertEqual(config["termination_grace_ms"], 300)
        task_id = await self.submit(command("echo", "from twistd", task_id=unique("twistd")))
        status = await self.wait_terminal(task_id)
        self.assertEqual((status["status"], status["stdout"]), ("success", "from twistd\n"))
        exit_status = await server.stop()
        self.assertIsNotNone(exit_status)
        self.assertEqual(os.listdir(cwd), [])
