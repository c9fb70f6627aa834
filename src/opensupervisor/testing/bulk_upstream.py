"""A Chat Completions upstream that streams long answers (``POST /v1/chat/completions``, SSE only).

The last user message says how much: ``bulk <chars> <chunk>`` streams ``<chars>`` characters of
text in deltas of ``<chunk>`` characters, then the finish, usage and ``[DONE]`` chunks;
``bulk endless <chunk>`` never stops. Each chunk waits for the connection to take it (the
server's flow control), so an upstream whose reader is gone notices at once: ``streams`` keeps
one ``Stream`` per request, which says how much was sent and whether the reader left before the end.
Chunks are built by hand (one template, no per-chunk validation) so that benchmarks measure the
server, not this fake.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import orjson

from opensupervisor.testing.asgi import FakeUpstream, Receive, Send, lifespan, read_body, send_json

_ASK = re.compile(r"bulk (endless|\d+) (\d+)")
_HEAD = b'data: {"id":"chatcmpl-bulk","object":"chat.completion.chunk","created":0,"model":"bulk","choices":'
_TAIL = (_HEAD + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n' + _HEAD
         + b'[],"usage":{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11}}\n\n' + b"data: [DONE]\n\n")
# Text that needs no JSON escaping, so a delta's characters are its bytes.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 "


@dataclass(slots=True)
class Stream:
    chars_sent: int = 0
    finished: bool = False
    # The reader closed the connection before the answer ended.
    abandoned: bool = False


def text_chunk(size: int, index: int) -> str:
    """The ``index``-th delta of ``size`` characters (deterministic, so tests can rebuild the answer)."""
    start = index % len(ALPHABET)
    pattern = ALPHABET[start:] + ALPHABET[:start]
    return (pattern * (size // len(pattern) + 1))[:size]


def answer_text(chars: int, chunk: int) -> str:
    """The whole answer to ``bulk <chars> <chunk>``."""
    return "".join(text_chunk(min(chunk, chars - i), n) for n, i in enumerate(range(0, chars, chunk)))


class BulkUpstream(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.streams: list[Stream] = []

    def refusal(self) -> dict[str, Any]:
        return {"error": {"message": "bad key", "type": "invalid_request_error"}}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        raw = await read_body(receive)
        if scope.get("method") != "POST" or not raw:
            await send_json(send, 404, {"error": {"message": "POST a chat completion", "type": "not_found"}})
            return
        req = orjson.loads(raw)
        self.calls += 1
        self.last_request = req
        user: dict[str, Any] = next((m for m in reversed(req.get("messages") or []) if m.get("role") == "user"), {})
        found = _ASK.search(str(user.get("content") or ""))
        total: int | None = 12 if found is None else None if found[1] == "endless" else int(found[1])
        chunk = int(found[2]) if found is not None else 16
        stream = Stream()
        self.streams.append(stream)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await _pour(send, stream, gone, total, chunk)
        finally:
            gone.cancel()

    async def answer(self, req: dict[str, Any], headers: dict[bytes, bytes], send: Send) -> None:
        raise NotImplementedError("__call__ answers every request itself")


async def _pour(send: Send, stream: Stream, gone: asyncio.Future[None], total: int | None, chunk: int) -> None:
    index = 0
    while total is None or stream.chars_sent < total:
        if gone.done():
            stream.abandoned = True
            return
        size = chunk if total is None else min(chunk, total - stream.chars_sent)
        body = _HEAD + b'[{"index":0,"delta":{"content":"' + text_chunk(size, index).encode() + \
            b'"},"finish_reason":null}]}\n\n'
        await send({"type": "http.response.body", "body": body, "more_body": True})
        stream.chars_sent += size
        index += 1
        if index % 64 == 0:
            await asyncio.sleep(0)  # let the disconnect be noticed when the reader keeps up
    await send({"type": "http.response.body", "body": _TAIL, "more_body": False})
    stream.finished = True


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
