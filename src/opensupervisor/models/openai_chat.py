"""Any OpenAI-compatible Chat Completions server (vLLM, Ollama, llama.cpp server, LiteLLM, OpenAI)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import openai
from openai.types.chat import ChatCompletionChunk

from opensupervisor.core.contracts import (
    Finish,
    FinishReason,
    Item,
    Model,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from opensupervisor.errors import ConfigError, ModelError, ModelTimeout


class OpenAIChatModel(Model):
    def __init__(self, name: str, *, base_url: str, upstream_model: str, api_key_env: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 2) -> None:
        self.name = name
        self.upstream_model = upstream_model
        api_key = os.environ.get(api_key_env, "") if api_key_env else "unused"
        if api_key_env and not api_key:
            raise ConfigError(f"model '{name}': environment variable {api_key_env} is not set")
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                                         max_retries=max_retries)

    async def aclose(self) -> None:
        await self.client.close()

    async def request_stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        calls: dict[int, list[str]] = {}
        finish: FinishReason = "stop"
        with _translate_errors(self.name):
            stream = await self.client.chat.completions.create(**self._params(request), stream=True,
                                                               stream_options={"include_usage": True})
            async for chunk in stream:
                for event in _chunk_events(chunk, calls):
                    yield event
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = _finish(chunk.choices[0].finish_reason)
        # Tool calls are collected whole: compatible servers may interleave parallel calls by index.
        for call_id, name, *args in calls.values():
            yield ToolCallStart(call_id, name)
            yield ToolCallDelta("".join(args))
        yield Finish(finish)

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.upstream_model, "messages": to_chat_messages(request)}
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


def _chunk_events(chunk: ChatCompletionChunk, calls: dict[int, list[str]]) -> list[ModelEvent]:
    events: list[ModelEvent] = []
    if chunk.usage is not None:
        cached = chunk.usage.prompt_tokens_details.cached_tokens if chunk.usage.prompt_tokens_details else 0
        events.append(Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, cached_tokens=cached or 0))
    if not chunk.choices:
        return events
    delta = chunk.choices[0].delta
    if delta.content:
        events.append(TextDelta(delta.content))
    for tc in delta.tool_calls or []:
        entry = calls.setdefault(tc.index, [tc.id or f"call_{tc.index}", ""])
        if tc.function and tc.function.name:
            entry[1] = tc.function.name
        if tc.function and tc.function.arguments:
            entry.append(tc.function.arguments)
    return events


def _finish(reason: str) -> FinishReason:
    return {"length": "length", "tool_calls": "tool_calls", "content_filter": "content_filter"}.get(
        reason, "stop")  # type: ignore[return-value]


@contextmanager
def _translate_errors(model: str) -> Iterator[None]:
    """Map openai SDK errors onto ``ModelError`` at this adapter's edge."""
    try:
        yield
    except openai.APITimeoutError as exc:
        raise ModelTimeout(f"model '{model}' timed out") from exc
    except openai.APIStatusError as exc:
        code = "rate_limit_exceeded" if exc.status_code == 429 else "server_error"
        raise ModelError(f"model '{model}' upstream returned HTTP {exc.status_code}", code=code,
                         retryable=exc.status_code == 429 or exc.status_code >= 500) from exc
    except openai.APIConnectionError as exc:
        raise ModelError(f"model '{model}' upstream is unreachable", retryable=True) from exc


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
