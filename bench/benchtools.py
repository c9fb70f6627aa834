"""Hosted tool kinds the benchmarks' workspaces load as plugins: ``echo`` answers at once, ``record``
notes every execution."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
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
    registry.register("bench_record", lambda spec, ws: Record())


class Record(Toolset):
    """``record`` writes each execution (response, label, process, time) to the SQLite file
    ``$OPENSUPERVISOR_SOAK_LEDGER``: the soak counts how often each call really ran, and where."""

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
        return [ToolDef("record", "Records a label", schema)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        await asyncio.to_thread(_record, ctx.response_id, str(arguments["label"]))
        return "recorded"


def _record(response_id: str, label: str) -> None:
    with sqlite3.connect(os.environ["OPENSUPERVISOR_SOAK_LEDGER"], timeout=60) as conn:
        conn.execute("INSERT INTO ledger VALUES (?, ?, ?, ?)", (response_id, label, os.getpid(), time.time()))



def _count_statements(path: str) -> None:
    """With ``$OPENSUPERVISOR_BENCH_SQL`` set, count every SQL statement this process sends (by its
    first words) and write the counts there every second: where a run's database round trips go.
    (Not at exit: the server re-raises the SIGTERM it shut down gracefully on, which skips atexit.)"""
    import collections
    import re
    import threading

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counts: collections.Counter[str] = collections.Counter()

    @event.listens_for(Engine, "before_cursor_execute")
    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts[re.sub(r"\s+", " ", statement)[:110]] += 1

    @event.listens_for(Engine, "checkout")
    def checked_out(*args: Any) -> None:
        counts["<pool checkout>"] += 1

    @event.listens_for(Engine, "connect")
    def connected(*args: Any) -> None:
        counts["<new connection>"] += 1

    def dump() -> None:
        while True:
            time.sleep(1)
            with open(f"{path}.{os.getpid()}", "w") as out:
                for statement, n in counts.copy().most_common():
                    out.write(f"{n:8d}  {statement}\n")

    threading.Thread(target=dump, name="bench-sql-counts", daemon=True).start()


if os.environ.get("OPENSUPERVISOR_BENCH_SQL"):
    _count_statements(os.environ["OPENSUPERVISOR_BENCH_SQL"])
