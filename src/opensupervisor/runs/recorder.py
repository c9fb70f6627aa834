"""Persisting a run's event stream: batched writes at item boundaries, never per chunk.

A response whose id the client can already see (streamed or background) is written when it is
created, when a background run starts, at every finished output item and at its terminal event,
so a ``GET`` at any moment finds it with the items finished so far (a foreground stream's first
events wait for its next write: only a background response's log is read while it runs); the
items of a run's last moment (its answer, or what a cancel closes) go with its terminal event,
which follows them at once (``deferred``). A plain JSON request is
written once, at its terminal event, before the HTTP answer leaves: nobody can ask for it earlier,
and read-after-write still holds.

The event log is kept for streamed and background responses, the ones whose events a client saw
or can re-stream; a plain JSON response keeps its items, not its events.

A durable run (``runs.durable``) writes only what a finished step made final: while a model call is
in flight (``hold``) its items wait for the call's checkpoint, because a run resumed after a crash
asks the model again and may get another answer. The items of a model call that calls hosted
tools go with the first call's claim (``taken``), which comes at once. A resumed run replays events
that are already in the log (``resume_after``); they are not written twice.

Nothing waits for a write as a whole event: deltas are kept as their lengths (``core.eventlog``),
finished events as the objects they show, and the log stores each text once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import Connection

from opensupervisor.core.eventlog import EventLog, Row, rows
from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.errors import RunCancelled
from opensupervisor.runs.conversations import ConversationLink
from opensupervisor.store import Store
from opensupervisor.store.response_rows import to_event_rows, to_item_rows
from opensupervisor.wire.items import Item

BOUNDARIES = frozenset({"response.created", "response.output_item.done"})


class Recorder:
    def __init__(self, store: Store | None, *, response_id: str, owner: str, request: dict[str, Any],
                 stream: bool, background: bool, input_items: list[Item],
                 options: dict[str, Any] | None = None, created: bool = False,
                 resume_after: int = -1, hold: Callable[[], bool] | None = None,
                 deferred: Callable[[], bool] | None = None, conversation: ConversationLink | None = None) -> None:
        self.store = store
        self.response_id = response_id
        self.owner = owner
        self.request = request
        self.stream = stream
        self.background = background
        self.input_items = input_items
        self.options = options
        self.live = stream or background
        # Background runs check at each write whether they were cancelled elsewhere, until they
        # record their own cancellation.
        self.guard = background
        self._pending = EventLog(keep_text=False)
        # Output indexes of the items written so far (the log may refer to them).
        self._stored: set[int] = set()
        self._created = created
        self.resume_after = resume_after
        self.hold = hold
        # Whether the run's next write follows at once and takes what is pending: its terminal
        # event (``Run.ending``), or a durable run's next hosted call's claim (``Run.calling``).
        self.deferred = deferred
        self.finished = False
        # A durable run's ownership epoch (``store.ownership``): its writes are refused once another
        # process took the run over.
        self.epoch: int | None = None
        # Its steps not written yet (``runs.checkpoints``): they go with the run's next write.
        self.unwritten: Callable[[], Callable[[Connection], None] | None] | None = None
        self._max_queued: int | None = None
        self._pool: str | None = None
        self._taken_by: str | None = None
        # The conversation the response runs in: its ending writes there too, in the same transaction.
        self.conversation = conversation

    async def record(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Pass ``events`` through, writing them as they cross item and terminal boundaries.

        Raises ``RunCancelled`` when a background response turns out to be cancelled in the store.
        A terminal event that cannot be written is still passed on before the error: the run ended
        (the loop's own ending of a store failure in a hosted call's claim, say), and its reader is told.
        """
        async for event in events:
            try:
                await self.add(event)
            except RunCancelled as exc:
                if exc.rewind_to is None:
                    yield event  # it was written; followers must not miss it
                raise
            except Exception:
                if event.type in TERMINAL_EVENTS:
                    yield event
                raise
            yield event

    async def add(self, event: Event) -> None:
        kind = event.type
        terminal = kind in TERMINAL_EVENTS
        if terminal:
            self.finished = True
        if self.store is None:
            if terminal and self.conversation is not None:
                await self.conversation.write_alone(event.data["response"])
            return
        if event.sequence_number <= self.resume_after:
            if kind == "response.output_item.done":
                self._stored.add(event.data["output_index"])
            return
        if self.live or kind == "response.output_item.done":
            self._pending.append(event)
        if terminal:
            await self._flush(event.data["response"], terminal=True)
        elif self.live and (kind in BOUNDARIES or (kind == "response.in_progress" and self.background)) and (
                self.hold is None or not self.hold()) and (self.deferred is None or not self.deferred()):
            # A background run's pickup is a boundary too: pollers see it leave "queued".
            await self._flush(event.data.get("response"), terminal=False)

    async def open(self, events: list[Event], *, max_queued: int | None = None, pool: str | None = None,
                   taken_by: str | None = None) -> None:
        """Write a response's first events in the transaction that creates it (refused with
        ``QueueFull`` when it is queued and ``max_queued`` are already; a background one of ``pool``
        taken by executor ``taken_by``, else waiting in the pool's queue)."""
        for event in events:
            self._pending.append(event)
        self._max_queued, self._pool, self._taken_by = max_queued, pool, taken_by
        await self._flush(events[-1].data["response"], terminal=False)

    def taken(self) -> Callable[[Connection], None] | None:
        """Writes what is pending (finished items and the events so far) in another write of the run,
        one that checks the run is still running first (a hosted call's claim); None when nothing is."""
        if self.store is None or not self._created:
            return None
        done, events = self._take()
        if not done and not events:
            return None
        store, item_rows = self.store, to_item_rows(self.response_id, "output", done)
        event_rows = to_event_rows(self.response_id, events)
        self._stored.update(done)
        return lambda conn: store.insert_rows(conn, item_rows, event_rows)

    def _take(self) -> tuple[dict[int, Item], list[Row]]:
        pending = self._pending.take()
        done = {e.data["output_index"]: e.data["item"] for e in pending
                if isinstance(e, Event) and e.type == "response.output_item.done"}
        events = rows(pending, self._stored | done.keys(), self._pending.items) if self.live else []
        return done, events

    async def _flush(self, response: dict[str, Any] | None, *, terminal: bool) -> None:
        assert self.store is not None
        # A foreground stream's opening is its row and input, for GETs from now on; its first events
        # wait for its next write (only a background response's log is read while it runs).
        opening = not self._created and not terminal and not self.background
        done, events = ({}, []) if opening else self._take()
        also = self.unwritten() if self.unwritten is not None else None
        link = self.conversation if terminal else None
        if link is not None:
            also = _both(also, link.ending(response or {}))
        if not self._created:
            assert response is not None
            self._created = True
            output = list(response["output"]) if terminal else []
            await self.store.create(response, owner=self.owner, request=self.request, stream=self.stream,
                                    input_items=self.input_items, output=output, new_events=events,
                                    options=self.options, max_queued=self._max_queued,
                                    pool=self._pool, taken_by=self._taken_by, also=also)
            written = True
        else:
            written = await self.store.append(self.response_id, output=done, new_events=events, response=response,
                                              guard=self.guard, epoch=self.epoch, also=also)
        if link is not None:
            link.done = written  # else the run ends its hold (``runs.drive``): its write may not have run
        self._stored.update(done)  # a refused write still writes the items
        if written:
            return
        self.finished = False
        rejected = next((e.sequence_number for e in events if e.type in TERMINAL_EVENTS), None)
        raise RunCancelled(rewind_to=rejected)


def _both(first: Callable[[Connection], None] | None,
          second: Callable[[Connection], None]) -> Callable[[Connection], None]:
    if first is None:
        return second

    def write(conn: Connection) -> None:
        first(conn)
        second(conn)

    return write
