"""``uc_function``: Python functions in sandbox subprocesses and SQL functions with bound parameters."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from opensupervisor.identity import ADMIN
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.tools.sandbox import Limits, Sandbox
from opensupervisor.tools.uc_functions import FunctionCatalog
from opensupervisor.workspace import Workspace, load_workspace
from tests.conftest import Server, ThreadServer, wait_until

FUNCTIONS = '''
import os


def flag_urgent(review_id: int, reason: str = "customer at risk") -> str:
    """Flags a review as requiring urgent attention.

    Args:
        review_id: The review to flag.
        reason: Why it is urgent.
    """
    return f"review {review_id} flagged: {reason}"


def loop_forever() -> str:
    while True:
        pass


def hog() -> str:
    chunks = []
    while True:
        chunks.append(bytearray(50 * 1024 * 1024))


def bail() -> str:
    os._exit(3)


def refuse(review_id: int) -> str:
    raise ValueError(f"review {review_id} is locked")


def scores(values: list[float], weights: dict | None = None) -> dict:
    return {"total": sum(values), "n": len(values)}
'''


def workspace_text() -> str:
    entries = []
    for name in ("flag_urgent", "loop_forever", "hog", "bail", "refuse", "scores"):
        entries.append(f'[functions."main.support.{name}"]\nlanguage = "python"\nsource = "functions.py"\n'
                       'timeout_s = 2\n')
    return "\n".join(entries) + '''
[functions."main.support.count_reviews"]
language = "sql"
database_url = "sqlite:///reviews.db"
description = "Counts reviews with a given body"
sql = "SELECT count(*) AS n FROM reviews WHERE body = :body"
parameters = [{ name = "body", type = "string", description = "Exact review text" }]

[functions."main.support.mark"]
language = "sql"
database_url = "sqlite:///reviews.db"
sql = "UPDATE reviews SET urgent = 1 WHERE id = :review_id"
parameters = [{ name = "review_id", type = "integer" }]

[models.fn]
provider = "scripted"

[[models.fn.script]]
when = "flag review 7"
turns = [
  { tool_calls = [{ name = "main__support__flag_urgent", arguments = { review_id = 7 } }] },
  { text = "Flagged." },
]

[[models.fn.script]]
when = "flag by alias"
turns = [
  { tool_calls = [{ name = "flag_it", arguments = { review_id = 7 } }] },
  { text = "Flagged." },
]

[[models.fn.script]]
when = "double 21"
turns = [
  { tool_calls = [{ name = "main__math__double", arguments = { x = 21 } }] },
  { text = "Done." },
]

[[models.fn.script]]
when = "triple 5"
turns = [
  { tool_calls = [{ name = "main__math__triple", arguments = { x = 5 } }] },
  { text = "Done." },
]

[[models.fn.script]]
when = "misbehave"
turns = [
  { tool_calls = [{ name = "main__support__loop_forever" }, { name = "main__support__bail" },
                  { name = "main__support__refuse", arguments = { review_id = 3 } },
                  { name = "main__support__flag_urgent", arguments = { review_id = "seven" } }] },
  { text = "Some tools failed." },
]
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("functions")
    (path / "functions.py").write_text(FUNCTIONS)
    with sqlite3.connect(path / "reviews.db") as conn:
        conn.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, body TEXT, urgent INTEGER)")
        conn.executemany("INSERT INTO reviews VALUES (?, ?, ?)", [(1, "Fine", 0), (2, "Broken", 0)])
    (path / "workspace.toml").write_text(workspace_text())
    return path


@pytest.fixture(scope="module")
def fn_server(folder: Path) -> Iterator[Server]:
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as server:
        yield server


def uc(name: str) -> Any:
    return {"type": "uc_function", "uc_function": {"name": name, "description": "A governed function"}}


def test_the_tool_schema_is_read_from_the_source(folder: Path) -> None:
    ws: Workspace = load_workspace(folder / "workspace.toml")
    catalog = FunctionCatalog(ws, Sandbox(Limits()))
    tool = catalog.functions["main.support.flag_urgent"].tool
    assert tool.name == "main__support__flag_urgent"
    assert tool.description == "Flags a review as requiring urgent attention."
    assert tool.parameters == {
        "type": "object", "additionalProperties": False, "required": ["review_id"],
        "properties": {"review_id": {"type": "integer", "description": "The review to flag."},
                       "reason": {"type": "string", "description": "Why it is urgent.", "default": "customer at risk",
                                  "maxLength": 16384}}}
    scores = catalog.functions["main.support.scores"].tool.parameters
    assert scores["properties"] == {"values": {"type": "array", "items": {"type": "number"}, "maxItems": 1000},
                                    "weights": {"type": "object", "default": None, "maxProperties": 100}}
    assert catalog.functions["main.support.count_reviews"].tool.parameters["required"] == ["body"]
    assert ModelCatalog(ws).get("fn").name == "fn"


def test_a_python_function_runs_in_the_sandbox(fn_server: Server) -> None:
    response = fn_server.client().responses.create(model="fn", input="flag review 7",
                                                   tools=[uc("main.support.flag_urgent")])
    call, output, answer = response.output
    assert (call.type, call.name, call.status) == ("function_call", "main__support__flag_urgent", "completed")
    assert output.output == "review 7 flagged: customer at risk"
    assert answer.type == "message" and response.output_text == "Flagged."


def test_name_alias_names_the_tool_as_the_older_dialect_asks(fn_server: Server) -> None:
    aliased: Any = {"type": "uc_function", "uc_function": {"name": "main.support.flag_urgent", "name_alias": "flag_it"}}
    response = fn_server.client().responses.create(model="fn", input="flag by alias", tools=[aliased])
    call, output, _ = response.output
    assert (call.name, output.output) == ("flag_it", "review 7 flagged: customer at risk")
    bad: Any = {"type": "uc_function", "uc_function": {"name": "main.support.flag_urgent", "name_alias": "a b"}}
    with pytest.raises(openai.BadRequestError) as refused:
        fn_server.client().responses.create(model="fn", input="flag by alias", tools=[bad])
    assert refused.value.body["param"] == "tools[0].uc_function.name_alias"


def test_misbehaving_functions_never_stop_the_run(fn_server: Server) -> None:
    tools = [uc(f"main.support.{n}") for n in ("loop_forever", "bail", "refuse", "flag_urgent")]
    started = time.monotonic()
    response = fn_server.client().responses.create(model="fn", input="misbehave", tools=tools)
    assert time.monotonic() - started < 15
    outputs = [i.output for i in response.output if i.type == "function_call_output"]
    assert outputs[0] == "Error: the function did not finish within 2 seconds"
    assert outputs[1] == "Error: the function's process stopped (it exited, crashed or ran out of memory)"
    assert outputs[2].startswith("Error: the function failed: ValueError: review 3 is locked (line ")
    assert outputs[3].startswith("Error: invalid arguments for 'main__support__flag_urgent' at review_id:")
    assert response.status == "completed" and response.output_text == "Some tools failed."


@pytest.mark.anyio
async def test_memory_is_limited_and_the_sandbox_recovers(folder: Path) -> None:
    sandbox = Sandbox(Limits(timeout_s=20, memory_mb=256))
    try:
        with pytest.raises(Exception) as info:
            await sandbox.call(folder / "functions.py", "hog", {})
        assert "MemoryError" in str(info.value) or "stopped" in str(info.value)
        assert await sandbox.call(folder / "functions.py", "flag_urgent", {"review_id": 1}) == \
            "review 1 flagged: customer at risk"
        assert await sandbox.call(folder / "functions.py", "scores", {"values": [1, 2.5]}) == \
            '{"total": 3.5, "n": 2}'
    finally:
        await sandbox.aclose()


@pytest.mark.anyio
async def test_sql_functions_bind_their_parameters(folder: Path) -> None:
    ws = load_workspace(folder / "workspace.toml")
    catalog = FunctionCatalog(ws, Sandbox(Limits()))
    ctx: Any = SimpleNamespace(principal=ADMIN)
    try:
        count = catalog.factory(_spec("main.support.count_reviews"), ws)
        assert await count.call_tool(ctx, "main__support__count_reviews", {"body": "Broken"}) == \
            '{"columns":["n"],"rows":[[1]]}'
        injected = await count.call_tool(ctx, "main__support__count_reviews", {"body": "x' OR '1'='1"})
        assert injected == '{"columns":["n"],"rows":[[0]]}'
        mark = catalog.factory(_spec("main.support.mark"), ws)
        assert await mark.call_tool(ctx, "main__support__mark", {"review_id": 2}) == '{"rows_affected":1}'
    finally:
        await catalog.aclose()
    with sqlite3.connect(folder / "reviews.db") as conn:
        assert conn.execute("SELECT count(*) FROM reviews").fetchone() == (2,)


def test_an_unknown_function_is_a_400_naming_it(fn_server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        fn_server.client().responses.create(model="fn", input="hi", tools=[uc("main.support.nope")])
    assert info.value.body["param"] == "tools[0].uc_function.name"


def _spec(name: str) -> Any:
    from opensupervisor.wire.request import ToolSpec

    return ToolSpec(index=0, type="uc_function", config={"name": name}, raw={})


DOUBLE = '''
def double(x: int) -> int:
    """Doubles a number.

    Args:
        x: The number.
    """
    return x * 2
'''


def test_functions_registered_through_the_admin_api(fn_server: Server) -> None:
    client = fn_server.client()
    with fn_server.http() as http:
        put = http.put("/admin/v1/functions/main.math.double", json={"language": "python", "source_code": DOUBLE})
        assert put.status_code == 200, put.text
        assert put.json() == {"name": "main.math.double", "tool_name": "main__math__double", "language": "python",
                              "description": "Doubles a number.", "origin": "registered", "parameters": {
                                  "type": "object", "additionalProperties": False, "required": ["x"],
                                  "properties": {"x": {"type": "integer", "description": "The number."}}}}
        listed = {f["name"]: f["origin"] for f in http.get("/admin/v1/functions").json()["data"]}
        assert listed["main.math.double"] == "registered" and listed["main.support.flag_urgent"] == "workspace"
        response = client.responses.create(model="fn", input="double 21", tools=[uc("main.math.double")])
        assert [i.output for i in response.output if i.type == "function_call_output"] == ["42"]

        for name, body, param in [
            ("main.math.bad", {"language": "python", "source_code": "def bad(x):\n    return x\n"}, "source_code"),
            ("double", {"language": "python", "source_code": DOUBLE}, "name"),
            ("main.support.flag_urgent", {"language": "python", "source_code": DOUBLE}, "name"),
            ("main.math.file", {"language": "python", "source": "/etc/passwd"}, "source"),
            ("main.math.nolang", {"source_code": DOUBLE}, "language"),
            ("main.math.tiny", {"language": "python", "source_code": DOUBLE, "max_output_chars": 5},
             "max_output_chars"),
            ("main.math.net", {"language": "python", "source_code": DOUBLE, "network": "everywhere"}, "network"),
            ("main.math.nosql", {"language": "sql", "database_url": "sqlite:///x.db"}, "sql"),
            ("main.math.nodb", {"language": "sql", "sql": "SELECT 1"}, "database_url"),
            ("main.math.badurl", {"language": "sql", "sql": "SELECT 1", "database_url": "not a url"}, "database_url"),
            ("main.math.roles", {"language": "sql", "sql": "SELECT 1", "database_url": "sqlite:///x.db",
                                 "database_roles": {"*": "reader"}}, "database_roles"),
        ]:
            refused = http.put(f"/admin/v1/functions/{name}", json=body)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text

        assert http.delete("/admin/v1/functions/main.math.double").json() == {"name": "main.math.double",
                                                                             "deleted": True}
        assert http.delete("/admin/v1/functions/main.math.double").status_code == 404
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="fn", input="double 21", tools=[uc("main.math.double")])


def test_functions_registered_with_the_cli_reach_a_running_server(fn_server: Server, folder: Path) -> None:
    import os
    import subprocess
    import sys

    (folder / "triple.py").write_text("def triple(x: int) -> int:\n    \"\"\"Triples.\"\"\"\n    return x * 3\n")
    env = {**os.environ, "OPENSUPERVISOR_DATABASE_URL": f"sqlite:///{folder}/state.db",
           "OPENSUPERVISOR_CONFIG": str(folder / "workspace.toml"), "OPENSUPERVISOR_DATA_DIR": str(folder / "data")}
    added = subprocess.run([sys.executable, "-m", "opensupervisor", "functions", "add", "main.math.triple",
                            "--python", str(folder / "triple.py")], env=env, capture_output=True, text=True,
                           check=False)
    assert added.returncode == 0, added.stderr
    assert "main__math__triple" in added.stderr
    listed = subprocess.run([sys.executable, "-m", "opensupervisor", "functions", "list"], env=env,
                            capture_output=True, text=True, check=True)
    assert listed.stdout.startswith("main.math.triple\tpython")
    with fn_server.http() as http:
        wait_until(lambda: http.get("/admin/v1/functions/main.math.triple").status_code == 200, timeout=15,
                   what="the server to load the registered function")
    response = fn_server.client().responses.create(model="fn", input="triple 5", tools=[uc("main.math.triple")])
    assert [i.output for i in response.output if i.type == "function_call_output"] == ["15"]
    removed = subprocess.run([sys.executable, "-m", "opensupervisor", "functions", "remove", "main.math.triple"],
                             env=env, capture_output=True, text=True, check=False)
    assert removed.returncode == 0, removed.stderr
