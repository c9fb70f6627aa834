"""The ``anthropic`` provider against a local Messages API built from the anthropic SDK's own types."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from opensupervisor.testing.anthropic_upstream import AnthropicUpstream
from tests.conftest import ASGIThread, Server, ThreadServer

KEY = "sk-ant-test-secret"
CALC: Any = {"type": "test_calculator"}
WEATHER: Any = {
    "type": "function", "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def upstream() -> AnthropicUpstream:
    return AnthropicUpstream(required_key=KEY)


@pytest.fixture(scope="module")
def base(upstream: AnthropicUpstream) -> Iterator[str]:
    with ASGIThread(upstream) as url:
        yield url


@pytest.fixture(scope="module")
def claude(base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("anthropic")
    workspace = folder / "workspace.toml"
    workspace.write_text(f"""
[models.claude]
provider = "anthropic"
base_url = "{base}"
upstream_model = "claude-sonnet-4-5"
api_key_env = "OS_TEST_ANTHROPIC_KEY"
max_retries = 1

[models.claude-impatient]
provider = "anthropic"
base_url = "{base}"
upstream_model = "claude-sonnet-4-5"
api_key_env = "OS_TEST_ANTHROPIC_KEY"
timeout_s = 0.5
max_retries = 0

[models.claude-with-backup]
provider = "anthropic"
base_url = "{base}"
upstream_model = "claude-sonnet-4-5"
api_key_env = "OS_TEST_ANTHROPIC_KEY"
max_retries = 0
fallbacks = ["backup"]

[models.backup]
provider = "scripted"
""")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OS_TEST_ANTHROPIC_KEY", KEY)
        with ThreadServer(f"sqlite:///{folder}/state.db", workspace=workspace) as srv:
            yield srv


def test_text_streams_with_usage_and_the_request_is_translated(claude: Server, upstream: AnthropicUpstream) -> None:
    with claude.client().responses.stream(model="claude", instructions="Be brief.", input=[
            {"role": "developer", "content": "No jokes."}, {"role": "user", "content": "hello there"}]) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "hello there "
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    assert final.to_dict()["served_by"] == ["claude"]
    sent = upstream.last_request
    assert sent["model"] == "claude-sonnet-4-5" and sent["stream"] is True and sent["max_tokens"] == 4096
    assert sent["system"] == "Be brief.\n\nNo jokes."
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]


def test_hosted_tool_loop(claude: Server, upstream: AnthropicUpstream) -> None:
    response = claude.client().responses.create(model="claude", input="add please", tools=[CALC])
    assert [i.type for i in response.output] == ["function_call", "function_call_output", "message"]
    call = response.output[0]
    assert call.name == "add" and call.arguments == '{"a":2,"b":3}' and call.call_id == "toolu_fake_1"
    assert response.output[1].output == "5"
    assert response.output_text == "Tool said: 5 "
    messages = upstream.last_request["messages"]
    assert messages[1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_fake_1", "name": "add", "input": {"a": 2, "b": 3}}]}
    assert messages[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_fake_1", "content": "5"}]}
    assert upstream.last_request["tool_choice"] == {"type": "auto"}


def test_client_tool_round_trip(claude: Server) -> None:
    client = claude.client()
    first = client.responses.create(model="claude", input="weather?", tools=[WEATHER], tool_choice="required")
    assert [i.type for i in first.output] == ["function_call"]
    result: Any = {"type": "function_call_output", "call_id": first.output[0].call_id, "output": "sunny"}
    second = client.responses.create(model="claude", tools=[WEATHER], previous_response_id=first.id, input=[result])
    assert second.output_text == "Tool said: sunny "


@pytest.mark.parametrize(("trigger", "code", "calls"), [
    ("upstream 429", "rate_limit_exceeded", 2), ("upstream 500", "server_error", 2),
    ("upstream 529", "server_error", 2), ("upstream 400", "invalid_prompt", 1)])
def test_upstream_errors_fail_the_response(claude: Server, upstream: AnthropicUpstream, trigger: str, code: str,
                                           calls: int) -> None:
    before = upstream.calls
    response = claude.client().responses.create(model="claude", input=trigger)
    assert response.status == "failed" and response.error is not None and response.error.code == code
    assert upstream.calls - before == calls  # max_retries = 1
    assert KEY not in response.error.message


@pytest.mark.parametrize("trigger", ["upstream breaks", "upstream garbage"])
def test_a_broken_stream_fails_cleanly(claude: Server, trigger: str) -> None:
    events = list(claude.client().responses.create(model="claude", input=trigger, stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]


def test_a_timeout_fails_the_response(claude: Server) -> None:
    response = claude.client().responses.create(model="claude-impatient", input="upstream slow")
    assert response.status == "failed" and response.error is not None and response.error.code == "model_timeout"


def test_a_rate_limit_falls_back(claude: Server) -> None:
    response = claude.client().responses.create(model="claude-with-backup", input="upstream 429")
    assert response.status == "completed"
    assert response.output_text == "backup (scripted) received: upstream 429"
    assert response.model == "claude-with-backup"
    assert response.to_dict()["served_by"] == ["backup"]
