"""``uc_connection`` backed by a Unity Catalog connection of a Databricks workspace: the workspace's
MCP proxy (``{host}/api/2.0/mcp/external/{connection}``) relays the calls to the external server,
with the connection's credentials, which never leave the workspace. The tools join the run exactly
as a local connection's do (same client, timeouts, errors and approval rule).
"""

from __future__ import annotations

import hashlib
from typing import Any

from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import ToolError, UpstreamUnavailable
from opensupervisor.tools.connections import ConnectionTools
from opensupervisor.tools.databricks.client import DatabricksClient
from opensupervisor.tools.mcp_client import McpServer

MAX_SERVERS = 10_000


class RemoteConnection(Toolset):
    listing_may_change = True

    def __init__(self, client: DatabricksClient, name: str, param: str) -> None:
        self.client = client
        self.name = name
        self.param = param
        # One MCP client per connection and identity, kept across requests (its tool list is cached).
        self.servers: dict[str, McpServer] = client.mcp_servers

    async def _tools(self, ctx: RunContext) -> ConnectionTools:
        identity = await self.client.identity(ctx)
        key = f"{self.name}|{hashlib.sha256(repr(sorted(identity.headers.items())).encode()).hexdigest()}"
        server = self.servers.get(key)
        if server is None:
            if len(self.servers) >= MAX_SERVERS:
                self.servers.clear()
            server = self.servers[key] = McpServer(
                self.name, f"{self.client.host}/api/2.0/mcp/external/{self.name}", headers=dict(identity.headers),
                timeout_s=self.client.section.timeout_s, allowed_tools=None, transport="streamable_http")
        return ConnectionTools(server, self.param, self.client.section.connection_approval)

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        try:
            return await (await self._tools(ctx)).list_tools(ctx)
        except ToolError as exc:
            raise UpstreamUnavailable(f"'{self.name}': {exc}", param=self.param) from exc

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return await (await self._tools(ctx)).call_tool(ctx, name, arguments)


def remote_connection(client: DatabricksClient, name: str, param: str) -> Toolset:
    return RemoteConnection(client, name, param)
