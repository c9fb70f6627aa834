"""Taking queued background runs for this process, as it has room for them.

The queue is the store's (``store.run_queue``): a process that runs background responses takes the
oldest waiting runs, up to its free room, and starts each one's workflow itself, at once. It looks
when woken: a run created or ended here, a notification from another process (PostgreSQL), and
otherwise every ``poll_interval_s`` (SQLite's only way to hear of another process's runs; on
PostgreSQL only a safety net). Nothing is polled in DBOS's own tables.

A process that dies after taking a run and before its workflow started leaves the run taken by
nobody alive; housekeeping hands it back to the queue (``runs.maintenance``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from opensupervisor.store.response_rows import RunRecord
from opensupervisor.store.run_queue import RunQueue

log = logging.getLogger(__name__)
# With notifications (PostgreSQL), how often the queue is still looked at: a missed one costs this much.
NOTIFIED_POLL_S = 1.0
# How long a failing take waits before the next (the store is down, or refuses).
FAILED_S = 1.0

# Starts a taken run here, from the record the take read.
Start = Callable[[RunRecord], Awaitable[None]]


class Dispatcher:
    def __init__(self, queue: RunQueue, room: Callable[[], int], start: Start, *, poll_interval_s: float) -> None:
        """``room``: how many more runs this process takes now; ``start``: start a taken run here."""
        self.queue = queue
        self.room = room
        self.start_run = start
        self.poll_interval_s = poll_interval_s if queue.store.is_sqlite else max(poll_interval_s, NOTIFIED_POLL_S)
        self._woken = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        self._woken.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self.queue.listen(self.wake))]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self) -> None:
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                woken = await asyncio.wait_for(self._woken.wait(), self.poll_interval_s)
            self._woken.clear()
            try:
                await self.dispatch(look_first=not woken)
            except Exception:  # the dispatcher must outlive a database hiccup
                log.exception("taking queued background runs failed; trying again in %.0f s", FAILED_S)
                await asyncio.sleep(FAILED_S)

    async def dispatch(self, *, look_first: bool = True) -> int:
        """Take and start as many waiting runs as there is room for; how many were started.
        ``look_first``: read whether any run waits before writing (a poll, which mostly finds none)."""
        room = self.room()
        if room <= 0:
            return 0  # a run ending here wakes the dispatcher again
        taken = await self.queue.take(room, look_first=look_first)
        for record in taken:
            response_id = record.response["id"]
            try:
                await self.start_run(record)
            except Exception:
                log.exception("background response %s could not be started here; handing it back", response_id)
                await self.queue.release(response_id, self.queue.executor_id)
        if len(taken) == room:
            self.wake()  # the queue may hold more: look again as soon as there is room
        return len(taken)
