"""Every hosted tool's output is bounded: a huge result never becomes a huge model request.

A hostile model asks tools for as much as they will give (an MCP server that answers with a
million characters, a SQL function over many rows of long values); what the model then reads, what
the next model request carries and what the response stores are cut at the caps, with a note.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from mcp.server.fastmcp import FastMCP

from opensupervisor.core.bounds import cap_cell, cap_output
from opensupervisor.errors import ConfigError
from opensupervisor.testing.asgi import lifespan
from opensupervisor.workspace import parse_workspace
from tests.conftest import ASGIThread
from tests.security.hostile import Rig, hostile_server

MILLION = 1_000_000


def flood_server() -> FastMCP:
    server = FastMCP("flood", stateless_http=True, log_level="WARNING")

    @server.tool()
    def flood(size: int) -> str:
        """Answers with ``size`` characters."""
        return "y" * size

    return server


async def endless_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app endpoint whose answer never ends (1 MiB chunks, for ever)."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    chunk = b"z" * (1024 * 1024)
    for _ in range(10_000):  # 10 GiB: far more than anyone should hold
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("caps")
    with sqlite3.connect(folder / "notes.db") as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes VALUES (?, ?)", [(i, "n" * 50_000) for i in range(40)])
    with ASGIThread(flood_server().streamable_http_app()) as mcp_url, ASGIThread(endless_app) as app_url:
        body = f"""
[limits]
max_turns = 4
tool_timeout_s = 30
max_tool_output_chars = 20000

[connections.flood]
url = "{mcp_url}/mcp"
require_approval = "never"

[apps.endless]
url = "{app_url}/v1"
require_approval = "never"

[functions."main.notes.all"]
language = "sql"
database_url = "sqlite:///notes.db"
sql = "SELECT id, body FROM notes ORDER BY id"

[functions."main.notes.small"]
language = "sql"
database_url = "sqlite:///notes.db"
sql = "SELECT id, body FROM notes ORDER BY id"
max_output_chars = 1000
"""
        with hostile_server(folder, body) as running:
            yield running


def connection(name: str) -> dict[str, Any]:
    return {"type": "uc_connection", "uc_connection": {"name": name}}


def function(name: str) -> dict[str, Any]:
    return {"type": "uc_function", "uc_function": {"name": name}}


def last_model_request_size(rig: Rig) -> int:
    return len(orjson.dumps(rig.upstream.requests[-1]))


def test_a_flooding_mcp_server_is_cut_at_the_workspace_cap(rig: Rig) -> None:
    [output] = rig.attack([connection("flood")], calls=[("flood", {"size": MILLION})])
    assert output.startswith("y" * 20_000 + "\n\n[Output truncated: showing the first 20,000 of 1,000,000 characters.")
    assert len(output) < 20_200
    # The model's next request carries the cut output, not the million characters.
    assert last_model_request_size(rig) < 30_000


def test_an_answer_past_16_mib_is_refused_while_it_streams(rig: Rig) -> None:
    """The MCP SDK and the app client count an answer's bytes as they arrive: a server that sends
    20 million characters, or an app that never stops, costs at most 16 MiB before it is refused."""
    [mcp] = rig.attack([connection("flood")], calls=[("flood", {"size": 20 * MILLION})])
    assert mcp == "Error: the MCP server 'flood' failed the call (the answer is larger than 16 MiB)"
    Path("/proc/self/clear_refs").write_text("5")
    before = peak_rss_mb()
    [app] = rig.attack([{"type": "app", "app": {"name": "endless"}}], calls=[("app_endless", {"question": "all"})])
    assert app == "Error: the app 'endless' answered too much: the answer is larger than 16 MiB"
    assert peak_rss_mb() - before < 100


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_several_calls_are_each_cut(rig: Rig) -> None:
    outputs = rig.attack([connection("flood")], calls=[("flood", {"size": MILLION}), ("flood", {"size": 300_000}),
                                                      ("flood", {"size": 10})])
    assert [len(o) < 20_200 for o in outputs] == [True, True, True]
    assert "of 300,000 characters" in outputs[1] and outputs[2] == "y" * 10
    assert last_model_request_size(rig) < 60_000


def test_sql_function_values_and_output_are_cut(rig: Rig) -> None:
    [whole] = rig.attack([function("main.notes.all")], calls=[("main__notes__all", {})])
    assert "[Output truncated: showing the first 20,000 of" in whole
    data = whole.split("\n\n[Output truncated")[0]
    assert "n" * 2048 in data and "n" * 2049 not in data  # each value is cut at the cell cap first
    assert "50,000 characters, cut at 2,048" in data


def test_a_tool_may_set_its_own_smaller_cap(rig: Rig) -> None:
    [small] = rig.attack([function("main.notes.small")], calls=[("main__notes__small", {})])
    assert "[Output truncated: showing the first 1,000 of" in small
    assert len(small) < 1_200


def test_stored_responses_keep_the_cut_output(rig: Rig) -> None:
    prompt = rig.upstream.play(calls=[("flood", {"size": MILLION})])
    client = rig.server.client()
    created = client.responses.create(model="hostile", input=prompt, tools=[connection("flood")])
    stored = client.responses.retrieve(created.id)
    [output] = [item.output for item in stored.output if item.type == "function_call_output"]
    assert isinstance(output, str) and len(output) < 20_200 and "Output truncated" in output


def test_caps_are_checked_when_the_workspace_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"limits\.max_tool_output_chars"):
        parse_workspace("[limits]\nmax_tool_output_chars = 10\n", source="w", base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"limits\.max_cell_chars"):
        parse_workspace("[limits]\nmax_cell_chars = 0\n", source="w", base_dir=tmp_path)
    for key, value in (("pool_size", "0"), ("isolation", '"none"'), ("memory_mb", "1"), ("max_file_mb", "0"),
                       ("per_principal", "0"), ("max_processes", "0"), ("cpu_s", "0")):
        with pytest.raises(ConfigError, match=rf"sandbox\.{key}"):
            parse_workspace(f"[sandbox]\n{key} = {value}\n", source="w", base_dir=tmp_path)


def test_the_cut_is_never_silent() -> None:
    assert cap_output("abc", 3) == "abc"
    assert cap_output("abcd", 3).startswith("abc\n\n[Output truncated: showing the first 3 of 4 characters.")
    assert cap_cell("abcd", 3) == ("abc… [4 characters, cut at 3]", True)
    assert cap_cell("abc", 3) == ("abc", False)
