"""Where Python functions run: pools of sandbox workers, outside the server, isolated and replaceable.

Each function has its own pool of warm workers (``[sandbox] pool_size``), and one principal may hold
at most ``per_principal`` of them at once, so one user's slow calls cannot starve another's. A
worker is started by ``sandbox_launch`` (under bubblewrap by default) and runs ``sandbox_worker``.

Calls and answers travel on a private pipe pair, never on the worker's standard streams, in frames
of bounded size; each answer carries the random id of its call. A worker whose answer is late,
malformed, oversize or for another call, that dies, or that says it could not clean up after its
call, is killed with everything it started (its PID namespace) and replaced; the call gets a clear
error. The server never runs function code itself. A worker, and whatever its function started,
dies with the server process, even one killed with SIGKILL (see ``_popen``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from opensupervisor.errors import ToolError
from opensupervisor.tools.sandbox_launch import SCRATCH, UIDS, Isolation, Launcher, kept_in_scratch
from opensupervisor.workspace import SandboxSection

HEADER_SIZE = 8
MAGIC = b"OSB1"
MAX_REQUEST = 64 * 1024 * 1024
START_TIMEOUT_S = 30.0
STOPPED = "the function's process stopped (it exited, crashed or ran out of memory)"


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float = 30.0
    memory_mb: int = 512
    cpu_s: int = 60
    max_processes: int = 16
    max_file_mb: int = 16
    max_output_chars: int = 64 * 1024


class _Broken(Exception):
    """The worker broke the protocol or stopped: it cannot be trusted with another call."""


class _Stale(_Broken):
    """An answer for an earlier call of this worker: the one that came after a forged one."""


class _Worker:
    """One sandbox: the launched process, its pipes, and the pidfd of its PID namespace's init."""

    def __init__(self, proc: subprocess.Popen[bytes], reader: asyncio.StreamReader, incoming: asyncio.ReadTransport,
                 writer: asyncio.WriteTransport, init: int | None, uid_lock: int | None,
                 scratch: tempfile.TemporaryDirectory[str] | None) -> None:
        self.proc = proc
        self.scratch = scratch
        self.reader = reader
        self.incoming = incoming
        self.writer = writer
        self.init = init
        self.uid_lock = uid_lock
        self.max_answer = 1 << 20
        self.answered: set[str] = set()

    def send(self, message: dict[str, Any]) -> None:
        body = orjson.dumps(message)
        if len(body) > MAX_REQUEST:
            raise ToolError(f"the arguments are too large ({len(body):,} bytes; at most {MAX_REQUEST:,})")
        self.writer.write(MAGIC + len(body).to_bytes(4, "big") + body)

    async def receive(self, call_id: str) -> dict[str, Any]:
        """The next answer, which must be for ``call_id`` and within ``max_answer`` bytes."""
        try:
            head = await self.reader.readexactly(HEADER_SIZE)
            size = int.from_bytes(head[4:], "big")
            if head[:4] != MAGIC or size > self.max_answer:
                raise _Broken("a malformed or oversize answer")
            answer = orjson.loads(await self.reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _Broken(STOPPED) from exc
        except orjson.JSONDecodeError as exc:
            raise _Broken("a malformed answer") from exc
        if isinstance(answer, dict) and answer.get("id") in self.answered:
            raise _Stale("a second answer for an earlier call")
        if not isinstance(answer, dict) or answer.get("id") != call_id:
            raise _Broken("an answer that was not for this call")
        return answer

    async def kill(self) -> None:
        """Kill the worker and everything in its sandbox; returns once they are gone."""
        if self.init is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.init, signal.SIGKILL)  # the namespace dies with its init
        else:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.writer.close()
        self.incoming.close()
        await _exited(self.proc)
        if self.init is not None:
            # Killing bubblewrap does not wait for the namespace: its init, reparented, is still
            # killing the rest. The init ends only once every process of its namespace is gone.
            await _pidfd_readable(self.init)
        for fd in (self.init, self.uid_lock):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.init = self.uid_lock = None
        if self.scratch is not None:
            self.scratch.cleanup()


async def _exited(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    pidfd = os.pidfd_open(proc.pid)
    try:
        await _pidfd_readable(pidfd)
    finally:
        os.close(pidfd)
        proc.wait()


async def _pidfd_readable(pidfd: int) -> None:
    """Returns once the process of ``pidfd`` has exited (a pidfd polls readable then)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: None if done.done() else done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(pidfd)


class _Pool:
    """The workers of one function, at most ``size`` busy, at most ``share`` for one principal."""

    def __init__(self, size: int, share: int) -> None:
        self.size = size
        self.share = min(share, size)
        self.idle: list[_Worker] = []
        self.busy = 0
        self.held: collections.Counter[str] = collections.Counter()
        self.waiting: collections.deque[tuple[str, asyncio.Future[None]]] = collections.deque()

    def _free_for(self, principal: str) -> bool:
        return self.busy < self.size and self.held[principal] < self.share

    @contextlib.asynccontextmanager
    async def slot(self, principal: str) -> AsyncIterator[None]:
        if self._free_for(principal):
            self._take(principal)
        else:
            granted = asyncio.get_running_loop().create_future()
            entry = (principal, granted)
            self.waiting.append(entry)
            try:
                await granted
            except BaseException:
                if granted.done() and not granted.cancelled():
                    self._give_back(principal)  # granted and cancelled at once: pass it on
                else:
                    self.waiting.remove(entry)
                raise
        try:
            yield
        finally:
            self._give_back(principal)

    def _take(self, principal: str) -> None:
        self.busy += 1
        self.held[principal] += 1

    def _give_back(self, principal: str) -> None:
        self.busy -= 1
        self.held[principal] -= 1
        # First come, first served among those still under their share.
        for entry in list(self.waiting):
            who, granted = entry
            if self._free_for(who):
                self.waiting.remove(entry)
                self._take(who)
                granted.set_result(None)


class Sandbox:
    """Pools of sandbox workers, one per function (file, function name, network or not)."""

    def __init__(self, limits: Limits, size: int = 4, *, per_principal: int | None = None,
                 isolation: Isolation = "namespaces", bwrap: str | None = None) -> None:
        self.limits = limits
        self.size = size
        self.share = per_principal or max(1, size // 2)
        self.launcher = Launcher(isolation, bwrap, limits.max_file_mb)
        self._pools: dict[tuple[Path, str, bool], _Pool] = {}

    @classmethod
    def from_section(cls, section: SandboxSection) -> Sandbox:
        limits = Limits(memory_mb=section.memory_mb, cpu_s=section.cpu_s, max_processes=section.max_processes,
                        max_file_mb=section.max_file_mb)
        return cls(limits, section.pool_size, per_principal=section.per_principal, isolation=section.isolation,
                   bwrap=section.bwrap)

    def require(self) -> None:
        """``ConfigError`` (what is missing, and the weaker mode by name) unless the isolation the
        workspace asks for can be set up on this machine."""
        self.launcher.require()

    async def call(self, file: Path, function: str, arguments: dict[str, Any], *, timeout_s: float | None = None,
                   principal: str = "", network: bool = False, max_output_chars: int | None = None) -> str:
        """Run ``function`` of ``file`` with ``arguments`` in one of its pool's workers, as ``principal``."""
        timeout = timeout_s or self.limits.timeout_s
        limit = max_output_chars or self.limits.max_output_chars
        pool = self._pools.get((file, function, network))
        if pool is None:
            pool = self._pools[(file, function, network)] = _Pool(self.size, self.share)
        async with pool.slot(principal):
            reused = pool.idle.pop() if pool.idle else None
            try:
                answer = await self._run(pool, reused or await self._start(file, function, network, limit),
                                         arguments, timeout)
            except _Stale:
                # The previous call's function forged its own answer, so its real one came late: that
                # worker is gone, and this call (which it never answered) runs on a fresh one.
                answer = await self._run(pool, await self._start(file, function, network, limit), arguments,
                                         timeout)
        return _result(answer, limit)

    async def _run(self, pool: _Pool, worker: _Worker, arguments: dict[str, Any], limit_s: float) -> dict[str, Any]:
        call_id = secrets.token_hex(16)
        try:
            worker.send({"id": call_id, "arguments": arguments})
            answer = await asyncio.wait_for(worker.receive(call_id), limit_s)
        except TimeoutError as exc:
            await worker.kill()
            raise ToolError(f"the function did not finish within {limit_s:g} seconds") from exc
        except _Stale:
            await worker.kill()
            raise
        except _Broken as exc:
            await worker.kill()
            message = STOPPED if str(exc) == STOPPED else f"the function's sandbox sent {exc} and was stopped"
            raise ToolError(message) from exc
        except BaseException:
            await worker.kill()  # cancelled mid-call, or arguments refused: its state is unknown
            raise
        if answer.get("retire") or float(answer.get("cpu") or 0) > self.limits.cpu_s / 2:
            await worker.kill()  # it left a thread behind, could not clean up, or used half its CPU
        else:
            worker.answered.add(call_id)
            pool.idle.append(worker)
        return answer

    async def _start(self, file: Path, function: str, network: bool, limit: int) -> _Worker:
        try:
            source = await asyncio.to_thread(file.read_text, encoding="utf-8")
        except OSError as exc:
            raise ToolError(f"the function's source {file.name} cannot be read: {exc.strerror}") from exc
        uid, lock = UIDS.acquire() if self.launcher.namespaced and self.launcher.as_root else (None, None)
        try:
            worker = await self._launch(network, lock)
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise
        worker.max_answer = 6 * limit + 64 * 1024  # JSON escapes a control character in 6 bytes
        limits = self.limits
        scratch = SCRATCH if self.launcher.namespaced else worker.scratch.name if worker.scratch else None
        own_uid = uid is not None or self.launcher.namespaced  # the process count is per uid
        keep = kept_in_scratch() if self.launcher.namespaced else []
        worker.send({"id": "setup", "source": source, "scratch": scratch, "keep": keep,
                     "filename": f"/sandbox/{file.name}",
                     "function": function, "uid": uid, "namespaced": self.launcher.namespaced, "max_chars": limit,
                     "limits": {"memory_mb": limits.memory_mb, "cpu_s": limits.cpu_s,
                                "max_file_mb": limits.max_file_mb,
                                "max_processes": limits.max_processes if own_uid else None}})
        try:
            await asyncio.wait_for(worker.receive("ready"), START_TIMEOUT_S)
        except (TimeoutError, _Broken) as exc:
            await worker.kill()
            raise ToolError("the function's sandbox did not start") from exc
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def _launch(self, network: bool, uid_lock: int | None) -> _Worker:
        loop = asyncio.get_running_loop()
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        launch = self.launcher.command(requests_read, answers_write, network)
        scratch = None if self.launcher.namespaced else tempfile.TemporaryDirectory(prefix="opensupervisor-fn-")
        try:
            proc = _popen(launch.argv, launch.pass_fds, scratch.name if scratch else "/")
        except OSError as exc:
            if scratch is not None:
                scratch.cleanup()
            for fd in (requests_write, answers_read, *([launch.info_fd] if launch.info_fd is not None else [])):
                os.close(fd)
            raise ToolError(f"the function's sandbox could not start: {exc.strerror}") from exc
        finally:
            for fd in (requests_read, answers_write, *launch.close_after):
                os.close(fd)
        # The reader stops reading past twice its limit until the bytes are taken: a worker that
        # floods its pipe fills a bounded buffer, and a frame is never larger than ``max_answer``.
        reader = asyncio.StreamReader(limit=1 << 16)
        incoming, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                   os.fdopen(answers_read, "rb", 0))
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(requests_write, "wb", 0))
        init = None
        if launch.info_fd is not None:
            init = await _init_of(launch.info_fd)
        return _Worker(proc, reader, incoming, writer, init, uid_lock, scratch)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            workers, pool.idle = pool.idle, []
            for worker in workers:
                await worker.kill()


def _popen(argv: list[str], pass_fds: tuple[int, ...], cwd: str) -> subprocess.Popen[bytes]:
    """Start a worker from the event loop's thread, on purpose: that thread lives as long as the
    server, and the kernel's parent-death signal (bubblewrap's ``--die-with-parent``, the plain
    worker's own ``PR_SET_PDEATHSIG``) follows the thread that started the child, not its process.
    From a thread that ends first (``asyncio.to_thread``'s pool) a worker would die mid-call; and no
    ``preexec_fn``, which is not safe in a process with threads."""
    return subprocess.Popen(argv, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={}, cwd=cwd, start_new_session=True)


async def _init_of(info_fd: int) -> int | None:
    """A pidfd of the sandbox's init, from what bubblewrap writes to ``--info-fd``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(info_fd, "rb", 0))
    try:
        text = b""
        while b"}" not in text and len(text) < 4096:
            chunk = await asyncio.wait_for(reader.read(4096), START_TIMEOUT_S)
            if not chunk:
                break
            text += chunk
        pid = orjson.loads(text).get("child-pid")
    except (TimeoutError, orjson.JSONDecodeError):
        pid = None
    finally:
        transport.close()
    if not isinstance(pid, int):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _result(answer: dict[str, Any], limit: int) -> str:
    if "error" in answer:
        raise ToolError(f"the function failed: {answer['error']}")
    text = str(answer.get("ok", ""))
    total = answer.get("chars")
    if isinstance(total, int) and total > len(text):
        # Cut here (the worker sent only the start), leaving room for the note under the tool's cap.
        shown = max(0, limit - 200)
        return (f"{text[:shown]}\n\n[Output truncated: showing the first {shown:,} of {total:,} characters. "
                "Ask for less.]")
    return text
