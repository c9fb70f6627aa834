"""The ``openai-chat`` provider against a local upstream speaking the real Chat Completions wire format."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from opensupervisor.errors import ConfigError
from opensupervisor.testing.chat_upstream import ChatUpstream
from opensupervisor.workspace import load_workspace
from tests.conftest import ASGIThread, Server, ThreadServer, free_port

KEY = "sk-upstream-secret-123"
CALC: Any = {"type": "test_calculator"}


class Upstream:
    def __init__(self) -> None:
        self.app = ChatUpstream(required_key=KEY)
        self.loopback = ASGIThread(self.app)
        self.port = self.loopback.port

    def __enter__(self) -> Upstream:
        self.loopback.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loopback.__exit__(*exc)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def chat_server(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("chat")
    workspace = folder / "workspace.toml"
    base = f"http://127.0.0.1:{upstream.port}/v1"
    workspace.write_text(f"""
[models.upstream]
provider = "openai-chat"
base_url = "{base}"
upstream_model = "fake-model"
api_key_env = "OS_TEST_UPSTREAM_KEY"
max_retries = 1

[models.upstream-tuned]
provider = "openai-chat"
base_url = "{base}"
upstream_model = "fake-model"
api_key_env = "OS_TEST_UPSTREAM_KEY"
defaults = {{ temperature = 0.2, top_p = 0.9, max_output_tokens = 300 }}

[models.upstream-impatient]
provider = "openai-chat"
base_url = "{base}"
upstream_model = "fake-model"
api_key_env = "OS_TEST_UPSTREAM_KEY"
timeout_s = 0.5
max_retries = 0

[models.upstream-small]
provider = "openai-chat"
base_url = "{base}"
upstream_model = "fake-model"
api_key_env = "OS_TEST_UPSTREAM_KEY"
context_window = 120

[models.primary-down]
provider = "openai-chat"
base_url = "http://127.0.0.1:{free_port()}/v1"
upstream_model = "nothing-listens"
max_retries = 0
fallbacks = ["upstream"]
""")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OS_TEST_UPSTREAM_KEY", KEY)
        with ThreadServer(f"sqlite:///{folder}/state.db", workspace=workspace) as srv:
            yield srv


def test_text_answer_streams_with_upstream_usage(chat_server: Server, upstream: Upstream) -> None:
    client = chat_server.client()
    with client.responses.stream(model="upstream", input="hi", instructions="be kind") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Hello there."
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (10, 3)
    sent = upstream.app.last_request
    assert sent["model"] == "fake-model" and sent["stream"] is True
    assert sent["messages"] == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]


def test_hosted_tool_loop_through_the_upstream(chat_server: Server, upstream: Upstream) -> None:
    response = chat_server.client().responses.create(model="upstream", input="add please", tools=[CALC])
    assert [i.type for i in response.output] == ["function_call", "function_call_output", "message"]
    assert response.output_text.startswith("Tool said: Error: invalid arguments for 'add'")
    messages = upstream.app.last_request["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "add"
    assert messages[2]["tool_call_id"] == messages[1]["tool_calls"][0]["id"]
    assert response.usage is not None and response.usage.input_tokens == 20


def test_history_is_translated_to_chat_messages(chat_server: Server) -> None:
    response = chat_server.client().responses.create(model="upstream", input=[
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
        {"role": "user", "content": "echo roles"}])
    assert response.output_text == "system user assistant tool user"


@pytest.mark.parametrize(("trigger", "code", "calls"), [("upstream 429", "rate_limit_exceeded", 2),
                                                        ("upstream 500", "server_error", 2),
                                                        ("upstream 400", "invalid_prompt", 1)])
def test_upstream_errors_fail_the_response_after_retries(chat_server: Server, upstream: Upstream, trigger: str,
                                                         code: str, calls: int) -> None:
    before = upstream.app.calls
    response = chat_server.client().responses.create(model="upstream", input=trigger)
    assert response.status == "failed"
    assert response.error is not None and response.error.code == code
    assert upstream.app.calls - before == calls  # max_retries = 1: one retry for 429/5xx only
    assert response.error.message.endswith(f"upstream returned HTTP {trigger[-3:]}")
    assert KEY not in response.error.message  # the upstream echoed it; the client never sees it


def test_unreachable_primary_falls_back(chat_server: Server) -> None:
    response = chat_server.client().responses.create(model="primary-down", input="hi")
    assert response.status == "completed" and response.output_text == "Hello there."


def test_missing_api_key_variable_is_a_config_error(tmp_path: Path) -> None:
    workspace = tmp_path / "w.toml"
    workspace.write_text('[models.m]\nprovider = "openai-chat"\nbase_url = "http://127.0.0.1:1/v1"\n'
                         'upstream_model = "x"\napi_key_env = "OS_TEST_SURELY_UNSET"\n')
    from opensupervisor.models.catalog import ModelCatalog

    with pytest.raises(ConfigError, match="OS_TEST_SURELY_UNSET"):
        ModelCatalog(load_workspace(workspace))


def test_wrong_key_is_reported_without_leaking_it(chat_server: Server, upstream: Upstream) -> None:
    upstream.app.required_key = "another-key"
    try:
        response = chat_server.client().responses.create(model="upstream", input="hi")
    finally:
        upstream.app.required_key = KEY
    assert response.status == "failed" and response.error is not None
    assert "401" in response.error.message and KEY not in response.error.message
    with pytest.raises(openai.NotFoundError):
        chat_server.client().responses.retrieve("resp_unknown")


def test_truncation_auto_drops_the_oldest_items_that_do_not_fit(chat_server: Server) -> None:
    long = "lorem ipsum " * 40
    history = [{"role": "developer", "content": "rules"}, {"role": "user", "content": long},
               {"role": "assistant", "content": long}, {"role": "user", "content": "echo roles"}]
    client = chat_server.client()
    response = client.responses.create(model="upstream-small", input=history, truncation="auto")
    assert response.output_text == "system user"
    assert response.truncation == "auto"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="upstream-small", input=history)
    assert info.value.body["param"] == "input" and info.value.body["code"] == "context_length_exceeded"


def test_sse_reader_handles_the_framing_variants() -> None:
    from opensupervisor.models.http_upstream import sse_data

    async def lines() -> Any:
        for line in [b": keep-alive\n", b"\n", b"data: {\"a\":1}\r\n", b"\r\n", b"event: x\n", b"data:{\"b\":\n",
                     b"data: 2}\n", b"\n", b"data: [DONE]"]:
            yield line

    async def collect() -> list[bytes]:
        return [d async for d in sse_data(lines())]

    assert asyncio.run(collect()) == [b'{"a":1}', b'{"b":\n2}', b"[DONE]"]


@pytest.mark.parametrize("trigger", ["upstream breaks", "upstream cut", "upstream garbage"])
def test_a_broken_upstream_stream_fails_the_response(chat_server: Server, trigger: str) -> None:
    events = list(chat_server.client().responses.create(model="upstream", input=trigger, stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed"
    message = failed.output[0]
    assert message.status == "incomplete" and message.content[0].text == "partial "


def test_per_model_defaults_apply_unless_the_request_sets_them(chat_server: Server, upstream: Upstream) -> None:
    client = chat_server.client()
    client.responses.create(model="upstream-tuned", input="hi")
    sent = upstream.app.last_request
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.2, 0.9, 300)
    client.responses.create(model="upstream-tuned", input="hi", temperature=0.7, max_output_tokens=50)
    sent = upstream.app.last_request
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.7, 0.9, 50)


def test_a_slow_upstream_times_out_into_a_failed_response(chat_server: Server) -> None:
    response = chat_server.client().responses.create(model="upstream-impatient", input="upstream slow")
    assert response.status == "failed"
    assert response.error is not None and response.error.code == "model_timeout"
