"""Hosted tools backed by a Databricks workspace: Genie spaces, Unity Catalog functions, knowledge
assistants, MCP connections and apps that already live there, behind the same ``Toolset`` contract
as the local ones.

The workspace file's ``[databricks]`` names the workspace and its credentials, and per tool type
where a request's ids are looked up (``[databricks.tools]``): ``local`` (the workspace file only,
the default), ``databricks`` (the Databricks workspace only) or ``local_first``. An id found in
neither is a 400 naming the tool.
"""

from __future__ import annotations

from collections.abc import Callable

from opensupervisor.core.contracts import Toolset
from opensupervisor.errors import InvalidRequest
from opensupervisor.tools import targets
from opensupervisor.tools.databricks.client import CredentialLookup, DatabricksClient, DatabricksSection, Routing
from opensupervisor.tools.databricks.functions import RemoteFunction
from opensupervisor.tools.databricks.genie import RemoteGenie
from opensupervisor.tools.databricks.knowledge import agent_endpoint, knowledge_assistant
from opensupervisor.tools.databricks.mcp import remote_app, remote_connection
from opensupervisor.tools.registry import ToolRegistry, ToolsetFactory, config_description, config_name
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, section_entry

Remote = Callable[[ToolSpec, str], Toolset]


def register(registry: ToolRegistry, workspace: Workspace, credentials: CredentialLookup | None,
             key: bytes = b"") -> DatabricksClient | None:
    """Route the tool types ``[databricks.tools]`` sends to the Databricks workspace; None without one.
    ``key``: shared by every process, so that any of them recognizes the marks another one made."""
    if workspace.databricks is None:
        return None
    section = section_entry(DatabricksSection, "databricks", workspace.databricks)
    client = DatabricksClient(section, credentials, key)
    routes = section.tools

    def genie(spec: ToolSpec, space_id: str) -> Toolset:
        return RemoteGenie(client, space_id, targets.require(spec).param, config_description(spec))

    def function(spec: ToolSpec, name: str) -> Toolset:
        return RemoteFunction(client, name, f"{spec.param}.uc_function.name", config_description(spec),
                              spec.config.get("name_alias"))

    def connection(spec: ToolSpec, name: str) -> Toolset:
        return remote_connection(client, name, spec.param)

    def app(spec: ToolSpec, name: str) -> Toolset:
        return remote_app(client, name, targets.require(spec).param)

    def assistant(spec: ToolSpec, ka: str) -> Toolset:
        return knowledge_assistant(client, ka, f"{spec.param}.knowledge_assistant.knowledge_assistant_id",
                                   config_description(spec))

    def agent(spec: ToolSpec, endpoint: str) -> Toolset:
        return agent_endpoint(client, endpoint, f"{spec.param}.agent_endpoint.endpoint_name", config_description(spec))

    for tool_type, mode, remote in (("genie_space", routes.genie_space, genie), ("genie", routes.genie_space, genie),
                                    ("uc_function", routes.uc_function, function),
                                    ("knowledge_assistant", routes.knowledge_assistant, assistant),
                                    ("uc_connection", routes.uc_connection, connection),
                                    ("connection", routes.uc_connection, connection),
                                    ("app", routes.app, app), ("agent_endpoint", routes.agent_endpoint, agent)):
        if mode != "local":
            registry.register(tool_type, routed(registry.factory(tool_type), remote, mode))
    return client


def routed(local: ToolsetFactory | None, remote: Remote, mode: Routing) -> ToolsetFactory:
    """``databricks``: every id is the workspace's; ``local_first``: the workspace file's ids stay local."""

    def factory(spec: ToolSpec, workspace: Workspace) -> Toolset:
        if mode == "local_first" and local is not None:
            try:
                return local(spec, workspace)
            except InvalidRequest as exc:
                if exc.param != targets.require(spec).param or exc.code != "invalid_value":
                    raise
        return remote(spec, config_name(spec, None, ""))

    return factory
