"""``databricks-openai`` against the Databricks AI Gateway paths, including what published apps rely on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient
from databricks_openai import DatabricksOpenAI

from tests.conftest import MODEL, Server, wait_until

CALC: Any = {"type": "test_calculator"}
WEATHER: Any = {
    "type": "function", "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def dbx(server: Server) -> Iterator[DatabricksOpenAI]:
    workspace = WorkspaceClient(host=server.url, token=server.token, auth_type="pat")
    client = DatabricksOpenAI(workspace_client=workspace, use_ai_gateway=True)
    assert str(client.base_url) == f"{server.url}/ai-gateway/mlflow/v1/"
    yield client
    client.close()


def count_history_items(items: list[dict[str, Any]]) -> int:
    """What the published background-mode client counts before it reads new output items."""
    return sum(1 for i in items if i.get("type") in ("function_call", "function_call_output")
               or (i.get("type") == "message" and i.get("role") == "assistant"))


def test_background_output_starts_with_the_echoed_history(dbx: DatabricksOpenAI) -> None:
    first = dbx.responses.create(model=MODEL, input=[{"role": "user", "content": "weather in Paris"}],
                                 tools=[WEATHER])
    history: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris"}]
    history += [item.model_dump() for item in first.output]
    history.append({"type": "function_call_output", "call_id": first.output[0].call_id, "output": "sunny"})
    created = dbx.responses.create(model=MODEL, input=history, tools=[WEATHER], background=True)
    wait_until(lambda: dbx.responses.retrieve(created.id).status == "completed", what="background run")
    done = dbx.responses.retrieve(created.id)
    skip = count_history_items(history)
    assert skip == 2
    echoed = [item.model_dump() for item in done.output[:skip]]
    assert [(e["type"], e["call_id"]) for e in echoed] == [
        ("function_call", first.output[0].call_id), ("function_call_output", first.output[0].call_id)]
    assert all(e["id"] and e["status"] == "completed" for e in echoed)
    new = done.output[skip:]
    assert [i.type for i in new] == ["message"] and done.output_text == "It is sunny in Paris."
    follow = dbx.responses.create(model=MODEL, input="thanks", previous_response_id=done.id)
    assert follow.status == "completed"


def test_the_v1_path_does_not_echo(server: Server) -> None:
    client = server.client()
    created = client.responses.create(model=MODEL, background=True, input=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "background tools"}], tools=[CALC])
    wait_until(lambda: client.responses.retrieve(created.id).status == "completed", what="background run")
    assert client.responses.retrieve(created.id).output[0].type == "function_call"


def test_databricks_client_streams_and_retrieves(dbx: DatabricksOpenAI) -> None:
    events = list(dbx.responses.create(model=MODEL, input="stream me", stream=True))
    assert events[-1].type == "response.completed"
    again = dbx.responses.retrieve(events[-1].response.id)
    assert again.output_text == "test-model (scripted) received: stream me"
