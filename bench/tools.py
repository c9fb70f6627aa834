"""Per-call cost of the data tools' boundaries: a SQL query through a Genie space (SQLite, DuckDB,
PostgreSQL) and a Python function through the function catalog (the namespaced sandbox and the
weaker processes-only mode), each against calling the database or the function directly.

The spaces answer the demo's example question (so no model is involved: the SQL check, the engine's
boundary, the bounded fetch and the markdown table are what is measured) over copies of the demo's
reviews table; ``main.support.flag_urgent`` runs in a warm worker. PostgreSQL is the machine's
(``--postgres``, default ``postgresql://postgres@127.0.0.1:5432/test``; left out when unreachable).
Prints p50 and p99 per call. Figures are ratios of one run on one machine; compare them only with
figures from the same run.

    .venv/bin/python bench/tools.py [--calls 500] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import psycopg

from opensupervisor.identity import ADMIN
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.tools.genie import GenieSpaces
from opensupervisor.tools.sandbox import Sandbox
from opensupervisor.tools.uc_functions import FunctionCatalog
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, load_workspace, parse_workspace

QUESTION = "Which reviews are urgent?"
SQL = "SELECT id, customer, product, body FROM reviews WHERE urgent = 1 ORDER BY submitted_on DESC"
Call = Callable[[], Awaitable[Any]]


async def timed(calls: int, fn: Call) -> list[float]:
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
    return f"  {label:48s} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms{extra}"


def reviews(demo: Workspace) -> tuple[list[str], list[tuple[Any, ...]]]:
    with sqlite3.connect(f"file:{demo.base_dir / 'reviews.db'}?mode=ro", uri=True) as conn:
        cursor = conn.execute("SELECT id, customer, product, body, urgent, submitted_on FROM reviews")
        return [d[0] for d in cursor.description], cursor.fetchall()


@contextmanager
def postgres_copy(url: str, rows: list[tuple[Any, ...]]) -> Iterator[str | None]:
    """A schema of its own holding the reviews; None when PostgreSQL cannot be reached."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.Error:
        yield None
        return
    with conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.reviews (id int, customer text, product text, body text, urgent int, "
                     "submitted_on text)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {schema}.reviews VALUES (%s, %s, %s, %s, %s, %s)", rows)
        try:
            yield schema
        finally:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def spaces_workspace(folder: Path, pg_url: str | None, schema: str | None) -> Workspace:
    example = f'[[genie_spaces.{{id}}.example_queries]]\nquestion = "{QUESTION}"\nsql = "{SQL}"\n'
    text = ""
    spaces = [("sq", "sqlite:///reviews.db", "reviews"), ("dk", "duckdb:///reviews.duckdb", "reviews")]
    for space_id, url, table in [*spaces, *([("pg", pg_url, f"{schema}.reviews")] if schema else [])]:
        text += f'[genie_spaces.{space_id}]\ndatabase_url = "{url}"\ntables = ["{table}"]\n'
        text += example.replace("{id}", space_id).replace("FROM reviews", f"FROM {table}")
    return parse_workspace(text, source="bench", base_dir=folder)


async def sql_rows(calls: int, folder: Path, pg_url: str, ctx: Any) -> None:
    demo = load_workspace(None)
    columns, rows = reviews(demo)
    sqlite_copy = folder / "reviews.db"
    sqlite_copy.write_bytes((demo.base_dir / "reviews.db").read_bytes())
    with duckdb.connect(str(folder / "reviews.duckdb")) as conn:
        conn.execute("CREATE TABLE reviews (id INTEGER, customer TEXT, product TEXT, body TEXT, urgent INTEGER, "
                     "submitted_on TEXT)")
        conn.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?)", rows)
    assert columns
    with postgres_copy(pg_url, rows) as schema:
        ws = spaces_workspace(folder, pg_url, schema)
        spaces = GenieSpaces(ws, ModelCatalog(ws))
        sq = sqlite3.connect(f"file:{sqlite_copy}?mode=ro", uri=True)
        pg = psycopg.connect(pg_url) if schema else None

        async def sqlite_direct() -> Any:
            return sq.execute(SQL).fetchall()

        async def duckdb_direct() -> Any:
            with duckdb.connect(str(folder / "reviews.duckdb"), read_only=True) as conn:  # as the space opens it
                return conn.execute(SQL).fetchall()

        async def postgres_direct() -> Any:
            assert pg is not None
            return pg.execute(SQL.replace("FROM reviews", f"FROM {schema}.reviews")).fetchall()

        def through(space_id: str) -> Call:
            space = spaces.factory(ToolSpec(index=0, type="genie_space", config={"id": space_id}, raw={}), ws)
            return lambda: space.call_tool(ctx, f"genie_{space_id}", {"question": QUESTION})

        engines: list[tuple[str, str, Call]] = [("SQLite", "sq", sqlite_direct), ("DuckDB", "dk", duckdb_direct)]
        if schema:
            engines.append(("PostgreSQL", "pg", postgres_direct))
        for engine, space_id, direct in engines:
            base = await timed(calls, direct)
            tool = await timed(calls, through(space_id))
            print(line(f"SQL on {engine}, directly", base))
            print(line(f"SQL on {engine}, through genie_space", tool, base))
        if not schema:
            print(f"  (PostgreSQL at {pg_url} is not reachable: left out)")
        sq.close()
        if pg is not None:
            pg.close()
        await spaces.aclose()


async def function_rows(calls: int, ctx: Any) -> None:
    ws = load_workspace(None)
    spec = importlib.util.spec_from_file_location("support", ws.base_dir / "support.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    async def direct() -> Any:
        return module.flag_urgent(review_id=2)

    base = await timed(calls, direct)
    print(line("Python function, called directly", base))
    for isolation in ("processes-only", "namespaces"):
        mode = ws.model_copy(update={"sandbox": ws.sandbox.model_copy(update={"isolation": isolation})})
        catalog = FunctionCatalog(mode, Sandbox.from_section(mode.sandbox))
        tool = catalog.factory(ToolSpec(index=0, type="uc_function", config={"name": "main.support.flag_urgent"},
                                        raw={}), mode)

        async def through(tool: Any = tool) -> Any:
            return await tool.call_tool(ctx, "main__support__flag_urgent", {"review_id": 2})

        print(line(f"Python function, uc_function, {isolation}", await timed(calls, through), base))
        await catalog.aclose()


async def main(calls: int, pg_url: str) -> None:
    ctx: Any = SimpleNamespace(request=SimpleNamespace(body=SimpleNamespace(model=None)),  # no model is asked
                               principal=ADMIN)
    print(f"per call, {calls} calls each:")
    with tempfile.TemporaryDirectory() as folder:
        await sql_rows(calls, Path(folder), pg_url, ctx)
    await function_rows(calls, ctx)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.postgres))
