"""The few ASGI pieces the fake upstreams share, and their common base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def lifespan(receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


async def send_sse(send: Send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": body})


class FakeUpstream(ABC):
    """An ASGI app that checks the key, keeps the last body in ``last_request``, counts ``calls``."""

    def __init__(self, required_key: str | None = None) -> None:
        self.required_key = required_key
        self.calls = 0
        self.last_request: dict[str, Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        raw = await read_body(receive)
        self.calls += 1
        headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
        if self.required_key and self.required_key.encode() not in self.keys(headers):
            await send_json(send, 401, self.refusal())
            return
        self.last_request = orjson.loads(raw) if raw else {}
        await self.answer(self.last_request, headers, send)

    def keys(self, headers: dict[bytes, bytes]) -> set[bytes]:
        """The keys a request presents (Bearer auth by default)."""
        return {headers.get(b"authorization", b"").removeprefix(b"Bearer ")}

    @abstractmethod
    def refusal(self) -> dict[str, Any]:
        """The body of a 401 in this provider's error format."""

    @abstractmethod
    async def answer(self, req: dict[str, Any], headers: dict[bytes, bytes], send: Send) -> None:
        """Answer an authorized request."""
