"""A deterministic OpenAI-compatible Chat Completions server (``POST /v1/chat/completions``).

It speaks the real wire format (JSON, or SSE chunks with ``stream_options.include_usage``) and
answers at once, so tests and benchmarks can exercise the ``openai-chat`` provider without a
model. What it says depends on the last message:

- the last message is the user's and tools are offered: a call of the first tool with ``{}``;
- the user's text contains ``upstream 429`` / ``upstream 500`` / ``upstream 400``: that HTTP error
  (its body echoes the request's Authorization header, as careless upstreams do);
- ``upstream breaks``: one text chunk, then an error object inside the stream;
- ``upstream cut``: one text chunk, then the stream ends without a finish or ``[DONE]``;
- ``upstream garbage``: one text chunk, then a chunk that is not JSON;
- ``upstream slow``: the answer starts after two seconds (for timeouts);
- the user's text contains ``echo roles``: the roles of all messages, joined by spaces;
- otherwise ``Hello there.``, or after a tool result, ``Tool said: <result>``.

A Responses-style body (``input`` instead of ``messages``) gets the same failures (HTTP errors,
slowness, a chunk that is not JSON), which is what tests of Responses clients need from it.

``required_key``, when set, must arrive as ``Authorization: Bearer <key>`` (else 401). Chunks and
completions go through the openai SDK's types (a development dependency, like this module's users).
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

import orjson
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from opensupervisor.testing.asgi import FakeUpstream, Send, send_json, send_sse

USAGE = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}


def _sse_chunk(body: dict[str, Any]) -> bytes:
    return _typed_chunk(orjson.dumps(body))


@lru_cache(maxsize=4096)
def _typed_chunk(raw: bytes) -> bytes:
    # Passed through the openai SDK's own type: what goes out is a chunk the SDK itself would accept.
    # Cached, so that benchmarks measure the server rather than this fake's validation.
    chunk = ChatCompletionChunk.model_validate_json(raw)
    return b"data: " + chunk.model_dump_json(exclude_unset=True).encode() + b"\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _sse_chunk({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def _error_chunk() -> bytes:
    return b"data: " + orjson.dumps({"error": {"message": "upstream fell over", "code": 500}}) + b"\n\n"


def _usage_chunk() -> bytes:
    return _sse_chunk({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                       "choices": [], "usage": USAGE})


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content)
    return str(content)


def _as_messages(value: Any) -> list[dict[str, Any]]:
    """A Responses ``input`` read as chat messages, so the failure triggers work on that route too."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages = [m for m in value or [] if isinstance(m, dict) and m.get("role")]
    return messages or [{"role": "user", "content": ""}]


def reply(req: dict[str, Any]) -> tuple[int, dict[str, Any] | None, str]:
    """(HTTP status, tool call or None, text) for a request body."""
    messages = req.get("messages") or _as_messages(req.get("input"))
    last = messages[-1]
    user_text = next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    for status in (429, 500, 400):
        if f"upstream {status}" in user_text:
            return status, None, ""
    if last.get("role") == "user" and req.get("tools") and req.get("tool_choice") != "none":
        name = req["tools"][0]["function"]["name"]
        return 200, {"index": 0, "id": "call_fake_1", "type": "function",
                     "function": {"name": name, "arguments": "{}"}}, ""
    for broken in ("upstream breaks", "upstream cut", "upstream garbage", "upstream slow"):
        if broken in user_text:
            return 200, None, broken
    if "echo roles" in user_text:
        return 200, None, " ".join(m["role"] for m in messages)
    if last.get("role") == "tool":
        return 200, None, f"Tool said: {_text_of(last)}"
    return 200, None, "Hello there."


class ChatUpstream(FakeUpstream):
    """The ASGI app (see ``FakeUpstream`` for ``calls`` and ``last_request``)."""

    def refusal(self) -> dict[str, Any]:
        return {"error": {"message": "bad key", "type": "invalid_request_error"}}

    async def answer(self, req: dict[str, Any], headers: dict[bytes, bytes], send: Send) -> None:
        status, call, text = reply(req)
        if status != 200:
            echoed = headers.get(b"authorization", b"").decode()
            await send_json(send, status, {"error": {"message": f"fake upstream error {status} for {echoed}",
                                                 "type": "error"}})
        elif req.get("stream") and text in ("upstream breaks", "upstream cut", "upstream garbage"):
            tail = {"upstream breaks": _error_chunk(), "upstream garbage": b"data: {not json\n\n"}.get(text, b"")
            await send_sse(send, _chunk({"content": "partial "}) + tail)
        elif req.get("stream"):
            if text == "upstream slow":
                await asyncio.sleep(2)
            await _stream(send, call, text)
        else:
            answer: dict[str, Any] = {"role": "assistant", "content": text or None}
            if call is not None:
                answer["tool_calls"] = [{k: v for k, v in call.items() if k != "index"}]
            completion = ChatCompletion.model_validate({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake", "usage": USAGE,
                "choices": [{"index": 0, "message": answer, "finish_reason": "tool_calls" if call else "stop"}]})
            await send_json(send, 200, completion.model_dump(exclude_unset=True))


async def _stream(send: Send, call: dict[str, Any] | None, text: str) -> None:
    if call is not None:
        chunks = [_chunk({"role": "assistant", "tool_calls": [call]}), _chunk({}, "tool_calls")]
    else:
        words = text.split(" ")
        chunks = [_chunk({"role": "assistant", "content": ""})]
        chunks += [_chunk({"content": w + (" " if i < len(words) - 1 else "")}) for i, w in enumerate(words)]
        chunks.append(_chunk({}, "stop"))
    chunks += [_usage_chunk(), b"data: [DONE]\n\n"]
    await send_sse(send, b"".join(chunks))


