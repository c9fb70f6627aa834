"""Bounded HTTP answers from the servers tools call (MCP servers, apps), and addresses checked
where each request is made.

A tool's output is cut at the workspace's cap before the model sees it, but the bytes of an answer
are in the server's memory before that: a server that answers a gigabyte would take a gigabyte.
Answers are counted while they stream in and refused past ``MAX_RESPONSE_BYTES``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiohttp
import httpx

from opensupervisor.outbound import DEFAULT_PORTS

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
T = TypeVar("T")
AddressCheck = Callable[[str, int], Awaitable[None]]


class ResponseTooLarge(httpx.TransportError):
    """An answer past the cap (an ``httpx`` transport error, so the MCP SDK treats it as a failed
    connection)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit // (1024 * 1024)} MiB")


class AnswerLimit:
    """The cap of one client's answers, and the check of each request's address. ``tripped`` is set
    when an answer passes the cap or an address is refused: the MCP SDK swallows the transport
    errors of its requests (the call would wait for its timeout), so callers wait on this as well."""

    def __init__(self, limit: int = MAX_RESPONSE_BYTES, check: AddressCheck | None = None) -> None:
        self.limit = limit
        self.tripped = asyncio.Event()
        self.error: Exception = ResponseTooLarge(limit)
        # Called with the host and port before every request: where the address is checked when the
        # connection is made, not only when the URL was accepted.
        self.check = check

    def trip(self, error: Exception) -> Exception:
        self.error = error
        self.tripped.set()
        return error

    def mcp_client(self, headers: dict[str, str] | None = None, timeout: httpx.Timeout | None = None,
                   auth: httpx.Auth | None = None) -> httpx.AsyncClient:
        """The MCP SDK's client factory (``httpx_client_factory``), with bounded answers."""
        return httpx.AsyncClient(headers=headers, timeout=timeout or httpx.Timeout(30.0, read=300.0), auth=auth,
                                 transport=BoundedTransport(self))

    async def run(self, work: Awaitable[T]) -> T:
        """``work``'s result, or ``ResponseTooLarge`` as soon as an answer passes the cap."""
        task = asyncio.ensure_future(work)
        tripped = asyncio.ensure_future(self.tripped.wait())
        try:
            await asyncio.wait((task, tripped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, tripped):
                if not pending.done():
                    pending.cancel()
        if not task.done() or task.cancelled():
            raise self.error
        return task.result()


class _BoundedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: AnswerLimit) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit.limit:
                raise self._limit.trip(ResponseTooLarge(self._limit.limit))
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class BoundedTransport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport whose every response body is counted against the limit (an SSE
    stream counts all its events)."""

    def __init__(self, limit: AnswerLimit) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._limit.check is not None:
            try:
                await self._limit.check(request.url.host, request.url.port or DEFAULT_PORTS[request.url.scheme])
            except Exception as exc:
                raise self._limit.trip(exc) from exc
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_BoundedStream(response.stream, self._limit), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def read_bounded(response: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """An ``aiohttp`` response's body, refused (``ResponseTooLarge``) once it passes ``limit``."""
    if (response.content_length or 0) > limit:
        raise ResponseTooLarge(limit)
    chunks: list[bytes] = []
    seen = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        seen += len(chunk)
        if seen > limit:
            raise ResponseTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
