"""The demo workspace's MCP servers, served by OpenSupervisor itself so that the demo works offline:
``/demo/search/mcp`` (a web search over a small bundled set of pages, the demo ``uc_connection``)
and ``/demo/tickets/mcp`` (a support-ticket desk, the demo ``app``). Both are real MCP servers built
with the ``mcp`` SDK; any MCP client can use them, with the demo token.

Both answer only ``Authorization: Bearer <demo token>`` (``opensupervisor.demo.token``).
"""

from __future__ import annotations

import hmac
import itertools
import json
import re
from contextlib import AsyncExitStack
from importlib import resources
from typing import Any

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from opensupervisor.demo import token
from opensupervisor.errors import Unauthorized

WORD = re.compile(r"[a-z0-9]+")


def _pages() -> list[dict[str, str]]:
    pages: list[dict[str, str]] = json.loads(resources.files(__package__).joinpath("web.json").read_text("utf-8"))
    return pages


def search_server() -> FastMCP:
    server = FastMCP("demo-search", stateless_http=True, log_level="WARNING")
    pages = _pages()

    @server.tool(name="web-search", annotations=ToolAnnotations(readOnlyHint=True))
    def web_search(query: str, count: int = 5) -> list[dict[str, str]]:
        """Searches the web (the demo's bundled pages) and returns the best matches."""
        terms = set(WORD.findall(query.lower()))
        scored = [(len(terms & set(WORD.findall((p["title"] + " " + p["text"]).lower()))), i)
                  for i, p in enumerate(pages)]
        best = [i for score, i in sorted(scored, key=lambda s: (-s[0], s[1])) if score > 0][:max(1, min(count, 10))]
        return [{"title": pages[i]["title"], "url": pages[i]["url"], "snippet": pages[i]["text"]} for i in best]

    return server


def tickets_server() -> FastMCP:
    server = FastMCP("demo-tickets", stateless_http=True, log_level="WARNING")
    tickets: dict[str, dict[str, Any]] = {}
    numbers = itertools.count(1001)

    @server.tool()
    def open_ticket(title: str, priority: str = "normal") -> dict[str, Any]:
        """Opens a support ticket; priority is low, normal or urgent."""
        ticket = {"id": f"TCK-{next(numbers)}", "title": title, "priority": priority, "status": "open"}
        tickets[ticket["id"]] = ticket
        return ticket

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def ticket_status(ticket_id: str) -> dict[str, Any]:
        """The status of a support ticket."""
        return tickets.get(ticket_id) or {"id": ticket_id, "status": "unknown"}

    return server


class RequireToken:
    """ASGI: only requests that carry ``Authorization: Bearer <token>`` reach ``app``."""

    def __init__(self, app: ASGIApp, owner: DemoServers) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            refused = Unauthorized("The demo MCP servers need 'Authorization: Bearer <demo token>' "
                                   f"(the server's {token.DEMO_TOKEN_ENV}).")
            body = json.dumps(refused.body()).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        expected = self.owner.token
        if not expected:
            return False
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, value = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), expected.encode())


class DemoServers:
    """The mounts to add to the app and the session managers its lifespan runs."""

    def __init__(self) -> None:
        self.servers = {"search": search_server(), "tickets": tickets_server()}
        self.apps = {name: s.streamable_http_app() for name, s in self.servers.items()}
        # Set when the runtime has settled the demo token; until then nothing is let in.
        self.token = ""

    def routes(self) -> list[BaseRoute]:
        return [Mount(f"/demo/{name}", app=RequireToken(app, self)) for name, app in self.apps.items()]

    async def start(self, stack: AsyncExitStack) -> None:
        for server in self.servers.values():
            await stack.enter_async_context(server.session_manager.run())

    def take_token(self) -> None:
        self.token = token.current()
