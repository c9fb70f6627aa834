"""The agent loop through the real server: hosted calls, client calls, limits and failures."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import MODEL

CALC: Any = {"type": "test_calculator", "test_calculator": {"description": "adds"}}
RENDEZVOUS: Any = {"type": "test_rendezvous"}
EXPLODING: Any = {"type": "test_exploding"}
WEATHER: Any = {
    "type": "function", "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def kinds(response: Any) -> list[str]:
    return [item.type for item in response.output]


def test_two_hosted_calls_in_one_turn_run_concurrently(client: openai.OpenAI) -> None:
    # Each call returns only when the other is running too; run one after the other they would time out.
    response = client.responses.create(model=MODEL, input="call two at once", tools=[RENDEZVOUS])
    assert kinds(response) == ["function_call", "function_call", "function_call_output",
                               "function_call_output", "message"]
    outputs = [item.output for item in response.output if item.type == "function_call_output"]
    assert outputs == ["a met its peer", "b met its peer"]
    calls = [item for item in response.output if item.type == "function_call"]
    assert all(c.status == "completed" for c in calls)
    assert response.output_text == "Both calls met."


def test_hosted_call_pairs_are_completed_items(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="add twice", tools=[CALC])
    pairs = [(i.type, getattr(i, "output", None)) for i in response.output]
    assert pairs == [("function_call", None), ("function_call_output", "3"),
                     ("function_call", None), ("function_call_output", "7"), ("message", None)]
    call_ids = [i.call_id for i in response.output if i.type in ("function_call", "function_call_output")]
    assert call_ids[0] == call_ids[1] and call_ids[2] == call_ids[3]


def test_client_function_round_trip_with_full_history(client: openai.OpenAI) -> None:
    history: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.responses.create(model=MODEL, input=history, tools=[WEATHER])
    assert first.status == "completed" and kinds(first) == ["function_call"]
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city":"Paris"}'
    history += [item.model_dump() for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24C"})
    second = client.responses.create(model=MODEL, input=history, tools=[WEATHER])
    assert second.output_text == "It is sunny in Paris."


def test_client_function_round_trip_with_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="weather please", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call"
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == "It is sunny in Paris."


def test_hosted_and_client_tools_mix_in_one_request(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="mixed bag", tools=[CALC, WEATHER], parallel_tool_calls=True)
    assert kinds(first) == ["function_call", "function_call", "function_call_output"]
    hosted_output = first.output[2]
    assert hosted_output.type == "function_call_output" and hosted_output.output == "5"
    pending = first.output[1]
    assert pending.type == "function_call" and pending.name == "get_weather"
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[CALC, WEATHER],
        input=[{"type": "function_call_output", "call_id": pending.call_id, "output": "cold"}])
    assert second.output_text == "2 + 3 = 5 and Oslo is cold."


def test_loop_cap_ends_incomplete_not_failed(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="add forever", tools=[CALC])
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_turns"
    assert response.error is None
    assert kinds(response).count("function_call_output") == 4  # the test workspace allows 4 turns


def test_max_tool_calls_stops_further_hosted_calls(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="add twice", tools=[CALC], max_tool_calls=1)
    outputs = [i.output for i in response.output if i.type == "function_call_output"]
    assert outputs == ["3"]  # after the budget is spent the model is offered no hosted tools
    assert kinds(response)[-1] == "message"
    assert response.max_tool_calls == 1


def test_a_raising_tool_becomes_an_output_the_model_reads(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="explode please", tools=[EXPLODING])
    assert response.status == "completed"
    output = response.output[1]
    assert output.type == "function_call_output" and "kaboom" in str(output.output)
    assert response.output_text == "The tool failed, sorry."


def test_invalid_tool_arguments_are_reported_to_the_model(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="bad arguments", tools=[CALC])
    output = response.output[1]
    assert output.type == "function_call_output" and "invalid arguments" in str(output.output)


def test_allowed_tools_is_a_hard_constraint(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="add twice", tools=[CALC, WEATHER],
        tool_choice={"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]})
    outputs = [i.output for i in response.output if i.type == "function_call_output"]
    assert outputs and all("no tool named 'add'" in str(o) for o in outputs)


def test_tool_choice_required_makes_the_model_call_a_tool(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="anything", tools=[WEATHER], tool_choice="required")
    assert kinds(response) == ["function_call"]
    named = client.responses.create(model=MODEL, input="anything", tools=[CALC, WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"})
    assert named.output[0].type == "function_call" and named.output[0].name == "get_weather"


def test_tool_choice_none_answers_without_tools(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="weather now", tools=[WEATHER], tool_choice="none")
    assert kinds(response) == ["message"]


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = client.responses.create(
        model=MODEL, input="anything",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}})
    assert response.output_text == '{"city":"example"}'
    assert response.text.format.type == "json_schema"


def test_model_failure_fails_the_response(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="model failure", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message == "the upstream model exploded"
    assert client.responses.retrieve(failed.id).status == "failed"


def test_max_output_tokens_ends_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="too long", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_tool_calls_flag_is_echoed(client: openai.OpenAI, parallel: bool) -> None:
    response = client.responses.create(model=MODEL, input="add twice", tools=[CALC], parallel_tool_calls=parallel)
    assert response.parallel_tool_calls is parallel
    assert response.output_text == "Sums done."


def test_fallback_model_answers_when_the_primary_is_rate_limited(client: openai.OpenAI) -> None:
    response = client.responses.create(model="flaky", input="hello")
    assert response.status == "completed"
    assert response.model == "flaky"
    assert response.output_text == "test-model (scripted) received: hello"


def test_non_retryable_errors_do_not_fall_back(client: openai.OpenAI) -> None:
    response = client.responses.create(model="broken", input="hello")
    assert response.status == "failed"
    assert response.error is not None and response.error.code == "invalid_prompt"


def test_tool_choice_can_name_a_hosted_tool(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="anything", tools=[CALC],
                                       tool_choice={"type": "function", "name": "add"})
    assert [i.type for i in response.output][:2] == ["function_call", "function_call_output"]
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="anything", tools=[CALC],
                                tool_choice={"type": "function", "name": "nope"})
    assert info.value.body["param"] == "tool_choice.name"


def test_a_response_cut_after_a_hosted_call_can_be_continued(client: openai.OpenAI) -> None:
    cut = client.responses.create(model=MODEL, input="cut after tool", tools=[CALC])
    assert cut.status == "incomplete"
    assert [i.type for i in cut.output] == ["function_call", "function_call_output"]
    assert cut.output[1].output.startswith("Error: this call did not run")
    follow = client.responses.create(model=MODEL, input="go on", previous_response_id=cut.id, tools=[CALC])
    assert follow.status == "completed"


def test_a_schema_with_an_empty_enum_still_gets_an_answer(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="x", text={"format": {
        "type": "json_schema", "name": "odd", "schema": {"enum": []}}})
    assert response.status == "completed" and response.output_text == "{}"
