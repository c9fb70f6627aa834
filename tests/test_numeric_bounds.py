"""Numbers out of range, on every route that takes one: a 400 naming the field, never an overflow."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server
from tests.test_validation import assert_error

# Past 64 bits, at their edges, negative, fractional, and as large as a double gets.
HUGE: list[Any] = [10**30, 2**63, 2**64, -(2**63) - 1, -1, 1.5, 1e308]
INT_FIELDS = ["max_output_tokens", "max_tool_calls", "top_logprobs"]
FLOAT_FIELDS = ["temperature", "top_p", "presence_penalty", "frequency_penalty"]
OUT_OF_ANY_RANGE: list[Any] = [10**30, 2**63, 2**64, -(2**63) - 1, 1e308, -1e308]
BAD_QUERY_INTS = ["9223372036854775808", "-9223372036854775809", "9" * 5000, "1_0", " 5", "\u0661", "1.5", "1e3",
                  "0x10", ""]


@pytest.mark.parametrize("field", INT_FIELDS + FLOAT_FIELDS)
def test_create_numbers_out_of_range(server: Server, field: str) -> None:
    values = HUGE if field in INT_FIELDS else OUT_OF_ANY_RANGE
    with server.http() as http:
        for value in values:
            resp = http.post("/v1/responses", json={"model": MODEL, "input": "hi", field: value})
            assert_error(resp, 400, field, "Invalid value")


def test_the_largest_counts_are_accepted(server: Server) -> None:
    with server.http() as http:
        resp = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "max_output_tokens": 2**31 - 1,
                                                "max_tool_calls": 2**31 - 1, "top_logprobs": 20})
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_are_not_json(server: Server, literal: bytes) -> None:
    with server.http() as http:
        body = b'{"model": "%s", "input": "hi", "temperature": %s}' % (MODEL.encode(), literal)
        error = assert_error(http.post("/v1/responses", content=body), 400, None, "could not parse")
        assert error["code"] == "invalid_json"


def _background_stream(http: httpx.Client) -> str:
    streamed = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "background": True, "stream": True})
    response_id: str = json.loads(streamed.text.split("data: ", 2)[1].split("\n", 1)[0])["response"]["id"]
    return response_id


def test_query_integers_out_of_range(server: Server) -> None:
    with server.http() as http:
        rid = _background_stream(http)
        for value in [*BAD_QUERY_INTS, "-2", str(2**31)]:
            resp = http.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": value})
            assert_error(resp, 400, "starting_after", "Invalid value")
        for value in [*BAD_QUERY_INTS, "0", "101"]:
            assert_error(http.get(f"/v1/responses/{rid}/input_items", params={"limit": value}), 400, "limit",
                         "Invalid value")
        assert http.get(f"/v1/responses/{rid}", params={"stream": "true", "starting_after": "-1"}).status_code == 200


def test_admin_numbers_out_of_range(server: Server) -> None:
    function = {"language": "python", "source_code": "def f(a: int) -> int:\n    '''Echo.'''\n    return a\n"}
    with server.http() as http:
        assert http.post("/admin/v1/principals", json={"name": "numbers"}).status_code == 200
        for value in HUGE:
            for key in ("calls", "tokens"):
                resp = http.put(f"/admin/v1/rate-limits/{MODEL}", json={"rate_limits": [{key: value}]})
                assert_error(resp, 400, f"rate_limits[0].{key}", "Invalid value")
            resp = http.post("/admin/v1/principals/numbers/tokens", json={"lifetime_seconds": value})
            assert_error(resp, 400, "lifetime_seconds", "Invalid value")
        for value in (10**30, 2**63, 1e308, 86401):
            resp = http.put("/admin/v1/functions/main.numbers.f", json={**function, "timeout_s": value})
            assert_error(resp, 400, "timeout_s", "at most")
            resp = http.put("/admin/v1/connections/numbers", json={"url": "http://127.0.0.1:9/mcp", "timeout_s": value})
            assert_error(resp, 400, "timeout_s", "at most")
        resp = http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2-int8", "input": "x", "dimensions": 10**30})
        assert_error(resp, 400, "dimensions", "Unknown parameter")
