"""A Databricks workspace's REST API, as the remote tool backends call it.

``databricks-sdk`` does the authentication (a token from an environment variable, or OAuth
machine-to-machine client credentials, renewed as they expire); the calls themselves go through
``httpx`` so that they are cancellable with the run and wait out ``429``/``503`` answers as their
``Retry-After`` says, within the tool's timeout. A caller who stored their own Databricks token runs
remote tools as themselves (on behalf of the user); everyone else as the configured identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opensupervisor import outbound
from opensupervisor.core.context import RunContext
from opensupervisor.errors import ConfigError, ToolError
from opensupervisor.tools.mcp_client import McpServer

Routing = Literal["local", "databricks", "local_first"]
# The per-user credential of the workspace (the credential store's key; no connection is named so).
USER_CREDENTIAL = "@databricks"
RETRIED = (429, 503)
DESCRIBE_TTL_S = 60.0


class ToolRouting(BaseModel):
    """Per tool type: the workspace file's definitions, the Databricks workspace's, or local first."""

    model_config = ConfigDict(extra="forbid")
    genie_space: Routing = "local"
    uc_function: Routing = "local"
    knowledge_assistant: Routing = "local"
    uc_connection: Routing = "local"
    app: Routing = "local"
    # The older dialect's agent serving endpoints (locally, apps answer them).
    agent_endpoint: Routing = "local"


class DatabricksSection(BaseModel):
    """The workspace file's ``[databricks]``."""

    model_config = ConfigDict(extra="forbid")
    host: str  # http(s)://…, parsed as every outbound URL is
    token_env: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    # The SQL warehouse that runs Unity Catalog functions.
    warehouse_id: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)
    # Genie conversations at once per workspace; more wait their turn (Genie's own limits are low).
    genie_concurrency: int = Field(default=4, ge=1, le=100)
    # Send Genie the caller's last message as it was written instead of the model's question.
    genie_verbatim_question: bool = False
    # Knowledge assistant id -> its agent serving endpoint (default: the endpoint named like the id).
    knowledge_assistant_endpoints: dict[str, str] = Field(default_factory=dict)
    # Approval of the workspace's MCP connections' and apps' calls, as a local connection's require_approval.
    connection_approval: Literal["background", "always", "never"] = "background"
    tools: ToolRouting = Field(default_factory=ToolRouting)

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        try:
            return outbound.parse_url(host).geturl()
        except outbound.UrlRefused as exc:  # never the URL itself: it may hold credentials
            raise ValueError(f"the URL is refused: {exc}") from exc

    @model_validator(mode="after")
    def _one_identity(self) -> DatabricksSection:
        if (self.token_env is None) == (self.client_id is None):
            raise ValueError("set either token_env (a token) or client_id and client_secret_env (OAuth M2M)")
        if self.client_id is not None and self.client_secret_env is None:
            raise ValueError("OAuth M2M needs client_secret_env")
        return self


class CredentialLookup(Protocol):
    async def token(self, connection: str, principal_id: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a remote call runs as: ``user:<name>`` with their own token, or ``service_principal``."""

    who: str
    headers: dict[str, str]


class DatabricksFailure(ToolError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"Databricks answered {status} {code}: {message}" if code else
                         f"Databricks answered {status}: {message}")
        self.status = status
        self.code = code


def segment(value: str) -> str:
    """One path segment of a REST URL, escaped: ids come from requests and must not change the path."""
    return urllib.parse.quote(value, safe="")


class DatabricksClient:
    def __init__(self, section: DatabricksSection, credentials: CredentialLookup | None = None,
                 key: bytes = b"") -> None:
        self.section = section
        # Signs what this server tells a chain (a Genie conversation id), so a client cannot claim another's.
        self.key = key or os.urandom(32)
        self.host = section.host.rstrip("/")
        self.credentials = credentials
        # Redirects are answers, never followed: they would take the identity's token to another URL.
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(section.timeout_s, connect=10.0), follow_redirects=False)
        self._config: Any = None
        self._lock = asyncio.Lock()
        self.genie_turns = asyncio.Semaphore(section.genie_concurrency)
        self.mcp_servers: dict[str, McpServer] = {}
        self._described: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    def _service_config(self) -> Any:
        from databricks.sdk.core import Config  # the SDK's auth, loaded only where a workspace is configured

        section = self.section
        if section.token_env is not None:
            token = os.environ.get(section.token_env)
            if not token:
                raise ConfigError(f"databricks.token_env: the environment variable {section.token_env} is not set")
            return Config(host=self.host, token=token, auth_type="pat")
        assert section.client_secret_env is not None
        secret = os.environ.get(section.client_secret_env)
        if not secret:
            raise ConfigError(f"databricks.client_secret_env: the environment variable "
                              f"{section.client_secret_env} is not set")
        # A workspace's OIDC discovery document is at a fixed place; naming it spares a metadata lookup.
        return Config(host=self.host, client_id=section.client_id, client_secret=secret, auth_type="oauth-m2m",
                      discovery_url=f"{self.host}/oidc/.well-known/oauth-authorization-server")

    async def identity(self, ctx: RunContext) -> Identity:
        """The caller's own token when they stored one, else the configured identity's."""
        if self.credentials is not None:
            token = await self.credentials.token(USER_CREDENTIAL, ctx.principal.id)
            if token is not None:
                return Identity(f"user:{ctx.principal.name}", {"Authorization": f"Bearer {token}"})
        async with self._lock:
            if self._config is None:
                try:
                    self._config = await asyncio.to_thread(self._service_config)
                except ConfigError as exc:
                    raise ToolError(f"the Databricks workspace is not usable: {exc}") from exc
                except Exception as exc:  # OAuth discovery or a token request failed
                    raise ToolError(f"could not sign in to the Databricks workspace ({type(exc).__name__})") from exc
        try:
            headers: dict[str, str] = await asyncio.to_thread(self._config.authenticate)
        except Exception as exc:  # the OAuth token request failed (a wrong secret, the endpoint down)
            raise ToolError(f"could not sign in to the Databricks workspace ({type(exc).__name__})") from exc
        return Identity("service_principal", headers)

    def sign(self, *parts: str) -> str:
        return hmac.new(self.key, "|".join(parts).encode(), hashlib.sha256).hexdigest()[:16]

    async def request(self, identity: Identity, method: str, path: str, *, body: dict[str, Any] | None = None,
                      query: dict[str, Any] | None = None) -> dict[str, Any]:
        """One REST call; a 429 or 503 is retried after its Retry-After (within the timeout), any
        other failure raises ``DatabricksFailure`` (or ``ToolError`` when the workspace is unreachable)."""
        deadline = time.monotonic() + self.section.timeout_s
        while True:
            try:
                answer = await self._http.request(method, self.host + path, json=body, params=query,
                                                  headers=identity.headers)
            except httpx.TimeoutException as exc:
                raise ToolError(f"the Databricks workspace did not answer within {self.section.timeout_s:g} "
                                "seconds") from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise ToolError(f"the Databricks workspace is unreachable ({type(exc).__name__})") from exc
            if answer.status_code in RETRIED:
                wait = _retry_after(answer)
                if time.monotonic() + wait < deadline:
                    await asyncio.sleep(wait)
                    continue
            if answer.is_redirect:
                raise ToolError(f"the Databricks workspace answered {path} with a redirect (HTTP "
                                f"{answer.status_code}), which is not followed")
            if answer.status_code >= 400:
                raise _failure(answer)
            if not answer.content:
                return {}
            try:
                data = answer.json()
            except ValueError as exc:
                raise ToolError(f"the Databricks workspace answered {path} with something that is not JSON") from exc
            return data if isinstance(data, dict) else {"data": data}

    async def describe(self, identity: Identity, path: str) -> dict[str, Any]:
        """A resource's definition (a space, a function, an endpoint), kept a minute per identity:
        requests naming it do not each wait for the workspace."""
        key = (identity.who, path)
        cached = self._described.get(key)
        if cached is not None and time.monotonic() - cached[0] < DESCRIBE_TTL_S:
            return cached[1]
        found = await self.request(identity, "GET", path)
        if len(self._described) >= 10_000:
            self._described.clear()
        self._described[key] = (time.monotonic(), found)
        return found

    async def aclose(self) -> None:
        await self._http.aclose()


def _retry_after(answer: httpx.Response) -> float:
    value = answer.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.1), 60.0)
    except ValueError:
        return 1.0


def _failure(answer: httpx.Response) -> DatabricksFailure:
    try:
        data = answer.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    code = str(data.get("error_code") or "")
    message = str(data.get("message") or data.get("error") or answer.reason_phrase or "no details")
    return DatabricksFailure(answer.status_code, code, message[:500])
