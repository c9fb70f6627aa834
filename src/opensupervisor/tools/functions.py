"""Client-side ``function`` tools: offered to the model, never run by the server."""

from __future__ import annotations

from typing import Any

from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import ToolError


class ClientFunctions(Toolset):
    """Client-side ``function`` tools: offered to the model, never run here; a call ends the turn."""

    def __init__(self, definitions: list[dict[str, Any]]) -> None:
        self.definitions = definitions

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        return [
            ToolDef(name=d["name"], description=d.get("description"),
                    parameters=d.get("parameters") or {"type": "object", "properties": {}}, hosted=False)
            for d in self.definitions
        ]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        raise ToolError(f"'{name}' is a client-side function; the client runs it")
