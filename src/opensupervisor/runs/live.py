"""Runs in flight in this process: their events so far, and followers waiting for more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from opensupervisor.core.events import Event


class LiveRun:
    """The event log of a running response, kept in memory until it ends.

    Followers (a streaming create, a resumed ``GET ?stream=true``) read from any position and then
    wait for new events, so a client that disconnects loses nothing and the run goes on without it.
    """

    def __init__(self, response_id: str) -> None:
        self.response_id = response_id
        self.events: list[Event] = []
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
            self.events.append(event)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self.done = True
            self._changed.notify_all()

    async def ended(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.done)

    async def follow(self, after: int = -1) -> AsyncIterator[Event]:
        """Events with ``sequence_number > after``, then live ones until the run ends."""
        position = 0
        while True:
            async with self._changed:
                while position >= len(self.events) and not self.done:
                    await self._changed.wait()
                batch = self.events[position:]
                position = len(self.events)
                finished = self.done
            for event in batch:
                if event.sequence_number > after:
                    yield event
            if finished and position >= len(self.events):
                return
