"""What the OpenAI-compatible adapters share: one streaming HTTP upstream.

Spoken with aiohttp directly, not through the openai SDK or httpx: measured on these machines, the
SDK's request transformation and per-chunk models, and httpx's connection pool, each cost more than
the rest of a loop turn. The SSE reader is a few lines of our own because no maintained aiohttp SSE
client exists. Retries (only before any output) use tenacity.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from opensupervisor.errors import ConfigError, ModelError, ModelTimeout

log = logging.getLogger(__name__)


class HTTPUpstream:
    """POSTs JSON to one URL and reads the answer as server-sent JSON events."""

    def __init__(self, model: str, url: str, *, api_key_env: str | None, timeout_s: float, max_retries: int) -> None:
        self.model = model
        self.url = url
        self.max_retries = max_retries
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        self._secret = ""
        if api_key_env:
            self._secret = os.environ.get(api_key_env, "")
            if not self._secret:
                raise ConfigError(f"model '{model}': environment variable {api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {self._secret}"
        # A limit per read, not per response: a long answer may stream for longer than timeout_s.
        self.timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s, connect=min(10.0, timeout_s))
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: a session belongs to the event loop it runs on
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout,
                                                  connector=aiohttp.TCPConnector(limit=512))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def scrub(self, text: str) -> str:
        """``text`` with the API key masked (upstreams may echo request headers back)."""
        return text.replace(self._secret, "***") if self._secret else text

    async def stream_json(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any] | None]:
        """The JSON objects of the answer's events; ``None`` stands for the closing ``[DONE]``."""
        response = await self._open(orjson.dumps(body))
        try:
            async for data in sse_data(response.content):
                if data == b"[DONE]":
                    yield None
                    return
                yield self._decode(data)
        except TimeoutError as exc:
            raise ModelTimeout(f"model '{self.model}' timed out while streaming") from exc
        except aiohttp.ClientError as exc:
            raise ModelError(f"model '{self.model}': the upstream stream broke ({type(exc).__name__})") from exc
        finally:
            response.release()

    def _decode(self, data: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ModelError(f"model '{self.model}': upstream sent an event that is not JSON") from exc
        if not isinstance(event, dict):
            raise ModelError(f"model '{self.model}': upstream sent an event that is not a JSON object")
        return event

    async def _open(self, body: bytes) -> aiohttp.ClientResponse:
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), reraise=True,
                                 wait=wait_exponential_jitter(initial=0.5, max=8),
                                 retry=retry_if_exception(lambda e: isinstance(e, ModelError) and e.retryable))
        async for attempt in retrying:
            with attempt:
                return await self._send(body)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _send(self, body: bytes) -> aiohttp.ClientResponse:
        try:
            # A redirect is never followed (it would lead the request, and its key, elsewhere): an error.
            response = await self._client().post(self.url, data=body, allow_redirects=False)
        except TimeoutError as exc:
            raise ModelTimeout(f"model '{self.model}' timed out") from exc
        except aiohttp.ClientError as exc:
            raise ModelError(f"model '{self.model}': upstream is unreachable ({type(exc).__name__})",
                             retryable=True) from exc
        if response.status == 200:
            return response
        status = response.status
        try:
            detail = self.scrub((await response.read())[:1000].decode(errors="replace"))
        except (aiohttp.ClientError, TimeoutError):
            detail = ""
        finally:
            response.release()
        # The body stays in the server log: upstreams may echo request headers, keys included.
        log.warning("model %s: upstream returned HTTP %d: %s", self.model, status, detail)
        code = ("rate_limit_exceeded" if status == 429 else "invalid_prompt" if status in (400, 413, 422)
                else "server_error")
        raise ModelError(f"model '{self.model}': upstream returned HTTP {status}", code=code,
                         retryable=status == 429 or status >= 500)


async def sse_data(lines: AsyncIterable[bytes]) -> AsyncGenerator[bytes]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines; other fields,
    comments and keep-alives are skipped, as these streams carry nothing else)."""
    data: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
    if data:
        yield b"\n".join(data)
