"""What a hosted tool entry names: the one resolver the grant check and every factory call.

Each dialect names its object under its own key: ``{"type": "genie", "genie": {"name", "space_id"}}``
names space ``space_id`` (``name`` is only the tool's label), ``{"type": "mcp", "mcp": {"name",
"connection_name"}}`` names connection ``connection_name``. Resolving the entry once, here, means
that the object whose grant is checked is the object the tool then uses; a second reading of the
entry could fall back to another key and use something the caller may not.
"""

from __future__ import annotations

from dataclasses import dataclass

from opensupervisor.errors import InvalidRequest
from opensupervisor.wire.request import ToolSpec

# tools[i].type → (object kind, the key of its configuration that names the object)
TOOL_OBJECTS = {
    "genie_space": ("genie_space", "id"), "genie": ("genie_space", "space_id"),
    "uc_function": ("function", "name"),
    "knowledge_assistant": ("knowledge_assistant", "knowledge_assistant_id"),
    "uc_connection": ("connection", "name"), "connection": ("connection", "name"),
    "mcp": ("connection", "connection_name"),
    "app": ("app", "name"), "agent_endpoint": ("app", "endpoint_name"),
}


@dataclass(frozen=True, slots=True)
class Target:
    """The workspace object a tool entry will use: ``kind:name``, named in the request at ``param``."""

    kind: str
    name: str
    param: str  # tools[i].<type>.<key>

    @property
    def object(self) -> str:
        return f"{self.kind}:{self.name}"


def names_connection(spec: ToolSpec) -> bool:
    """An ``mcp`` entry in the nested dialect names a workspace connection; OpenAI's flat one a URL."""
    return spec.type == "mcp" and isinstance(spec.raw.get("mcp"), dict)


def target(spec: ToolSpec) -> Target | None:
    """The object ``spec`` names; None for an entry that names none (client functions, OpenAI's flat
    ``mcp`` with a ``server_url``, plugin kinds). A missing or malformed name is a 400 at its key."""
    found = TOOL_OBJECTS.get(spec.type)
    if found is None or (spec.type == "mcp" and not names_connection(spec)):
        return None
    kind, key = found
    param = f"{spec.param}.{spec.type}.{key}"
    value = spec.config.get(key)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"Invalid value for '{param}': expected a non-empty string.", param=param,
                             code="invalid_value")
    return Target(kind, value, param)


def require(spec: ToolSpec) -> Target:
    """The object a factory of a kind that always names one builds its toolset for."""
    found = target(spec)
    if found is None:
        raise InvalidRequest(f"'{spec.param}' of type '{spec.type}' names no workspace object.",
                             param=spec.param, code="invalid_value")
    return found
