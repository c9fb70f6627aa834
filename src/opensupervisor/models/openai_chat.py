"""Any OpenAI-compatible Chat Completions server (vLLM, Ollama, llama.cpp server, LiteLLM, OpenAI).

The HTTP side (aiohttp, retries, errors) is ``models.http_upstream``; this module is the wire
translation: Responses items to chat messages, and chat chunks to model events.
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
from opensupervisor.wire.ids import new_id
from opensupervisor.wire.items import Item

log = logging.getLogger(__name__)
_FINISH: dict[str, FinishReason] = {"length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
                                    "content_filter": "content_filter"}


class OpenAIChatModel(Model):
    def __init__(self, name: str, *, base_url: str, upstream_model: str, api_key_env: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 2) -> None:
        self.name = name
        self.upstream_model = upstream_model
        self.http = HTTPUpstream(name, base_url.rstrip("/") + "/chat/completions", api_key_env=api_key_env,
                                 timeout_s=timeout_s, max_retries=max_retries)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        calls: dict[int, list[str]] = {}
        finish: FinishReason | None = None
        done = False
        buffered = 0  # characters of call arguments held until the end
        async with aclosing(self.http.stream_json(self._params(request))) as chunks:
            async for chunk in chunks:
                if chunk is None:
                    done = True
                    break
                if chunk.get("error"):
                    # vLLM and others report failures inside the stream once it has started.
                    log.warning("model %s: upstream error mid-stream: %s", self.name,
                                self.http.scrub(str(chunk["error"])))
                    raise ModelError(f"model '{self.name}': the upstream reported an error while streaming")
                events, arguments = _chunk_events(chunk, calls)
                for event in events:
                    yield event
                buffered += arguments
                if request.max_output_chars is not None and buffered > request.max_output_chars:
                    finish = "length"  # past the response's output cap: stop reading the upstream
                    break
                choices = chunk.get("choices") or []
                if choices and choices[0].get("finish_reason"):
                    finish = _FINISH.get(choices[0]["finish_reason"], "stop")
        if finish is None and not done:
            raise ModelError(f"model '{self.name}': the upstream stream ended before the answer did")
        # Tool calls are collected whole: compatible servers may interleave parallel calls by index.
        for call_id, name, *args in calls.values():
            yield ToolCallStart(call_id, name)
            yield ToolCallDelta("".join(args))
        yield Finish(finish or "stop")

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.upstream_model, "messages": to_chat_messages(request),
                                  "stream": True, "stream_options": {"include_usage": True}}
        if request.tools:
            params["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                  "parameters": t.parameters}}
                for t in request.tools
            ]
            choice = request.tool_choice
            params["tool_choice"] = choice if choice in ("auto", "none", "required") else {
                "type": "function", "function": {"name": choice}}
            params["parallel_tool_calls"] = request.parallel_tool_calls
        fmt = request.text_format or {}
        if fmt.get("type") == "json_schema":
            params["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt["name"], "schema": fmt["schema"], "strict": bool(fmt.get("strict"))}}
        elif fmt.get("type") == "json_object":
            params["response_format"] = {"type": "json_object"}
        if request.max_output_tokens is not None:
            params["max_tokens"] = request.max_output_tokens
        params.update(request.settings)
        return params


def _chunk_events(chunk: dict[str, Any], calls: dict[int, list[str]]) -> tuple[list[ModelEvent], int]:
    """A chunk's events, and the characters of call arguments it added to ``calls``."""
    events: list[ModelEvent] = []
    arguments = 0
    usage = chunk.get("usage")
    if usage:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        events.append(Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0,
                            cached_tokens=cached))
    choices = chunk.get("choices") or []
    if not choices:
        return events, 0
    delta = choices[0].get("delta") or {}
    if delta.get("content"):
        events.append(TextDelta(delta["content"]))
    for tc in delta.get("tool_calls") or []:
        index = tc.get("index", 0)
        function = tc.get("function") or {}
        entry = calls.setdefault(index, [tc.get("id") or new_id("call"), ""])
        if function.get("name"):
            entry[1] = function["name"]
        if function.get("arguments"):
            entry.append(function["arguments"])
            arguments += len(function["arguments"])
    return events, arguments


def to_chat_messages(request: ModelRequest) -> list[dict[str, Any]]:
    """Responses items → Chat Completions messages (consecutive calls join one assistant message)."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    for item in request.items:
        kind = item.get("type")
        if kind == "message":
            messages.append(_message(item))
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"] or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            text = output if isinstance(output, str) else "".join(p.get("text", "") for p in output)
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
    return messages


def _message(item: Item) -> dict[str, Any]:
    role = "system" if item["role"] == "developer" else item["role"]
    parts = item["content"]
    if all(p["type"] in ("input_text", "output_text", "text", "refusal") for p in parts):
        return {"role": role, "content": "".join(p.get("text") or p.get("refusal") or "" for p in parts)}
    content: list[dict[str, Any]] = []
    for p in parts:
        if p["type"] == "input_image" and p.get("image_url"):
            content.append({"type": "image_url", "image_url": {"url": p["image_url"], "detail": p["detail"]}})
        elif "text" in p:
            content.append({"type": "text", "text": p["text"]})
    return {"role": role, "content": content}
