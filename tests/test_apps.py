"""``app``: an agent endpoint speaking the Responses protocol as a tool (a sub-agent).

The app is a real server on loopback: another OpenSupervisor with the test workspace's scripted model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import TOKEN, ASGIThread, Server, ThreadServer, free_port, wait_until
from tests.mcp_servers import tools_server

KEY_ENV = "OS_TEST_APP_KEY"


def app(name: str) -> Any:
    return {"type": "app", "app": {"name": name, "description": "Custom application endpoint"}}


@pytest.fixture(scope="module")
def helper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("helper")
    with ThreadServer(f"sqlite:///{folder}/state.db") as server:
        yield server


@pytest.fixture(scope="module")
def mcp_app() -> Iterator[str]:
    with ASGIThread(tools_server().streamable_http_app()) as url:
        yield url


@pytest.fixture(scope="module")
def caller(helper: Server, mcp_app: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("caller")
    (folder / "workspace.toml").write_text(f"""
[models.boss]
provider = "scripted"

[[models.boss.script]]
when = "ask the helper"
turns = [
  {{ tool_calls = [{{ name = "app_helper", arguments = {{ question = "what is 2 + 2?" }} }}] }},
  {{ text = "The helper answered." }},
]

[[models.boss.script]]
when = "ask the broken ones"
turns = [
  {{ tool_calls = [{{ name = "app_gone", arguments = {{ question = "hello" }} }},
                  {{ name = "app_failing", arguments = {{ question = "model failure please" }} }}] }},
  {{ text = "They failed." }},
]

[[models.boss.script]]
when = "add through the mcp app"
turns = [{{ tool_calls = [{{ name = "add", arguments = {{ a = 1, b = 2 }} }}] }}, {{ text = "Three." }}]

[apps.calc]
url = "{mcp_app}"
protocol = "mcp"

[apps.helper]
url = "{helper.v1}"
model = "test-model"
api_key_env = "{KEY_ENV}"
description = "A helper agent"

[apps.gone]
url = "http://127.0.0.1:{free_port()}/v1"

[apps.failing]
url = "{helper.v1}"
model = "test-model"
api_key_env = "{KEY_ENV}"
""")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, TOKEN)
        with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as server:
            yield server


def test_an_app_answers_as_a_sub_agent(caller: Server) -> None:
    response = caller.client().responses.create(model="boss", input="ask the helper", tools=[app("helper")])
    call, output, answer = response.output
    assert (call.type, call.name) == ("function_call", "app_helper")
    assert output.type == "function_call_output"
    assert output.output == "test-model (scripted) received: what is 2 + 2?"
    assert answer.type == "message" and response.output_text == "The helper answered."


def test_the_older_agent_endpoint_dialect_is_an_app(caller: Server) -> None:
    older: Any = {"type": "agent_endpoint",
                  "agent_endpoint": {"name": "helper", "description": "A helper", "endpoint_name": "helper"}}
    response = caller.client().responses.create(model="boss", input="ask the helper", tools=[older])
    assert response.output[1].output == "test-model (scripted) received: what is 2 + 2?"
    with pytest.raises(openai.BadRequestError) as refused:
        caller.client().responses.create(model="boss", input="hi", tools=[
            {"type": "agent_endpoint", "agent_endpoint": {"name": "x", "endpoint_name": "nope"}}])
    assert refused.value.body["param"] == "tools[0].agent_endpoint.endpoint_name"


def test_a_down_or_failing_app_is_a_clear_tool_output(caller: Server) -> None:
    response = caller.client().responses.create(model="boss", input="ask the broken ones",
                                                tools=[app("gone"), app("failing")])
    outputs = [i.output for i in response.output if i.type == "function_call_output"]
    assert outputs[0] == "Error: the app 'gone' is unreachable (ClientConnectorError)"
    assert outputs[1].startswith("Error: the app 'failing' ended its answer failed: ")
    with caller.http() as http:  # the app's key appears nowhere in what the client can read
        assert TOKEN not in http.get(f"/v1/responses/{response.id}").text
    assert response.status == "completed"


def test_an_app_that_is_an_mcp_server_offers_its_tools(caller: Server) -> None:
    response = caller.client().responses.create(model="boss", input="add through the mcp app", tools=[app("calc")])
    call, output, _ = response.output
    assert (call.name, output.output, response.output_text) == ("add", "3", "Three.")


def test_in_background_an_app_call_waits_for_approval(caller: Server) -> None:
    client = caller.client()
    created = client.responses.create(model="boss", input="ask the helper", tools=[app("helper")], background=True)
    wait_until(lambda: client.responses.retrieve(created.id).status == "completed", what="background run")
    [request] = client.responses.retrieve(created.id).output
    assert (request.type, request.name, request.server_label) == ("mcp_approval_request", "app_helper", "helper")
    follow = client.responses.create(model="boss", previous_response_id=created.id, tools=[app("helper")],
                                     background=True, input=[{"type": "mcp_approval_response", "approve": True,
                                                              "approval_request_id": str(request.id)}])
    wait_until(lambda: client.responses.retrieve(follow.id).status == "completed", what="background run")
    done = client.responses.retrieve(follow.id)
    assert done.output[1].output == "test-model (scripted) received: what is 2 + 2?"
    assert done.output_text == "The helper answered."


def test_an_unknown_app_is_a_400(caller: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        caller.client().responses.create(model="boss", input="hi", tools=[app("nope")])
    assert info.value.body["param"] == "tools[0].app.name"
