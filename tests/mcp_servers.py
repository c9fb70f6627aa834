"""MCP servers the tests start on loopback, built with the ``mcp`` SDK."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

# What the ``note`` tool was asked to write down, so tests see which calls really ran.
NOTES: list[str] = []


def tools_server() -> FastMCP:
    server = FastMCP("tools", stateless_http=True, log_level="WARNING")

    @server.tool()
    def note(text: str) -> str:
        """Writes a note down (a call with an effect: it must not run without approval)."""
        NOTES.append(text)
        return f"noted: {text}"

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        return a + b

    @server.tool()
    def shout(text: str) -> str:
        """Upper-cases a text."""
        return text.upper()

    @server.tool()
    def fail() -> str:
        """Always fails."""
        raise ValueError("the ledger is closed")

    @server.tool()
    async def slow() -> str:
        """Takes far too long."""
        await asyncio.sleep(30)
        return "late"

    return server


def many_tools_server(count: int = 150) -> FastMCP:
    """A server with many tools (``tool_0`` … ``tool_<count-1>``), each echoing its number and argument."""
    server = FastMCP("many", stateless_http=True, log_level="WARNING")
    for n in range(count):
        def echo(x: int, n: int = n) -> str:
            return f"{n}:{x}"

        server.add_tool(echo, name=f"tool_{n}", description=f"Tool number {n}.")
    return server


class CountInitialize:
    """Counts the MCP sessions a server sees (``initialize`` requests), passing everything through."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if b'"method":"initialize"' in body.replace(b" ", b""):
            self.count += 1
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return dict(await receive())
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
