"""``uc_connection``: a named connection to an external MCP server, whose tools join the run.

Connections come from the workspace file's ``[connections.<name>]`` and from the admin API / CLI
(stored, their secrets sealed with the server's key). Each names the server's URL and transport,
its credentials (a bearer token, from an environment variable or stored; or OAuth client
credentials), extra headers, a timeout and an optional allow-list of tool names. The model sees
the server's own tool names, as the Supervisor API shows them. Secrets are never logged, returned
or stored in the clear; a workspace file names environment variables instead of holding them.

Approval (``require_approval``): ``background`` (the default, as the Supervisor API) makes every call
of a background run wait for the user's ``mcp_approval_response``; ``always`` asks in every run;
``never`` runs calls directly.

On behalf of the user (``per_user = true``): each user stores their own token for the connection
(``PUT /v1/connections/{name}/credential``) and every call of their runs carries it, so the MCP
server sees, and limits, the user themselves. A caller with no token stored may not use it (403).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from opensupervisor import outbound
from opensupervisor.core.approval import AskFirst
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import ConfigError, Forbidden, ToolError, UpstreamUnavailable
from opensupervisor.identity import Principal
from opensupervisor.tools.http_bounds import PinnedTransport
from opensupervisor.tools.mcp_client import McpServer, Transport
from opensupervisor.tools.oauth import ClientCredentials
from opensupervisor.tools.registry import ToolRegistry, config_name
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, section_entry

log = logging.getLogger(__name__)
ApprovalPolicy = Literal["background", "always", "never"]
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
MAX_USER_SERVERS = 10_000


def asks_approval(policy: ApprovalPolicy, ctx: RunContext) -> bool:
    return policy == "always" or (policy == "background" and ctx.request.body.background)


def asking(toolset: Toolset, policy: ApprovalPolicy) -> Toolset:
    """``toolset`` with each of its tools waiting for approval as ``policy`` says."""
    return AskFirst(toolset, lambda ctx, _tool: asks_approval(policy, ctx))


def connection_tools(server: McpServer, param: str, policy: ApprovalPolicy, *,
                     per_user: Callable[[RunContext], Awaitable[McpServer]] | None = None) -> Toolset:
    return asking(ConnectionTools(server, param, per_user=per_user), policy)


class OAuthEntry(BaseModel):
    """OAuth 2.0 client credentials: a token from ``token_url``, renewed before it expires."""

    model_config = ConfigDict(extra="forbid")
    token_url: str
    client_id: str
    client_secret_env: str | None = None
    client_secret: str | None = None  # stored connections only (sealed)
    scope: str | None = None


class ConnectionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    transport: Transport = "auto"
    bearer_token_env: str | None = None
    bearer_token: str | None = None  # stored connections only (sealed)
    oauth: OAuthEntry | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0)
    allowed_tools: list[str] | None = None
    description: str | None = None
    require_approval: ApprovalPolicy = "background"
    # On behalf of the user: every call carries the caller's own token for this connection (each
    # user stores theirs), never a shared one; a caller without one may not use the connection.
    per_user: bool = False

    def secrets(self) -> dict[str, Any]:
        """What a stored connection seals: its token, client secret and headers."""
        return {"bearer_token": self.bearer_token, "headers": self.headers,
                "client_secret": self.oauth.client_secret if self.oauth else None}

    def without_secrets(self) -> dict[str, Any]:
        data = self.model_dump(exclude_defaults=True, exclude={"bearer_token", "headers"})
        if self.oauth is not None:
            data["oauth"] = self.oauth.model_dump(exclude_defaults=True, exclude={"client_secret"})
        return data

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but secret values (header names only)."""
        auth = "per_user" if self.per_user else "oauth" if self.oauth else \
            "bearer" if self.bearer_token or self.bearer_token_env else "none"
        return {**self.without_secrets(), "auth": auth, "headers": sorted(self.headers),
                "transport": self.transport, "require_approval": self.require_approval, "timeout_s": self.timeout_s}


def with_secrets(entry: dict[str, Any], secrets: dict[str, Any]) -> ConnectionEntry:
    """A stored connection: its entry with the unsealed secrets put back."""
    data = dict(entry, headers=secrets.get("headers") or {})
    if secrets.get("bearer_token"):
        data["bearer_token"] = secrets["bearer_token"]
    if data.get("oauth") and secrets.get("client_secret"):
        data["oauth"] = dict(data["oauth"], client_secret=secrets["client_secret"])
    return ConnectionEntry.model_validate(data)


def build_server(name: str, entry: ConnectionEntry, allowed: list[outbound.Pattern] | None = None) -> McpServer:
    """The client for one connection; a missing credential, or a URL or header that is refused, is a
    ``ConfigError`` naming it. ``allowed``: the patterns an admin's URLs must match (``[outbound]
    allowed_urls``); None for the workspace file's, which are only parsed."""
    url, public_only = _checked_url(name, "url", entry.url, allowed)
    try:
        outbound.check_headers(entry.headers)
    except outbound.UrlRefused as exc:
        raise ConfigError(f"connections.{name}.headers: {exc}", param="headers") from exc
    headers = dict(entry.headers)
    token = entry.bearer_token or _env(name, entry.bearer_token_env, "bearer_token_env")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    auth = None
    if entry.oauth is not None:
        token_url, pinned = _checked_url(name, "oauth.token_url", entry.oauth.token_url, allowed)
        secret = entry.oauth.client_secret or _env(name, entry.oauth.client_secret_env, "oauth.client_secret_env")
        if not secret:
            raise ConfigError(f"connections.{name}.oauth: client_secret_env (or a stored client secret) is required",
                              param="oauth")
        auth = ClientCredentials(token_url, entry.oauth.client_id, secret, entry.oauth.scope,
                                 timeout_s=entry.timeout_s, transport=PinnedTransport if pinned else None)
    # An admin's connection fails with one message, whatever happened: the detail goes to the log.
    return McpServer(name, url, headers=headers, timeout_s=entry.timeout_s, allowed_tools=entry.allowed_tools,
                     transport=entry.transport, auth=auth, public_only=public_only, opaque_errors=allowed is not None)


def _checked_url(name: str, field: str, url: str, allowed: list[outbound.Pattern] | None) -> tuple[str, bool]:
    """The URL to call (as parsed) and whether its connections must be pinned to public addresses."""
    if allowed is None and url.startswith("/"):
        # This server's own path, in a process that serves none (the CLI): never called there.
        return url, False
    try:
        if allowed is None:
            return outbound.parse_url(url).geturl(), False
        parts, pattern = outbound.allowed(url, allowed, "[outbound] allowed_urls")
    except outbound.UrlRefused as exc:  # never the URL itself: it may hold credentials
        raise ConfigError(f"connections.{name}.{field}: the URL is refused: {exc}", param=field,
                          code="url_not_allowed") from exc
    return parts.geturl(), not pattern.exact_host


def _env(name: str, variable: str | None, field: str) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable, "")
    if not value:
        raise ConfigError(f"connections.{name}: environment variable {variable} ({field}) is not set", param=field)
    return value


class CredentialLookup(Protocol):
    async def token(self, connection: str, principal_id: str) -> str | None: ...

    def forget(self, connection: str) -> None: ...


class Connections:
    """The workspace file's connections and the stored ones (which may not reuse a file's name)."""

    def __init__(self, workspace: Workspace, self_url: str = "") -> None:
        self.self_url = self_url
        # Where stored connections may lead; the workspace file's own are the operator's to choose.
        self.allowed = [outbound.parse_pattern(p) for p in workspace.outbound.allowed_urls]
        # Where per-user connections find each caller's token (the store's, set at start-up).
        self.credentials: CredentialLookup | None = None
        self._user_servers: dict[tuple[str, str, str], McpServer] = {}
        self.entries: dict[str, ConnectionEntry] = {}
        self.servers: dict[str, McpServer] = {}
        self.stored: dict[str, tuple[int, ConnectionEntry]] = {}
        for name, raw in workspace.connections.items():
            entry = section_entry(ConnectionEntry, f"connections.{name}", raw)
            if entry.url.startswith("/"):  # a server this one serves (the demo's)
                entry = entry.model_copy(update={"url": self_url + entry.url})
            if entry.bearer_token or (entry.oauth and entry.oauth.client_secret):
                raise ConfigError(f"connections.{name}: a workspace file names environment variables for secrets "
                                  "(bearer_token_env, oauth.client_secret_env); store secrets with the admin API",
                                  param="bearer_token" if entry.bearer_token else "oauth.client_secret")
            self.entries[name] = entry
            self.servers[name] = build_server(name, entry)
        self.in_file = frozenset(self.entries)

    def load(self, rows: list[tuple[str, ConnectionEntry, int]]) -> None:
        """Take the stored connections as they are now (new, changed and removed ones)."""
        seen = set()
        for name, entry, updated_at in rows:
            seen.add(name)
            if name in self.in_file or self.stored.get(name, (None,))[0] == updated_at:
                continue
            try:
                server = self.build(name, entry)
            except ConfigError as exc:  # checked when it was stored: the environment or the workspace changed
                log.warning("stored connection %r is not used: %s", name, exc)
                continue
            self.entries[name], self.servers[name] = entry, server
            self.stored[name] = (updated_at, entry)
            self._forget_users(name)
        for name in set(self.stored) - seen:
            del self.stored[name], self.entries[name], self.servers[name]
            self._forget_users(name)

    def build(self, name: str, entry: ConnectionEntry) -> McpServer:
        """``build_server`` with the rules for where the entry comes from (the file, or an admin)."""
        return build_server(name, entry, None if name in self.in_file else self.allowed)

    def _forget_users(self, name: str) -> None:
        """A changed or removed connection: its users' clients go (they held its old URL and headers),
        and so do the tokens read for it (one removed elsewhere took them from the store)."""
        for key in [k for k in self._user_servers if k[0] == name]:
            del self._user_servers[key]
        if self.credentials is not None:
            self.credentials.forget(name)

    def factory(self, spec: ToolSpec, workspace: Workspace) -> Toolset:
        name = config_name(spec, self.servers, "Connection")
        entry = self.entries[name]
        if entry.per_user:
            return connection_tools(self.servers[name], spec.param, entry.require_approval,
                                    per_user=lambda ctx: self.server_for(name, ctx.principal, spec.param))
        return connection_tools(self.servers[name], spec.param, entry.require_approval)

    async def server_for(self, name: str, principal: Principal, param: str) -> McpServer:
        """The connection as ``principal``: their own token in place of any shared credential."""
        token = await self.credentials.token(name, principal.id) if self.credentials is not None else None
        if token is None:
            raise Forbidden(f"The connection '{name}' runs as each user, and you have not stored a credential "
                            f"for it (PUT /v1/connections/{name}/credential).", param=param)
        key = (name, principal.id, hashlib.sha256(token.encode()).hexdigest())
        server = self._user_servers.get(key)
        if server is None:
            if len(self._user_servers) >= MAX_USER_SERVERS:
                self._user_servers.clear()  # old tokens and idle users; each is rebuilt on demand
            entry = self.entries[name].model_copy(update={"bearer_token": token, "bearer_token_env": None,
                                                          "oauth": None})
            server = self._user_servers[key] = self.build(name, entry)
        return server


class ConnectionTools(Toolset):
    # The server's list may change between a run's first listing and its resumption.
    listing_may_change = True

    def __init__(self, server: McpServer, param: str, *,
                 per_user: Callable[[RunContext], Awaitable[McpServer]] | None = None) -> None:
        self.server = server
        self.param = param
        self.per_user = per_user

    async def _server(self, ctx: RunContext) -> McpServer:
        return await self.per_user(ctx) if self.per_user is not None else self.server

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        server = await self._server(ctx)
        try:
            return await server.list_tools()
        except ToolError as exc:
            raise UpstreamUnavailable(f"'{server.label}': {exc}", param=self.param) from exc

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        try:
            server = await self._server(ctx)
        except Forbidden as exc:  # the credential was removed while the run went on
            raise ToolError(exc.message) from exc
        return await server.call(ctx, name, arguments)


def register(registry: ToolRegistry, workspace: Workspace, self_url: str = "") -> Connections:
    """Add the ``uc_connection`` kind; ``self_url`` resolves the workspace's URLs that start with ``/``."""
    connections = Connections(workspace, self_url)
    registry.register("uc_connection", connections.factory)
    # ``{"type": "connection", "connection": {"name", "description"}}``, as published apps send it.
    registry.register("connection", connections.factory)
    return connections
