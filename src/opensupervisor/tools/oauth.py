"""OAuth 2.0 client credentials for MCP servers: a bearer token fetched, cached and renewed.

The client authenticates to the token endpoint with HTTP Basic (``client_secret_basic``). A token is
reused until shortly before it expires; a 401 from the MCP server renews it once. A redirect from
the token endpoint is an error, never followed (the client secret would go along).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable

import httpx

# Renew this long before the token's stated expiry.
EARLY_S = 30.0


class TokenRequestFailed(Exception):
    """The token endpoint refused or failed (its text never includes the client secret)."""


class ClientCredentials(httpx.Auth):
    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None, *,
                 timeout_s: float = 30.0, transport: Callable[[], httpx.AsyncBaseTransport] | None = None) -> None:
        self.token_url = token_url
        # Each token request's transport (one pinned to public addresses for an admin's wildcard URL).
        self.transport = transport
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self._get(renew=False)}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self._get(renew=True)}"
            yield request

    async def _get(self, *, renew: bool) -> str:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not renew and self._token is not None and time.monotonic() < self._expires_at - EARLY_S:
                return self._token
            form = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope else {})}
            try:
                transport = self.transport() if self.transport is not None else None
                async with httpx.AsyncClient(timeout=self.timeout_s, transport=transport,
                                             follow_redirects=False) as client:
                    answer = await client.post(self.token_url, data=form, auth=(self.client_id, self._secret))
            except httpx.HTTPError as exc:
                raise TokenRequestFailed(f"the token endpoint is unreachable ({type(exc).__name__})") from exc
            if answer.status_code != 200:
                raise TokenRequestFailed(f"the token endpoint answered HTTP {answer.status_code}")
            try:
                body = answer.json()
                token = str(body["access_token"])
            except (ValueError, KeyError, TypeError) as exc:
                raise TokenRequestFailed("the token endpoint's answer has no access_token") from exc
            self._token = token
            self._expires_at = time.monotonic() + float(body.get("expires_in") or 3600)
            return token
