"""What the loop sends the model on each turn, as the scripted model of the in-thread server received it."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import orjson

from opensupervisor.core.contracts import ModelRequest
from opensupervisor.models.scripted import ScriptedModel
from opensupervisor.wire.items import item_text
from tests.conftest import MODEL, Server

CALC: Any = {"type": "test_calculator", "test_calculator": {"description": "adds"}}
WEATHER: Any = {
    "type": "function", "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def tagged(phrase: str) -> str:
    """The phrase that picks a script, made unique to one test: the model serves the whole session."""
    return f"{phrase} (#{uuid.uuid4().hex[:12]})"


def requests_for(server: Server, tag: str) -> list[ModelRequest]:
    model = server.model(MODEL)
    assert isinstance(model, ScriptedModel)
    return [r for r in model.requests
            if any(i.get("role") == "user" and tag in item_text(i) for i in r.items)]


def test_each_turn_sends_the_calls_and_outputs_before_it(server: Server, client: openai.OpenAI) -> None:
    tag = tagged("add twice")
    response = client.responses.create(model=MODEL, input=tag, tools=[CALC])
    sent = requests_for(server, tag)
    assert len(sent) == 3  # two tool turns, then the answer
    assert [i["type"] for i in sent[0].items] == ["message"]
    call, output = sent[1].items[1:]
    assert (call["type"], call["name"], orjson.loads(call["arguments"])) == ("function_call", "add", {"a": 1, "b": 2})
    assert (output["type"], output["call_id"], output["output"]) == ("function_call_output", call["call_id"], "3")
    assert [i["type"] for i in sent[2].items] == ["message", "function_call", "function_call_output",
                                                   "function_call", "function_call_output"]
    shown = [i.call_id for i in response.output if i.type in ("function_call", "function_call_output")]
    assert [i["call_id"] for i in sent[2].items[1:]] == shown


def test_tool_choice_binds_only_the_first_turn(server: Server, client: openai.OpenAI) -> None:
    tag = tagged("add twice")
    response = client.responses.create(model=MODEL, input=tag, tools=[CALC, WEATHER],
                                       tool_choice={"type": "function", "name": "add"})
    assert response.output_text == "Sums done."
    sent = requests_for(server, tag)
    assert [r.tool_choice for r in sent] == ["add", "auto", "auto"]
    assert all({t.name for t in r.tools} == {"add", "get_weather"} for r in sent)


def test_tool_choice_none_offers_no_tools(server: Server, client: openai.OpenAI) -> None:
    tag = tagged("hello")
    client.responses.create(model=MODEL, input=tag, tools=[CALC], tool_choice="none")
    [request] = requests_for(server, tag)
    assert (request.tool_choice, request.tools) == ("none", [])


def test_request_settings_reach_every_turn(server: Server, client: openai.OpenAI) -> None:
    tag = tagged("add twice")
    client.responses.create(model=MODEL, input=tag, tools=[CALC], max_output_tokens=77, instructions="Be brief.",
                            parallel_tool_calls=False)
    sent = requests_for(server, tag)
    assert len(sent) == 3
    assert {(r.max_output_tokens, r.instructions, r.parallel_tool_calls) for r in sent} == {(77, "Be brief.", False)}
    # Sampling settings are refused alongside hosted tools, so they are seen on a plain request.
    tag = tagged("hello")
    client.responses.create(model=MODEL, input=tag, temperature=0.5, top_p=0.9)
    [request] = requests_for(server, tag)
    assert request.settings == {"temperature": 0.5, "top_p": 0.9}
