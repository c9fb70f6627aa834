"""The hosted tool kind the background benchmark's workspace loads as a plugin: ``echo`` answers at once."""

from __future__ import annotations

from typing import Any

from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.tools.registry import ToolRegistry


class Echo(Toolset):
    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        return [ToolDef("echo", "Echoes", {"type": "object", "properties": {}})]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return "echo"


def register(registry: ToolRegistry) -> None:
    registry.register("bench_echo", lambda spec, ws: Echo())
