"""A deterministic Anthropic Messages API server (``POST /v1/messages``, streaming).

Every event is built from the ``anthropic`` SDK's own types, so the wire format is the real one.
What it says depends on the last user turn:

- a tool result: ``Tool said: <result>``;
- tools offered: a ``tool_use`` of the first tool with ``{"a": 2, "b": 3}`` when it has those
  parameters, else ``{}``, streamed as two ``input_json_delta`` pieces;
- ``upstream 429`` / ``upstream 500`` / ``upstream 529`` / ``upstream 400``: that HTTP error;
- ``upstream breaks``: one text delta, then an ``error`` event (overloaded) mid-stream;
- ``upstream garbage``: one text delta, then a data line that is not JSON;
- ``upstream slow``: the answer starts after two seconds;
- otherwise ``Hello from Claude.``

``required_key`` must arrive as ``x-api-key`` or ``Authorization: Bearer`` (the SDK sends the latter),
else 401. ``last_request`` keeps the body.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from anthropic.types import (
    InputJSONDelta,
    Message,
    MessageDeltaUsage,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    TextBlock,
    TextDelta,
    ToolUseBlock,
    Usage,
)
from anthropic.types.raw_message_delta_event import Delta
from pydantic import BaseModel

from opensupervisor.testing.asgi import FakeUpstream, Send, send_json, send_sse

ERRORS = (429, 500, 529, 400)
OVERLOADED = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
GARBAGE = b"event: content_block_delta\ndata: {not json\n\n"


def _sse(event: BaseModel) -> bytes:
    data = event.model_dump_json(exclude_none=True)
    return b"event: " + str(getattr(event, "type", "")).encode() + b"\ndata: " + data.encode() + b"\n\n"


def _last_user_blocks(req: dict[str, Any]) -> list[dict[str, Any]]:
    for message in reversed(req.get("messages") or []):
        if message["role"] == "user":
            content = message["content"]
            return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    return []


def _script(req: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """(text, tool use) of the answer."""
    blocks = _last_user_blocks(req)
    results = [b for b in blocks if b.get("type") == "tool_result"]
    if results:
        content = results[-1]["content"]
        return f"Tool said: {content if isinstance(content, str) else orjson.dumps(content).decode()}", None
    text = " ".join(b.get("text", "") for b in blocks)
    if req.get("tools") and (req.get("tool_choice") or {}).get("type") != "none":
        tool = req["tools"][0]
        properties = tool.get("input_schema", {}).get("properties", {})
        arguments = {"a": 2, "b": 3} if {"a", "b"} <= set(properties) else {}
        return "", {"name": tool["name"], "input": arguments}
    return text, None


def _events(text: str, tool: dict[str, Any] | None, model: str) -> list[bytes]:
    usage = Usage(input_tokens=12, output_tokens=1)
    start = Message(id="msg_fake", type="message", role="assistant", model=model, content=[], stop_reason=None,
                    stop_sequence=None, usage=usage)
    out = [_sse(RawMessageStartEvent(type="message_start", message=start))]
    if tool is not None:
        block = ToolUseBlock(type="tool_use", id="toolu_fake_1", name=tool["name"], input={})
        arguments = orjson.dumps(tool["input"]).decode()
        half = len(arguments) // 2
        out.append(_sse(RawContentBlockStartEvent(type="content_block_start", index=0, content_block=block)))
        for piece in (arguments[:half], arguments[half:]):
            out.append(_sse(RawContentBlockDeltaEvent(type="content_block_delta", index=0,
                                                      delta=InputJSONDelta(type="input_json_delta",
                                                                           partial_json=piece))))
        stop = "tool_use"
    else:
        out.append(_sse(RawContentBlockStartEvent(type="content_block_start", index=0,
                                                  content_block=TextBlock(type="text", text=""))))
        for word in text.split(" "):
            out.append(_sse(RawContentBlockDeltaEvent(type="content_block_delta", index=0,
                                                      delta=TextDelta(type="text_delta", text=word + " "))))
        stop = "end_turn"
    out.append(_sse(RawContentBlockStopEvent(type="content_block_stop", index=0)))
    out.append(_sse(RawMessageDeltaEvent(type="message_delta", delta=Delta(stop_reason=stop),
                                         usage=MessageDeltaUsage(output_tokens=7))))
    out.append(_sse(RawMessageStopEvent(type="message_stop")))
    return out


class AnthropicUpstream(FakeUpstream):
    def keys(self, headers: dict[bytes, bytes]) -> set[bytes]:
        return {headers.get(b"x-api-key", b""), *super().keys(headers)}

    def refusal(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}

    async def answer(self, req: dict[str, Any], headers: dict[bytes, bytes], send: Send) -> None:
        said = " ".join(b.get("text", "") for b in _last_user_blocks(req))
        for status in ERRORS:
            if f"upstream {status}" in said:
                await send_json(send, status, {"type": "error", "error": {"type": "api_error", "message": "fake"}})
                return
        if "upstream slow" in said:
            await asyncio.sleep(2)
        text, tool = _script(req)
        events = _events(text, tool, req.get("model", "claude"))
        if "upstream breaks" in said or "upstream garbage" in said:
            events = [*events[:3], OVERLOADED if "breaks" in said else GARBAGE]
        await send_sse(send, b"".join(events))

