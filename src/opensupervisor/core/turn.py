"""One model call turned into output items: text becomes a message, tool calls become function calls."""

from __future__ import annotations

from dataclasses import dataclass, field

from opensupervisor.core.contracts import (
    Finish,
    FinishReason,
    ModelEvent,
    Served,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from opensupervisor.core.events import Emitter, Event
from opensupervisor.wire.items import Item


@dataclass(slots=True)
class Answered:
    pass


@dataclass(slots=True)
class CalledTools:
    calls: list[Item]


@dataclass(slots=True)
class Truncated:
    reason: str


Outcome = Answered | CalledTools | Truncated


@dataclass(slots=True)
class TurnBuilder:
    """Feeds a model's normalized events into the emitter; finished items are appended to ``history``."""

    em: Emitter
    history: list[Item]
    message: Item | None = None
    call: Item | None = None
    calls: list[Item] = field(default_factory=list)
    finish: FinishReason = "stop"
    outcome: Outcome | None = None
    # The catalog model that answered this turn: the requested one unless a fallback took over.
    served: str = ""

    def on(self, event: ModelEvent) -> list[Event]:
        if isinstance(event, TextDelta):
            return self._text(event.text)
        if isinstance(event, ToolCallStart):
            out = self._close_message() + self._close_call()
            self.call, added = self.em.start_call(event.call_id, event.name)
            self.calls.append(self.call)
            return [*out, added]
        if isinstance(event, ToolCallDelta):
            return [self.em.call_delta(self.call, event.arguments)] if self.call is not None else []
        if isinstance(event, Usage):
            self.em.add_usage(event.input_tokens, event.output_tokens, event.cached_tokens, event.reasoning_tokens)
        elif isinstance(event, Finish):
            self.finish = event.reason
        elif isinstance(event, Served):
            self.served = event.model
        return []

    def _text(self, delta: str) -> list[Event]:
        out = self._close_call()
        if self.message is None:
            self.message, started = self.em.start_message()
            out += started
        return [*out, self.em.text_delta(self.message, delta)]

    def _close_call(self) -> list[Event]:
        if self.call is None:
            return []
        call, self.call = self.call, None
        return self.em.finish_call(call)

    def _close_message(self) -> list[Event]:
        if self.message is None:
            return []
        message, self.message = self.message, None
        events = self.em.finish_message(message, "incomplete" if self.finish == "length" else "completed")
        self.history.append(copy_item(message))
        return events

    def end(self) -> list[Event]:
        """Close what is open (an empty answer still becomes a message) and set ``outcome``."""
        out = self._close_call()
        if self.message is None and not self.calls:
            self.message, started = self.em.start_message()
            out += started
        out += self._close_message()
        self.history.extend(copy_item(c) for c in self.calls)
        served_by = self.em.response["served_by"]
        if self.served and self.served not in served_by:
            served_by.append(self.served)
        if self.finish in ("length", "content_filter"):
            self.outcome = Truncated("max_output_tokens" if self.finish == "length" else "content_filter")
        else:
            self.outcome = CalledTools(self.calls) if self.calls else Answered()
        return out


def copy_item(item: Item, **changes: object) -> Item:
    """A copy for the history, so later changes to the streamed item cannot reach what the model saw."""
    out = dict(item, **changes)
    if out["type"] == "message":
        out["content"] = [dict(p) for p in out["content"]]
    return out
