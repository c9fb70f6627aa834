"""The steps of a durable run, recorded in the store.

A background run is one DBOS workflow (started where it is taken, recovered when its process
dies); what the run does inside it is recorded here, as numbered steps in the store
(``store.ownership``): each model call, hosted call, tool listing and history read, in the order
the run makes them. A run resumed
after a crash makes the same steps in the same order, and each recorded one returns its output
instead of doing the work again.

A step's output is written fenced by the run's ownership epoch, in a transaction of the run: a
process taken for dead cannot record a step of a run another process took over. Steps are written
with the run's next write (the items they made, a call's claim, its ending), in the same
transaction: until then nothing the run shows or does depends on them, and a run resumed without
one does that step again. A hosted call's output waits for that write only when the call is the
last of its turn still running, since the call's output item (or the next call's claim) is then
written at once; a call that ends while others of its turn run is recorded as it returns.
Outputs are JSON through a codec per kind of step, never pickles: a row of the database is data,
and reading one back cannot run code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson
from sqlalchemy import Connection

from opensupervisor.core.contracts import (
    Finish,
    ModelEvent,
    Served,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolDef,
    Usage,
)
from opensupervisor.store.ownership import CallClaim, Ownership, StepRow
from opensupervisor.wire.items import Item

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How one kind of step's output is written as text and read back."""

    encode: Callable[[T], str]
    decode: Callable[[str], T]


class Steps(Protocol):
    """Runs one named unit of a run's work. Durable runs record each one, so a resumed run gets the
    recorded output instead of doing the work again; ``effect``: the work acts on the world (a hosted
    call), so its output is recorded as soon as it returns."""

    def __call__(self, name: str, fn: Callable[[], Awaitable[T]], codec: Codec[T], *,
                 effect: bool = False) -> Awaitable[T]: ...


@dataclass(slots=True)
class Outcome:
    """A model call as recorded: every event it produced, and how it failed, if it did."""

    events: list[ModelEvent]
    error: tuple[str, str, bool] | None = None


_EVENTS: dict[str, type[Any]] = {cls.__name__: cls for cls in (TextDelta, ToolCallStart, ToolCallDelta, Usage,
                                                                Finish, Served)}


def _encode_outcome(outcome: Outcome) -> str:
    # Each event as its class name and its fields in order: compact, and exact on replay (the events
    # a resumed run replays must carry the sequence numbers they had).
    events = [[type(e).__name__, *(getattr(e, slot) for slot in e.__slots__)] for e in outcome.events]
    return orjson.dumps({"events": events, "error": outcome.error}).decode()


def _decode_outcome(text: str) -> Outcome:
    body = orjson.loads(text)
    error = body["error"]
    return Outcome([_EVENTS[name](*fields) for name, *fields in body["events"]],
                   (str(error[0]), str(error[1]), bool(error[2])) if error is not None else None)


def _encode_tools(tools: list[ToolDef]) -> str:
    return orjson.dumps([{slot: getattr(tool, slot) for slot in tool.__slots__} for tool in tools]).decode()


def _decode_tools(text: str) -> list[ToolDef]:
    return [ToolDef(**fields) for fields in orjson.loads(text)]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


OUTCOME: Codec[Outcome] = Codec(_encode_outcome, _decode_outcome)
TOOLS: Codec[list[ToolDef]] = Codec(_encode_tools, _decode_tools)
TEXT: Codec[str] = Codec(_dumps, lambda text: str(orjson.loads(text)))
ITEMS: Codec[list[Item]] = Codec(_dumps, orjson.loads)


class StoredSteps:
    """``Steps`` of one owned run: numbered in the order the run makes them, replayed from ``recorded``
    (what earlier executions of the run finished), else run and recorded."""

    def __init__(self, ownership: Ownership, response_id: str, epoch: int, recorded: dict[int, StepRow]) -> None:
        self.ownership = ownership
        self.response_id = response_id
        self.epoch = epoch
        self.recorded = recorded
        self.current = 0
        self.current_name = ""
        self._unwritten: list[dict[str, Any]] = []
        self._calls_running = 0
        # What the run has not written yet, for the next claim to take (``Recorder.taken``).
        self.pending: Callable[[], Callable[[Connection], None] | None] = lambda: None

    async def __call__(self, name: str, fn: Callable[[], Awaitable[T]], codec: Codec[T], *,
                       effect: bool = False) -> T:
        self.current += 1
        step = self.current
        self.current_name = name
        done = self.recorded.pop(step, None)
        # A step recorded under another name means the run no longer makes the same steps (its
        # workspace changed); it is done again, and recorded over the old one.
        if done is not None and done.output is not None and done.name == name:
            return codec.decode(done.output)
        if not effect:
            output = await fn()
        else:
            self._calls_running += 1
            try:
                output = await fn()
            finally:
                self._calls_running -= 1
            if self._calls_running:  # its output item waits for the others: a crash meanwhile must not lose it
                await self.ownership.record_step(self.response_id, self.epoch, step, name, codec.encode(output))
                return output
        self._unwritten.append(self.ownership.step_row(self.response_id, step, name, codec.encode(output)))
        return output

    def unwritten(self) -> Callable[[Connection], None] | None:
        """Writes the steps not written yet, in the transaction of the run's next write (which takes them)."""
        rows, self._unwritten = self._unwritten, []
        return self.ownership.steps_writer(rows) if rows else None

    async def claim(self) -> CallClaim:
        """Claim the hosted call of the step in flight (``DurableCalls``), with the steps before it
        and what the run has not written yet (``pending``: the items of the model call that asked)."""
        writers = [w for w in (self.pending(), self.unwritten()) if w is not None]

        def also(conn: Connection) -> None:
            for write in writers:
                write(conn)

        return await self.ownership.claim_call(self.response_id, self.epoch, self.current, self.current_name,
                                               also if writers else None)
