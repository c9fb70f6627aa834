"""Background runs in this process, and following runs wherever they execute.

A background run drains the run's event stream into a ``LiveRun`` (its in-memory log, which local
followers read), inside the DBOS workflow task that runs it (``runs.durable``). While it runs it
beats a heartbeat in the store once a second; a heartbeat refused because the stored response
stopped running (cancelled or deleted by another process) cancels the task. Followers of a run in
another process poll its stored event log; when the log goes quiet and the heartbeat is stale, the
run's workflow tells whether it will go on (queued, or being recovered) or is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

import anyio

from opensupervisor import metrics
from opensupervisor.core.events import TERMINAL_EVENTS, Event, error_event, terminal_event
from opensupervisor.runs.live import LiveRun
from opensupervisor.store import Store, Stored
from opensupervisor.wire.response import TERMINAL_STATUSES

log = logging.getLogger(__name__)
HEARTBEAT_S = 1.0
# A run whose heartbeat is this old has no process any more.
STALE_MS = 10_000
# How often a follower of a run in another process looks for new events in the log.
FOLLOW_INTERVAL_S = 0.05
# How long the log may stay quiet before a follower checks whether anyone still runs the response.
FOLLOW_GRACE_S = 2.0
ABANDONED = "The server process running this response stopped before it finished."


class Ended(Protocol):
    """What a background run needs to know about its recording."""

    @property
    def finished(self) -> bool: ...


# Whether a run's workflow will still run: its DBOS status, or None when it has none.
WorkflowState = Callable[[str], Awaitable[str | None]]
WILL_RUN = frozenset({"PENDING", "ENQUEUED", "DELAYED"})


class BackgroundRuns:
    def __init__(self, store: Store, workflow_state: WorkflowState) -> None:
        self.store = store
        self.workflow_state = workflow_state
        self.live: dict[str, LiveRun] = {}
        # Told when there may be room for a queued run here: one was queued, or one of these ended.
        self.wake: Callable[[], None] = lambda: None

    def adopt(self, response_id: str) -> LiveRun:
        """The live log of a run about to start here (made early, so that its creator can follow it)."""
        live = self.live.get(response_id)
        if live is None or live.done:
            live = self.live[response_id] = LiveRun(response_id)
        return live

    async def drive(self, live: LiveRun, events: AsyncGenerator[Event], recording: Ended,
                    closing: Callable[[], list[Event]]) -> None:
        """Drain a run into its live log, in the calling task (which ``cancel`` then stops).

        ``closing`` gives the events a cancelled run recorded while it could no longer yield them.
        """
        live.task = asyncio.current_task()
        metrics.BACKGROUND.inc()
        watcher = asyncio.create_task(self._watch(live, recording))
        try:
            async for event in events:
                await live.publish(event)
        except asyncio.CancelledError:
            log.info("background response %s stopped (%s)", live.response_id,
                     "shutdown" if live.shutting_down else live.stop_reason or "cancelled")
            if live.shutting_down:
                raise  # the workflow stays unfinished, for recovery
        finally:
            watcher.cancel()
            with anyio.CancelScope(shield=True):
                await events.aclose()  # runs the stream's cleanup, which records how it ended
                for event in closing():
                    await live.publish(event)
                await live.close()
            if self.live.get(live.response_id) is live:
                del self.live[live.response_id]
            metrics.BACKGROUND.dec()
            self.wake()

    async def _watch(self, live: LiveRun, recording: Ended) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if recording.finished:
                return
            if not await self.store.heartbeat(live.response_id) and not recording.finished:
                log.info("response %s stopped running elsewhere; stopping its run", live.response_id)
                self.cancel(live)
                return

    @staticmethod
    def running(stored: Stored) -> bool:
        """Whether some process still runs this stored response (its heartbeat is fresh)."""
        return stored.response["status"] not in TERMINAL_STATUSES and not _stale(stored)

    def cancel(self, live: LiveRun) -> None:
        """Cancel a run once; later cancels wait for the same end."""
        if live.task is not None and not live.cancel_requested:
            live.cancel_requested = True
            live.task.cancel()

    async def wait(self, live: LiveRun) -> None:
        """Until the run has recorded its end (its task goes on to finish the workflow)."""
        await live.ended()

    def follow(self, response_id: str, after: int) -> AsyncGenerator[Event]:
        live = self.live.get(response_id)
        return self._follow_live(live, after) if live is not None else self._follow_stored(response_id, after)

    async def release(self, response_id: str) -> None:
        """A run adopted here that will not run here after all (cancelled before its task began, or
        this process stops first): its followers read the rest, its ending included, from the stored log."""
        live = self.live.get(response_id)
        if live is not None and live.task is None:
            del self.live[response_id]
            live.shutting_down = True
            await live.close()
            self.wake()

    async def _follow_live(self, live: LiveRun, after: int) -> AsyncGenerator[Event]:
        """The run's live log here; when the run went to another process before its end (this one
        was taken for dead), the rest of it from the stored log, which its new owner writes."""
        async for event in live.follow(after):
            after = event.sequence_number
            yield event
            if event.type in TERMINAL_EVENTS:
                return
        if live.shutting_down:
            async for event in self._follow_stored(live.response_id, after):
                yield event

    async def _follow_stored(self, response_id: str, after: int) -> AsyncGenerator[Event]:
        """Poll the stored log of a run in another process until its terminal event.

        If the log goes quiet and the run's heartbeat is stale, it is waiting in the queue, or its
        workflow says whether it waits for recovery (the follower waits too) or will never run again
        (the follower gets an ending that says how the response stands, and never hangs).
        """
        quiet_since = time.monotonic()
        while True:
            batch = await self.store.events_after(response_id, after)
            for event in batch:
                after = event.sequence_number
                yield event
                if event.type in TERMINAL_EVENTS:
                    return
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > FOLLOW_GRACE_S:
                stored = await self.store.meta(response_id, None)
                if stored is None:
                    return  # deleted
                ended = stored.response["status"] in TERMINAL_STATUSES
                if _stale(stored) and (ended or (not stored.waiting
                                                 and await self.workflow_state(response_id) not in WILL_RUN)):
                    yield await self._ending(response_id, stored.response, after + 1)
                    return
                quiet_since = time.monotonic()
            await asyncio.sleep(FOLLOW_INTERVAL_S)

    async def _ending(self, response_id: str, response: dict[str, Any], seq: int) -> Event:
        if response["status"] not in TERMINAL_STATUSES:
            return error_event(seq, "server_error", ABANDONED)
        full = await self.store.get(response_id, None) or response
        return terminal_event(full, seq)

    async def aclose(self) -> None:
        """Stop the runs of this process without recording an end: another process (or this one,
        restarted) recovers them from their last step."""
        for live in list(self.live.values()):
            if live.task is None:  # adopted, not started: its workflow starts elsewhere
                await self.release(live.response_id)
                continue
            live.shutting_down = True
            self.cancel(live)
            await self.wait(live)


def _stale(stored: Stored) -> bool:
    return time.time() * 1000 - (stored.heartbeat_at or 0) > STALE_MS
