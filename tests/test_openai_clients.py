"""The official ``openai`` SDK, sync and async, against a real server: every Responses route."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import MODEL, Server, wait_until

CALC: Any = {"type": "test_calculator"}


def test_create_returns_a_completed_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Hello there", instructions="Be brief.",
                                       metadata={"team": "qa"})
    assert response.status == "completed"
    assert response.output_text == "test-model (scripted) received: Hello there"
    assert response.id.startswith("resp_") and len(response.id) <= 64
    assert response.instructions == "Be brief."
    assert response.metadata == {"team": "qa"}
    assert response.usage is not None and response.usage.total_tokens > 0
    assert all(len(item.id or "") <= 64 for item in response.output)


def test_stream_yields_numbered_events_ending_completed(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Count to three") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "test-model (scripted) received: Count to three"


def test_stream_true_on_create(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Hi", stream=True))
    assert events[-1].type == "response.completed"
    stored = client.responses.retrieve(events[-1].response.id)
    assert stored.output_text == events[-1].response.output_text


def test_retrieve_right_after_create(client: openai.OpenAI) -> None:
    created = client.responses.create(model=MODEL, input="Remember me")
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()


def test_delete_then_retrieve_is_404(client: openai.OpenAI) -> None:
    created = client.responses.create(model=MODEL, input="Forget me")
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(created.id)
    assert info.value.body["param"] == "response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_is_not_retrievable(client: openai.OpenAI) -> None:
    created = client.responses.create(model=MODEL, input="Off the record", store=False)
    assert created.status == "completed" and created.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_input_items_paginate_like_openai(client: openai.OpenAI) -> None:
    texts = [f"message {i}" for i in range(5)]
    created = client.responses.create(
        model=MODEL, input=[{"role": "user", "content": t} for t in texts])
    page = client.responses.input_items.list(created.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == texts[:2]
    assert page.has_more is True
    everything = list(client.responses.input_items.list(created.id, limit=2, order="asc"))
    assert [i.content[0].text for i in everything] == texts
    newest = client.responses.input_items.list(created.id)
    assert newest.data[0].content[0].text == "message 4"


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada")
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.output_text == "test-model (scripted) received: What is my name?"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_missing")
    assert info.value.body["param"] == "previous_response_id"


def test_background_response_completes_and_cancel_rules(client: openai.OpenAI) -> None:
    created = client.responses.create(model=MODEL, input="background tools", background=True,
                                      tools=[CALC])
    assert created.status == "queued" and created.background is True
    wait_until(lambda: client.responses.retrieve(created.id).status == "completed", what="background run")
    done = client.responses.retrieve(created.id)
    assert done.output_text == "The answer is 42."
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.cancel(created.id)
    assert "completed" in info.value.message


def test_cancel_a_running_background_response(client: openai.OpenAI) -> None:
    created = client.responses.create(model=MODEL, input="take your time", background=True)
    wait_until(lambda: client.responses.retrieve(created.id).status == "in_progress", what="run start")
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"  # idempotent
    assert client.responses.retrieve(created.id).status == "cancelled"


def test_cancel_a_synchronous_response_is_refused(client: openai.OpenAI) -> None:
    created = client.responses.create(model=MODEL, input="quick")
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.cancel(created.id)
    assert info.value.body["message"] == "Cannot cancel a synchronous response."


def test_background_with_stream_streams_and_resumes(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="background tools", background=True, stream=True,
                                          tools=[CALC]))
    assert events[0].type == "response.created" and events[0].response.status == "queued"
    assert events[-1].type == "response.completed"
    response_id = events[0].response.id
    resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=4))
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in events[5:]]


@pytest.mark.anyio
async def test_async_client_round_trip(server: Server) -> None:
    client = server.async_client()
    created = await client.responses.create(model=MODEL, input="async hello")
    assert created.output_text == "test-model (scripted) received: async hello"
    stream = await client.responses.create(model=MODEL, input="async stream", stream=True)
    types = [event.type async for event in stream]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    follow = await client.responses.create(model=MODEL, input="and then?", previous_response_id=created.id)
    assert follow.status == "completed"
    items = await client.responses.input_items.list(follow.id)
    assert items.data[0].content[0].text == "and then?"
    background = await client.responses.create(model=MODEL, input="take your time", background=True)
    assert (await client.responses.cancel(background.id)).status == "cancelled"
    await client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(created.id)
    await client.close()


def test_models_lists_the_catalog_under_every_prefix(server: Server) -> None:
    names = [m.id for m in server.client().models.list()]
    assert names[:1] == [MODEL] and "gpt-5-scripted" in names
    with server.http() as http:
        for prefix in ("/ai-gateway/mlflow/v1", "/mlflow/v1"):
            assert [m["id"] for m in http.get(f"{prefix}/models").json()["data"]] == names


def test_health_and_databricks_discovery_need_no_auth(server: Server) -> None:
    import httpx

    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    assert httpx.get(f"{server.url}/.well-known/databricks-config").json() == {}
    assert httpx.get(f"{server.url}/v1/models").status_code == 401


def test_metrics_count_responses_and_tool_calls(server: Server) -> None:
    import httpx

    client = server.client()
    exploding: Any = {"type": "test_exploding"}
    client.responses.create(model=MODEL, input="explode please", tools=[exploding])
    text = httpx.get(f"{server.url}/metrics").text
    assert 'opensupervisor_responses_total{mode="json",model="test-model",status="completed"}' in text
    assert 'opensupervisor_hosted_tool_calls_total{outcome="error"}' in text
    assert "opensupervisor_background_runs_in_flight" in text
