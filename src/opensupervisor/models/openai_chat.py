"""Any OpenAI-compatible Chat Completions server (vLLM, Ollama, llama.cpp server, LiteLLM, OpenAI).

Spoken with aiohttp directly, not through the openai SDK or httpx: measured on these machines, the
SDK's request transformation and per-chunk models, and httpx's connection pool, each cost more than
the rest of a loop turn, and this adapter needs only one route. The SSE reader is a few lines of
our own because no maintained aiohttp SSE client exists. Retries (before any output) use tenacity.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
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
        self.max_retries = max_retries
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key_env:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise ConfigError(f"model '{name}': environment variable {api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {api_key}"
        # A limit per read, not per response: a long answer may stream for longer than timeout_s.
        self.timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s, connect=min(10.0, timeout_s))
        self._secret = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop that runs the requests.
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout,
                                                  connector=aiohttp.TCPConnector(limit=512))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        body = orjson.dumps(self._params(request))
        response = await self._open(body)
        calls: dict[int, list[str]] = {}
        finish: FinishReason | None = None
        done = False
        try:
            async for data in sse_data(response.content):
                if data == b"[DONE]":
                    done = True
                    break
                chunk = self._decode(data)
                for event in _chunk_events(chunk, calls):
                    yield event
                choices = chunk.get("choices") or []
                if choices and choices[0].get("finish_reason"):
                    finish = _FINISH.get(choices[0]["finish_reason"], "stop")
            if finish is None and not done:
                raise ModelError(f"model '{self.name}': the upstream stream ended before the answer did",
                                 retryable=False)
        except TimeoutError as exc:
            raise ModelTimeout(f"model '{self.name}' timed out while streaming") from exc
        except aiohttp.ClientError as exc:
            raise ModelError(f"model '{self.name}': the upstream stream broke ({type(exc).__name__})") from exc
        finally:
            response.release()
        # Tool calls are collected whole: compatible servers may interleave parallel calls by index.
        for call_id, name, *args in calls.values():
            yield ToolCallStart(call_id, name)
            yield ToolCallDelta("".join(args))
        yield Finish(finish or "stop")

    def _decode(self, data: bytes) -> dict[str, Any]:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ModelError(f"model '{self.name}': upstream sent a chunk that is not JSON") from exc
        if not isinstance(chunk, dict):
            raise ModelError(f"model '{self.name}': upstream sent a chunk that is not a JSON object")
        if chunk.get("error"):
            # vLLM and others report failures inside the stream once it has started.
            log.warning("model %s: upstream error mid-stream: %s", self.name, self._scrub(str(chunk["error"])))
            raise ModelError(f"model '{self.name}': the upstream reported an error while streaming")
        return chunk

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

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
        try:
            detail = self._scrub((await response.read())[:1000].decode(errors="replace"))
        except (aiohttp.ClientError, TimeoutError):
            detail = ""
        finally:
            response.release()
        # The body stays in the server log: upstreams may echo request headers, keys included.
        log.warning("model %s: upstream returned HTTP %d: %s", self.name, status, detail)
        code = ("rate_limit_exceeded" if status == 429 else "invalid_prompt" if status in (400, 413, 422)
                else "server_error")
        raise ModelError(f"model '{self.name}': upstream returned HTTP {status}", code=code,
                         retryable=status == 429 or status >= 500)

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


async def sse_data(lines: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines; other fields,
    comments and keep-alives are skipped, as Chat Completions streams carry nothing else)."""
    data: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
    if data:
        yield b"\n".join(data)


def _chunk_events(chunk: dict[str, Any], calls: dict[int, list[str]]) -> list[ModelEvent]:
    events: list[ModelEvent] = []
    usage = chunk.get("usage")
    if usage:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        events.append(Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0,
                            cached_tokens=cached))
    choices = chunk.get("choices") or []
    if not choices:
        return events
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
    return events


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
