"""Connections stored through the admin API and CLI, OAuth client credentials, transports, sessions."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from opensupervisor.testing.asgi import Receive, Send, send_json
from tests.conftest import TOKEN, ASGIThread, Server, ThreadServer, process_env, wait_until
from tests.mcp_servers import CountInitialize, many_tools_server, tools_server

SECRET = "stored-secret-4417"
CLIENT_SECRET = "oauth-client-secret-8812"
ISSUED = "issued-token-"


class OAuthGuard:
    """An MCP server that accepts only tokens its token endpoint issued."""

    def __init__(self, app: Any, issued: list[str]) -> None:
        self.app = app
        self.issued = issued

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        given = dict(scope.get("headers", [])).get(b"authorization", b"").decode()
        if scope["type"] == "http" and given.removeprefix("Bearer ") not in self.issued:
            await send_json(send, 401, {"error": "invalid_token"})
            return
        await self.app(scope, receive, send)


def token_server(issued: list[str]) -> Starlette:
    async def token(request: Request) -> JSONResponse:
        expected = "Basic " + base64.b64encode(f"robot:{CLIENT_SECRET}".encode()).decode()
        form = await request.form()
        if request.headers.get("authorization") != expected or form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued.append(f"{ISSUED}{len(issued)}")
        return JSONResponse({"access_token": issued[-1], "token_type": "Bearer", "expires_in": 3600})

    return Starlette(routes=[Route("/token", token, methods=["POST"])])


class Upstreams:
    def __init__(self) -> None:
        self.issued: list[str] = []
        self.counted = CountInitialize(tools_server().streamable_http_app())


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstreams, dict[str, str]]]:
    up = Upstreams()
    not_mcp = Starlette(routes=[Route("/mcp", lambda r: PlainTextResponse("hello"), methods=["GET", "POST"])])
    with ASGIThread(up.counted) as counted, ASGIThread(tools_server().sse_app()) as sse, \
            ASGIThread(token_server(up.issued)) as auth, \
            ASGIThread(OAuthGuard(tools_server().streamable_http_app(), up.issued)) as guarded, \
            ASGIThread(not_mcp) as garbage, ASGIThread(many_tools_server().streamable_http_app()) as many:
        yield up, {"many": f"{many}/mcp", "counted": f"{counted}/mcp", "sse": f"{sse}/sse", "token": f"{auth}/token",
                   "guarded": f"{guarded}/mcp", "garbage": f"{garbage}/mcp"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("connections_admin")


@pytest.fixture(scope="module")
def server(upstreams: tuple[Upstreams, dict[str, str]], folder: Path) -> Iterator[Server]:
    _, urls = upstreams
    (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "two turns"
turns = [
  {{ tool_calls = [{{ name = "add", arguments = {{ a = 1, b = 2 }} }},
                  {{ name = "shout", arguments = {{ text = "a" }} }}] }},
  {{ tool_calls = [{{ name = "add", arguments = {{ a = 3, b = 4 }} }},
                  {{ name = "shout", arguments = {{ text = "b" }} }}] }},
  {{ text = "Done." }},
]

[[models.agent.script]]
when = "add"
turns = [{{ tool_calls = [{{ name = "add", arguments = {{ a = 2, b = 3 }} }}] }}, {{ text = "Five." }}]

[[models.agent.script]]
when = "the last of many"
turns = [{{ tool_calls = [{{ name = "tool_149", arguments = {{ x = 5 }} }}] }}, {{ text = "Found it." }}]

[[models.agent.script]]
when = "slow"
turns = [{{ tool_calls = [{{ name = "slow" }}] }}, {{ text = "Late." }}]

[connections.counted]
url = "{urls['counted']}"
require_approval = "never"
timeout_s = 60

[connections.sse]
url = "{urls['sse']}"

[connections.many]
url = "{urls['many']}"

[outbound]
# Stored connections may reach the loopback servers of these tests (any port, any path).
allowed_urls = ["http://127.0.0.1:*/*"]
""")
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
        yield running


def conn(name: str) -> Any:
    return {"type": "uc_connection", "uc_connection": {"name": name}}


def outputs(response: Any) -> list[str]:
    return [i.output for i in response.output if i.type == "function_call_output"]


def test_a_stored_connection_keeps_its_secret_sealed(server: Server, upstreams: Any, folder: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    _, urls = upstreams
    caplog.set_level(logging.DEBUG)
    with server.http() as http:
        put = http.put("/admin/v1/connections/robot", json={
            "url": urls["guarded"], "require_approval": "never",
            "oauth": {"token_url": urls["token"], "client_id": "robot", "client_secret": CLIENT_SECRET},
            "headers": {"X-Api-Key": SECRET}})
        assert put.status_code == 200, put.text
        assert put.json()["auth"] == "oauth" and put.json()["headers"] == ["X-Api-Key"]
        listed = http.get("/admin/v1/connections")
        assert {c["name"]: c["origin"] for c in listed.json()["data"]} == {
            "counted": "workspace", "sse": "workspace", "many": "workspace", "robot": "stored"}
        texts = [put.text, listed.text, http.get("/admin/v1/connections/robot").text]
    response = server.client().responses.create(model="agent", input="add", tools=[conn("robot")])
    assert outputs(response) == ["5"] and response.output_text == "Five."
    for text in [*texts, caplog.text]:
        assert SECRET not in text and CLIENT_SECRET not in text
    for file in folder.glob("state.db*"):
        assert SECRET.encode() not in file.read_bytes() and CLIENT_SECRET.encode() not in file.read_bytes()


def test_oauth_tokens_are_reused_and_a_wrong_secret_is_a_clear_failure(server: Server, upstreams: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A stored connection's failures read the same to the client (its URL is an admin's choice, not
    the operator's): the cause is in the server log."""
    up, urls = upstreams
    caplog.set_level(logging.WARNING)
    oauth = {"token_url": urls["token"], "client_id": "robot", "client_secret": CLIENT_SECRET}
    with server.http() as http:
        assert http.put("/admin/v1/connections/robot2", json={"url": urls["guarded"], "oauth": oauth,
                                                               "require_approval": "never"}).status_code == 200
        before = len(up.issued)
        for _ in range(3):
            response = server.client().responses.create(model="agent", input="add", tools=[conn("robot2")])
            assert outputs(response) == ["5"]
        assert len(up.issued) == before + 1  # one token for every call until it nears expiry
        http.put("/admin/v1/connections/robot3", json={"url": urls["guarded"],
                                                       "oauth": dict(oauth, client_secret="wrong")})
        failed = http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [conn("robot3")]})
    assert failed.status_code == 502 and failed.json()["error"]["message"] == \
        "'robot3': the MCP server 'robot3' is unavailable (it could not be reached or refused the request)"
    assert "OAuth: the token endpoint answered HTTP 401" in caplog.text and "wrong" not in caplog.text


def test_admin_api_validation(server: Server) -> None:
    with server.http() as http:
        cases = [
            ("counted", {"url": "http://127.0.0.1:1/mcp"}, "name"),
            ("bad name!", {"url": "http://127.0.0.1:1/mcp"}, "name"),
            ("x", {"url": "http://127.0.0.1:1/mcp", "transport": "carrier-pigeon"}, "transport"),
            ("x", {"url": "http://127.0.0.1:1/mcp", "bearer_token_env": "OS_TEST_NOT_SET_ANYWHERE"},
             "bearer_token_env"),
            ("x", {}, "url"),
            ("x", {"url": "http://127.0.0.1:1/mcp", "require_approval": "sometimes"}, "require_approval"),
            ("x", {"url": "http://127.0.0.1:1/mcp", "per_user": "maybe"}, "per_user"),
        ]
        for name, body, param in cases:
            answer = http.put(f"/admin/v1/connections/{name}", json=body)
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
        assert http.delete("/admin/v1/connections/nope").status_code == 404
        assert http.delete("/admin/v1/connections/counted").status_code == 400
        http.put("/admin/v1/connections/gone", json={"url": "http://127.0.0.1:1/mcp"})
        assert http.delete("/admin/v1/connections/gone").json() == {"name": "gone", "deleted": True}
        denied = http.get("/admin/v1/connections", headers={"Authorization": "Bearer someone-else"})
        assert denied.status_code in (401, 403)
    with pytest.raises(openai.BadRequestError) as info:
        server.client().responses.create(model="agent", input="add", tools=[conn("gone")])
    assert info.value.body["param"] == "tools[0].uc_connection.name"


def test_a_server_with_many_tools(server: Server) -> None:
    response = server.client().responses.create(model="agent", input="the last of many", tools=[conn("many")])
    assert outputs(response) == ["149:5"] and response.output_text == "Found it."


def test_the_older_sse_transport_is_found_by_itself(server: Server) -> None:
    assert outputs(server.client().responses.create(model="agent", input="add", tools=[conn("sse")])) == ["5"]


def test_the_calls_of_a_run_share_one_session(server: Server, upstreams: Any) -> None:
    up, _ = upstreams
    server.client().responses.create(model="agent", input="add", tools=[conn("counted")])  # lists the tools
    before = up.counted.count
    response = server.client().responses.create(model="agent", input="two turns", tools=[conn("counted")])
    assert outputs(response) == ["3", "A", "7", "B"]
    assert up.counted.count - before == 1


def test_a_server_that_is_not_mcp_is_a_clear_failure(server: Server, upstreams: Any) -> None:
    _, urls = upstreams
    with server.http() as http:
        http.put("/admin/v1/connections/garbage", json={"url": urls["garbage"], "timeout_s": 3})
        answer = http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [conn("garbage")]})
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "tool_server_unavailable"


def test_cancelling_a_run_cancels_its_call(server: Server) -> None:
    client = server.client()
    created = client.responses.create(model="agent", input="slow", tools=[conn("counted")], background=True)
    wait_until(lambda: client.responses.retrieve(created.id).status == "in_progress", what="run start")
    time.sleep(0.5)  # let the call reach the server
    started = time.monotonic()
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and time.monotonic() - started < 10


def test_the_cli_stores_connections(upstreams: Any, tmp_path: Path) -> None:
    _, urls = upstreams
    (tmp_path / "workspace.toml").write_text('[outbound]\nallowed_urls = ["http://127.0.0.1:*/*"]\n')
    env = process_env(tmp_path / "workspace.toml", f"sqlite:///{tmp_path}/state.db",
                      {"OPENSUPERVISOR_DATA_DIR": str(tmp_path / "data")})
    cli = [sys.executable, "-m", "opensupervisor"]
    add = subprocess.run([*cli, "connections", "add", "search", "--url", urls["counted"], "--bearer-token-stdin",
                          "--require-approval", "always"], input=SECRET + "\n", env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert add.returncode == 0, add.stderr
    listed = subprocess.run([*cli, "connections", "list"], env=env, capture_output=True, text=True, timeout=60,
                            check=True)
    assert "search\tstored\t" in listed.stdout and "\tbearer" in listed.stdout and SECRET not in listed.stdout
    key = subprocess.run([*cli, "secret-key"], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert len(key.stdout.strip()) == 44
    removed = subprocess.run([*cli, "connections", "remove", "search"], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert removed.returncode == 0 and TOKEN not in removed.stdout
