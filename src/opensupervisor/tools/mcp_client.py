"""One remote MCP server, spoken with the official ``mcp`` SDK (Streamable HTTP, or SSE).

Tool lists are cached for a short time (a run lists once; runs share the cache). The calls of one
run share one session, opened at its first call and closed when the run ends. Every operation has
a timeout; a server that is down, slow, or answers an error becomes a ``ToolError`` whose text
names the server, never its credentials. Redirects are errors, never followed.

A server whose URL a request or an admin chose (``opaque_errors``) fails with one message whatever
went wrong (refused, timed out, not resolved, TLS, not MCP, a redirect): the error must not tell a
port scanner what is there. The cause goes to the server log.

``transport``: ``streamable_http``, ``sse`` (the older HTTP+SSE transport), or ``auto``: Streamable
HTTP first and, when the server does not speak it, SSE from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
import orjson

from opensupervisor.core.context import RunContext, Slot
from opensupervisor.core.contracts import ToolDef
from opensupervisor.errors import ToolError
from opensupervisor.tools.http_bounds import AddressRefused, AnswerLimit, RedirectRefused, ResponseTooLarge
from opensupervisor.tools.oauth import TokenRequestFailed

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.types import CallToolResult, ListToolsResult

log = logging.getLogger(__name__)
Transport = Literal["auto", "streamable_http", "sse"]
OPAQUE = "it could not be reached or refused the request"


@dataclass(frozen=True, slots=True)
class Session:
    """An initialized MCP session whose answers are bounded: a call fails as soon as one passes
    the cap (``http_bounds.AnswerLimit``)."""

    client: ClientSession
    limit: AnswerLimit

    async def list_tools(self) -> ListToolsResult:
        return await self.limit.run(self.client.list_tools())

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        return await self.limit.run(self.client.call_tool(name, arguments))


class McpServer:
    def __init__(self, label: str, url: str, *, headers: dict[str, str], timeout_s: float,
                 allowed_tools: list[str] | None, cache_s: float = 30.0, transport: Transport = "auto",
                 auth: httpx.Auth | None = None, public_only: bool = False, opaque_errors: bool = False) -> None:
        self.label = label
        self.url = url
        self._headers = headers
        self._auth = auth
        self.timeout_s = timeout_s
        self.allowed = set(allowed_tools) if allowed_tools is not None else None
        self.cache_s = cache_s
        self.transport: Transport = transport
        # A host matched by a wildcard: each connection goes only to public addresses, checked as it
        # is made. Opaque: every failure reads the same (what answered, or did not, must not tell a
        # port scanner anything).
        self.public_only = public_only
        self.opaque_errors = opaque_errors
        self._tools: list[ToolDef] = []
        self._listed_at = -1e9
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """An initialized session; with ``auto``, a server that refuses Streamable HTTP gets SSE."""
        async with contextlib.AsyncExitStack() as stack:
            if self.transport == "sse":
                session = await stack.enter_async_context(self._open("sse"))
            else:
                try:
                    session = await stack.enter_async_context(self._open("streamable_http"))
                except Exception as exc:
                    if self.transport != "auto" or not _wrong_transport(exc):
                        raise
                    log.info("MCP server %r does not speak Streamable HTTP; using SSE", self.label)
                    self.transport = "sse"
                    session = await stack.enter_async_context(self._open("sse"))
            yield session

    @asynccontextmanager
    async def _open(self, transport: Transport) -> AsyncIterator[Session]:
        # The SDK is imported by the first session a process opens: a process none of whose runs
        # calls an MCP server never loads it.
        from mcp import ClientSession
        from mcp.client.sse import sse_client
        from mcp.client.streamable_http import streamablehttp_client

        limit = AnswerLimit(public_only=self.public_only)
        if transport == "sse":
            stream = sse_client(self.url, headers=self._headers, timeout=self.timeout_s, auth=self._auth,
                                httpx_client_factory=limit.mcp_client)
            async with stream as (read, write), ClientSession(read, write) as session:
                await limit.run(session.initialize())
                yield Session(session, limit)
            return
        http = streamablehttp_client(self.url, headers=self._headers, timeout=self.timeout_s, auth=self._auth,
                                     httpx_client_factory=limit.mcp_client)
        async with http as (read, write, _), ClientSession(read, write) as session:
            await limit.run(session.initialize())
            yield Session(session, limit)

    async def list_tools(self) -> list[ToolDef]:
        async with self._lock:
            if time.monotonic() - self._listed_at < self.cache_s:
                return self._tools
            try:
                async with asyncio.timeout(self.timeout_s), self.session() as session:
                    listed = await session.list_tools()
            except TimeoutError as exc:
                if self.opaque_errors:
                    raise ToolError(f"the MCP server '{self.label}' is unavailable ({self._reason(exc)})") from exc
                raise ToolError(f"the MCP server '{self.label}' did not list its tools within "
                                f"{self.timeout_s:g} seconds") from exc
            except Exception as exc:  # connection refused, HTTP 401, a broken stream …: all mean "down"
                raise ToolError(f"the MCP server '{self.label}' is unavailable ({self._reason(exc)})") from exc
            self._tools = [ToolDef(t.name, t.description, dict(t.inputSchema), kind="mcp", server_label=self.label,
                                   annotations=t.annotations.model_dump(exclude_none=True) if t.annotations else None)
                           for t in listed.tools if self.allowed is None or t.name in self.allowed]
            self._listed_at = time.monotonic()
            return self._tools

    async def call(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        held = _held(ctx, self)
        try:
            async with asyncio.timeout(self.timeout_s):
                session = await held.get()
                result = await session.call_tool(name, arguments)
        except TimeoutError as exc:
            raise ToolError(f"the MCP server '{self.label}' did not answer within {self.timeout_s:g} seconds") from exc
        except Exception as exc:
            held.broken()  # the next call of the run opens a fresh session
            raise ToolError(f"the MCP server '{self.label}' failed the call ({self._reason(exc)})") from exc
        text = "\n".join(_content_text(c) for c in result.content)
        if result.isError:
            raise ToolError(f"the MCP tool '{name}' reported an error: {text or 'no details'}")
        if not text and result.structuredContent is None:
            return "(the tool returned no content)"
        return text or orjson.dumps(result.structuredContent).decode()

    def _reason(self, exc: BaseException) -> str:
        reason = _reason(exc)
        if not self.opaque_errors:
            return reason
        log.warning("MCP server %r: %s", self.label, reason)  # the operator's detail, never the client's
        return OPAQUE


class _HeldSession:
    """A session kept open for one run by a task of its own: the SDK's transports must be entered
    and left in one task, while a run's calls come from several."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Session] | None = None
        self._stop = asyncio.Event()

    async def get(self) -> Session:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._hold(self._ready, self._stop))
        return await asyncio.shield(self._ready)

    async def _hold(self, ready: asyncio.Future[Session], stop: asyncio.Event) -> None:
        try:
            async with self.server.session() as session:
                ready.set_result(session)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError("session closed"))
            if not isinstance(exc, Exception):
                raise

    def broken(self) -> None:
        self._stop.set()
        self._ready = None

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await self._task
            self._task = None
        if self._ready is not None and self._ready.done() and not self._ready.cancelled():
            self._ready.exception()  # retrieved, so asyncio does not log it
        self._ready = None


# The sessions a run holds open, one per server (by its id), closed when the run ends.
SESSIONS: Slot[dict[int, _HeldSession]] = Slot("mcp_sessions", dict)


def _held(ctx: RunContext, server: McpServer) -> _HeldSession:
    sessions = ctx.slot(SESSIONS)
    held = sessions.get(id(server))
    if held is None:
        held = sessions[id(server)] = _HeldSession(server)
        ctx.on_close(held.close)
    return held


def _wrong_transport(exc: BaseException) -> bool:
    """Whether a failed Streamable HTTP start means "this server speaks the older SSE transport"."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status in (400, 404, 405)


def _content_text(content: Any) -> str:
    if getattr(content, "type", None) == "text":
        return str(content.text)
    return orjson.dumps(content.model_dump(mode="json", exclude_none=True)).decode()


def _reason(exc: BaseException) -> str:
    """A short cause without secrets: the exception type, and the first leaf of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TokenRequestFailed):
        return f"OAuth: {exc}"
    if isinstance(exc, ResponseTooLarge | RedirectRefused | AddressRefused):
        return str(exc)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return f"HTTP {status}" if status else type(exc).__name__
