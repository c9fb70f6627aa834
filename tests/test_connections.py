"""``uc_connection``: real MCP servers built with the ``mcp`` SDK on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from opensupervisor.testing.asgi import Receive, Send, send_json
from tests.conftest import ASGIThread, Server, ThreadServer, free_port
from tests.mcp_servers import tools_server

SECRET = "mcp-secret-token-93"
TOKEN_ENV = "OS_TEST_MCP_TOKEN"


class RequireBearer:
    """An MCP server behind bearer auth, as a connection's credentials protect it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != f"Bearer {SECRET}".encode():
            await send_json(send, 401, {"error": "unauthorized"})
            return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    plain = tools_server()
    guarded = tools_server()
    with ASGIThread(plain.streamable_http_app()) as plain_url, \
            ASGIThread(RequireBearer(guarded.streamable_http_app())) as guarded_url:
        folder = tmp_path_factory.mktemp("mcp")
        (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "add with mcp"
turns = [{{ tool_calls = [{{ name = "add", arguments = {{ a = 2, b = 3 }} }}] }}, {{ text = "Five." }}]

[[models.agent.script]]
when = "mcp trouble"
turns = [
  {{ tool_calls = [{{ name = "fail" }}, {{ name = "slow" }}, {{ name = "shout", arguments = {{ text = "hi" }} }}] }},
  {{ text = "Trouble." }},
]

[connections.tools]
url = "{plain_url}/mcp"
timeout_s = 2

[connections.guarded]
url = "{guarded_url}/mcp"
bearer_token_env = "{TOKEN_ENV}"
allowed_tools = ["add", "fail", "slow"]
timeout_s = 2

[connections.wrong_key]
url = "{guarded_url}/mcp"
headers = {{ Authorization = "Bearer not-the-key" }}

[connections.down]
url = "http://127.0.0.1:{free_port()}/mcp"
timeout_s = 2
""")
        with pytest.MonkeyPatch.context() as env:
            env.setenv(TOKEN_ENV, SECRET)
            with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as server:
                yield server


def conn(name: str) -> Any:
    return {"type": "uc_connection", "uc_connection": {"name": name, "description": "Searches the web"}}


def outputs(response: Any) -> list[str]:
    return [i.output for i in response.output if i.type == "function_call_output"]


@pytest.mark.parametrize("name", ["tools", "guarded"])
def test_a_connection_exposes_its_servers_tools(mcp_server: Server, name: str) -> None:
    response = mcp_server.client().responses.create(model="agent", input="add with mcp", tools=[conn(name)])
    call, output, answer = response.output
    assert (call.type, call.name, call.status) == ("function_call", "add", "completed")
    assert output.output == "5" and answer.type == "message" and response.output_text == "Five."


def test_errors_timeouts_and_the_allow_list_are_tool_outputs(mcp_server: Server) -> None:
    response = mcp_server.client().responses.create(model="agent", input="mcp trouble", tools=[conn("guarded")])
    fail, slow, shout = outputs(response)
    assert fail.startswith("Error: the MCP tool 'fail' reported an error: ") and "the ledger is closed" in fail
    assert slow == "Error: the MCP server 'guarded' did not answer within 2 seconds"
    assert shout == "Error: there is no tool named 'shout' available."  # not on the allow-list
    assert response.status == "completed"


@pytest.mark.parametrize("name", ["wrong_key", "down"])
def test_an_unreachable_server_fails_the_request_clearly(mcp_server: Server, name: str) -> None:
    with mcp_server.http() as http:
        answer = http.post("/v1/responses", json={"model": "agent", "input": "add with mcp", "tools": [conn(name)]})
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "tool_server_unavailable" and error["param"] == "tools[0]"
    assert error["message"].startswith(f"'{name}': the MCP server '{name}' is unavailable")
    assert SECRET not in answer.text and "not-the-key" not in answer.text


def test_an_unknown_connection_is_a_400(mcp_server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:
        mcp_server.client().responses.create(model="agent", input="hi", tools=[conn("nope")])
    assert unknown.value.body["param"] == "tools[0].uc_connection.name"
