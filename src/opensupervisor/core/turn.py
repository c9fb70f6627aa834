"""One model call turned into output items: text becomes a message, tool calls become function calls."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opensupervisor.core.approval import ApprovalSigner
from opensupervisor.core.contracts import (
    Finish,
    FinishReason,
    ModelEvent,
    Served,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolDef,
    Usage,
)
from opensupervisor.core.events import Emitter, Event
from opensupervisor.wire.ids import derived_id
from opensupervisor.wire.items import Item

# A model's call id is kept only when it is short and plain: the strictest upstreams take at most
# 40 characters of [A-Za-z0-9_-] (OpenAI's Chat Completions, Anthropic's tool_use ids).
MAX_CALL_ID_CHARS = 40
_PLAIN_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CALL_ID_CHARS}}}")


@dataclass(slots=True)
class Answered:
    pass


@dataclass(slots=True)
class CalledTools:
    """The turn's calls: ``function_call`` and ``mcp_call`` items to run, ``mcp_approval_request``
    items that wait for the user."""

    calls: list[Item]


@dataclass(slots=True)
class Truncated:
    reason: str


Outcome = Answered | CalledTools | Truncated


@dataclass(slots=True)
class TurnBuilder:
    """Feeds a model's normalized events into the emitter; finished items are appended to ``history``.

    A call shows as the tool asks (``ToolDef.items``): a ``function_call`` or an ``mcp_call``
    streamed as the model writes it, or, when it needs approval, one ``mcp_approval_request`` once
    its arguments are complete.
    """

    em: Emitter
    history: list[Item]
    tools: Callable[[str], ToolDef | None] = lambda name: None
    signer: ApprovalSigner | None = None
    # Annotations for a finished message's text (citations of sources the tools returned).
    cite: Callable[[str], list[dict[str, Any]]] | None = None
    message: Item | None = None
    call: Item | None = None
    calls: list[Item] = field(default_factory=list)
    # The arguments of an approval request as they stream (shown once whole).
    _pending_arguments: list[str] = field(default_factory=list)
    finish: FinishReason = "stop"
    outcome: Outcome | None = None
    # The catalog model that answered this turn: the requested one unless a fallback took over.
    served: str = ""
    # The response's cap on streamed characters (text and arguments, all turns together); reaching
    # it ends the turn as the model's own token limit would (``capped``: stop reading the model).
    max_chars: int | None = None
    capped: bool = False
    # Call ids the conversation already uses (filled on the turn's first call).
    used_ids: set[str] | None = None

    def on(self, event: ModelEvent) -> list[Event]:
        if isinstance(event, TextDelta):
            text = self._room(event.text)
            return self._text(text) if text else []
        if isinstance(event, ToolCallStart):
            if self.capped:
                return []
            out = self._close_message() + self._close_call()
            return out + self._start_call(event)
        if isinstance(event, ToolCallDelta):
            arguments = self._room(event.arguments)
            return self._call_delta(arguments) if arguments else []
        if isinstance(event, Usage):
            self.em.add_usage(event.input_tokens, event.output_tokens, event.cached_tokens, event.reasoning_tokens)
        elif isinstance(event, Finish):
            if not self.capped:
                self.finish = event.reason
        elif isinstance(event, Served):
            self.served = event.model
        return []

    def _room(self, delta: str) -> str:
        """``delta``, or as much of it as the output cap leaves."""
        if self.capped:
            return ""
        if self.max_chars is None:
            return delta
        left = self.max_chars - self.em.output_chars
        if len(delta) < left:
            return delta
        self.capped = True
        self.finish = "length"
        return delta[:max(left, 0)]

    def _text(self, delta: str) -> list[Event]:
        out = self._close_call()
        if self.message is None:
            self.message, started = self.em.start_message()
            out += started
        return [*out, self.em.text_delta(self.message, delta)]

    def _start_call(self, event: ToolCallStart) -> list[Event]:
        tool = self.tools(event.name)
        label = tool.server_label if tool is not None else None
        if tool is not None and tool.approval and label is not None and self.signer is not None:
            # Shown whole once its arguments are known: the request's id signs them.
            self.call = {"type": "mcp_approval_request", "server_label": label, "name": event.name, "arguments": ""}
            self.calls.append(self.call)
            return []
        if tool is not None and tool.items == "mcp" and label is not None:
            self.call, events = self.em.start_mcp_call(label, event.name)
            self.calls.append(self.call)
            return events
        self.call, added = self.em.start_call(self._call_id(event.call_id), event.name)
        self.calls.append(self.call)
        return [added]

    def _call_id(self, proposed: object) -> str:
        """The model's call id when it is plain and new to the conversation, else one of ours.

        Outputs are paired with calls by id, so a repeated id (in this turn or an earlier one) would
        lose an output; a long or odd one would be refused by the next model request, or carried
        into every later one. Ours is derived from the output position: a resumed durable run
        makes the same one.
        """
        if self.used_ids is None:
            self.used_ids = {str(i["call_id"]) for i in self.history
                             if i.get("type") in ("function_call", "function_call_output")}
        call_id, attempt = proposed if isinstance(proposed, str) else "", 0
        position = len(self.em.response["output"])
        while call_id in self.used_ids or not _PLAIN_ID.fullmatch(call_id):
            call_id = derived_id("call", f"{self.em.response['id']}/{attempt}", position)[:MAX_CALL_ID_CHARS]
            attempt += 1
        self.used_ids.add(call_id)
        return call_id

    def _call_delta(self, delta: str) -> list[Event]:
        call = self.call
        if call is None:
            return []
        if call["type"] == "mcp_approval_request":
            self.em.output_chars += len(delta)
            self._pending_arguments.append(delta)
            return []
        if call["type"] == "mcp_call":
            return [self.em.mcp_call_delta(call, delta)]
        return [self.em.call_delta(call, delta)]

    def _close_call(self) -> list[Event]:
        if self.call is None:
            return []
        call, self.call = self.call, None
        if call["type"] == "mcp_approval_request":
            assert self.signer is not None
            call["arguments"] += "".join(self._pending_arguments)
            self._pending_arguments.clear()
            call["id"] = self.signer.request_id(self.em.nonce(), call["server_label"], call["name"], call["arguments"])
            call["status"] = "completed"
            return self.em.whole_item(call)
        if call["type"] == "mcp_call":
            return [self.em.mcp_call_arguments_done(call)]  # it stays in progress until it has run
        return self.em.finish_call(call)

    def _close_message(self) -> list[Event]:
        if self.message is None:
            return []
        message, self.message = self.message, None
        self.em.settle_text(message)
        events = self.em.annotate(message, self.cite(message["content"][0]["text"])) if self.cite else []
        events += self.em.finish_message(message, "incomplete" if self.finish == "length" else "completed")
        self.history.append(copy_item(message))
        return events

    def end(self) -> list[Event]:
        """Close what is open (an empty answer still becomes a message) and set ``outcome``."""
        out = self._close_call()
        if self.message is None and not self.calls:
            self.message, started = self.em.start_message()
            out += started
        out += self._close_message()
        # An mcp_call joins the history once it has run (the loop adds it with its output).
        self.history.extend(copy_item(c) for c in self.calls if c["type"] != "mcp_call")
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
