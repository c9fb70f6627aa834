"""WebSocket mode of ``/v1/responses``: the real ``openai`` SDK (``responses.connect``) and the
``websockets`` library against a real server."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from opensupervisor.server.websocket_api import PENDING
from tests.conftest import MODEL, WORKSPACE, Server, ThreadServer, wait_until
from tests.test_identity import make_user

CALC: Any = {"type": "test_calculator"}
ENDS = ("response.completed", "response.failed", "response.incomplete", "error")


def ws_url(server: Server, prefix: str = "/v1") -> str:
    return server.url.replace("http://", "ws://") + f"{prefix}/responses"


@pytest.fixture
def sock(server: Server) -> Iterator[ClientConnection]:
    ws = connect(ws_url(server), additional_headers={"Authorization": f"Bearer {server.token}"}, open_timeout=10)
    with ws:
        yield ws


def turn(ws: ClientConnection, **body: Any) -> list[dict[str, Any]]:
    """Send one ``response.create`` and read its messages up to its last one."""
    ws.send(json.dumps({"type": "response.create", "model": MODEL, **body}))
    return until_end(ws)


def until_end(ws: ClientConnection) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or out[-1]["type"] not in ENDS:
        out.append(json.loads(ws.recv(timeout=30)))
    return out


def test_the_sdk_runs_responses_in_turn_on_one_socket(server: Server) -> None:
    client = server.client()
    with client.responses.connect() as conn:
        conn.response.create(model=MODEL, input="Hello there")
        first = read_sdk(conn)
        assert [e.sequence_number for e in first] == list(range(len(first)))
        assert first[0].type == "response.created" and first[-1].type == "response.completed"
        deltas = "".join(e.delta for e in first if e.type == "response.output_text.delta")
        assert deltas == first[-1].response.output_text == "test-model (scripted) received: Hello there"
        conn.response.create(model=MODEL, input="And now?", previous_response_id=first[-1].response.id)
        second = read_sdk(conn)
        assert second[-1].type == "response.completed" and second[0].sequence_number == 0
    # Stored as a streamed response over HTTP is.
    stored = client.responses.retrieve(second[-1].response.id)
    assert stored.previous_response_id == first[-1].response.id
    assert stored.output_text == "test-model (scripted) received: And now?"
    assert client.responses.retrieve(first[-1].response.id).output_text == first[-1].response.output_text


def read_sdk(conn: Any) -> list[Any]:
    events: list[Any] = []
    for event in conn:
        events.append(event)
        if event.type in ENDS:
            break
    return events


@pytest.mark.anyio
async def test_the_async_sdk_runs_hosted_tools(server: Server) -> None:
    client = openai.AsyncOpenAI(base_url=server.v1, api_key=server.token, max_retries=0)
    async with client.responses.connect() as conn:
        await conn.response.create(model=MODEL, input="background tools", tools=[CALC])
        events = []
        async for event in conn:
            events.append(event)
            if event.type in ENDS:
                break
    final = events[-1].response
    assert events[-1].type == "response.completed"
    assert [item.type for item in final.output] == ["function_call", "function_call_output", "message"]
    assert final.output[1].output == "42" and final.output_text == "The answer is 42."


@pytest.mark.parametrize("prefix", ["/v1", "/ai-gateway/mlflow/v1", "/mlflow/v1"])
def test_every_prefix_and_both_kinds_of_credentials(server: Server, prefix: str) -> None:
    basic = base64.b64encode(f"token:{server.token}".encode()).decode()
    for header in (f"Bearer {server.token}", f"Basic {basic}"):
        with connect(ws_url(server, prefix), additional_headers={"Authorization": header}) as ws:
            events = turn(ws, input="Hi")
            assert events[-1]["type"] == "response.completed"
            assert not any(e.get("type") == "[DONE]" for e in events)


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic bm90LWEtdG9rZW4="])
def test_a_handshake_without_a_valid_token_is_a_401_with_an_error_body(server: Server, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server), additional_headers=headers, open_timeout=10)
    response = refused.value.response
    assert response.status_code == 401
    error = json.loads(response.body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key" and error["message"]


def test_the_sdk_is_refused_the_handshake_with_a_bad_key(server: Server) -> None:
    client = openai.OpenAI(base_url=server.v1, api_key="nope", max_retries=0)
    with pytest.raises(InvalidStatus), client.responses.connect():
        pass


@pytest.mark.parametrize(("message", "param", "code"), [
    ({"type": "response.create", "model": MODEL, "input": "x", "stream": True}, "stream", "unsupported_parameter"),
    ({"type": "response.create", "model": MODEL, "input": "x", "stream": False}, "stream", "unsupported_parameter"),
    ({"type": "response.create", "model": MODEL, "input": "x", "background": True}, "background",
     "unsupported_parameter"),
    ({"type": "response.create", "model": MODEL, "input": "x", "stream_options": {}}, "stream_options",
     "unsupported_parameter"),
    ({"type": "response.cancel"}, "type", "invalid_value"),
    ({"model": MODEL, "input": "x"}, "type", "missing_required_parameter"),
    ({"type": "response.create", "input": "x"}, "model", "missing_required_parameter"),
    ({"type": "response.create", "model": MODEL, "input": "x", "temperature": 9}, "temperature", None),
    ({"type": "response.create", "model": "no-such-model", "input": "x"}, "model", None),
])
def test_bad_messages_get_an_error_message_and_the_socket_stays_usable(
        sock: ClientConnection, message: dict[str, Any], param: str, code: str | None) -> None:
    sock.send(json.dumps(message))
    error = json.loads(sock.recv(timeout=30))
    assert set(error) == {"type", "status", "error"} and error["type"] == "error"
    assert error["status"] == (404 if message.get("model") == "no-such-model" else 400)
    assert set(error["error"]) == {"type", "code", "message", "param"}
    assert error["error"]["param"] == param
    if code is not None:
        assert error["error"]["code"] == code
    assert turn(sock, input="still here?")[-1]["type"] == "response.completed"


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", "", '{"type": "response.create", "model": "'])
def test_what_is_not_a_json_object_is_an_invalid_json_error(sock: ClientConnection, raw: str) -> None:
    sock.send(raw)
    error = json.loads(sock.recv(timeout=30))
    assert (error["status"], error["error"]["code"]) == (400, "invalid_json")
    sock.send(raw.encode())  # messages are text frames
    binary = json.loads(sock.recv(timeout=30))
    assert (binary["status"], binary["error"]["code"]) == (400, "invalid_value")
    assert "text frames" in binary["error"]["message"]
    assert turn(sock, input="fine")[-1]["type"] == "response.completed"


def test_store_false_chains_continue_from_the_connection(server: Server, sock: ClientConnection) -> None:
    first = turn(sock, input="Remember the number 7", store=False)[-1]["response"]
    second = turn(sock, input="Which number?", store=False, previous_response_id=first["id"])[-1]["response"]
    assert second["status"] == "completed" and second["previous_response_id"] == first["id"]
    # The model saw the whole chain: the history from the socket, then the new input.
    with server.http() as http:
        assert http.get(f"/v1/responses/{second['id']}").status_code == 404  # store=false: not stored
    third = turn(sock, input="And again?", previous_response_id=second["id"])[-1]["response"]
    assert third["status"] == "completed"
    # Only the latest response is kept: the first is nowhere now.
    missing = turn(sock, input="x", previous_response_id=first["id"])[-1]
    assert missing["error"] == {"type": "invalid_request_error", "code": "previous_response_not_found",
                                "message": missing["error"]["message"], "param": "previous_response_id"}


def test_a_failed_continuation_evicts_what_it_continued(sock: ClientConnection) -> None:
    first = turn(sock, input="keep me", store=False)[-1]["response"]
    failed = turn(sock, input="x", previous_response_id=first["id"], temperature=9)[-1]
    assert failed["type"] == "error" and failed["error"]["param"] == "temperature"
    gone = turn(sock, input="x", previous_response_id=first["id"])[-1]
    assert gone["error"]["code"] == "previous_response_not_found"


def test_a_stored_response_continues_over_the_socket_and_unknown_ids_fail(server: Server,
                                                                           sock: ClientConnection) -> None:
    over_http = server.client().responses.create(model=MODEL, input="from HTTP")
    continued = turn(sock, input="over the socket", previous_response_id=over_http.id)[-1]["response"]
    assert continued["status"] == "completed" and continued["previous_response_id"] == over_http.id
    unknown = turn(sock, input="x", previous_response_id="resp_" + "0" * 48)[-1]
    assert (unknown["status"], unknown["error"]["code"]) == (400, "previous_response_not_found")


def test_another_callers_response_is_not_found(server: Server) -> None:
    mine = server.client().responses.create(model=MODEL, input="admin's")
    token = make_user(server, f"ws-{mine.id[-6:]}")
    with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        other = turn(ws, input="x", previous_response_id=mine.id)[-1]
        assert other["error"]["code"] == "previous_response_not_found"


def test_messages_sent_together_run_one_after_the_other(sock: ClientConnection) -> None:
    for text in ("first", "second", "third"):
        sock.send(json.dumps({"type": "response.create", "model": MODEL, "input": text}))
    runs = [until_end(sock) for _ in range(3)]
    for text, events in zip(("first", "second", "third"), runs, strict=True):
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert events[-1]["response"]["output"][0]["content"][0]["text"].endswith(text)
    assert len({events[-1]["response"]["id"] for events in runs}) == 3


def test_a_revoked_token_ends_the_connection_at_its_next_response(server: Server) -> None:
    name = "ws-revoked"
    token = make_user(server, name)
    with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert turn(ws, input="hi")[-1]["type"] == "response.completed"
        with server.http() as http:
            [listed] = http.get("/admin/v1/tokens", params={"principal": name}).json()["data"]
            assert http.delete(f"/admin/v1/tokens/{listed['id']}").status_code == 200
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "again"}))
        error = json.loads(ws.recv(timeout=30))
        assert (error["status"], error["error"]["code"]) == (401, "invalid_api_key")
        assert "revoked" in error["error"]["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_a_client_that_leaves_stops_its_response(server: Server) -> None:
    with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "take your time"}))
        created = json.loads(ws.recv(timeout=30))
        assert created["type"] == "response.created"
    client = server.client()
    wait_until(lambda: client.responses.retrieve(created["response"]["id"]).status == "cancelled",
               what="the abandoned response to be recorded as cancelled")


def test_hosted_tools_run_over_the_socket(sock: ClientConnection) -> None:
    events = turn(sock, input="add twice", tools=[CALC])
    final = events[-1]["response"]
    assert [(i["type"], i.get("output")) for i in final["output"]] == [
        ("function_call", None), ("function_call_output", "3"), ("function_call", None),
        ("function_call_output", "7"), ("message", None)]
    done = [e["item"]["type"] for e in events if e["type"] == "response.output_item.done"]
    assert done == [i["type"] for i in final["output"]]


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("ws-limit")
    text = WORKSPACE.read_text().replace("[limits]\n", "[limits]\nwebsocket_max_s = 1.5\n", 1)
    (folder / "workspace.toml").write_text(text)
    with ThreadServer(f"sqlite:///{folder}/state.db", Path(folder / "workspace.toml")) as running:
        yield running


def test_a_connection_ends_at_its_time_limit_after_its_last_response(short_lived: Server) -> None:
    with connect(ws_url(short_lived), additional_headers={"Authorization": f"Bearer {short_lived.token}"}) as ws:
        assert turn(ws, input="quick")[-1]["type"] == "response.completed"
        error = json.loads(ws.recv(timeout=30))  # nothing more sent: the limit passes while idle
        assert (error["type"], error["status"], error["error"]["code"]) == (
            "error", 400, "websocket_connection_limit_reached")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_messages_past_the_pending_bound_are_refused_and_the_rest_run(sock: ClientConnection) -> None:
    sock.send(json.dumps({"type": "response.create", "model": MODEL, "input": "slow loop", "tools": [CALC]}))
    assert json.loads(sock.recv(timeout=30))["type"] == "response.created"  # it runs: the next ones wait
    for i in range(PENDING + 2):
        sock.send(json.dumps({"type": "response.create", "model": MODEL, "input": f"queued {i}"}))
    ends: list[dict[str, Any]] = []
    refused: list[str] = []
    while len(ends) < PENDING + 1:
        message = json.loads(sock.recv(timeout=30))
        if message["type"] == "error":
            refused.append(message["error"]["code"])
        elif message["type"] in ENDS:
            ends.append(message["response"])
    assert refused == ["too_many_pending_messages"] * 2
    assert ends[0]["status"] == "incomplete"  # the slow one, cut at the workspace's max_turns
    assert [r["output"][0]["content"][0]["text"][-8:] for r in ends[1:]] == [f"queued {i}" for i in range(PENDING)]


def test_databricks_openai_connects_with_its_token_given_to_the_socket(server: Server) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks_openai import DatabricksOpenAI

    workspace = WorkspaceClient(host=server.url, token=server.token, auth_type="pat")
    client = DatabricksOpenAI(workspace_client=workspace, use_ai_gateway=True)
    try:
        # Its HTTP client signs requests; a WebSocket is opened without it, so the header is given here.
        headers = workspace.config.authenticate()
        assert str(client.base_url).rstrip("/").endswith("/ai-gateway/mlflow/v1")
        with client.responses.connect(extra_headers=headers) as conn:
            conn.response.create(model=MODEL, input="Hello from Databricks")
            events = read_sdk(conn)
        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == "test-model (scripted) received: Hello from Databricks"
        with pytest.raises(InvalidStatus) as refused, client.responses.connect():  # its placeholder key alone
            pass
        assert refused.value.response.status_code == 401
    finally:
        client.close()
