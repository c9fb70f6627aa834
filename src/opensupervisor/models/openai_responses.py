"""An upstream OpenAI Responses API (``POST /v1/responses``): OpenAI itself, or another Responses server.

Items are already the upstream's own vocabulary, so a turn is sent as the history it is (without the
ids and statuses of this server's items, which mean nothing upstream), with ``store: false``:
this server keeps the conversation. Spoken with aiohttp, like ``openai_chat``, for the same reasons.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

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
from opensupervisor.models.openai_chat import sse_data
from opensupervisor.wire.items import Item

log = logging.getLogger(__name__)
# What the upstream may see of an item: the Responses input fields, not this server's bookkeeping.
_DROP = ("id", "status")


class OpenAIResponsesModel(Model):
    def __init__(self, name: str, *, base_url: str, upstream_model: str, api_key_env: str | None = None,
                 timeout_s: float = 120.0, max_retries: int = 2) -> None:
        self.name = name
        self.upstream_model = upstream_model
        self.max_retries = max_retries
        self.url = base_url.rstrip("/") + "/responses"
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key_env:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise ConfigError(f"model '{name}': environment variable {api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s, connect=min(10.0, timeout_s))
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: a session belongs to its event loop
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout,
                                                  connector=aiohttp.TCPConnector(limit=512))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        response = await self._open(orjson.dumps(self._params(request)))
        finish: FinishReason | None = None
        try:
            async for data in sse_data(response.content):
                if data == b"[DONE]":
                    break
                event = self._decode(data)
                for out in _events(event):
                    yield out
                finish = _finish(event) or finish
        except TimeoutError as exc:
            raise ModelTimeout(f"model '{self.name}' timed out while streaming") from exc
        except aiohttp.ClientError as exc:
            raise ModelError(f"model '{self.name}': the upstream stream broke ({type(exc).__name__})") from exc
        finally:
            response.release()
        if finish is None:
            raise ModelError(f"model '{self.name}': the upstream stream ended before the response did")
        yield Finish(finish)

    def _decode(self, data: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ModelError(f"model '{self.name}': upstream sent an event that is not JSON") from exc
        if not isinstance(event, dict):
            raise ModelError(f"model '{self.name}': upstream sent an event that is not a JSON object")
        if event.get("type") in ("error", "response.failed"):
            log.warning("model %s: upstream failed: %s", self.name, str(event)[:500])
            raise ModelError(f"model '{self.name}': the upstream response failed")
        return event

    async def _open(self, body: bytes) -> aiohttp.ClientResponse:
        """POST the request; retry rate limits, 5xx and connection failures before any output."""
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), reraise=True,
                                 wait=wait_exponential_jitter(initial=0.5, max=8),
                                 retry=retry_if_exception(lambda e: isinstance(e, ModelError) and e.retryable))
        async for attempt in retrying:
            with attempt:
                return await self._send(body)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _send(self, body: bytes) -> aiohttp.ClientResponse:
        try:
            response = await self._client().post(self.url, data=body)
        except TimeoutError as exc:
            raise ModelTimeout(f"model '{self.name}' timed out") from exc
        except aiohttp.ClientError as exc:
            raise ModelError(f"model '{self.name}': upstream is unreachable ({type(exc).__name__})",
                             retryable=True) from exc
        if response.status == 200:
            return response
        status = response.status
        response.release()
        log.warning("model %s: upstream returned HTTP %d", self.name, status)
        code = ("rate_limit_exceeded" if status == 429 else "invalid_prompt" if status in (400, 413, 422)
                else "server_error")
        raise ModelError(f"model '{self.name}': upstream returned HTTP {status}", code=code,
                         retryable=status == 429 or status >= 500)

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
