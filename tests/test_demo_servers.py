"""The demo MCP servers answer only with the demo token, which the demo workspace's connection and
app send: their tools work through the API, and nobody else's requests reach them."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

import opensupervisor
from opensupervisor.demo.token import DEMO_TOKEN_ENV
from tests.conftest import TOKEN, Server, ThreadServer

DEMO = Path(opensupervisor.__file__).parent / "demo"
MODEL = "databricks-claude-sonnet-4-5"
SCRIPT = f'''demo_servers = true

[models."{MODEL}"]
provider = "scripted"

[[models."{MODEL}".script]]
when = "search and file"
turns = [
  {{ tool_calls = [{{ name = "web-search", arguments = {{ query = "what is Databricks", count = 1 }} }},
                  {{ name = "open_ticket", arguments = {{ title = "Recall", priority = "urgent" }} }}] }},
  {{ text = "Searched and filed." }},
]
#'''


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("demo")
    for name in ("reviews.db", "support.py"):
        shutil.copy(DEMO / name, folder / name)
    shutil.copytree(DEMO / "handbook", folder / "handbook")
    tools = (DEMO / "workspace.toml").read_text().split("# The seed's Step 2 tools")[1]
    (folder / "workspace.toml").write_text(SCRIPT + tools)
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as server:
        yield server


def demo_token() -> str:
    value = os.environ[DEMO_TOKEN_ENV]
    assert len(value) >= 32
    return value


@pytest.mark.parametrize("path", ["/demo/search/mcp", "/demo/tickets/mcp", "/demo/search/mcp/", "/demo/tickets/x",
                                  "/demo/search/"])
def test_requests_without_the_demo_token_are_refused(demo: Server, path: str) -> None:
    token = demo_token()
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                             "clientInfo": {"name": "probe", "version": "1"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    for authorization in (None, "Bearer", f"Bearer {TOKEN}", f"Bearer {token}x", f"Bearer {token[:-1]}",
                          f"Token {token}", "Basic " + base64.b64encode(f"token:{token}".encode()).decode(),
                          f"Bearer {token.upper()}"):
        sent = {**headers, **({"Authorization": authorization} if authorization is not None else {})}
        for method in ("POST", "GET", "DELETE"):
            refused = httpx.request(method, f"{demo.url}{path}", json=initialize, headers=sent,
                                    params={"token": token})
            assert refused.status_code == 401, (authorization, method, refused.text)
            assert refused.headers["www-authenticate"] == "Bearer"
            error = refused.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
            assert token not in refused.text


def test_an_mcp_client_with_the_demo_token_gets_the_tools(demo: Server) -> None:
    async def tools(path: str) -> list[str]:
        headers = {"Authorization": f"Bearer {demo_token()}"}
        async with streamablehttp_client(f"{demo.url}{path}", headers=headers) as (read, write, _), \
                ClientSession(read, write) as session:
            await session.initialize()
            return [t.name for t in (await session.list_tools()).tools]

    assert asyncio.run(tools("/demo/search/mcp")) == ["web-search"]
    assert asyncio.run(tools("/demo/tickets/mcp")) == ["open_ticket", "ticket_status"]


def test_the_demo_connection_and_app_send_the_token(demo: Server) -> None:
    response = demo.client().responses.create(model=MODEL, input="search and file", tools=[
        {"type": "uc_connection", "uc_connection": {"name": "web_search"}},
        {"type": "app", "app": {"name": "tickets"}},
    ])
    outputs = [item.output for item in response.output if item.type == "function_call_output"]
    assert len(outputs) == 2, response.output
    assert "What is Databricks?" in str(outputs[0]) and "TCK-" in str(outputs[1])
    assert not any(str(o).startswith("Error:") for o in outputs)
    assert demo_token() not in response.model_dump_json(warnings=False)
    assert response.output_text == "Searched and filed."
