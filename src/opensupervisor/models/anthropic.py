"""The Anthropic Messages API, through the official ``anthropic`` SDK (the Supervisor's models are Claude)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

import anthropic

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
from opensupervisor.errors import ConfigError, ModelError, ModelTimeout
from opensupervisor.wire.items import Item, item_text

# Anthropic requires max_tokens; this is used when neither the request nor the model's defaults set it.
DEFAULT_MAX_TOKENS = 4096
_STOP: dict[str, FinishReason] = {"tool_use": "tool_calls", "max_tokens": "length", "refusal": "content_filter",
                                  "model_context_window_exceeded": "length"}


class AnthropicModel(Model):
    def __init__(self, name: str, *, upstream_model: str, api_key_env: str | None, base_url: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 2) -> None:
        self.name = name
        self.upstream_model = upstream_model
        api_key = os.environ.get(api_key_env or "ANTHROPIC_API_KEY", "")
        if not api_key:
            raise ConfigError(f"model '{name}': environment variable {api_key_env or 'ANTHROPIC_API_KEY'} is not set")
        # The SDK follows redirects by default; a redirect would lead the request, and its key, elsewhere.
        self.client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, timeout=timeout_s,
                                               max_retries=max_retries,
                                               http_client=anthropic.DefaultAsyncHttpxClient(follow_redirects=False))

    async def aclose(self) -> None:
        await self.client.close()

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        finish: FinishReason = "stop"
        input_tokens = output_tokens = cached = 0
        with _translate_errors(self.name):
            stream = await self.client.messages.create(**self._params(request), stream=True)
            async with stream:
                async for event in stream:
                    if event.type == "message_start":
                        usage = event.message.usage
                        input_tokens = usage.input_tokens + (usage.cache_read_input_tokens or 0)
                        cached = usage.cache_read_input_tokens or 0
                    elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                        yield ToolCallStart(event.content_block.id, event.content_block.name)
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        yield TextDelta(event.delta.text)
                    elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                        yield ToolCallDelta(event.delta.partial_json)
                    elif event.type == "message_delta":
                        output_tokens = event.usage.output_tokens
                        finish = _STOP.get(event.delta.stop_reason or "", "stop")
        yield Usage(input_tokens, output_tokens, cached_tokens=cached)
        yield Finish(finish)

    def _params(self, request: ModelRequest) -> dict[str, Any]:
        system, messages = to_messages(request)
        params: dict[str, Any] = {"model": self.upstream_model, "messages": messages,
                                  "max_tokens": request.max_output_tokens or DEFAULT_MAX_TOKENS}
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = [{"name": t.name, "description": t.description or "", "input_schema": t.parameters}
                               for t in request.tools]
            choice = request.tool_choice
            params["tool_choice"] = (
                {"type": "auto"} if choice == "auto" else {"type": "any"} if choice == "required"
                else {"type": "none"} if choice == "none" else {"type": "tool", "name": choice})
            if not request.parallel_tool_calls and choice != "none":
                params["tool_choice"]["disable_parallel_tool_use"] = True
        for key in ("temperature", "top_p"):
            if key in request.settings:
                params[key] = request.settings[key]
        return params


@contextmanager
def _translate_errors(model: str) -> Iterator[None]:
    """Map SDK errors onto ``ModelError``; the SDK has already retried what it retries."""
    try:
        yield
    except anthropic.APITimeoutError as exc:
        raise ModelTimeout(f"model '{model}' timed out") from exc
    except anthropic.APIStatusError as exc:
        status = exc.status_code
        code = "rate_limit_exceeded" if status == 429 else "invalid_prompt" if status in (400, 413, 422) \
            else "server_error"
        raise ModelError(f"model '{model}': upstream returned HTTP {status}", code=code,
                         retryable=status in (429, 529) or status >= 500) from exc
    except anthropic.APIConnectionError as exc:
        raise ModelError(f"model '{model}': upstream is unreachable", retryable=True) from exc
    except anthropic.AnthropicError as exc:  # a malformed stream, an error event mid-stream
        raise ModelError(f"model '{model}': the upstream stream failed ({type(exc).__name__})") from exc


def to_messages(request: ModelRequest) -> tuple[str, list[dict[str, Any]]]:
    """Responses items → Anthropic's system text and alternating user/assistant messages."""
    system = [request.instructions] if request.instructions else []
    messages: list[dict[str, Any]] = []
    for item in request.items:
        if item.get("type") == "message" and item["role"] in ("system", "developer"):
            system.append(item_text(item))
            continue
        role, blocks = _blocks(item)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return "\n\n".join(system), messages


def _blocks(item: Item) -> tuple[str, list[dict[str, Any]]]:
    kind = item.get("type")
    if kind == "message":
        role = "assistant" if item["role"] == "assistant" else "user"
        blocks = [b for b in (_part(p) for p in item["content"]) if b is not None]
        return role, blocks or [{"type": "text", "text": " "}]
    if kind == "function_call":
        return "assistant", [{"type": "tool_use", "id": item["call_id"], "name": item["name"],
                              "input": json.loads(item["arguments"] or "{}")}]
    if kind == "function_call_output":
        output = item["output"]
        text = output if isinstance(output, str) else "".join(p.get("text", "") for p in output)
        return "user", [{"type": "tool_result", "tool_use_id": item["call_id"], "content": text}]
    return "user", []


def _part(part: dict[str, Any]) -> dict[str, Any] | None:
    if part["type"] == "input_image" and part.get("image_url"):
        url = part["image_url"]
        if url.startswith("data:") and ";base64," in url:
            media, data = url[5:].split(";base64,", 1)
            return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    text = part.get("text") or part.get("refusal")
    return {"type": "text", "text": text} if text else None
