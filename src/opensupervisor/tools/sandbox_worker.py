"""The program a sandbox worker runs: one Python function, called again and again over a private pipe.

Started by ``tools.sandbox`` as ``python -I worker.py <request fd> <answer fd> [<server pid>]`` (under
bubblewrap, or as a plain subprocess in the weaker ``processes-only`` mode, which passes the server's
pid). It imports nothing of the server.
Frames on both pipes are ``OSB1`` + a 4-byte big-endian length + JSON. The first request sets the
worker up: the function's source code and name, the limits, and (under a root server) the
unprivileged uid to switch to; every later one is a call, ``{"id", "arguments"}``, answered with
``{"id", "ok" | "error", ...}`` carrying the same id.

Before it loads the function the worker makes itself small: standard input, output and error go to
``/dev/null`` (so nothing a function, a child process or a C library prints can reach the answers),
resource limits are set, root is dropped. After each call, and before its answer, every other
process of the sandbox is killed and the scratch directory emptied; a worker that could not clean
up, or that a function left a thread in, says so and the server retires it.

A worker dies with its server. Before it reads anything it asks the kernel to kill it when its parent
dies, then checks that its parent is still the server (which may have died before it asked); a
worker whose parent is gone exits without reading a request, and one whose request pipe ends
(the server is gone) exits too. Under bubblewrap the PID namespace takes the function's own
processes along; in the ``processes-only`` mode a guard process does that (``guard_the_session``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import linecache
import os
import resource
import select
import shutil
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

MAGIC = b"OSB1"
HEADER = struct.Struct(">4sI")
MAX_REQUEST = 64 * 1024 * 1024
MAX_ERROR_CHARS = 2000
PR_SET_PDEATHSIG = 1


def read_frame(fd: int) -> dict[str, Any] | None:
    head = _read_exactly(fd, HEADER.size)
    if head is None:
        return None
    magic, size = HEADER.unpack(head)
    if magic != MAGIC or size > MAX_REQUEST:
        raise ValueError("bad request frame")
    body = _read_exactly(fd, size)
    if body is None:
        return None
    message: dict[str, Any] = json.loads(body)
    return message


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_frame(fd: int, message: dict[str, Any]) -> None:
    body = json.dumps(message, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass")
    data = memoryview(HEADER.pack(MAGIC, len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def silence_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def die_with_parent(parent: int | None) -> None:
    """Be killed with our parent; exit at once if ``parent`` is given and is no longer our parent.

    The signal is armed first and the parent checked after: a parent that died before the signal
    was armed has already left us with another one, and one that dies later sends the signal."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(1)  # without it the promise to die with the server cannot be kept
    if parent is not None and os.getppid() != parent:
        os._exit(0)


def guard_the_session(requests: int, answers: int) -> int:
    """Start the guard of a ``processes-only`` worker, and return its pid: once the worker is gone,
    however it died, the guard kills every process left in the worker's session, then exits. The
    kernel's parent-death signal reaches the worker only, not what its function started, and there
    is no PID namespace here to take those along."""
    worker = os.pidfd_open(os.getpid())
    pid_read, pid_write = os.pipe()
    middle = os.fork()
    if not middle:
        # Forked twice, so the guard is no child of the worker: a function that waits for all its
        # children does not wait for it.
        guard = os.fork()
        if not guard:
            _guard(worker, (requests, answers, pid_read, pid_write))
        os.write(pid_write, guard.to_bytes(4, "big"))
        os._exit(0)
    os.waitpid(middle, 0)
    guard = int.from_bytes(os.read(pid_read, 4), "big")
    for fd in (worker, pid_read, pid_write):
        os.close(fd)
    return guard


def _guard(worker: int, pipes: tuple[int, ...]) -> NoReturn:
    try:
        # Its own process group: the server's kill of the worker's group leaves the guard to clean up
        # behind it. No pipe ends: the server must see a dead worker's answers end.
        os.setpgid(0, 0)
        for fd in pipes:
            os.close(fd)
        gone = select.poll()
        gone.register(worker, select.POLLIN)
        gone.poll()
        kill_the_rest(namespaced=False)
    finally:
        os._exit(0)


def restrict(setup: dict[str, Any], parent: int | None) -> None:
    """Limits, then (a root server's worker) the switch to its own unprivileged uid."""
    limits = setup["limits"]
    memory = limits["memory_mb"] * 1024 * 1024
    file_size = limits["max_file_mb"] * 1024 * 1024
    values = [(resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, limits["cpu_s"]),
              (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)]
    if limits.get("max_processes") is not None:  # counted per uid: only where the worker has its own
        values.append((resource.RLIMIT_NPROC, limits["max_processes"]))
    for which, value in values:
        resource.setrlimit(which, (value, value))
    uid = setup.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        with open("/proc/self/status", encoding="ascii") as status:
            caps = [line.split()[1] for line in status if line.startswith(("CapEff", "CapPrm"))]
        if os.getuid() != uid or any(int(c, 16) for c in caps):
            raise PermissionError("could not drop privileges")
        die_with_parent(parent)  # the kernel clears the parent-death signal when the uid changes


def load(source: str, filename: str, function: str) -> Any:
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    spec = importlib.util.spec_from_loader("uc_function", loader=None, origin=filename)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = filename
    sys.modules["uc_function"] = module
    exec(compile(source, filename, "exec"), module.__dict__)
    return getattr(module, function)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _error(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (line {frames[-1].lineno})" if frames else ""
    text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS] + where


def kill_the_rest(namespaced: bool, spare: int | None = None) -> bool:
    """Kill every other process of the sandbox but ``spare`` (the guard); whether none is left."""
    me = os.getpid()
    deadline = time.monotonic() + 2.0
    while True:
        others = [pid for pid in _others(me, namespaced) if pid != spare]
        if not others:
            return True
        if namespaced:
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)  # everyone we may signal in our PID namespace but init
        for pid in others:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


def _others(me: int, namespaced: bool) -> list[int]:
    """Processes of this sandbox other than us: in our PID namespace all but its init; in the weaker
    mode, those of our session."""
    session = os.getsid(0)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me or (namespaced and name == "1"):
            continue
        if not namespaced:
            try:
                with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) != session or fields[0] == "Z":
                continue
        found.append(int(name))
    return found


def wipe(scratch: str, keep: list[str]) -> None:
    """Empty the scratch directory, but for ``keep`` (where the Python installation is bound)."""
    for name in os.listdir(scratch):
        if name in keep:
            continue
        path = os.path.join(scratch, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def call(function: Any, request: dict[str, Any], max_chars: int) -> dict[str, Any]:
    try:
        text = _text(function(**request["arguments"]))
    except BaseException as exc:  # the function's failure is the answer, the worker goes on
        return {"error": _error(exc)}
    return {"ok": text[:max_chars], "chars": len(text)}


def serve(requests: int, answers: int, setup: dict[str, Any], parent: int | None, guard: int | None) -> None:
    namespaced = bool(setup["namespaced"])
    scratch = setup.get("scratch")
    if scratch:
        os.chdir(scratch)
    try:
        function = load(setup["source"], setup["filename"], setup["function"])
        problem = None
    except BaseException as exc:
        function, problem = None, _error(exc)
    write_frame(answers, {"id": "ready"})
    while (request := read_frame(requests)) is not None:
        if parent is not None and os.getppid() != parent:
            return  # the server is gone (a request it sent before it died): never start a call for nobody
        answer: dict[str, Any] = {"error": f"the function could not be loaded: {problem}"} if function is None \
            else call(function, request, setup["max_chars"])
        clean = kill_the_rest(namespaced, spare=guard)
        threads = threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1
        if scratch and scratch != "/":
            with contextlib.suppress(OSError):
                wipe(scratch, list(setup.get("keep") or []))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        answer.update(id=request["id"], retire=not clean or threads, cpu=usage.ru_utime + usage.ru_stime)
        write_frame(answers, answer)


def main() -> None:
    parent = int(sys.argv[3]) if len(sys.argv) > 3 else None
    die_with_parent(parent)  # first of all, before a request is read
    requests, answers = int(sys.argv[1]), int(sys.argv[2])
    for fd in (requests, answers):  # children (and what they run) get neither pipe
        os.set_inheritable(fd, False)
    silence_stdio()
    setup = read_frame(requests)
    if setup is None:
        return  # the server is gone before it set us up
    guard = None if setup["namespaced"] else guard_the_session(requests, answers)
    restrict(setup, parent)
    serve(requests, answers, setup, parent, guard)


if __name__ == "__main__":
    main()
