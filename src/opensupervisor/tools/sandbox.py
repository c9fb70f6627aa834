"""A pool of sandbox subprocesses for Python functions: outside the server, limited, replaceable.

Each worker is ``python -I tools/sandbox_worker.py`` with an empty environment, its own session,
and limits on address space, CPU time and open files (``resource.setrlimit``). A call that runs past
its wall-clock timeout, or a worker that dies (``os._exit``, a crash, the memory limit), costs
that worker: it is killed and replaced, and the call gets a clear error. The server never runs
function code itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from opensupervisor.errors import ToolError

WORKER = Path(__file__).with_name("sandbox_worker.py")


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float = 30.0
    memory_mb: int = 512
    cpu_s: int = 60


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def call(self, request: bytes, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(request + b"\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            raise EOFError
        answer: dict[str, Any] = orjson.loads(line)
        return answer

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()


class Sandbox:
    """At most ``size`` workers, started on demand and reused while they behave."""

    def __init__(self, limits: Limits, size: int = 2) -> None:
        self.limits = limits
        self._idle: list[_Worker] = []
        self._slots = asyncio.Semaphore(size)

    async def _spawn(self) -> _Worker:
        limits = self.limits

        def restrict() -> None:  # in the child, before exec
            memory = limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            os.setsid()

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(WORKER), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env={}, cwd="/", preexec_fn=restrict, limit=16 * 1024 * 1024)
        return _Worker(proc)

    async def call(self, file: Path, function: str, arguments: dict[str, Any], *,
                   timeout_s: float | None = None) -> str:
        request = orjson.dumps({"file": str(file), "function": function, "arguments": arguments})
        timeout = timeout_s or self.limits.timeout_s
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._spawn()
            try:
                answer = await worker.call(request, timeout)
            except TimeoutError as exc:
                await worker.kill()
                raise ToolError(f"the function did not finish within {timeout:g} seconds") from exc
            except (EOFError, ConnectionError, OSError) as exc:
                await worker.kill()
                raise ToolError("the function's process stopped (it exited, crashed or ran out of memory)") from exc
            except BaseException:
                await worker.kill()  # cancelled mid-call: the worker's state is unknown
                raise
            self._idle.append(worker)
        if "error" in answer:
            raise ToolError(f"the function failed: {answer['error']}")
        return str(answer["ok"])

    async def aclose(self) -> None:
        for worker in self._idle:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
            await worker.kill()
        self._idle = []
