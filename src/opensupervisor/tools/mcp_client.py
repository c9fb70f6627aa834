"""One remote MCP server, spoken with the official ``mcp`` SDK over Streamable HTTP.

Tool lists are cached for a short time (a run lists once; runs share the cache). Every operation
has a timeout; a server that is down, slow, or answers an error becomes a ``ToolError`` whose text
names the server, never its credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from opensupervisor.core.contracts import ToolDef
from opensupervisor.errors import ToolError


class McpServer:
    def __init__(self, label: str, url: str, *, headers: dict[str, str], timeout_s: float,
                 allowed_tools: list[str] | None, cache_s: float = 30.0) -> None:
        self.label = label
        self.url = url
        self._headers = headers
        self.timeout_s = timeout_s
        self.allowed = set(allowed_tools) if allowed_tools is not None else None
        self.cache_s = cache_s
        self._tools: list[ToolDef] = []
        self._listed_at = -1e9
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[ClientSession]:
        transport = streamablehttp_client(self.url, headers=self._headers, timeout=self.timeout_s)
        async with transport as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()
            yield session

    async def list_tools(self) -> list[ToolDef]:
        async with self._lock:
            if time.monotonic() - self._listed_at < self.cache_s:
                return self._tools
            try:
                async with asyncio.timeout(self.timeout_s), self._session() as session:
                    listed = await session.list_tools()
            except TimeoutError as exc:
                raise ToolError(f"the MCP server '{self.label}' did not list its tools within "
                                f"{self.timeout_s:g} seconds") from exc
            except Exception as exc:  # connection refused, HTTP 401, a broken stream …: all mean "down"
                raise ToolError(f"the MCP server '{self.label}' is unavailable ({_reason(exc)})") from exc
            self._tools = [ToolDef(t.name, t.description, dict(t.inputSchema), kind="mcp", server_label=self.label,
                                   annotations=t.annotations.model_dump(exclude_none=True) if t.annotations else None)
                           for t in listed.tools if self.allowed is None or t.name in self.allowed]
            self._listed_at = time.monotonic()
            return self._tools

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        try:
            async with asyncio.timeout(self.timeout_s), self._session() as session:
                result = await session.call_tool(name, arguments)
        except TimeoutError as exc:
            raise ToolError(f"the MCP server '{self.label}' did not answer within {self.timeout_s:g} seconds") from exc
        except Exception as exc:
            raise ToolError(f"the MCP server '{self.label}' failed the call ({_reason(exc)})") from exc
        text = "\n".join(_content_text(c) for c in result.content)
        if result.isError:
            raise ToolError(f"the MCP tool '{name}' reported an error: {text or 'no details'}")
        return text or orjson.dumps(result.structuredContent).decode()


def _content_text(content: Any) -> str:
    if getattr(content, "type", None) == "text":
        return str(content.text)
    return orjson.dumps(content.model_dump(mode="json", exclude_none=True)).decode()


def _reason(exc: BaseException) -> str:
    """A short cause without secrets: the exception type, and the first leaf of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return f"HTTP {status}" if status else type(exc).__name__
