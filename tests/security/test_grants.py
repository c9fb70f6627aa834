"""Grants hold on every route and in every dialect: what a tool entry names is what is checked and used.

One workspace with a locked object of every kind (granted to ``alice`` only) and an open one. Bob
tries each dialect of tool entry, decoy names beside the real key, entries that name nothing, the
Genie conversation API and embeddings; alice's requests show the locked object is the one used.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ASGIThread, Server, ThreadServer, wait_until
from tests.mcp_servers import tools_server

EMBEDDER = "all-MiniLM-L6-v2-int8"
GENIE = "/api/2.0/genie/spaces"


def workspace(folder: Path, base_url: str) -> Path:
    mcp_url = f"{base_url}/mcp"
    sqlite3.connect(folder / "sales.db").executescript(
        "CREATE TABLE sales (region TEXT, amount INTEGER); INSERT INTO sales VALUES ('north', 10), ('south', 32);")
    (folder / "docs").mkdir()
    (folder / "docs" / "vacation.md").write_text("# Vacation\n\nEveryone gets 25 days of vacation.\n")
    (folder / "functions.py").write_text("".join(f'def {name}(text: str) -> str:\n    """Echoes."""\n    return text\n'
                                                 for name in ("free", "secret")))
    spaces = "".join(f'\n[genie_spaces.{name}]\ndatabase_url = "sqlite:///sales.db"\ntables = ["sales"]\n{extra}'
                     for name, extra in (("open", ""), ("locked", ""), ("costly", 'model = "premium"\n'),
                                         ("metered", 'model = "metered"\n')))
    path = folder / "workspace.toml"
    path.write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "Total sales?"
turns = [{{ text = "SELECT sum(amount) AS total FROM sales" }}]

[[models.agent.script]]
when = "ask locked"
turns = [{{ tool_calls = [{{ name = "genie_locked", arguments = {{ question = "Total sales?" }} }}] }},
         {{ text = "Asked." }}]

[[models.agent.script]]
when = "add please"
turns = [{{ tool_calls = [{{ name = "add", arguments = {{ a = 2, b = 3 }} }}] }}, {{ text = "Added." }}]

[models.premium]
provider = "scripted"
script = [{{ turns = [{{ text = "SELECT sum(amount) AS total FROM sales" }}] }}]

[models.metered]
provider = "scripted"
script = [{{ turns = [{{ text = "SELECT sum(amount) AS total FROM sales" }}] }}]
{spaces}
[functions."main.t.free"]
language = "python"
source = "functions.py"

[functions."main.t.secret"]
language = "python"
source = "functions.py"

[knowledge_assistants.open]
sources = ["docs"]

[knowledge_assistants.locked]
sources = ["docs"]

[connections.open]
url = "{mcp_url}"

[connections.locked]
url = "{mcp_url}"

[apps.open]
url = "{base_url}"
protocol = "mcp"

[apps.locked]
url = "{base_url}"
protocol = "mcp"

[access.grants]
"genie_space:locked" = ["alice"]
"function:main.t.secret" = ["alice"]
"knowledge_assistant:locked" = ["alice"]
"connection:locked" = ["alice"]
"app:locked" = ["alice"]
"model:premium" = ["alice"]
"model:{EMBEDDER}" = ["embedders"]
""")
    return path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("grants")
    with ASGIThread(tools_server().streamable_http_app()) as mcp_url, \
            ThreadServer(f"sqlite:///{folder}/state.db", workspace(folder, mcp_url)) as server:
        tokens = {}
        with server.http() as http:
            for name in ("alice", "bob", "carol", "dave"):
                assert http.post("/admin/v1/principals", json={"name": name}).status_code == 200
                tokens[name] = http.post(f"/admin/v1/principals/{name}/tokens", json={}).json()["token"]
            http.post("/admin/v1/principals", json={"name": "embedders", "kind": "group"})
            for member in ("alice", "dave"):
                http.post("/admin/v1/principals/embedders/members", json={"member": member})
        yield server, tokens


def as_user(server: Server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=token, max_retries=0)


def http_as(server: Server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


# Every dialect naming a locked object; decoy names (the tool's label) say "open" beside the real key.
LOCKED: list[tuple[dict[str, Any], str]] = [
    ({"type": "genie_space", "genie_space": {"id": "locked"}}, "genie space 'locked'"),
    ({"type": "genie_space", "id": "locked"}, "genie space 'locked'"),
    ({"type": "genie", "genie": {"name": "open", "description": "x", "space_id": "locked"}}, "genie space 'locked'"),
    ({"type": "genie_space", "genie_space": {"id": "costly"}}, "model 'premium'"),
    ({"type": "uc_function", "uc_function": {"name": "main.t.secret", "name_alias": "free"}},
     "function 'main.t.secret'"),
    ({"type": "knowledge_assistant", "knowledge_assistant": {"knowledge_assistant_id": "locked"}},
     "knowledge assistant 'locked'"),
    ({"type": "uc_connection", "uc_connection": {"name": "locked"}}, "connection 'locked'"),
    ({"type": "connection", "connection": {"name": "locked", "description": "x"}}, "connection 'locked'"),
    ({"type": "mcp", "mcp": {"name": "open", "description": "x", "connection_name": "locked"}},
     "connection 'locked'"),
    ({"type": "app", "app": {"name": "locked"}}, "app 'locked'"),
    ({"type": "agent_endpoint", "agent_endpoint": {"name": "open", "endpoint_name": "locked"}}, "app 'locked'"),
]


@pytest.mark.parametrize(("tool", "what"), LOCKED, ids=[f"{t['type']}-{i}" for i, (t, _) in enumerate(LOCKED)])
def test_every_dialect_checks_the_object_it_uses(rig: tuple[Server, dict[str, str]], tool: dict[str, Any],
                                                 what: str) -> None:
    server, tokens = rig
    open_tool: dict[str, Any] = {"type": "genie_space", "genie_space": {"id": "open"}}
    with pytest.raises(openai.PermissionDeniedError) as refused:
        as_user(server, tokens["bob"]).responses.create(model="agent", input="hi", tools=[open_tool, tool])
    assert refused.value.body["param"] == "tools[1]"
    assert refused.value.body["message"].endswith(f"on {what}.")
    assert as_user(server, tokens["alice"]).responses.create(model="agent", input="hi", tools=[tool]).status \
        == "completed"


# Entries that name no object, or name it wrongly: a 400 at the key the tool would read.
UNNAMED: list[tuple[dict[str, Any], str]] = [
    ({"type": "mcp", "mcp": {"name": "locked"}}, "tools[0].mcp.connection_name"),
    ({"type": "mcp", "mcp": {"name": "locked", "connection_name": ""}}, "tools[0].mcp.connection_name"),
    ({"type": "genie", "genie": {"name": "locked"}}, "tools[0].genie.space_id"),
    ({"type": "agent_endpoint", "agent_endpoint": {"name": "locked"}}, "tools[0].agent_endpoint.endpoint_name"),
    ({"type": "uc_connection", "uc_connection": {}}, "tools[0].uc_connection.name"),
    ({"type": "app", "app": {"name": ["locked"]}}, "tools[0].app.name"),
    ({"type": "knowledge_assistant", "knowledge_assistant": {"knowledge_assistant_id": 7}},
     "tools[0].knowledge_assistant.knowledge_assistant_id"),
    ({"type": "uc_function", "uc_function": {"name": "  "}}, "tools[0].uc_function.name"),
    ({"type": "genie_space", "genie_space": {"id": "nowhere"}}, "tools[0].genie_space.id"),
]


@pytest.mark.parametrize(("tool", "param"), UNNAMED, ids=[p for _, p in UNNAMED])
def test_an_entry_that_names_no_object_is_a_400(rig: tuple[Server, dict[str, str]], tool: dict[str, Any],
                                               param: str) -> None:
    server, tokens = rig
    for who in ("bob", "alice"):
        with pytest.raises(openai.BadRequestError) as refused:
            as_user(server, tokens[who]).responses.create(model="agent", input="hi", tools=[tool])
        assert refused.value.body["param"] == param


def test_the_granted_object_is_the_one_the_tool_uses(rig: tuple[Server, dict[str, str]]) -> None:
    server, tokens = rig
    alice = as_user(server, tokens["alice"])
    decoy: Any = {"type": "genie", "genie": {"name": "open", "description": "x", "space_id": "locked"}}
    asked = alice.responses.create(model="agent", input="ask locked", tools=[decoy])
    call, output = asked.output[0], asked.output[1]
    assert call.type == "function_call" and output.type == "function_call_output"
    assert call.name == "genie_locked" and "42" in str(output.output), output
    connection: Any = {"type": "mcp", "mcp": {"name": "open", "connection_name": "locked"}}
    added = alice.responses.create(model="agent", input="add please", tools=[connection])
    assert added.output[1].output == "5"
    # A second key naming another object changes nothing: the dialect's own key is the one read.
    both: Any = {"type": "genie_space", "genie_space": {"id": "open", "space_id": "locked"}}
    listed = as_user(server, tokens["bob"]).responses.create(model="agent", input="ask locked", tools=[both])
    assert "no tool named 'genie_locked'" in str(getattr(listed.output[1], "output", ""))


def test_the_genie_api_checks_the_space_and_its_model(rig: tuple[Server, dict[str, str]]) -> None:
    server, tokens = rig
    with http_as(server, tokens["bob"]) as bob, http_as(server, tokens["alice"]) as alice:
        for method, path in (("GET", f"{GENIE}/locked"), ("POST", f"{GENIE}/locked/start-conversation"),
                             ("POST", f"{GENIE}/locked/conversations/x/messages"),
                             ("GET", f"{GENIE}/locked/conversations/x/messages/y")):
            hidden = bob.request(method, path, json={"content": "Total sales?"})
            assert hidden.status_code == 404 and hidden.json()["error"]["param"] == "space_id", hidden.text
        premium = bob.post(f"{GENIE}/costly/start-conversation", json={"content": "Total sales?"})
        assert premium.status_code == 403 and premium.json()["error"]["param"] == "space_id"
        assert "premium" in premium.json()["error"]["message"]
        started = alice.post(f"{GENIE}/locked/start-conversation", json={"content": "Total sales?"})
        assert started.status_code == 200 and started.json()["message"]["status"] == "COMPLETED"
        conversation = started.json()["conversation_id"]
        message = started.json()["message_id"]
        # Bob may run the open space, but not read alice's conversation in it or in the locked one.
        for space in ("locked", "open"):
            peek = bob.get(f"{GENIE}/{space}/conversations/{conversation}/messages/{message}")
            assert peek.status_code == 404
        assert alice.post(f"{GENIE}/costly/start-conversation", json={"content": "Total sales?"}).status_code == 200


def test_the_genie_api_is_rate_limited_and_counted(rig: tuple[Server, dict[str, str]]) -> None:
    server, tokens = rig
    with server.http() as admin:
        limited = admin.put("/admin/v1/rate-limits/metered",
                            json={"rate_limits": [{"key": "user", "principal": "carol", "calls": 1}]})
        assert limited.status_code == 200, limited.text
    with http_as(server, tokens["carol"]) as carol:
        first = carol.post(f"{GENIE}/metered/start-conversation", json={"content": "Total sales?"})
        assert first.status_code == 200 and first.json()["message"]["status"] == "COMPLETED"
        again = carol.post(f"{GENIE}/metered/start-conversation", json={"content": "Total sales?"})
        assert again.status_code == 429 and again.headers["retry-after"]
        assert again.json()["error"]["code"] == "rate_limit_exceeded"
    with server.http() as admin:
        def counted() -> bool:
            rows = admin.get("/admin/v1/usage", params={"group_by": "principal,model"}).json()["data"]
            return any(r["principal"] == "carol" and r["model"] == "metered" for r in rows)

        wait_until(counted, timeout=15, what="the Genie message's usage row")


def test_embeddings_need_the_grant_and_count_against_limits(rig: tuple[Server, dict[str, str]]) -> None:
    server, tokens = rig
    with pytest.raises(openai.PermissionDeniedError) as refused:
        as_user(server, tokens["bob"]).embeddings.create(model=EMBEDDER, input="hello")
    assert refused.value.body["param"] == "model"
    assert len(as_user(server, tokens["alice"]).embeddings.create(model=EMBEDDER, input="hi").data) == 1
    with server.http() as admin:
        limited = admin.put(f"/admin/v1/rate-limits/{EMBEDDER}",
                            json={"rate_limits": [{"key": "user", "principal": "dave", "calls": 1}]})
        assert limited.status_code == 200, limited.text
    dave = as_user(server, tokens["dave"])
    assert len(dave.embeddings.create(model=EMBEDDER, input=["a", "b"]).data) == 2
    with pytest.raises(openai.RateLimitError):
        dave.embeddings.create(model=EMBEDDER, input="again")
