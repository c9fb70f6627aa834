"""OpenAI's ``mcp`` tool: a remote MCP server named in the request itself.

``{"type": "mcp", "server_label", "server_url", "headers"?, "authorization"?, "allowed_tools"?,
"require_approval"?}``. Calls show as ``mcp_call`` items and the listing as an ``mcp_list_tools``
item, as OpenAI emits them. ``server_url`` must match the workspace's ``[mcp] allowed_server_urls``
(none by default: the server makes no calls to addresses a client picks unless the operator says
so). ``require_approval`` defaults to ``always``, as OpenAI's does.

The Supervisor API's older dialect, ``{"type": "mcp", "mcp": {"name", "description",
"connection_name"}}``, names a workspace connection instead and behaves as ``uc_connection``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import OrderedDict
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from opensupervisor import outbound
from opensupervisor.core.approval import AskFirst
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import InvalidRequest, ToolError, UpstreamUnavailable
from opensupervisor.tools import targets
from opensupervisor.tools.mcp_client import McpServer
from opensupervisor.tools.registry import ToolRegistry, ToolsetFactory
from opensupervisor.wire.request import ToolSpec
from opensupervisor.wire.validation import validated
from opensupervisor.workspace import Workspace

LABEL = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Servers kept (with their cached tool lists) across requests, least recently used dropped first.
MAX_SERVERS = 256


class ToolFilter(BaseModel):
    """Matches a tool when every condition it sets holds."""

    model_config = ConfigDict(extra="forbid", strict=True)
    tool_names: list[str] | None = None
    read_only: bool | None = None

    def matches(self, tool: ToolDef) -> bool:
        if self.tool_names is not None and tool.name not in self.tool_names:
            return False
        read_only = bool((tool.annotations or {}).get("readOnlyHint", False))
        return self.read_only is None or self.read_only == read_only


class ApprovalFilters(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    always: ToolFilter | None = None
    never: ToolFilter | None = None


class McpToolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    server_label: str
    server_url: str | None = None
    connector_id: str | None = None
    server_description: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    allowed_tools: list[str] | ToolFilter | None = None
    require_approval: Literal["always", "never"] | ApprovalFilters = "always"
    defer_loading: bool | None = None

    def allows(self, tool: ToolDef) -> bool:
        if self.allowed_tools is None:
            return True
        if isinstance(self.allowed_tools, list):
            return tool.name in self.allowed_tools
        return self.allowed_tools.matches(tool)

    def asks(self, tool: ToolDef) -> bool:
        rule = self.require_approval
        if isinstance(rule, str):
            return rule == "always"
        # Named in ``always``, or in neither: OpenAI asks unless told not to.
        return rule.never is None or not rule.never.matches(tool)


class RemoteServers:
    def __init__(self, workspace: Workspace, connections: ToolsetFactory) -> None:
        self.settings = workspace.mcp
        self.patterns = [outbound.parse_pattern(p) for p in workspace.mcp.allowed_server_urls]
        # The ``connection`` kind as registered when a request comes (local, or a Databricks workspace's).
        self.connections = connections
        self._servers: OrderedDict[str, McpServer] = OrderedDict()

    def factory(self, spec: ToolSpec, workspace: Workspace) -> Toolset:
        if targets.names_connection(spec):  # the older nested dialect: ``connection_name`` is the connection
            return self.connections(spec, workspace)
        tool = validated(McpToolSpec, spec.config, spec.param)
        return AskFirst(RemoteMcpTools(self._server(tool, spec.param), tool, spec.param), lambda _ctx, t: tool.asks(t))

    def _server(self, tool: McpToolSpec, param: str) -> McpServer:
        if not LABEL.match(tool.server_label):
            raise InvalidRequest("'server_label' may hold letters, digits, '_' and '-' (at most 64).",
                                 param=f"{param}.server_label", code="invalid_value")
        if tool.connector_id is not None:
            raise InvalidRequest("Connectors are not available on this server; use 'server_url'.",
                                 param=f"{param}.connector_id", code="unsupported_value")
        if not tool.server_url:
            raise InvalidRequest(f"Missing required parameter: '{param}.server_url'.", param=f"{param}.server_url",
                                 code="missing_required_parameter")
        try:
            parts, pattern = outbound.allowed(tool.server_url, self.patterns)
        except outbound.UrlRefused as exc:  # the URL is not echoed: it may carry credentials
            raise InvalidRequest(f"The MCP server URL is refused: {exc}.", param=f"{param}.server_url",
                                 code="server_url_not_allowed") from exc
        try:
            outbound.check_headers(tool.headers or {})
        except outbound.UrlRefused as exc:
            raise InvalidRequest(f"The MCP server's headers are refused: {exc}.", param=f"{param}.headers",
                                 code="invalid_value") from exc
        headers = dict(tool.headers or {})
        if tool.authorization:
            headers["Authorization"] = f"Bearer {tool.authorization}"
        # The URL as parsed (scheme and host in lower case) is the one called: what was checked.
        url = parts.geturl()
        # One client per URL and credentials, so that runs share its cached tool list.
        key = hashlib.sha256(orjson.dumps([url, headers], option=orjson.OPT_SORT_KEYS)).hexdigest()
        server = self._servers.get(key)
        if server is None:
            # A host matched by a wildcard: each connection only to public addresses, checked as it is made.
            server = McpServer(tool.server_label, url, headers=headers, timeout_s=self.settings.timeout_s,
                               allowed_tools=None, public_only=not pattern.exact_host, opaque_errors=True)
            self._servers[key] = server
            if len(self._servers) > MAX_SERVERS:
                self._servers.popitem(last=False)
        self._servers.move_to_end(key)
        return server


class RemoteMcpTools(Toolset):
    listing_may_change = True

    def __init__(self, server: McpServer, spec: McpToolSpec, param: str) -> None:
        self.server = server
        self.spec = spec
        self.param = param
        self.listing_label = spec.server_label

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        try:
            tools = await self.server.list_tools()
        except ToolError as exc:
            raise UpstreamUnavailable(f"'{self.spec.server_label}': {exc}", param=self.param) from exc
        return [dataclasses.replace(t, server_label=self.spec.server_label, items="mcp")
                for t in tools if self.spec.allows(t)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return await self.server.call(ctx, name, arguments)


def register(registry: ToolRegistry, workspace: Workspace) -> RemoteServers:
    def connection(spec: ToolSpec, workspace: Workspace) -> Toolset:
        factory = registry.factory("connection")
        assert factory is not None, "the connection kind is registered before the mcp tool"
        return factory(spec, workspace)

    servers = RemoteServers(workspace, connection)
    registry.register("mcp", servers.factory)
    return servers

