"""A queue that one task drains, writing what has gathered in batches: how the work a request must
not wait for (usage rows, spans, inference table rows, rate-limit tokens) leaves the hot path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from prometheus_client import Counter

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchWriter(Generic[T]):
    """``put`` never blocks and never raises; ``write`` gets up to ``batch`` items at a time. A write
    that fails is logged (and counted in ``failed``) and its items are gone: what is written here
    must never touch the requests. With ``max_queued``, items past it are dropped and counted."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], *, what: str, batch: int = 500,
                 linger_s: float = 0.0, max_queued: int = 0, failed: Counter | None = None,
                 dropped: Counter | None = None) -> None:
        self.write = write
        self.what = what
        self.batch = batch
        self.linger_s = linger_s
        self.max_queued = max_queued
        self.failed = failed
        self.dropped = dropped
        self._queue: asyncio.Queue[T] | None = None
        self._worker: asyncio.Task[None] | None = None

    def put(self, item: T) -> bool:
        """Queue ``item``; False when the queue is full and it was dropped."""
        if self._queue is None:  # made on first use: it belongs to the running event loop
            self._queue = asyncio.Queue(self.max_queued)
            self._worker = asyncio.create_task(self._drain(self._queue))
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            if self.dropped is not None:
                self.dropped.inc()
            return False
        return True

    async def _drain(self, queue: asyncio.Queue[T]) -> None:
        while True:
            items = [await queue.get()]
            if self.linger_s:
                await asyncio.sleep(self.linger_s)  # let a burst gather: one write for many
            while not queue.empty() and len(items) < self.batch:
                items.append(queue.get_nowait())
            try:
                await self.write(items)
            except Exception:
                if self.failed is not None:
                    self.failed.inc(len(items))
                log.exception("writing %d %s failed", len(items), self.what)
            finally:
                for _ in items:
                    queue.task_done()

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or has failed)."""
        if self._queue is not None:
            await self._queue.join()

    async def aclose(self) -> None:
        await self.flush()
        if self._worker is not None:
            self._worker.cancel()
