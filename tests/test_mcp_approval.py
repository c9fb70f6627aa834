"""MCP approval: background calls wait for the user's ``mcp_approval_response``, per connection policy.

Real MCP servers on loopback; the client is ``databricks-openai`` on the AI Gateway path, as the
published background-mode apps use it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from databricks.sdk import WorkspaceClient
from databricks_openai import DatabricksOpenAI

from opensupervisor.testing.asgi import Send, send_sse
from opensupervisor.testing.chat_upstream import ChatUpstream, _chunk, _usage_chunk
from tests.conftest import ASGIThread, ProcessServer, Server, ThreadServer, wait_until
from tests.mcp_servers import NOTES, tools_server
from tests.test_databricks_client import count_history_items


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with ASGIThread(tools_server().streamable_http_app()) as url:
        folder = tmp_path_factory.mktemp("approval")
        (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "add and note"
turns = [
  {{ tool_calls = [{{ name = "add", arguments = {{ a = 1, b = 1 }} }},
                  {{ name = "note", arguments = {{ text = "two" }} }}] }},
  {{ text = "Both done." }},
]

[[models.agent.script]]
when = "note"
turns = [{{ tool_calls = [{{ name = "note", arguments = {{ text = "buy milk" }} }}] }}, {{ text = "Done." }}]

[connections.tools]
url = "{url}/mcp"

[connections.strict]
url = "{url}/mcp"
require_approval = "always"

[connections.open]
url = "{url}/mcp"
require_approval = "never"

[apps.calc]
url = "{url}"
protocol = "mcp"
""")
        with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
            yield running


@pytest.fixture
def dbx(server: Server) -> Iterator[DatabricksOpenAI]:
    client = DatabricksOpenAI(workspace_client=WorkspaceClient(host=server.url, token=server.token, auth_type="pat"),
                              use_ai_gateway=True)
    NOTES.clear()
    yield client
    client.close()


def conn(name: str) -> Any:
    return {"type": "uc_connection", "uc_connection": {"name": name, "description": "Keeps notes"}}


def finished(client: DatabricksOpenAI, **create: Any) -> Any:
    """Create a background response and poll it to its end, as the seed does."""
    response = client.responses.create(model="agent", background=True, **create)
    wait_until(lambda: client.responses.retrieve(response.id).status not in ("queued", "in_progress"),
               what="background run")
    return client.responses.retrieve(response.id)


def approval(request: Any, approve: bool = True, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp_approval_response", "id": request.id, "approval_request_id": request.id,
            "approve": approve, **extra}


def test_the_seeds_round_trip_with_the_full_history(dbx: DatabricksOpenAI) -> None:
    history: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": "note this"}]
    first = finished(dbx, input=history, tools=[conn("tools")])
    assert first.status == "completed" and NOTES == []
    [request] = first.output
    assert (request.type, request.name, request.server_label) == ("mcp_approval_request", "note", "tools")
    assert json.loads(request.arguments) == {"text": "buy milk"} and len(request.id) <= 64
    history += [request.model_dump(), approval(request)]
    second = finished(dbx, input=history, tools=[conn("tools")])
    assert count_history_items(history) == 0
    call, output, _answer = second.output
    assert (call.type, call.name, call.call_id, call.arguments) == ("function_call", "note", request.id,
                                                                    request.arguments)
    assert (output.call_id, output.output) == (request.id, "noted: buy milk")
    assert second.output_text == "Done." and NOTES == ["buy milk"]
    # Resending everything with a new question never runs the approved call again.
    history += [item.model_dump() for item in second.output] + [{"role": "user", "content": "note this again"}]
    third = finished(dbx, input=history, tools=[conn("tools")])
    skip = count_history_items(history)
    assert [i.type for i in third.output[:skip]] == ["function_call", "function_call_output", "message"]
    assert [i.type for i in third.output[skip:]] == ["mcp_approval_request"] and NOTES == ["buy milk"]


def test_continuing_with_previous_response_id(dbx: DatabricksOpenAI) -> None:
    first = finished(dbx, input="note this", tools=[conn("tools")])
    [request] = first.output
    second = finished(dbx, input=[approval(request)], previous_response_id=first.id, tools=[conn("tools")])
    assert [i.type for i in second.output] == ["function_call", "function_call_output", "message"]
    assert second.output[1].output == "noted: buy milk" and NOTES == ["buy milk"]


def test_a_denial_is_told_to_the_model_which_goes_on(dbx: DatabricksOpenAI) -> None:
    first = finished(dbx, input="note this", tools=[conn("tools")])
    [request] = first.output
    second = finished(dbx, input=[approval(request, False, reason="not today")], previous_response_id=first.id,
                      tools=[conn("tools")])
    _call, output, _answer = second.output
    assert output.output == "Error: the user did not approve this call: not today"
    assert second.output_text == "Done." and NOTES == []


def test_hosted_calls_of_the_same_turn_run_and_the_mcp_call_waits(dbx: DatabricksOpenAI) -> None:
    first = finished(dbx, input="add and note", tools=[conn("tools")])
    kinds = [(i.type, getattr(i, "name", None)) for i in first.output]
    assert kinds == [("mcp_approval_request", "add"), ("mcp_approval_request", "note")]
    add, note = first.output
    second = finished(dbx, input=[approval(add), approval(note, False)], previous_response_id=first.id,
                      tools=[conn("tools")])
    outputs = [i.output for i in second.output if i.type == "function_call_output"]
    assert outputs == ["2", "Error: the user did not approve this call."] and NOTES == []


def test_forged_or_mismatched_approvals_are_400s(dbx: DatabricksOpenAI) -> None:
    first = finished(dbx, input="note this", tools=[conn("tools")])
    [request] = first.output
    forged = dict(request.model_dump(), arguments=json.dumps({"text": "sell the house"}))
    cases = [
        ([{"role": "user", "content": "note this"}, forged, approval(request)], "input[1]", "was not issued"),
        ([{"role": "user", "content": "note this"}, {"type": "mcp_approval_response", "approval_request_id": "mcpr_x",
                                                     "approve": True}], "input[1].approval_request_id", "No MCP"),
        ([{"role": "user", "content": "note this"}, request.model_dump(), approval(request), approval(request)],
         "input[3]", "answered twice"),
    ]
    for items, param, message in cases:
        with pytest.raises(openai.BadRequestError) as info:
            dbx.responses.create(model="agent", input=items, tools=[conn("tools")], background=True)
        assert info.value.body["param"] == param and message in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as other:  # the approved tool must still be offered
        dbx.responses.create(model="agent", input=[approval(request)], previous_response_id=first.id,
                             tools=[conn("open")], background=True)
    assert other.value.body["param"] == "input[0].approval_request_id" and NOTES == []


def test_the_policy_is_per_connection(server: Server) -> None:
    client = server.client()
    direct = client.responses.create(model="agent", input="note this", tools=[conn("tools")])
    assert [i.type for i in direct.output] == ["function_call", "function_call_output", "message"]
    asked = client.responses.create(model="agent", input="note this", tools=[conn("strict")])
    assert [i.type for i in asked.output] == ["mcp_approval_request"] and asked.status == "completed"
    events = list(client.responses.create(model="agent", input="note this", tools=[conn("strict")], stream=True))
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                        "response.output_item.done", "response.completed"]
    never = client.responses.create(model="agent", input="note this", tools=[conn("open")], background=True)
    wait_until(lambda: client.responses.retrieve(never.id).status == "completed", what="background run")
    assert [i.type for i in client.responses.retrieve(never.id).output] == [
        "function_call", "function_call_output", "message"]


def test_an_mcp_app_asks_too(dbx: DatabricksOpenAI) -> None:
    first = finished(dbx, input="note this", tools=[{"type": "app", "app": {"name": "calc"}}])
    [request] = first.output
    assert (request.type, request.server_label, request.name) == ("mcp_approval_request", "calc", "note")
    second = finished(dbx, input=[approval(request)], previous_response_id=first.id,
                      tools=[{"type": "app", "app": {"name": "calc"}}])
    assert second.output_text == "Done." and NOTES == ["buy milk"]


def test_a_background_continuation_uses_its_approval_once(dbx: DatabricksOpenAI) -> None:
    first = finished(dbx, input="note this", tools=[conn("tools")])
    [request] = first.output
    second = finished(dbx, input=[approval(request)], previous_response_id=first.id, tools=[conn("tools")])
    assert second.output_text == "Done."
    with pytest.raises(openai.BadRequestError) as again:
        dbx.responses.create(model="agent", input=[approval(request)], previous_response_id=first.id,
                             tools=[conn("tools")], background=True)
    assert (again.value.body["param"], again.value.body["code"]) == ("input[0]", "approval_already_used")
    assert NOTES == ["buy milk"]


class HangingUpstream(ChatUpstream):
    """Calls ``note`` first; after the tool result, the first answer hangs (the test kills the server)."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: Counter[int] = Counter()

    async def answer(self, req: dict[str, Any], headers: dict[bytes, bytes], send: Send) -> None:
        turn = sum(1 for m in req["messages"] if m.get("role") == "tool")
        self.turns[turn] += 1
        if turn == 0:
            call = {"index": 0, "id": "call_n", "type": "function",
                    "function": {"name": "note", "arguments": '{"text": "resumed"}'}}
            chunks = [_chunk({"role": "assistant", "tool_calls": [call]}), _chunk({}, "tool_calls")]
        else:
            if self.turns[turn] == 1:
                await asyncio.sleep(5)
            chunks = [_chunk({"role": "assistant", "content": "Noted."}), _chunk({}, "stop")]
        await send_sse(send, b"".join([*chunks, _usage_chunk(), b"data: [DONE]\n\n"]))


def test_a_resumed_run_acts_on_its_approval_once(tmp_path: Path) -> None:
    """Killed after the approved call ran: the resumed run is not refused for its own approval and
    does not run the call again."""
    upstream = HangingUpstream()
    NOTES.clear()
    with ASGIThread(upstream) as model_url, ASGIThread(tools_server().streamable_http_app()) as mcp_url:
        workspace = tmp_path / "workspace.toml"
        workspace.write_text(f"""
[models.staged]
provider = "openai-chat"
base_url = "{model_url}/v1"
upstream_model = "staged"
max_retries = 0

[connections.tools]
url = "{mcp_url}/mcp"
""")
        tools = [conn("tools")]
        process = ProcessServer(tmp_path, config=workspace)
        with process as first_server:
            client = first_server.client()
            asked = client.responses.create(model="staged", input="note it", tools=tools, background=True)
            wait_until(lambda: client.responses.retrieve(asked.id).status == "completed", what="the request")
            [request] = client.responses.retrieve(asked.id).output
            approved = client.responses.create(model="staged", input=[approval(request)], tools=tools,
                                               previous_response_id=asked.id, background=True)
            wait_until(lambda: upstream.turns[1] == 1, what="the run to wait on the model after the call")
            assert NOTES == ["resumed"]
            process.kill()
        with ProcessServer(tmp_path, config=workspace, log_name="restarted.log") as second_server:
            client = second_server.client()
            wait_until(lambda: client.responses.retrieve(approved.id).status == "completed", timeout=60,
                       what="the resumed run")
            done = client.responses.retrieve(approved.id)
    assert [i.type for i in done.output] == ["function_call", "function_call_output", "message"]
    assert done.output_text == "Noted." and NOTES == ["resumed"]


def test_an_approval_answered_over_a_websocket_runs_the_call_once(server: Server) -> None:
    """A ``store: false`` chain on one socket: the request, then its answer continuing it."""
    client = openai.OpenAI(base_url=server.v1, api_key=server.token, max_retries=0)
    NOTES.clear()
    with client.responses.connect() as socket:
        socket.response.create(model="agent", input="note this", tools=[conn("strict")], store=False)
        first = last_event(socket)
        [request] = first.response.output
        assert request.type == "mcp_approval_request" and NOTES == []
        socket.response.create(model="agent", input=[approval(request)], previous_response_id=first.response.id,
                               tools=[conn("strict")], store=False)
        second = last_event(socket)
        assert [i.type for i in second.response.output] == ["function_call", "function_call_output", "message"]
        assert second.response.output_text == "Done." and NOTES == ["buy milk"]
        # The same answer sent again runs nothing again.
        socket.response.create(model="agent", input=[approval(request)], previous_response_id=second.response.id,
                               tools=[conn("strict")], store=False)
        assert last_event(socket).type == "response.completed" and NOTES == ["buy milk"]


def last_event(socket: Any) -> Any:
    for event in socket:
        if event.type in ("response.completed", "response.failed", "error"):
            return event
    raise AssertionError("the socket closed")
