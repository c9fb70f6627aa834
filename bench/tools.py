"""Per-call overhead of the data tools: a trivial SQL query through a Genie space and a trivial Python
function through the function catalog, against calling the database or the function directly.

Uses the demo workspace's reviews space (an example question, so no model is involved: the SQL
check, the read-only engine and the markdown table are what is measured) and its
``main.support.flag_urgent`` (a warm sandbox subprocess). Prints p50 and p99 per call.
Figures are ratios of one run on one machine; compare them only with figures from the same run.

    .venv/bin/python bench/tools.py [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from opensupervisor.identity import ADMIN
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.tools.genie import GenieSpaces
from opensupervisor.tools.sandbox import Sandbox
from opensupervisor.tools.uc_functions import FunctionCatalog
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import load_workspace

QUESTION = "Which reviews are urgent?"
SQL = "SELECT id, customer, product, body FROM reviews WHERE urgent = 1 ORDER BY submitted_on DESC"


async def timed(calls: int, fn: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(20):
        await fn()
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def line(label: str, values: list[float], base: list[float] | None = None) -> str:
    p50 = statistics.median(values)
    p99 = sorted(values)[int(0.99 * len(values))]
    extra = f"   (+{p50 - statistics.median(base):.3f} ms, {p50 / statistics.median(base):.1f}x)" if base else ""
    return f"  {label:44s} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms{extra}"


async def main(calls: int) -> None:
    ws = load_workspace(None)
    spaces = GenieSpaces(ws, ModelCatalog(ws))
    functions = FunctionCatalog(ws, Sandbox.from_section(ws.sandbox))
    ctx: Any = SimpleNamespace(request=SimpleNamespace(body=SimpleNamespace(model=None)),  # no model is asked
                           principal=ADMIN)
    db_path = ws.base_dir / "reviews.db"
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)

    async def direct_sql() -> Any:
        return conn.execute(SQL).fetchall()

    space = spaces.factory(ToolSpec(index=0, type="genie_space", config={"id": "reviews"}, raw={}), ws)

    async def through_space() -> Any:
        return await space.call_tool(ctx, "genie_reviews", {"question": QUESTION})

    spec = importlib.util.spec_from_file_location("support", ws.base_dir / "support.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def direct_function() -> Any:
        return module.flag_urgent(review_id=2)

    tool = functions.factory(ToolSpec(index=0, type="uc_function", config={"name": "main.support.flag_urgent"},
                                      raw={}), ws)

    async def through_catalog() -> Any:
        return await tool.call_tool(ctx, "main__support__flag_urgent", {"review_id": 2})

    sql_direct = await timed(calls, direct_sql)
    sql_tool = await timed(calls, through_space)
    fn_direct = await timed(calls, direct_function)
    fn_tool = await timed(calls, through_catalog)
    print(f"per call, {calls} calls each:")
    print(line("SQL query, sqlite3 directly", sql_direct))
    print(line("SQL query, through the genie_space tool", sql_tool, sql_direct))
    print(line("Python function, called directly", fn_direct))
    print(line("Python function, through uc_function (sandbox)", fn_tool, fn_direct))
    conn.close()
    await spaces.aclose()
    await functions.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    asyncio.run(main(parser.parse_args().calls))
