"""Bounded HTTP answers from the servers tools call (MCP servers, apps), no redirects, and
connections pinned to the public addresses they were checked for.

A tool's output is cut at the workspace's cap before the model sees it, but the bytes of an answer
are in the server's memory before that: a server that answers a gigabyte would take a gigabyte.
Answers are counted while they stream in and refused past ``MAX_RESPONSE_BYTES``. A redirect is an
error, never followed: it would lead the server to a URL nobody checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

import httpcore
import httpx

from opensupervisor import outbound

if TYPE_CHECKING:
    import aiohttp

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
REDIRECTS = frozenset({301, 302, 303, 307, 308})
T = TypeVar("T")
SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class ResponseTooLarge(httpx.TransportError):
    """An answer past the cap (an ``httpx`` transport error, so the MCP SDK treats it as a failed
    connection)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit // (1024 * 1024)} MiB")


class RedirectRefused(httpx.TransportError):
    """A redirect answer: an error, since following it would reach a URL nobody checked."""

    def __init__(self, status: int) -> None:
        super().__init__(f"it answered with a redirect (HTTP {status}), which is not followed")


class AddressRefused(httpcore.ConnectError):
    """A connection's host does not resolve, or resolves to an address that is not public: nothing
    was sent (an ``httpcore`` connect error, so every client reads it as a failed connection)."""


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each connection's host once, refuses it unless every address is public, and connects
    to one of those very addresses: a name that answers a public address to the check and loopback
    to a second lookup never gets that second lookup. TLS still verifies, and sends SNI for, the
    URL's host, and ``Host`` stays the URL's: only the socket's address is fixed."""

    def __init__(self, refused: Callable[[Exception], object] | None = None) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._refused = refused

    # The signatures are httpcore's (hence the ``timeout`` arguments).
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: Iterable[SocketOption] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await outbound.public_addresses(host, port)
        except (outbound.UrlRefused, TimeoutError) as exc:
            error = AddressRefused(str(exc) if isinstance(exc, outbound.UrlRefused) else "the host did not resolve")
            if self._refused is not None:
                self._refused(error)
            raise error from exc
        failure: Exception = AddressRefused("the host could not be reached")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[SocketOption] | None = None) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("only TCP connections to public addresses may be made")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """``httpx``'s transport with connections made by ``PinnedBackend``."""

    def __init__(self, refused: Callable[[Exception], object] | None = None) -> None:
        super().__init__()
        # httpx takes no network backend: its pool is made again with one, on httpx's own defaults.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=100, max_keepalive_connections=20,
            keepalive_expiry=5.0, network_backend=PinnedBackend(refused))


class AnswerLimit:
    """The cap of one client's answers, and whether its connections must be pinned to public
    addresses. ``tripped`` is set when an answer passes the cap, redirects, or an address is refused:
    the MCP SDK swallows the transport errors of its requests (the call would wait for its timeout),
    so callers wait on this as well."""

    def __init__(self, limit: int = MAX_RESPONSE_BYTES, *, public_only: bool = False) -> None:
        self.limit = limit
        self.tripped = asyncio.Event()
        self.error: Exception = ResponseTooLarge(limit)
        # Checked where each connection is made, on the address it connects to, not only when the
        # URL was accepted.
        self.public_only = public_only

    def trip(self, error: Exception) -> Exception:
        self.error = error
        self.tripped.set()
        return error

    def mcp_client(self, headers: dict[str, str] | None = None, timeout: httpx.Timeout | None = None,
                   auth: httpx.Auth | None = None) -> httpx.AsyncClient:
        """The MCP SDK's client factory (``httpx_client_factory``), with bounded answers."""
        return httpx.AsyncClient(headers=headers, timeout=timeout or httpx.Timeout(30.0, read=300.0), auth=auth,
                                 transport=BoundedTransport(self), follow_redirects=False)

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
    stream counts all its events), and whose redirect answers are errors."""

    def __init__(self, limit: AnswerLimit) -> None:
        self._inner = PinnedTransport(limit.trip) if limit.public_only else httpx.AsyncHTTPTransport()
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if response.status_code in REDIRECTS:
            await response.aclose()
            raise self._limit.trip(RedirectRefused(response.status_code))
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
