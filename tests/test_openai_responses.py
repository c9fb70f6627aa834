"""The ``openai-responses`` provider, with OpenSupervisor itself (scripted model) as the upstream Responses API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from opensupervisor.testing.chat_upstream import ChatUpstream
from tests.conftest import TOKEN, ASGIThread, Server, ThreadServer, free_port

CALC: Any = {"type": "test_calculator"}


@pytest.fixture(scope="module")
def failing() -> Iterator[str]:
    """A local upstream that fails on demand (see ``ChatUpstream``), as a Responses base URL."""
    with ASGIThread(ChatUpstream()) as url:
        yield f"{url}/v1"


@pytest.fixture(scope="module")
def chained(tmp_path_factory: pytest.TempPathFactory, failing: str) -> Iterator[tuple[Server, Server]]:
    folder = tmp_path_factory.mktemp("responses")
    with ThreadServer(f"sqlite:///{folder}/upstream.db") as upstream:
        workspace = folder / "workspace.toml"
        workspace.write_text(f"""
[models.relay]
provider = "openai-responses"
base_url = "{upstream.v1}"
upstream_model = "test-model"
api_key_env = "OS_TEST_RESPONSES_KEY"
max_retries = 0

[models.relay-impatient]
provider = "openai-responses"
base_url = "{upstream.v1}"
upstream_model = "test-model"
api_key_env = "OS_TEST_RESPONSES_KEY"
timeout_s = 0.5
max_retries = 0

[models.relay-down]
provider = "openai-responses"
base_url = "http://127.0.0.1:{free_port()}/v1"
upstream_model = "test-model"
max_retries = 0
fallbacks = ["relay"]

[models.flaky]
provider = "openai-responses"
base_url = "{failing}"
upstream_model = "x"
max_retries = 1
fallbacks = ["relay"]

[models.flaky-alone]
provider = "openai-responses"
base_url = "{failing}"
upstream_model = "x"
max_retries = 0

[models.relay-missing]
provider = "openai-responses"
base_url = "{upstream.v1}"
upstream_model = "no-such-model"
api_key_env = "OS_TEST_RESPONSES_KEY"
max_retries = 0
""")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OS_TEST_RESPONSES_KEY", TOKEN)
            with ThreadServer(f"sqlite:///{folder}/downstream.db", workspace=workspace) as downstream:
                yield upstream, downstream


def test_text_streams_through_the_upstream(chained: tuple[Server, Server]) -> None:
    _, downstream = chained
    with downstream.client().responses.stream(model="relay", input="hello", instructions="be kind") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "test-model (scripted) received: hello"
    assert final.usage is not None and final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_hosted_tools_run_here_while_the_upstream_decides(chained: tuple[Server, Server]) -> None:
    _, downstream = chained
    response = downstream.client().responses.create(model="relay", input="add twice", tools=[CALC])
    assert [(i.type, getattr(i, "output", None)) for i in response.output] == [
        ("function_call", None), ("function_call_output", "3"), ("function_call", None),
        ("function_call_output", "7"), ("message", None)]
    assert response.output_text == "Sums done."


def test_upstream_refusal_fails_the_response(chained: tuple[Server, Server]) -> None:
    _, downstream = chained
    response = downstream.client().responses.create(model="relay-missing", input="hello")
    assert response.status == "failed" and response.error is not None
    assert response.error.message.endswith("upstream returned HTTP 404")


def test_an_upstream_failure_mid_stream_fails_the_response(chained: tuple[Server, Server]) -> None:
    _, downstream = chained
    events = list(downstream.client().responses.create(model="relay", input="model failure", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.error.message == "model 'relay': the upstream response failed"


def test_a_slow_upstream_times_out(chained: tuple[Server, Server]) -> None:
    _, downstream = chained
    response = downstream.client().responses.create(model="relay-impatient", input="take your time")
    assert response.status == "failed" and response.error is not None and response.error.code == "model_timeout"


def test_an_unreachable_upstream_falls_back(chained: tuple[Server, Server]) -> None:
    _, downstream = chained
    response = downstream.client().responses.create(model="relay-down", input="hello")
    assert response.status == "completed" and response.output_text == "test-model (scripted) received: hello"
    assert response.to_dict()["served_by"] == ["relay"]


def test_a_rate_limited_upstream_falls_back(chained: tuple[Server, Server]) -> None:
    _, downstream = chained
    response = downstream.client().responses.create(model="flaky", input="upstream 429 please")
    assert response.status == "completed"
    assert response.to_dict()["served_by"] == ["relay"]


@pytest.mark.parametrize(("trigger", "code"), [("upstream 500", "server_error"), ("upstream garbage", "server_error")])
def test_upstream_failures_fail_the_response(chained: tuple[Server, Server], trigger: str, code: str) -> None:
    _, downstream = chained
    events = list(downstream.client().responses.create(model="flaky-alone", input=trigger, stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.error.code == code
