"""MCP servers the tests start on loopback, built with the ``mcp`` SDK."""

from __future__ import annotations

import asyncio

from mcp.server.fastmcp import FastMCP


def tools_server() -> FastMCP:
    server = FastMCP("tools", stateless_http=True, log_level="WARNING")

    @server.tool()
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
