"""An upstream OpenAI Responses API (``POST /v1/responses``): OpenAI itself, or another Responses server.

Items are already the upstream's own vocabulary, so a turn is sent as the history it is (without the
ids and statuses of this server's items, which mean nothing upstream), with ``store: false``:
this server keeps the conversation. The HTTP side is shared with ``openai_chat`` (``http_upstream``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from opensupervisor.core.contracts import (
    Finish,
    FinishReason,
    Model,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from opensupervisor.errors import ModelError
from opensupervisor.models.http_upstream import HTTPUpstream
from opensupervisor.wire.items import Item

log = logging.getLogger(__name__)
# What the upstream may see of an item: the Responses input fields, not this server's bookkeeping.
_DROP = ("id", "status")


class OpenAIResponsesModel(Model):
    def __init__(self, name: str, *, base_url: str, upstream_model: str, api_key_env: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 2) -> None:
        self.name = name
        self.upstream_model = upstream_model
        self.http = HTTPUpstream(name, base_url.rstrip("/") + "/responses", api_key_env=api_key_env,
                                 timeout_s=timeout_s, max_retries=max_retries)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        finish: FinishReason | None = None
        async with aclosing(self.http.stream_json(self._params(request))) as events:
            async for event in events:
                if event is None:
                    break
                if event.get("type") in ("error", "response.failed"):
                    log.warning("model %s: upstream failed: %s", self.name, self.http.scrub(str(event)[:500]))
                    raise ModelError(f"model '{self.name}': the upstream response failed")
                for out in _events(event):
                    yield out
                finish = _finish(event) or finish
        if finish is None:
            raise ModelError(f"model '{self.name}': the upstream stream ended before the response did")
        yield Finish(finish)

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.upstream_model, "input": [_upstream_item(i) for i in request.items],
                                  "stream": True, "store": False}
        if request.instructions:
            params["instructions"] = request.instructions
        if request.tools:
            params["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                                "parameters": t.parameters} for t in request.tools]
            choice = request.tool_choice
            params["tool_choice"] = choice if choice in ("auto", "none", "required") else {
                "type": "function", "name": choice}
            params["parallel_tool_calls"] = request.parallel_tool_calls
        if request.text_format and request.text_format.get("type") != "text":
            params["text"] = {"format": request.text_format}
        if request.max_output_tokens is not None:
            params["max_output_tokens"] = request.max_output_tokens
        params.update(request.settings)
        return params


def _upstream_item(item: Item) -> Item:
    return {k: v for k, v in item.items() if k not in _DROP}


def _events(event: dict[str, Any]) -> list[ModelEvent]:
    kind = event.get("type")
    if kind == "response.output_text.delta":
        return [TextDelta(event.get("delta", ""))]
    if kind == "response.output_item.added" and (event.get("item") or {}).get("type") == "function_call":
        item = event["item"]
        return [ToolCallStart(item["call_id"], item["name"])]
    if kind == "response.function_call_arguments.delta":
        return [ToolCallDelta(event.get("delta", ""))]
    if kind in ("response.completed", "response.incomplete"):
        usage = (event.get("response") or {}).get("usage") or {}
        cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
        return [Usage(usage.get("input_tokens") or 0, usage.get("output_tokens") or 0, cached_tokens=cached)]
    return []


def _finish(event: dict[str, Any]) -> FinishReason | None:
    kind = event.get("type")
    if kind == "response.completed":
        output = (event.get("response") or {}).get("output") or []
        return "tool_calls" if any(i.get("type") == "function_call" for i in output) else "stop"
    if kind == "response.incomplete":
        reason = ((event.get("response") or {}).get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return None
