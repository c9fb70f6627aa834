"""Runs in flight in this process: their events so far, and followers waiting for more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from opensupervisor.core.eventlog import DeltaRun, EventLog
from opensupervisor.core.events import Event


class LiveRun:
    """The event log of a running response, kept in memory until it ends (compact: ``core.eventlog``).

    Followers (a streaming create, a resumed ``GET ?stream=true``) read from any position and then
    wait for new events, so a client that disconnects loses nothing and the run goes on without it.
    """

    def __init__(self, response_id: str) -> None:
        self.response_id = response_id
        self.log = EventLog(keep_text=True)
        self.done = False
        self.task: asyncio.Task[Any] | None = None
        self.cancel_requested = False
        # Why the run is being stopped early, when it is not a cancel: "max_run_time".
        self.stop_reason: str | None = None
        # The process is stopping: the run ends here unrecorded and resumes elsewhere.
        self.shutting_down = False
        self._changed = asyncio.Condition()

    async def publish(self, event: Event) -> None:
        async with self._changed:
            self.log.append(event)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self.done = True
            self._changed.notify_all()

    async def ended(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.done)

    async def follow(self, after: int = -1) -> AsyncGenerator[Event]:
        """Events with ``sequence_number > after``, then live ones until the run ends."""
        log, position, sent = self.log, 0, after
        while True:
            async with self._changed:
                while log.last_sequence <= sent and not self.done:
                    await self._changed.wait()
                batch = log.entries[position:]
                finished = self.done
            position += max(len(batch) - 1, 0)  # the last entry is read again: a run of deltas grows
            for entry in batch:
                for event in entry.events(sent) if isinstance(entry, DeltaRun) else (entry,):
                    if event.sequence_number > sent:
                        sent = event.sequence_number
                        yield event
            if finished and sent >= log.last_sequence:
                return

    @property
    def last_sequence(self) -> int:
        return self.log.last_sequence
