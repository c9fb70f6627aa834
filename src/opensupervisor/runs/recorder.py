"""Persisting a run's event stream: batched writes at item boundaries, never per chunk.

A response whose id the client can already see (streamed or background) is written when it is
created, at every finished output item and at its terminal event, so a ``GET`` at any moment finds
it with the items finished so far. A plain JSON request is written once, at its terminal event,
before the HTTP answer leaves: nobody can ask for it earlier, and read-after-write still holds.

The event log is kept for background responses, the only ones that can be re-streamed
(``GET …?stream=true&starting_after=N``); other responses keep their items, not their events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from opensupervisor.core.events import Event
from opensupervisor.store import Store

Item = dict[str, Any]
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


class Recorder:
    def __init__(self, store: Store | None, *, response_id: str, owner: str, request: dict[str, Any],
                 stream: bool, input_items: list[Item], live: bool, keep_events: bool) -> None:
        self.store = store
        self.response_id = response_id
        self.owner = owner
        self.request = request
        self.stream = stream
        self.input_items = input_items
        self.live = live
        self.keep_events = keep_events
        self._pending: list[Event] = []
        self._created = False
        self.finished = False

    async def record(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Pass ``events`` through, writing them as they cross item and terminal boundaries."""
        async for event in events:
            await self.add(event)
            yield event

    async def add(self, event: Event) -> None:
        kind = event.type
        if kind in TERMINAL_EVENTS:
            self.finished = True
        if self.store is None:
            return
        if self.keep_events or kind == "response.output_item.done":
            self._pending.append(event)
        if kind in TERMINAL_EVENTS:
            await self._flush(event.data["response"], terminal=True)
        elif self.live and (kind in ("response.created", "response.output_item.done") or (
                kind == "response.in_progress" and event.data["response"]["background"])):
            # A background run's pickup is a boundary too: pollers see it leave "queued".
            await self._flush(event.data.get("response"), terminal=False)

    async def _flush(self, response: dict[str, Any] | None, *, terminal: bool) -> None:
        assert self.store is not None
        pending, self._pending = self._pending, []
        done = {e.data["output_index"]: e.data["item"] for e in pending if e.type == "response.output_item.done"}
        if not self.keep_events:
            pending = []  # only the finished items were collected
        if not self._created:
            assert response is not None
            self._created = True
            output = list(response["output"]) if terminal else []
            await self.store.create(response, owner=self.owner, request=self.request, stream=self.stream,
                                    input_items=self.input_items, output=output, new_events=pending)
            return
        if terminal:
            assert response is not None
            await self.store.finish(response, output=done, new_events=pending)
        else:
            await self.store.append(self.response_id, output=done, new_events=pending, response=response)
