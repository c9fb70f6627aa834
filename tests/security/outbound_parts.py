"""What the outbound tests share: a server that counts every request it gets, one that redirects
everything to another, and a resolver the test controls (``FakeDns``), in this process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from opensupervisor.testing.asgi import Receive, Send, lifespan, read_body
from tests.mcp_servers import tools_server

GetAddrInfo = Callable[..., list[Any]]


class Hits:
    """Passes every request to ``app`` (404 without one) and counts them: a redirect that was
    followed, or a connection that reached it, shows here."""

    def __init__(self, app: Any = None) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.app is None:
            await lifespan(receive, send)
            return
        if scope["type"] == "http":
            self.count += 1
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not here"})


def mcp_hits() -> Hits:
    """A real MCP server (Streamable HTTP at ``/mcp``) that counts its requests."""
    return Hits(tools_server().streamable_http_app())


class Redirector:
    """Answers every request with ``status`` and ``Location: <target><path>``."""

    def __init__(self, status: int = 307) -> None:
        self.target = ""
        self.status = status
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.count += 1
        await read_body(receive)
        location = (self.target + scope["path"]).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"location", location), (b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"moved"})


class FakeDns:
    """``socket.getaddrinfo`` for names the test chooses (every other name resolves as usual): each
    name answers its list of answers in turn, the last one repeating. Everything the server uses to
    resolve (asyncio, anyio, httpx) goes through ``socket.getaddrinfo``, so a client that looked a
    name up twice would see the second answer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: dict[str, int] = {}
        self._lock = threading.Lock()
        self._real: GetAddrInfo = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self._getaddrinfo)

    def name(self, label: str, *answers: list[str]) -> str:
        host = f"{label}.rebind.test"
        self.answers[host] = list(answers)
        return host

    def _getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        name = name.lower().removesuffix(".")
        if name not in self.answers:
            return self._real(host, port, *args, **kwargs)
        with self._lock:
            seen = self.lookups.get(name, 0)
            self.lookups[name] = seen + 1
        answer = self.answers[name][min(seen, len(self.answers[name]) - 1)]
        number = int(port or 0)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (a, number, 0, 0) if ":" in a else (a, number)) for a in answer]
