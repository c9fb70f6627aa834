"""Long answers stay bounded: output caps, an abandoned stream stops its upstream, and the stored log
holds each text once while replaying exactly what was streamed.

The model is a Chat Completions upstream streaming answers of a few megabytes
(``opensupervisor.testing.bulk_upstream``), or answers that never end.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from opensupervisor.errors import ConfigError
from opensupervisor.testing.bulk_upstream import BulkUpstream, Stream, answer_text
from opensupervisor.workspace import parse_workspace
from tests.conftest import ASGIThread, Server, ThreadServer, wait_until

CAP_CHARS = 1_000_000
CAP_TOKENS = 4096


@dataclass
class Rig:
    server: Server
    upstream: BulkUpstream
    database: Path
    url: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("memory")
    upstream = BulkUpstream()
    with ASGIThread(upstream) as upstream_url:
        workspace = folder / "workspace.toml"
        workspace.write_text(f"""
[limits]
max_output_chars = 64000000

[models.capped]
provider = "openai-chat"
base_url = "{upstream_url}/v1"
upstream_model = "bulk"
max_retries = 0
max_output_chars = {CAP_CHARS}
max_output_tokens = {CAP_TOKENS}

[models.open]
provider = "openai-chat"
base_url = "{upstream_url}/v1"
upstream_model = "bulk"
max_retries = 0
""")
        url = f"sqlite:///{folder}/state.db"
        with ThreadServer(url, workspace) as server:
            yield Rig(server, upstream, folder / "state.db", url)


def latest(upstream: BulkUpstream, before: int) -> Stream:
    wait_until(lambda: len(upstream.streams) > before, what="the upstream to be asked")
    return upstream.streams[before]


def test_a_default_above_the_cap_is_refused_at_start() -> None:
    text = '[models.m]\nprovider = "scripted"\nmax_output_tokens = 100\ndefaults = { max_output_tokens = 200 }\n'
    with pytest.raises(ConfigError, match=r"defaults\.max_output_tokens"):
        parse_workspace(text, source="ws", base_dir=Path.cwd())
    with pytest.raises(ConfigError, match=r"limits\.max_output_chars"):
        parse_workspace("[limits]\nmax_output_chars = 0\n", source="ws", base_dir=Path.cwd())


def test_max_output_tokens_above_the_model_cap_is_a_400(rig: Rig) -> None:
    client = rig.server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="capped", input="hello", max_output_tokens=CAP_TOKENS + 1)
    error = caught.value.response.json()["error"]
    assert error["param"] == "max_output_tokens" and error["code"] == "invalid_value"
    assert str(CAP_TOKENS) in error["message"]
    done = client.responses.create(model="capped", input="bulk 300 100")
    assert done.status == "completed" and done.output_text == answer_text(300, 100)
    assert rig.upstream.last_request["max_tokens"] == CAP_TOKENS  # the cap is sent when the request sets none
    client.responses.create(model="capped", input="bulk 300 100", max_output_tokens=CAP_TOKENS)
    assert rig.upstream.last_request["max_tokens"] == CAP_TOKENS


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_reaching_the_text_cap_ends_incomplete_and_closes_its_upstream(rig: Rig, stream: bool) -> None:
    client = rig.server.client()
    before = len(rig.upstream.streams)
    if stream:
        events = list(client.responses.create(model="capped", input="bulk endless 4096", stream=True))
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == response.output_text
    else:
        response = client.responses.create(model="capped", input="bulk endless 4096")
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == answer_text(CAP_CHARS, 4096)  # the answer up to the cap, exactly
    assert response.output[0].status == "incomplete"
    upstream = latest(rig.upstream, before)
    wait_until(lambda: upstream.abandoned, what="the upstream connection to be closed")
    assert not upstream.finished
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_an_abandoned_stream_stops_reading_its_upstream(rig: Rig) -> None:
    client = rig.server.client()
    before = len(rig.upstream.streams)
    stream = client.responses.create(model="open", input="bulk endless 1024", stream=True)
    seen = 0
    for event in stream:
        seen += event.type == "response.output_text.delta"
        if seen == 20:
            break
    response_id = event.item_id
    stream.close()  # the client goes away in the middle of an answer that never ends
    upstream = latest(rig.upstream, before)
    wait_until(lambda: upstream.abandoned, what="the upstream connection to be closed")
    sent = upstream.chars_sent
    found = next(r for r in stored_responses(rig) if r[1] == response_id)
    wait_until(lambda: status_of(rig, found[0]) == "cancelled", what="the response to be recorded cancelled")
    stored = client.responses.retrieve(found[0])
    assert stored.output[0].status == "incomplete"
    text = stored.output_text
    assert len(text) <= sent and text == answer_text(len(text), 1024)[:len(text)]
    assert upstream.chars_sent == sent  # nothing more was read after the close


def stored_responses(rig: Rig) -> list[tuple[str, str]]:
    """(response id, output item id) of every stored output message."""
    with sqlite3.connect(rig.database) as conn:
        return conn.execute("SELECT response_id, item_id FROM os_response_items WHERE kind = 'output'").fetchall()


def status_of(rig: Rig, response_id: str) -> str:
    with sqlite3.connect(rig.database) as conn:
        return str(conn.execute("SELECT status FROM os_responses WHERE id = ?", (response_id,)).fetchone()[0])


def sse_lines(http: httpx.Client, method: str, path: str, **kwargs: Any) -> list[str]:
    with http.stream(method, path, **kwargs) as resp:
        assert resp.status_code == 200
        return [line for line in resp.iter_lines() if line.startswith("data: ")]


def test_a_stored_log_holds_the_text_once_and_replays_as_streamed(rig: Rig) -> None:
    chars = 2_000_000
    body = {"model": "open", "input": f"bulk {chars} 1000", "background": True, "stream": True}
    with rig.server.http() as http:
        live = sse_lines(http, "POST", "/v1/responses", json=body)
        response_id = httpx.Response(200, content=live[0][6:]).json()["response"]["id"]
        assert '"response.completed"' in live[-2] and live[-1] == "data: [DONE]"
        path = f"/v1/responses/{response_id}"
        replayed = sse_lines(http, "GET", path, params={"stream": "true", "starting_after": "-1"})
        middle = sse_lines(http, "GET", path, params={"stream": "true", "starting_after": "700"})
    assert replayed == live  # byte for byte
    assert middle == live[701:]
    assert sum(1 for line in live if "output_text.delta" in line) == chars // 1000
    with ThreadServer(rig.url) as other, other.http() as http:  # another process reads the stored log only
        assert sse_lines(http, "GET", path, params={"stream": "true", "starting_after": "1500"}) == live[1501:]
    with sqlite3.connect(rig.database) as conn:
        log = conn.execute("SELECT SUM(LENGTH(CAST(event AS BLOB))) FROM os_response_events WHERE response_id = ?",
                           (response_id,)).fetchone()[0]
        item = conn.execute("SELECT SUM(LENGTH(CAST(item AS BLOB))) FROM os_response_items WHERE response_id = ? "
                            "AND kind = 'output'", (response_id,)).fetchone()[0]
    assert log < chars // 10  # the deltas' lengths and references, not the text again
    assert item < chars * 1.01  # the text once, in its item
