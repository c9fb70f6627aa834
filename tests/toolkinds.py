"""Hosted tool kinds the test servers register: real toolsets on the real contract."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import Any

from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.tools.registry import ToolRegistry
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace

ADD_SCHEMA = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
              "required": ["a", "b"], "additionalProperties": False}


class Calculator(Toolset):
    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        return [ToolDef("add", "Adds two numbers", ADD_SCHEMA)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return str(arguments["a"] + arguments["b"])


class Rendezvous(Toolset):
    """``wait_for_peer`` returns only once two calls are inside it at the same time."""

    def __init__(self) -> None:
        self.barrier = asyncio.Barrier(2)

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        schema = {"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]}
        return [ToolDef("wait_for_peer", "Waits until a second call arrives", schema)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        await self.barrier.wait()
        return f"{arguments['who']} met its peer"


class Exploding(Toolset):
    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        return [ToolDef("explode", "Always fails", {"type": "object", "properties": {}})]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        raise RuntimeError("kaboom")


class Ledger(Toolset):
    """``record`` writes each execution to a SQLite file (``$OPENSUPERVISOR_TEST_LEDGER``), so a test
    can count how many times a call really ran, across processes and crashes."""

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
        return [ToolDef("record", "Records a label in the ledger", schema)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        await asyncio.to_thread(record, ctx.response_id, arguments["label"])
        return f"recorded {arguments['label']}"


def record(response_id: str, label: str) -> None:
    with sqlite3.connect(os.environ["OPENSUPERVISOR_TEST_LEDGER"], timeout=30) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ledger (response_id TEXT, label TEXT, pid INTEGER)")
        conn.execute("INSERT INTO ledger VALUES (?, ?, ?)", (response_id, label, os.getpid()))


def ledger(path: str, response_id: str) -> list[str]:
    """The labels recorded for a response, in order."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ledger (response_id TEXT, label TEXT, pid INTEGER)")
        return [r[0] for r in conn.execute("SELECT label FROM ledger WHERE response_id = ? ORDER BY rowid",
                                           (response_id,))]


def register(registry: ToolRegistry) -> None:
    def factory(cls: type[Toolset]) -> Any:
        def make(spec: ToolSpec, workspace: Workspace) -> Toolset:
            return cls()
        return make

    registry.register("test_calculator", factory(Calculator))
    registry.register("test_rendezvous", factory(Rendezvous))
    registry.register("test_exploding", factory(Exploding))
    registry.register("test_ledger", factory(Ledger))
