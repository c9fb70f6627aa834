"""Bad input: every mistake a client can make gets a 4xx OpenAI-style body naming the field."""

from __future__ import annotations

import base64
import json
import os
import random
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server

FN: dict[str, Any] = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
USER = {"role": "user", "content": "hi"}

# (case id, body, expected status, expected param, a fragment of the message)
CASES: list[tuple[str, Any, int, str | None, str]] = [
    ("missing model", {"input": "hi"}, 400, "model", "Missing required parameter"),
    ("model wrong type", {"model": 5, "input": "hi"}, 400, "model", "Invalid value"),
    ("unknown model", {"model": "nope", "input": "hi"}, 404, "model", "does not exist"),
    ("unknown parameter", {"model": MODEL, "input": "hi", "foo": 1}, 400, "foo", "Unknown parameter"),
    ("input wrong type", {"model": MODEL, "input": 5}, 400, "input", "Invalid value"),
    ("unknown item type", {"model": MODEL, "input": [{"type": "banana"}]}, 400, "input[0].type", "banana"),
    ("item without type or role", {"model": MODEL, "input": [{"content": "x"}]}, 400, "input[0].type", "Missing"),
    ("message without content", {"model": MODEL, "input": [{"role": "user"}]}, 400, "input[0].content", "Missing"),
    ("message bad role", {"model": MODEL, "input": [{"role": "robot", "content": "x"}]}, 400, "input[0].role",
     "Invalid value"),
    ("part without text", {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, 400,
     "input[0].content[0].text", "Missing"),
    ("image without url", {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image"}]}]}, 400,
     "input[0].content[0].image_url", "image_url"),
    ("output without call", {"model": MODEL, "input": [
        USER, {"type": "function_call_output", "call_id": "c1", "output": "x"}]}, 400, "input[1].call_id",
     "No tool call found for function call output with call_id c1."),
    ("call without output", {"model": MODEL, "tools": [FN], "input": [
        USER, {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"}]}, 400,
     "input[1]", "No tool output found for function call c2."),
    ("function name pattern", {"model": MODEL, "input": "hi", "tools": [dict(FN, name="bad name")]}, 400,
     "tools[0].name", "function tool 'bad name' must match ^[a-zA-Z0-9_-]{1,64}$"),
    ("function name missing", {"model": MODEL, "input": "hi", "tools": [{"type": "function"}]}, 400,
     "tools[0].name", "Missing"),
    ("function parameters not a schema", {"model": MODEL, "input": "hi",
                                          "tools": [dict(FN, parameters={"type": 7})]}, 400, "tools[0].parameters",
     "JSON Schema"),
    ("function parameters not an object", {"model": MODEL, "input": "hi",
                                           "tools": [dict(FN, parameters={"type": "string"})]}, 400,
     "tools[0].parameters", "object"),
    ("duplicate function names", {"model": MODEL, "input": "hi", "tools": [FN, FN]}, 400, "tools[1].name",
     "Duplicate"),
    ("tool without type", {"model": MODEL, "input": "hi", "tools": [{"name": "x"}]}, 400, "tools[0].type",
     "Missing"),
    ("unknown tool type", {"model": MODEL, "input": "hi", "tools": [{"type": "teleporter"}]}, 400,
     "tools[0].type", "teleporter"),
    ("hosted tool config not object", {"model": MODEL, "input": "hi",
                                       "tools": [{"type": "test_calculator", "test_calculator": 3}]}, 400,
     "tools[0].test_calculator", "object"),
    ("temperature with hosted tools", {"model": MODEL, "input": "hi", "temperature": 0.2,
                                       "tools": [{"type": "test_calculator"}]}, 400, "temperature",
     "Parameter not supported when tools are provided"),
    ("top_p with hosted tools", {"model": MODEL, "input": "hi", "top_p": 0.5,
                                 "tools": [{"type": "test_calculator"}]}, 400, "top_p", "not supported"),
    ("temperature out of range", {"model": MODEL, "input": "hi", "temperature": 3}, 400, "temperature",
     "Invalid value"),
    ("tool_choice unknown", {"model": MODEL, "input": "hi", "tool_choice": "sometimes"}, 400, "tool_choice",
     "Invalid value"),
    ("tool_choice names a missing function", {"model": MODEL, "input": "hi", "tools": [FN],
                                              "tool_choice": {"type": "function", "name": "other"}}, 400,
     "tool_choice.name", "other"),
    ("allowed_tools names a missing function", {
        "model": MODEL, "input": "hi", "tools": [FN],
        "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "x"}]}},
     400, "tool_choice.tools[0].name", "'x'"),
    ("required without tools", {"model": MODEL, "input": "hi", "tool_choice": "required"}, 400, "tool_choice",
     "at least one tool"),
    ("json_schema without schema", {"model": MODEL, "input": "hi",
                                    "text": {"format": {"type": "json_schema", "name": "x"}}}, 400,
     "text.format.schema", "Missing"),
    ("json_schema bad name", {"model": MODEL, "input": "hi",
                              "text": {"format": {"type": "json_schema", "name": "a b", "schema": {}}}}, 400,
     "text.format.name", "must match"),
    ("text format unknown", {"model": MODEL, "input": "hi", "text": {"format": {"type": "yaml"}}}, 400,
     "text.format.type", "Invalid value"),
    ("metadata too many keys", {"model": MODEL, "input": "hi", "metadata": {str(i): "v" for i in range(17)}},
     400, "metadata", "16"),
    ("metadata value not string", {"model": MODEL, "input": "hi", "metadata": {"a": 1}}, 400, "metadata.a",
     "Invalid value"),
    ("include unknown", {"model": MODEL, "input": "hi", "include": ["everything"]}, 400, "include[0]",
     "everything"),
    ("truncation unknown", {"model": MODEL, "input": "hi", "truncation": "sometimes"}, 400, "truncation",
     "Invalid value"),
    ("max_output_tokens string", {"model": MODEL, "input": "hi", "max_output_tokens": "10"}, 400,
     "max_output_tokens", "Invalid value"),
    ("max_tool_calls negative", {"model": MODEL, "input": "hi", "max_tool_calls": -1}, 400, "max_tool_calls",
     "Invalid value"),
    ("parallel_tool_calls not bool", {"model": MODEL, "input": "hi", "parallel_tool_calls": "yes"}, 400,
     "parallel_tool_calls", "Invalid value"),
    ("stream not bool", {"model": MODEL, "input": "hi", "stream": "yes"}, 400, "stream", "Invalid value"),
    ("background without store", {"model": MODEL, "input": "hi", "background": True, "store": False}, 400,
     "background", "requires store=true"),
    ("trace destination bad name", {"model": MODEL, "input": "hi", "trace_destination": {
        "catalog_name": "main; drop", "schema_name": "s"}}, 400, "trace_destination.catalog_name",
     "letters, digits and underscores"),
    ("trace destination missing schema", {"model": MODEL, "input": "hi",
                                          "trace_destination": {"catalog_name": "main"}}, 400,
     "trace_destination.schema_name", "Missing"),
    ("databricks_options wrong type", {"model": MODEL, "input": "hi",
                                       "databricks_options": {"return_trace": "yes"}}, 400,
     "databricks_options.return_trace", "Invalid value"),
    ("databricks_options unknown key", {"model": MODEL, "input": "hi", "databricks_options": {"x": 1}}, 400,
     "databricks_options.x", "Unknown parameter"),
    ("previous response unknown", {"model": MODEL, "input": "hi", "previous_response_id": "resp_nope"}, 400,
     "previous_response_id", "not found"),
    ("input larger than the context window", {"model": "small-window", "input": "x" * 2000}, 400, "input",
     "context window"),
    ("item id too long", {"model": MODEL, "input": [{"role": "user", "content": "x", "id": "m" * 65}]}, 400,
     "input[0].id", "Invalid value"),
    ("item reference unknown", {"model": MODEL, "input": [{"type": "item_reference", "id": "msg_nope"}]}, 400,
     "input[0].id", "not found"),
    ("client_request_id wrong type", {"model": MODEL, "input": "hi", "client_request_id": 7}, 400,
     "client_request_id", "Invalid value"),
    ("client_request_id too long", {"model": MODEL, "input": "hi", "client_request_id": "x" * 1025}, 400,
     "client_request_id", "Invalid value"),
]


def assert_error(resp: httpx.Response, status: int, param: str | None, fragment: str = "") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert fragment in error["message"]
    return dict(error)


@pytest.mark.parametrize(("case", "body", "status", "param", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_invalid_create_requests(server: Server, case: str, body: Any, status: int, param: str | None,
                                 fragment: str) -> None:
    with server.http() as http:
        for prefix in ("/v1", "/ai-gateway/mlflow/v1"):
            assert_error(http.post(f"{prefix}/responses", json=body), status, param, fragment)


def nested(depth: int, leaf: Any, wrap: Any) -> Any:
    for _ in range(depth):
        leaf = wrap(leaf)
    return leaf


def deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = nested(levels, {"type": "object"}, lambda s: {"type": "object", "properties": {"a": s}})
    return schema


DEEP: list[tuple[str, Any, str]] = [
    ("deep input list", {"model": MODEL, "input": [{"role": "user", "content": "hi",
                                                     "x": nested(300, [1], lambda v: [v])}]}, "input[0].x"),
    ("deep metadata", {"model": MODEL, "input": "hi", "metadata": nested(70, "x", lambda v: {"k": v})}, "metadata.k"),
    ("deep tool schema", {"model": MODEL, "input": "hi", "tools": [dict(FN, parameters=deep_schema(100))]},
     "tools[0].parameters.properties.a"),
    ("deep text format", {"model": MODEL, "input": "hi", "text": {"format": {
        "type": "json_schema", "name": "f", "schema": deep_schema(40)}}}, "text.format.schema.properties.a"),
]


@pytest.mark.parametrize(("case", "body", "where"), DEEP, ids=[c[0] for c in DEEP])
def test_bodies_nested_too_deep_are_400_naming_where(server: Server, case: str, body: Any, where: str) -> None:
    """Nesting that would break a later recursive step (orjson writes at most 254 levels, schema
    checks recurse) is refused when the body is parsed, on every route that parses JSON."""
    admin_body = {"deep": nested(100, 1, lambda v: [v])}
    with server.http() as http:
        for resp, prefix in ((http.post("/v1/responses", json=body), where),
                             (http.put("/admin/v1/rate-limits/test-model", json=admin_body), "deep")):
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_value"
            assert error["param"].startswith(prefix) and "nested more than 64 levels" in error["message"]


def test_a_schema_the_checker_cannot_walk_is_400(server: Server) -> None:
    """Within the nesting bound, a schema deep enough to exhaust the checker's recursion is still a 400."""
    import sys

    from opensupervisor.errors import InvalidRequest
    from opensupervisor.wire.request import _check_schema

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        with pytest.raises(InvalidRequest, match="nested too deeply") as info:
            _check_schema(deep_schema(31), "tools[0].parameters")
    finally:
        sys.setrecursionlimit(limit)
    assert info.value.param == "tools[0].parameters"


def test_a_token_lifetime_past_ten_years_is_400(server: Server) -> None:
    with server.http() as http:
        assert http.post("/admin/v1/principals", json={"name": "longevity"}).status_code == 200
        for lifetime in (10**15, 400 * 366 * 24 * 3600):
            resp = http.post("/admin/v1/principals/longevity/tokens", json={"lifetime_seconds": lifetime})
            assert_error(resp, 400, "lifetime_seconds", "less than or equal")


def test_malformed_json_and_non_objects(server: Server) -> None:
    with server.http() as http:
        error = assert_error(http.post("/v1/responses", content=b"{not json"), 400, None, "could not parse")
        assert error["code"] == "invalid_json"
        assert_error(http.post("/v1/responses", content=b"[1, 2]"), 400, None, "JSON object")
        assert_error(http.post("/v1/responses", content=b""), 400, None, "could not parse")


def test_oversize_body_is_413(server: Server) -> None:
    with server.http() as http:
        resp = http.post("/v1/responses", json={"model": MODEL, "input": "x" * (17 * 1024 * 1024)})
        assert_error(resp, 413, None, "larger than the limit")


def test_auth_is_required_and_checked(server: Server) -> None:
    url = f"{server.url}/v1/responses"
    body = {"model": MODEL, "input": "hi"}
    assert_error(httpx.post(url, json=body), 401, None, "API key")
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401, None, "Incorrect")
    basic = base64.b64encode(f"token:{server.token}".encode()).decode()
    assert httpx.post(url, json=body, headers={"Authorization": f"Basic {basic}"}).status_code == 200
    wrong_user = base64.b64encode(f"admin:{server.token}".encode()).decode()
    assert_error(httpx.post(url, json=body, headers={"Authorization": f"Basic {wrong_user}"}), 401, None, "token")
    assert_error(httpx.post(url, json=body, headers={"Authorization": "Basic %%%"}), 401, None, "base64")


def test_unknown_routes_and_methods(server: Server) -> None:
    with server.http() as http:
        assert_error(http.get("/v2/nothing"), 404, None, "Unknown route")
        assert_error(http.put("/v1/responses"), 405, None, "not allowed")
        assert_error(http.get("/v1/responses/compact/more"), 404, None, "Unknown route")


def test_stored_response_routes_reject_bad_parameters(server: Server) -> None:
    with server.http() as http:
        created = http.post("/v1/responses", json={"model": MODEL, "input": "hi"}).json()
        rid = created["id"]
        assert_error(http.get(f"/v1/responses/{rid}/input_items", params={"limit": 0}), 400, "limit", "between")
        assert_error(http.get(f"/v1/responses/{rid}/input_items", params={"limit": "x"}), 400, "limit", "integer")
        assert_error(http.get(f"/v1/responses/{rid}/input_items", params={"order": "up"}), 400, "order", "asc")
        assert_error(http.get(f"/v1/responses/{rid}/input_items", params={"after": "nope"}), 400, "after", "nope")
        assert_error(http.get(f"/v1/responses/{rid}", params={"stream": "true"}), 400, "stream", "background=true")
        assert_error(http.get("/v1/responses/resp_nope"), 404, "response_id", "not found")
        assert_error(http.post("/v1/responses/resp_nope/cancel"), 404, "response_id", "not found")
        assert_error(http.get("/v1/responses/resp_nope/input_items"), 404, "response_id", "not found")
        bg = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True}).json()
        assert_error(http.get(f"/v1/responses/{bg['id']}", params={"stream": "true"}), 400, "stream",
                     "stream=true")
        streamed = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True,
                                                    "stream": True})
        sid = json.loads(streamed.text.split("data: ", 2)[1].split("\n", 1)[0])["response"]["id"]
        assert_error(http.get(f"/v1/responses/{sid}", params={"stream": "true", "starting_after": "x"}), 400,
                     "starting_after", "integer")
        assert_error(http.get(f"/v1/responses/{sid}", params={"stream": "true", "starting_after": 999}), 400,
                     "starting_after", "past the end")


def _mutations(rng: random.Random) -> list[Any]:
    values: list[Any] = [None, True, -1, 0, 10**12, 1.5, "", "x", [], {}, [None], {"type": None},
                         [{"type": "message"}], [{"role": "user", "content": [{"type": 3}]}], "\u0000"]
    keys = ["model", "input", "tools", "tool_choice", "text", "metadata", "include", "instructions",
            "max_output_tokens", "previous_response_id", "truncation", "reasoning", "stream_options",
            "background", "store", "trace_destination", "databricks_options", "temperature"]
    bodies: list[Any] = []
    for _ in range(150):
        body: dict[str, Any] = {"model": MODEL, "input": "hi"}
        for key in rng.sample(keys, rng.randint(1, 3)):
            body[key] = rng.choice(values)
        bodies.append(body)
    return bodies


def test_no_client_input_produces_a_server_error(server: Server) -> None:
    rng = random.Random(1234)
    with server.http() as http:
        for body in _mutations(rng):
            resp = http.post("/v1/responses", json=body)
            assert resp.status_code < 500, (body, resp.text)
            if resp.status_code >= 400:
                assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_an_image_in_the_input_counts_a_fixed_cost_not_its_data_url(client: openai.OpenAI) -> None:
    picture = "data:image/png;base64," + base64.b64encode(os.urandom(15_000)).decode()  # 20 KB of data URL
    content: Any = [{"type": "input_text", "text": "What is in this picture?"},
                    {"type": "input_image", "image_url": picture, "detail": "auto"}]
    answered = client.responses.create(model="window-4k", input=[{"role": "user", "content": content}],
                                       truncation="disabled")
    assert answered.status == "completed"
    with pytest.raises(openai.BadRequestError) as refused:  # the same size of text does not fit
        client.responses.create(model="window-4k", input="x" * len(picture), truncation="disabled")
    assert (refused.value.body["param"], refused.value.body["code"]) == ("input", "context_length_exceeded")
