"""``uc_connection``: a named connection to an external MCP server, whose tools join the run.

Connections are declared in the workspace file's ``[connections.<name>]``: the server's Streamable
HTTP URL, a bearer token from an environment variable (never logged, returned or stored), extra
headers, a timeout and an optional allow-list of tool names. The model sees the server's own tool
names, as the Supervisor API shows them.

In background mode the Supervisor API asks the user to approve every MCP call
(``mcp_approval_request``); that round trip is not available yet, so a background request with a
connection is refused with a clear 400 instead of calling without approval.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import ConfigError, InvalidRequest, ToolError, UpstreamUnavailable
from opensupervisor.tools.mcp_client import McpServer
from opensupervisor.tools.registry import ToolRegistry, config_name
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, section_entry


class ConnectionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    bearer_token_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0)
    allowed_tools: list[str] | None = None
    description: str | None = None


class Connections:
    def __init__(self, workspace: Workspace) -> None:
        self.servers: dict[str, McpServer] = {}
        for name, raw in workspace.connections.items():
            entry = section_entry(ConnectionEntry, f"connections.{name}", raw)
            headers = dict(entry.headers)
            if entry.bearer_token_env:
                token = os.environ.get(entry.bearer_token_env, "")
                if not token:
                    raise ConfigError(f"connections.{name}: environment variable {entry.bearer_token_env} is not set")
                headers["Authorization"] = f"Bearer {token}"
            self.servers[name] = McpServer(name, entry.url, headers=headers, timeout_s=entry.timeout_s,
                                           allowed_tools=entry.allowed_tools)

    def factory(self, spec: ToolSpec, workspace: Workspace) -> Toolset:
        return ConnectionTools(self.servers[config_name(spec, "name", self.servers, "Connection")], spec.param)


class ConnectionTools(Toolset):
    # The server's list may change between a run's first listing and its resumption.
    listing_may_change = True

    def __init__(self, server: McpServer, param: str) -> None:
        self.server = server
        self.param = param

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        if ctx.request.body.background:
            raise InvalidRequest(
                "MCP tools in background mode need the MCP approval round trip (mcp_approval_request), "
                "which this server does not support yet; send the request without background.",
                param=self.param, code="unsupported_value")
        try:
            return await self.server.list_tools()
        except ToolError as exc:
            raise UpstreamUnavailable(f"'{self.server.label}': {exc}", param=self.param) from exc

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return await self.server.call(name, arguments)


def register(registry: ToolRegistry, workspace: Workspace) -> Connections:
    connections = Connections(workspace)
    registry.register("uc_connection", connections.factory)
    return connections
