"""``uc_connection``: a named connection to an external MCP server, whose tools join the run.

Connections are declared in the workspace file's ``[connections.<name>]``: the server's Streamable
HTTP URL, a bearer token from an environment variable (never logged, returned or stored), extra
headers, a timeout and an optional allow-list of tool names. The model sees the server's own tool
names, as the Supervisor API shows them.

Approval (``require_approval``): ``background`` (the default, as the Supervisor API) makes every call
of a background run wait for the user's ``mcp_approval_response``; ``always`` asks in every run;
``never`` runs calls directly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import ConfigError, ToolError, UpstreamUnavailable
from opensupervisor.tools.mcp_client import McpServer
from opensupervisor.tools.registry import ToolRegistry, config_name
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, section_entry

ApprovalPolicy = Literal["background", "always", "never"]


def asks_approval(policy: ApprovalPolicy, ctx: RunContext) -> bool:
    return policy == "always" or (policy == "background" and ctx.request.body.background)


class ConnectionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    bearer_token_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0)
    allowed_tools: list[str] | None = None
    description: str | None = None
    require_approval: ApprovalPolicy = "background"


class Connections:
    def __init__(self, workspace: Workspace) -> None:
        self.servers: dict[str, McpServer] = {}
        self.policies: dict[str, ApprovalPolicy] = {}
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
            self.policies[name] = entry.require_approval

    def factory(self, spec: ToolSpec, workspace: Workspace) -> Toolset:
        name = config_name(spec, "name", self.servers, "Connection")
        return ConnectionTools(self.servers[name], spec.param, self.policies[name])


class ConnectionTools(Toolset):
    # The server's list may change between a run's first listing and its resumption.
    listing_may_change = True

    def __init__(self, server: McpServer, param: str, policy: ApprovalPolicy) -> None:
        self.server = server
        self.param = param
        self.policy = policy

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        try:
            tools = await self.server.list_tools()
        except ToolError as exc:
            raise UpstreamUnavailable(f"'{self.server.label}': {exc}", param=self.param) from exc
        ask = asks_approval(self.policy, ctx)
        return [dataclasses.replace(t, approval=ask) for t in tools]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return await self.server.call(name, arguments)


def register(registry: ToolRegistry, workspace: Workspace) -> Connections:
    connections = Connections(workspace)
    registry.register("uc_connection", connections.factory)
    # ``{"type": "connection", "connection": {"name", "description"}}``, as published apps send it.
    registry.register("connection", connections.factory)
    return connections
