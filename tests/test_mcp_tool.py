"""OpenAI's ``mcp`` tool against real MCP servers on loopback: items, events, filters, approval, secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ASGIThread, Server, ThreadServer, wait_until
from tests.mcp_servers import NOTES, tools_server
from tests.test_connections import SECRET, RequireBearer


@pytest.fixture(scope="module")
def urls() -> Iterator[tuple[str, str]]:
    with ASGIThread(tools_server().streamable_http_app()) as plain, \
            ASGIThread(RequireBearer(tools_server().streamable_http_app())) as guarded:
        yield f"{plain}/mcp", f"{guarded}/mcp"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp_tool")


@pytest.fixture(scope="module")
def server(urls: tuple[str, str], folder: Path) -> Iterator[Server]:
    (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "add and note"
turns = [
  {{ tool_calls = [{{ name = "add", arguments = {{ a = 2, b = 3 }} }},
                  {{ name = "note", arguments = {{ text = "x" }} }}] }},
  {{ text = "Both." }},
]

[[models.agent.script]]
when = "add"
turns = [{{ tool_calls = [{{ name = "add", arguments = {{ a = 2, b = 3 }} }}] }}, {{ text = "Five." }}]

[[models.agent.script]]
when = "fail"
turns = [{{ tool_calls = [{{ name = "fail" }}] }}, {{ text = "It failed." }}]

[connections.tools]
url = "{urls[0]}"

[mcp]
allowed_server_urls = ["http://127.0.0.1:*/mcp"]
timeout_s = 5
""")
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
        yield running


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    NOTES.clear()
    return server.client()


def mcp(url: str, **fields: Any) -> Any:
    return {"type": "mcp", "server_label": "calc", "server_url": url, **fields}


def answer(request_id: Any, approve: bool) -> Any:
    return {"type": "mcp_approval_response", "approval_request_id": request_id, "approve": approve}


def test_calls_show_as_mcp_items(client: openai.OpenAI, urls: tuple[str, str]) -> None:
    response = client.responses.create(model="agent", input="add", tools=[mcp(urls[0], require_approval="never")])
    listing, call, _answer = response.output
    assert listing.type == "mcp_list_tools" and listing.server_label == "calc"
    assert {"add", "note", "fail"} <= {t.name for t in listing.tools}
    add = next(t for t in listing.tools if t.name == "add")
    assert add.input_schema["required"] == ["a", "b"] and add.annotations["readOnlyHint"] is True
    assert (call.type, call.name, call.server_label, call.output, call.status) == (
        "mcp_call", "add", "calc", "5", "completed")
    assert json.loads(call.arguments) == {"a": 2, "b": 3} and call.id.startswith("mcp_")
    assert response.output_text == "Five."


def test_the_streamed_events_follow_openai(client: openai.OpenAI, urls: tuple[str, str]) -> None:
    events = list(client.responses.create(model="agent", input="add", stream=True,
                                          tools=[mcp(urls[0], require_approval="never")]))
    kinds = [e.type for e in events]
    assert kinds[:11] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
        "response.output_item.done",
        "response.output_item.added", "response.mcp_call.in_progress", "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done", "response.mcp_call.completed"]
    assert kinds[11] == "response.output_item.done" and kinds[-1] == "response.completed"
    assert events[2].item.tools == [] and events[5].item.tools  # the listing is filled when done
    assert events[6].item.status == "in_progress" and events[11].item.output == "5"


def test_approval_by_default_and_continuation(client: openai.OpenAI, urls: tuple[str, str]) -> None:
    first = client.responses.create(model="agent", input="add", tools=[mcp(urls[0])])
    _listing, request = first.output
    assert (request.type, request.name, request.server_label) == ("mcp_approval_request", "add", "calc")
    second = client.responses.create(model="agent", previous_response_id=first.id, tools=[mcp(urls[0])],
                                     input=[answer(request.id, True)])
    call, _answer = second.output  # listed already in this conversation: no second listing
    assert (call.type, call.approval_request_id, call.output) == ("mcp_call", request.id, "5")
    assert second.output_text == "Five."


def test_a_denied_mcp_call_is_told_to_the_model(client: openai.OpenAI, urls: tuple[str, str]) -> None:
    first = client.responses.create(model="agent", input="add", tools=[mcp(urls[0])])
    request = first.output[1]
    second = client.responses.create(model="agent", previous_response_id=first.id, tools=[mcp(urls[0])],
                                     input=[answer(request.id, False)])
    assert [i.type for i in second.output] == ["message"] and second.output_text == "Five."


@pytest.mark.parametrize("rule", [{"never": {"tool_names": ["add"]}}, {"never": {"read_only": True}},
                                  {"always": {"tool_names": ["note"]}, "never": {"tool_names": ["add"]}}])
def test_require_approval_filters(client: openai.OpenAI, urls: tuple[str, str], rule: Any) -> None:
    response = client.responses.create(model="agent", input="add and note", tools=[mcp(urls[0], require_approval=rule)])
    assert [(i.type, getattr(i, "name", None)) for i in response.output] == [
        ("mcp_list_tools", None), ("mcp_call", "add"), ("mcp_approval_request", "note")]
    assert response.output[1].output == "5" and NOTES == []


def test_allowed_tools_limits_the_listing(client: openai.OpenAI, urls: tuple[str, str]) -> None:
    for allowed in (["add"], {"read_only": True}):
        response = client.responses.create(model="agent", input="add and note",
                                           tools=[mcp(urls[0], allowed_tools=allowed, require_approval="never")])
        listing, add, *_ = response.output
        assert "note" not in {t.name for t in listing.tools} and add.output == "5" and NOTES == []
        errors = [i.output for i in response.output if i.type == "function_call_output"]
        assert errors == ["Error: there is no tool named 'note' available."]


def test_a_failing_tool_is_a_failed_mcp_call(client: openai.OpenAI, urls: tuple[str, str]) -> None:
    response = client.responses.create(model="agent", input="fail", tools=[mcp(urls[0], require_approval="never")])
    call = response.output[1]
    assert call.status == "failed" and call.output is None
    assert "the ledger is closed" in json.dumps(call.error) and response.output_text == "It failed."


def test_the_allow_list_refuses_other_addresses(client: openai.OpenAI) -> None:
    for url in ("http://10.1.2.3/mcp", "http://127.0.0.1.evil.example/mcp", "file:///etc/passwd"):
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="agent", input="add", tools=[mcp(url)])
        assert info.value.body["param"] == "tools[0].server_url"
        assert info.value.body["code"] == "server_url_not_allowed"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="agent", input="add", tools=[{"type": "mcp", "server_label": "x y",
                                                                   "server_url": "http://127.0.0.1:1/mcp"}])
    assert bad.value.body["param"] == "tools[0].server_label"


def test_credentials_are_used_and_never_shown(server: Server, urls: tuple[str, str], folder: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tool = mcp(urls[1], require_approval="never", headers={"Authorization": f"Bearer {SECRET}"})
    with server.http() as http:
        created = http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [tool]})
        assert created.status_code == 200 and created.json()["output"][1]["output"] == "5"
        assert created.json()["tools"][0]["headers"] == {"Authorization": "<redacted>"}
        background = http.post("/v1/responses", json={"model": "agent", "input": "add", "background": True,
                                                      "tools": [mcp(urls[1], authorization=SECRET)]})
        rid = background.json()["id"]
        wait_until(lambda: http.get(f"/v1/responses/{rid}").json()["status"] == "completed", what="background run")
        done = http.get(f"/v1/responses/{rid}")
        assert [i["type"] for i in done.json()["output"]] == ["mcp_list_tools", "mcp_approval_request"]
        streamed = http.get(f"/v1/responses/{rid}", params={"stream": "true"})
        wrong = http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [
            mcp(urls[1], headers={"Authorization": "Bearer not-the-key"})]})
        assert wrong.status_code == 502 and wrong.json()["error"]["param"] == "tools[0]"
        for text in (created.text, background.text, done.text, streamed.text, wrong.text, caplog.text):
            assert SECRET not in text and "not-the-key" not in text
    for file in folder.glob("state.db*"):  # the database and its write-ahead log
        assert SECRET.encode() not in file.read_bytes()


def test_the_older_supervisor_dialects_name_a_connection(client: openai.OpenAI) -> None:
    for tool in ({"type": "mcp", "mcp": {"name": "calc", "description": "Adds", "connection_name": "tools"}},
                 {"type": "connection", "connection": {"name": "tools", "description": "Adds"}}):
        response = client.responses.create(model="agent", input="add", tools=[tool])
        assert [i.type for i in response.output] == ["function_call", "function_call_output", "message"]
