"""The HTTP edge of a real ``opensupervisor serve``: malformed and oversized requests, slow clients,
and the connection limit, spoken over raw sockets; and its WebSockets."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import MODEL, ProcessServer, Server

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 120
MAX_BODY_BYTES = 4096
# How late past its bound a connection may still be closed (a loaded 2-core machine).
SLACK_S = 3.0
WORKSPACE = f"""
name = "edge"

[limits]
header_timeout_s = {HEADER_TIMEOUT_S}
body_timeout_s = {BODY_TIMEOUT_S}
max_connections = {MAX_CONNECTIONS}
max_header_bytes = 16384
max_body_bytes = {MAX_BODY_BYTES}

[models.{MODEL}]
provider = "scripted"
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("edge")
    config = folder / "workspace.toml"
    config.write_text(WORKSPACE)
    with ProcessServer(folder, config=config, database_url=f"sqlite:///{Path(folder) / 'state.db'}") as srv:
        yield srv


def _connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_to_close(sock: socket.socket, *, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails past ``deadline``."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the server kept the connection open; it sent {data[:200]!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _read_one(sock: socket.socket, *, deadline: float) -> bytes:
    """One whole response (its head, then as many body bytes as it declares), however the bytes
    arrive; fails past ``deadline``."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                return data
        left = deadline - time.monotonic()
        assert left > 0, f"the server sent no whole response; it sent {data[:200]!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _response(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _exchange(server: Server, request: bytes, *, within: float = 10.0) -> tuple[int, dict[str, str], dict[str, Any]]:
    with _connect(server) as sock:
        sock.sendall(request)
        return _response(_read_to_close(sock, deadline=time.monotonic() + within))


def _assert_error(status: int, headers: dict[str, str], body: dict[str, Any], expected: int, code: str) -> None:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


def test_content_length_with_transfer_encoding_is_a_json_400(edge: Server) -> None:
    request = (b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\n")
    status, headers, body = _exchange(edge, request)
    _assert_error(status, headers, body, 400, "invalid_http_request")
    assert "Transfer-Encoding" in body["error"]["message"]


@pytest.mark.parametrize("request_bytes", [b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", b"NOT HTTP AT ALL\r\n\r\n",
                                           b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                                           b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
def test_malformed_http_is_a_json_400(edge: Server, request_bytes: bytes) -> None:
    _assert_error(*_exchange(edge, request_bytes), 400, "invalid_http_request")


def test_a_100_kb_request_line_is_a_json_414(edge: Server) -> None:
    request = b"GET /v1/models?q=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    _assert_error(*_exchange(edge, request), 414, "uri_too_long")


@pytest.mark.parametrize("sizes", [(1000,) * 40, (40_000,)], ids=["many headers", "one huge header"])
def test_oversized_headers_are_a_json_431(edge: Server, sizes: tuple[int, ...]) -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * size) for i, size in enumerate(sizes))
    status, response_headers, body = _exchange(edge, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    _assert_error(status, response_headers, body, 431, "request_headers_too_large")


def test_a_head_of_blank_lines_past_the_bound_is_refused(edge: Server) -> None:
    with _connect(edge) as sock:
        sock.sendall(b"\r\n" * 20_000)
        status, headers, body = _response(_read_to_close(sock, deadline=time.monotonic() + 10))
    assert status in (400, 431) and headers["content-type"] == "application/json", body


def test_headers_just_under_the_bound_are_served(edge: Server) -> None:
    response = httpx.get(f"{edge.url}/healthz", headers={"X-Filler": "v" * 15_000})
    assert response.status_code == 200


def _trickle(sock: socket.socket, data: bytes, *, deadline: float) -> bytes:
    """Send ``data`` a byte at a time, one each time the server stays silent for 0.1 s, until it
    answers and closes; returns what it sent."""
    for byte in data:
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            return _read_to_close(sock, deadline=deadline)
        assert time.monotonic() < deadline, "the server kept a slow client past its bound"
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return _read_to_close(sock, deadline=deadline)
    raise AssertionError("the whole request went through a byte at a time")


def test_headers_sent_a_byte_at_a_time_are_cut_off(edge: Server) -> None:
    started = time.monotonic()
    with _connect(edge) as sock:
        raw = _trickle(sock, b"GET /healthz HTTP/1.1\r\n" + b"X-Slow: " + b"s" * 500,
                       deadline=started + HEADER_TIMEOUT_S + SLACK_S)
    assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.2
    _assert_error(*_response(raw), 408, "request_timeout")


def test_a_body_sent_a_byte_at_a_time_is_cut_off(edge: Server) -> None:
    head = (f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {edge.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 3000\r\n\r\n").encode()
    with _connect(edge) as sock:
        sock.sendall(head)
        started = time.monotonic()
        raw = _trickle(sock, b'{"model": "' + b"m" * 2990, deadline=started + BODY_TIMEOUT_S + SLACK_S)
    assert time.monotonic() - started >= BODY_TIMEOUT_S - 0.2
    _assert_error(*_response(raw), 408, "request_timeout")


def test_a_silent_connection_is_closed(edge: Server) -> None:
    started = time.monotonic()
    with _connect(edge) as sock:
        raw = _read_to_close(sock, deadline=started + HEADER_TIMEOUT_S + SLACK_S)
    _assert_error(*_response(raw), 408, "request_timeout")


def test_many_slow_clients_neither_starve_others_nor_stay(edge: Server) -> None:
    slow = [_connect(edge) for _ in range(MAX_CONNECTIONS - 10)]
    try:
        opened = time.monotonic()
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        assert httpx.get(f"{edge.url}/healthz", timeout=5).status_code == 200
        extra = [_connect(edge) for _ in range(20)]  # past the limit: some are refused at once
        try:
            refused = [_response(_read_to_close(s, deadline=time.monotonic() + 5)) for s in extra[-5:]]
        finally:
            for sock in extra:
                sock.close()
        for status, headers, body in refused:
            _assert_error(status, headers, body, 503, "server_overloaded")
            assert headers["retry-after"] == "1"
        for sock in slow:
            _assert_error(*_response(_read_to_close(sock, deadline=opened + HEADER_TIMEOUT_S + SLACK_S)),
                          408, "request_timeout")
    finally:
        for sock in slow:
            sock.close()
    assert httpx.get(f"{edge.url}/healthz", timeout=5).status_code == 200


def test_a_declared_oversize_body_is_refused_before_it_is_sent(edge: Server) -> None:
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {edge.token}\r\n"
            f"Content-Length: {10**12}\r\n\r\n").encode()
    with _connect(edge) as sock:
        sock.sendall(head)
        status, _, body = _response(_read_one(sock, deadline=time.monotonic() + 10))
    assert status == 413
    assert body["error"]["code"] == "request_too_large"


ROUTES = [("POST", "/v1/responses"), ("POST", "/mlflow/v1/responses"), ("POST", "/v1/embeddings"),
          ("POST", "/admin/v1/principals"), ("PUT", f"/admin/v1/rate-limits/{MODEL}"),
          ("PUT", "/admin/v1/functions/main.big.f"), ("PUT", "/admin/v1/connections/big"),
          ("PUT", "/v1/databricks/credential"), ("POST", "/api/2.0/genie/spaces/s/start-conversation"),
          ("POST", "/admin/v1/knowledge_assistants/k/ingest"), ("POST", "/no/such/route")]
# These answer 404 (nothing of that name here) before they read a body; only a declared length is refused.
UNREAD = {"/v1/databricks/credential", "/api/2.0/genie/spaces/s/start-conversation",
          "/admin/v1/knowledge_assistants/k/ingest", "/no/such/route"}


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_bounds_its_body(edge: Server, method: str, path: str) -> None:
    body = json.dumps({"model": MODEL, "input": "x" * MAX_BODY_BYTES}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes received are counted
        yield from (body[i:i + 512] for i in range(0, len(body), 512))

    with edge.http() as http:
        for content in (body,) if path in UNREAD else (body, chunks()):
            resp = http.request(method, path, content=content)
            assert resp.status_code == 413, resp.text
            assert resp.json()["error"] == {"message": f"The request body is larger than the limit of "
                                            f"{MAX_BODY_BYTES} bytes.", "type": "invalid_request_error",
                                            "param": None, "code": "request_too_large"}


def _socket(server: Server) -> ClientConnection:
    url = server.url.replace("http://", "ws://") + "/v1/responses"
    return connect(url, additional_headers={"Authorization": f"Bearer {server.token}"}, open_timeout=10)


def _turn(ws: ClientConnection, text: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": text}))
    while True:
        event = json.loads(ws.recv(timeout=30))
        if event["type"] in ("response.completed", "error"):
            return dict(event)


def test_a_websocket_outlives_the_body_timeout_of_its_handshake(edge: Server) -> None:
    with _socket(edge) as ws:
        assert _turn(ws, "first")["type"] == "response.completed"
        # Past the bound a request body has (and its grace): the upgraded connection is not an HTTP
        # request waiting for its body any more.
        time.sleep(BODY_TIMEOUT_S + 1.5)
        assert _turn(ws, "second")["type"] == "response.completed"


def test_a_websocket_message_past_the_body_bound_closes_the_socket(edge: Server) -> None:
    with _socket(edge) as ws:
        ws.send(json.dumps({"type": "response.create", "model": MODEL, "input": "x" * (2 * MAX_BODY_BYTES)}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
    with _socket(edge) as ws:  # the server goes on
        assert _turn(ws, "after")["type"] == "response.completed"
