"""MCP servers a Databricks workspace fronts, with the same client, timeouts, errors and approval
rule as local connections:

- ``uc_connection``: a Unity Catalog connection, through the workspace's MCP proxy
  (``{host}/api/2.0/mcp/external/{connection}``), which adds the connection's credentials; they
  never leave the workspace.
- ``app``: a Databricks App serving MCP at ``{app url}/mcp`` (its URL from ``GET /api/2.0/apps/{name}``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from opensupervisor import outbound
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import InvalidRequest, ToolError, UpstreamUnavailable
from opensupervisor.tools.connections import connection_tools
from opensupervisor.tools.databricks.client import DatabricksClient, DatabricksFailure, Identity, segment
from opensupervisor.tools.mcp_client import McpServer

MAX_SERVERS = 10_000
Locate = Callable[[Identity], Awaitable[str]]


class RemoteMcp(Toolset):
    listing_may_change = True

    def __init__(self, client: DatabricksClient, name: str, param: str, locate: Locate) -> None:
        self.client = client
        self.name = name
        self.param = param
        self.locate = locate

    async def _tools(self, ctx: RunContext) -> Toolset:
        identity = await self.client.identity(ctx)
        url = await self.locate(identity)
        # One MCP client per server and identity, kept across requests (its tool list is cached).
        key = hashlib.sha256(repr((url, sorted(identity.headers.items()))).encode()).hexdigest()
        servers = self.client.mcp_servers
        server = servers.get(key)
        if server is None:
            if len(servers) >= MAX_SERVERS:
                servers.clear()
            server = servers[key] = McpServer(self.name, url, headers=dict(identity.headers),
                                              timeout_s=self.client.section.timeout_s, allowed_tools=None,
                                              transport="streamable_http")
        return connection_tools(server, self.param, self.client.section.connection_approval)

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        try:
            return await (await self._tools(ctx)).list_tools(ctx)
        except ToolError as exc:
            raise UpstreamUnavailable(f"'{self.name}': {exc}", param=self.param) from exc

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return await (await self._tools(ctx)).call_tool(ctx, name, arguments)


def remote_connection(client: DatabricksClient, name: str, param: str) -> Toolset:
    async def locate(identity: Identity) -> str:
        return f"{client.host}/api/2.0/mcp/external/{segment(name)}"

    return RemoteMcp(client, name, param, locate)


def remote_app(client: DatabricksClient, name: str, param: str) -> Toolset:
    async def locate(identity: Identity) -> str:
        try:
            app = await client.describe(identity, f"/api/2.0/apps/{segment(name)}")
        except DatabricksFailure as exc:
            if exc.status in (403, 404):
                raise InvalidRequest(f"App '{name}' does not exist in this workspace or in the Databricks workspace "
                                     f"({exc}).", param=param, code="invalid_value") from exc
            raise
        url = app.get("url")
        if not isinstance(url, str) or not url:
            raise ToolError(f"the app '{name}' has no URL (is it running?)")
        try:
            parts = outbound.parse_url(url)
        except outbound.UrlRefused as exc:  # the workspace's answer; never repeated (it may hold credentials)
            raise ToolError(f"the app '{name}' has a URL this server does not call: {exc}") from exc
        return parts.geturl().rstrip("/") + "/mcp"

    return RemoteMcp(client, name, param, locate)
