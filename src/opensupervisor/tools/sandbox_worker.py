"""The program a sandbox worker runs: one Python function, called again and again over a private pipe.

Started by ``tools.sandbox`` as ``python -I worker.py <request fd> <answer fd>`` (under bubblewrap,
or as a plain subprocess in the weaker ``processes-only`` mode). It imports nothing of the server.
Frames on both pipes are ``OSB1`` + a 4-byte big-endian length + JSON. The first request sets the
worker up: the function's source code and name, the limits, and (under a root server) the
unprivileged uid to switch to; every later one is a call, ``{"id", "arguments"}``, answered with
``{"id", "ok" | "error", ...}`` carrying the same id.

Before it loads the function the worker makes itself small: standard input, output and error go to
``/dev/null`` (so nothing a function, a child process or a C library prints can reach the answers),
resource limits are set, root is dropped. After each call, and before its answer, every other
process of the sandbox is killed and the scratch directory emptied; a worker that could not clean
up, or that a function left a thread in, says so and the server retires it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import linecache
import os
import resource
import shutil
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any

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


def restrict(setup: dict[str, Any]) -> None:
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
    # A parent that dies without killing us takes us along (bubblewrap does this for its own tree).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    uid = setup.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        with open("/proc/self/status", encoding="ascii") as status:
            caps = [line.split()[1] for line in status if line.startswith(("CapEff", "CapPrm"))]
        if os.getuid() != uid or any(int(c, 16) for c in caps):
            raise PermissionError("could not drop privileges")


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


def kill_the_rest(namespaced: bool) -> bool:
    """Kill every other process of the sandbox; whether none is left."""
    me = os.getpid()
    deadline = time.monotonic() + 2.0
    while True:
        others = _others(me, namespaced)
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


def serve(requests: int, answers: int, setup: dict[str, Any]) -> None:
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
        answer: dict[str, Any] = {"error": f"the function could not be loaded: {problem}"} if function is None \
            else call(function, request, setup["max_chars"])
        clean = kill_the_rest(namespaced)
        threads = threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1
        if scratch and scratch != "/":
            with contextlib.suppress(OSError):
                wipe(scratch, list(setup.get("keep") or []))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        answer.update(id=request["id"], retire=not clean or threads, cpu=usage.ru_utime + usage.ru_stime)
        write_frame(answers, answer)


def main() -> None:
    requests, answers = int(sys.argv[1]), int(sys.argv[2])
    for fd in (requests, answers):  # children (and what they run) get neither pipe
        os.set_inheritable(fd, False)
    silence_stdio()
    setup = read_frame(requests)
    if setup is None:
        return
    restrict(setup)
    serve(requests, answers, setup)


if __name__ == "__main__":
    main()
