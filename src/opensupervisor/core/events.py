"""Responses streaming events, numbered from 0 and encoded to JSON exactly once."""

from __future__ import annotations

import time
from typing import Any, cast

import orjson

from opensupervisor.wire.ids import derived_id
from opensupervisor.wire.items import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    ItemStatus,
    McpCallItem,
    McpListToolsItem,
    MessageItem,
    OutputText,
    as_item,
)
from opensupervisor.wire.response import (
    IncompleteDetails,
    Response,
    ResponseError,
    ResponseObject,
    ResponseStatus,
    usage,
)

TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


def terminal_type(status: str) -> str:
    """The terminal event of a response that ended ``status``: a cancelled or failed one ends with
    ``response.failed`` (OpenAI has no cancelled event)."""
    return {"completed": "response.completed", "incomplete": "response.incomplete"}.get(status, "response.failed")


def error_event(sequence_number: int, code: str, message: str) -> Event:
    """An ``error`` event: the stream's note that the response failed, or could not be followed."""
    return Event({"type": "error", "sequence_number": sequence_number, "code": code, "message": message,
                  "param": None})


def terminal_event(response: dict[str, Any], sequence_number: int) -> Event:
    """The terminal event of a stored ``response``, for whoever ends it outside its run."""
    return Event.final({"type": terminal_type(response["status"]), "sequence_number": sequence_number,
                        "response": response})


class Event:
    """One streaming event, encoded when it is made.

    Encoding at once freezes the event: the items it shows keep changing as the run goes on, and the
    same bytes serve the SSE writer and the event log. An event that shows a finished item or the
    finished response (``final``) is encoded only when it is written, and the bytes are not kept:
    what it shows no longer changes, and it may carry a whole answer, which the item already holds.
    """

    __slots__ = ("_json", "data")

    def __init__(self, data: dict[str, Any], raw: bytes | None = None) -> None:
        self.data = data
        self._json: bytes | None = raw if raw is not None else orjson.dumps(data)

    @classmethod
    def final(cls, data: dict[str, Any]) -> Event:
        event = cls.__new__(cls)
        event.data = data
        event._json = None
        return event

    @property
    def json(self) -> bytes:
        return self._json if self._json is not None else orjson.dumps(self.data)

    @property
    def type(self) -> str:
        return str(self.data["type"])

    @property
    def sequence_number(self) -> int:
        return int(self.data["sequence_number"])

    @classmethod
    def from_json(cls, raw: bytes) -> Event:
        return cls(orjson.loads(raw), raw)


class TextBuffer:
    """Text that streams in as many small pieces, held as a few large ones.

    Adding each delta to one string copies the whole text every time (a long answer costs its
    length squared), and a string per delta costs some 50 bytes besides its text.
    """

    __slots__ = ("_chunks", "_pieces")
    JOIN_EVERY = 256

    def __init__(self, start: str = "") -> None:
        self._chunks = [start] if start else []
        self._pieces: list[str] = []

    def add(self, piece: str) -> None:
        self._pieces.append(piece)
        if len(self._pieces) >= self.JOIN_EVERY:
            self._chunks.append("".join(self._pieces))
            self._pieces = []

    def value(self) -> str:
        return "".join(self._chunks + self._pieces)


class Emitter:
    """Builds the events of one response and keeps the response object in step with them."""

    def __init__(self, response: ResponseObject | Response, start_sequence: int = 0) -> None:
        # Held loosely, as the run and the store read it (a stored response comes back untyped).
        self.response = cast(Response, response)
        self.seq = start_sequence
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        # Characters of message text and call arguments streamed so far (what the output cap counts).
        self.output_chars = 0
        # The text of each item still streaming, by item id: its field is set when the item is done.
        self._streaming: dict[str, TextBuffer] = {}

    def event(self, kind: str, *, final: bool = False, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return Event.final(data) if final else Event(data)

    def snapshot(self) -> Response:
        return dict(self.response, output=list(self.response["output"]))

    def lifecycle(self, kind: str, *, final: bool = False) -> Event:
        return self.event(kind, final=final, response=self.snapshot())

    def set_status(self, status: ResponseStatus) -> None:
        self.response["status"] = status

    # -- output items ------------------------------------------------------------------------

    def item_added(self, item: Item) -> Event:
        self.response["output"].append(item)
        return self.event("response.output_item.added", output_index=len(self.response["output"]) - 1,
                          item=item)

    def item_done(self, item: Item) -> Event:
        index = self.index_of(item)
        return self.event("response.output_item.done", final=True, output_index=index, item=item)

    def index_of(self, item: Item) -> int:
        output = self.response["output"]
        for i in range(len(output) - 1, -1, -1):
            if output[i] is item:
                return i
        raise ValueError("item is not in this response's output")

    def _next_id(self, kind: str) -> str:
        return derived_id(kind, self.response["id"], len(self.response["output"]))

    def start_message(self) -> tuple[Item, list[Event]]:
        message: MessageItem = {"id": self._next_id("message"), "type": "message", "status": "in_progress",
                                "role": "assistant", "content": []}
        item = as_item(message)
        added = self.item_added(item)
        # Added after the item event, which shows the message with no parts yet.
        part: OutputText = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        message["content"].append(part)
        return item, [added, self.event("response.content_part.added", item_id=item["id"],
                                        output_index=added.data["output_index"], content_index=0,
                                        part=part)]

    def _stream(self, item: Item, delta: str) -> None:
        buffer = self._streaming.get(item["id"])
        if buffer is None:
            holder, key = _streamed_field(item)
            buffer = self._streaming[item["id"]] = TextBuffer(holder[key])
        buffer.add(delta)
        self.output_chars += len(delta)

    def settle_text(self, item: Item) -> None:
        """Give a streamed item its whole text (a message's text, a call's arguments)."""
        buffer = self._streaming.pop(item.get("id", ""), None)
        if buffer is not None:
            holder, key = _streamed_field(item)
            holder[key] = buffer.value()

    def text_delta(self, item: Item, delta: str) -> Event:
        self._stream(item, delta)
        return self.event("response.output_text.delta", item_id=item["id"], output_index=self.index_of(item),
                          content_index=0, delta=delta, logprobs=[])

    def annotate(self, item: Item, annotations: list[dict[str, Any]]) -> list[Event]:
        """Add annotations (``url_citation`` …) to a message's text, one event each."""
        part = item["content"][0]
        index = self.index_of(item)
        events = []
        for annotation in annotations:
            part["annotations"].append(annotation)
            events.append(self.event("response.output_text.annotation.added", item_id=item["id"], output_index=index,
                                     content_index=0, annotation_index=len(part["annotations"]) - 1,
                                     annotation=annotation))
        return events

    def finish_message(self, item: Item, status: ItemStatus = "completed") -> list[Event]:
        self.settle_text(item)
        index = self.index_of(item)
        part = item["content"][0]
        item["status"] = status
        return [
            self.event("response.output_text.done", final=True, item_id=item["id"], output_index=index,
                       content_index=0, text=part["text"], logprobs=[]),
            self.event("response.content_part.done", final=True, item_id=item["id"], output_index=index,
                       content_index=0, part=part),
            self.item_done(item),
        ]

    def start_call(self, call_id: str, name: str) -> tuple[Item, Event]:
        call: FunctionCallItem = {"id": self._next_id("function_call"), "type": "function_call",
                                  "status": "in_progress", "call_id": call_id, "name": name, "arguments": ""}
        item = as_item(call)
        return item, self.item_added(item)

    def call_delta(self, item: Item, delta: str) -> Event:
        self._stream(item, delta)
        return self.event("response.function_call_arguments.delta", item_id=item["id"],
                          output_index=self.index_of(item), delta=delta)

    def finish_call(self, item: Item) -> list[Event]:
        self.settle_text(item)
        item["status"] = "completed"
        index = self.index_of(item)
        return [
            self.event("response.function_call_arguments.done", final=True, item_id=item["id"], output_index=index,
                       name=item["name"], arguments=item["arguments"]),
            self.item_done(item),
        ]

    def call_output(self, call_id: str, output: str) -> list[Event]:
        result: FunctionCallOutputItem = {"id": self._next_id("function_call_output"), "type": "function_call_output",
                                          "call_id": call_id, "output": output, "status": "completed"}
        item = as_item(result)
        return [self.item_added(item), self.item_done(item)]

    def whole_item(self, item: Item) -> list[Event]:
        """An item that is complete when it appears (an approval request, an executed call)."""
        if "id" not in item:
            item["id"] = self._next_id(item["type"])
        return [self.item_added(item), self.item_done(item)]

    def nonce(self) -> str:
        """A value unique to the next output position, the same when a durable run replays it."""
        return self._next_id("item")[-24:]

    # -- OpenAI ``mcp`` tool items -----------------------------------------------------------

    def start_mcp_call(self, server_label: str, name: str, arguments: str = "",
                       approval_request_id: str | None = None) -> tuple[Item, list[Event]]:
        call: McpCallItem = {"id": self._next_id("mcp_call"), "type": "mcp_call", "status": "in_progress",
                             "server_label": server_label, "name": name, "arguments": arguments}
        if approval_request_id is not None:
            call["approval_request_id"] = approval_request_id
        item = as_item(call)
        added = self.item_added(item)
        index = added.data["output_index"]
        return item, [added, self.event("response.mcp_call.in_progress", item_id=item["id"], output_index=index)]

    def mcp_call_delta(self, item: Item, delta: str) -> Event:
        self._stream(item, delta)
        return self.event("response.mcp_call_arguments.delta", item_id=item["id"], output_index=self.index_of(item),
                          delta=delta)

    def mcp_call_arguments_done(self, item: Item) -> Event:
        self.settle_text(item)
        return self.event("response.mcp_call_arguments.done", final=True, item_id=item["id"],
                          output_index=self.index_of(item), arguments=item["arguments"])

    def finish_mcp_call(self, item: Item, output: str | None, error: str | None) -> list[Event]:
        self.settle_text(item)
        index = self.index_of(item)
        if error is None:
            item.update(status="completed", output=output, error=None)
            kind = "response.mcp_call.completed"
        else:
            item.update(status="failed", output=None,
                        error={"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": error}]})
            kind = "response.mcp_call.failed"
        return [self.event(kind, item_id=item["id"], output_index=index), self.item_done(item)]

    def mcp_list_tools(self, server_label: str, tools: list[dict[str, Any]]) -> list[Event]:
        listing: McpListToolsItem = {"id": self._next_id("mcp_list_tools"), "type": "mcp_list_tools",
                                     "server_label": server_label, "tools": []}
        item = as_item(listing)
        added = self.item_added(item)
        index = added.data["output_index"]
        in_progress = self.event("response.mcp_list_tools.in_progress", item_id=item["id"], output_index=index)
        completed = self.event("response.mcp_list_tools.completed", item_id=item["id"], output_index=index)
        listing["tools"] = tools
        return [added, in_progress, completed, self.item_done(item)]

    def close_open_items(self) -> list[Event]:
        """End every item still streaming as ``incomplete``, with its closing events."""
        events: list[Event] = []
        for item in self.response["output"]:
            if item.get("status") != "in_progress":
                continue
            if item["type"] == "message":
                events += self.finish_message(item, "incomplete")
            else:
                self.settle_text(item)
                item["status"] = "incomplete"
                events.append(self.item_done(item))
        return events

    # -- usage and terminal events -----------------------------------------------------------

    def add_usage(self, input_tokens: int, output_tokens: int, cached: int = 0, reasoning: int = 0) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cached_tokens += cached
        self.reasoning_tokens += reasoning
        self.response["usage"] = usage(self.input_tokens, self.output_tokens, cached=self.cached_tokens,
                                       reasoning=self.reasoning_tokens)

    def finish(self, status: ResponseStatus, *, reason: str | None = None, error: ResponseError | None = None) -> Event:
        """The terminal event. A cancelled run ends with ``response.failed`` (OpenAI has no cancelled event)."""
        self.response["status"] = status
        self.response["completed_at"] = int(time.time()) if status == "completed" else None
        if reason is not None:
            details: IncompleteDetails = {"reason": reason}
            self.response["incomplete_details"] = details
        if error is not None:
            self.response["error"] = error
        if self.response["usage"] is None:
            self.add_usage(0, 0)
        for item in self.response["output"]:
            self.settle_text(item)
        return self.lifecycle(terminal_type(status), final=True)

    def error_event(self, code: str, message: str) -> Event:
        self.seq += 1
        return error_event(self.seq - 1, code, message)


def _streamed_field(item: Item) -> tuple[dict[str, Any], str]:
    """Where a streamed item keeps its text: a message's first content part, a call's arguments."""
    if item["type"] == "message":
        part: dict[str, Any] = item["content"][0]
        return part, "text"
    return item, "arguments"
