"""A database that cannot be reached: every route that needs it answers 503 with Retry-After and
an OpenAI error body (never a 500), and the server recovers once the database is back."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import MODEL, ThreadServer, own_database, require_postgres, wait_until

UNAVAILABLE = {"message": "The server's database cannot be reached right now; retry later.",
               "type": "server_error", "param": None, "code": "store_unavailable"}


@contextlib.contextmanager
def unreachable(url: str) -> Iterator[None]:
    """No connection to the database ``url`` names, new or open, until the block ends."""
    name = make_url(url).database
    with psycopg.connect(require_postgres(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            yield
        finally:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


def check_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["retry-after"] == "1"
    assert resp.json() == {"error": UNAVAILABLE}


def test_an_unreachable_store_answers_503_and_the_server_recovers() -> None:
    with own_database(require_postgres()) as url, ThreadServer(url) as server, server.http() as http:
        body: dict[str, Any] = {"model": MODEL, "input": "quick"}
        done = http.post("/v1/responses", json=body).json()
        queued = http.post("/v1/responses", json={**body, "input": "take your time", "background": True}).json()
        with unreachable(url):
            for resp in (http.post("/v1/responses", json=body),
                         http.post("/v1/responses", json={**body, "background": True}),
                         http.get(f"/v1/responses/{done['id']}"),
                         http.get(f"/v1/responses/{queued['id']}", params={"stream": "true"}),
                         http.get(f"/v1/responses/{done['id']}/input_items"),
                         http.post(f"/v1/responses/{queued['id']}/cancel"),
                         http.delete(f"/v1/responses/{done['id']}")):
                check_unavailable(resp)
        wait_until(lambda: http.post("/v1/responses", json=body).status_code == 200, timeout=30,
                   what="the server to reach its database again")
        assert http.get(f"/v1/responses/{done['id']}").json()["status"] == "completed"
        assert http.post(f"/v1/responses/{queued['id']}/cancel").json()["status"] == "cancelled"


def test_connections_the_database_dropped_are_replaced_without_an_error() -> None:
    """Pooled connections are not pinged before each use: one the database closed (a restart, an idle
    timeout) fails its first statement, and the request is answered on a fresh connection."""
    with own_database(require_postgres()) as url, ThreadServer(url) as server, server.http() as http:
        body: dict[str, Any] = {"model": MODEL, "input": "quick"}
        done = http.post("/v1/responses", json=body).json()
        for _ in range(3):
            with psycopg.connect(require_postgres(), autocommit=True) as admin:
                dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                                        (make_url(url).database,)).fetchone()
            assert dropped is not None and dropped[0] > 0
            assert http.get(f"/v1/responses/{done['id']}").json()["status"] == "completed"
            assert http.post("/v1/responses", json=body).status_code == 200
            run = http.post("/v1/responses", json={**body, "background": True}).json()  # DBOS's connections too
            wait_until(lambda: http.get(f"/v1/responses/{run['id']}").json()["status"] == "completed",  # noqa: B023
                       timeout=30, what="a background run after its connections were dropped")


def test_a_websocket_handshake_with_an_unreachable_store_is_a_503() -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with own_database(require_postgres()) as url, ThreadServer(url) as server, unreachable(url):
        # A personal token must be looked up in the store; the admin token need not be.
        headers = {"Authorization": "Bearer osp_" + "x" * 40}
        with pytest.raises(InvalidStatus) as refused:
            connect(server.url.replace("http://", "ws://") + "/v1/responses", additional_headers=headers,
                    open_timeout=30)
        response = refused.value.response
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert json.loads(response.body) == {"error": UNAVAILABLE}
        # A route without auth still answers, whatever token the request carries.
        assert httpx.get(f"{server.url}/healthz", headers=headers, timeout=30).status_code == 200
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            check_unavailable(http.post("/v1/responses", json={"model": MODEL, "input": "quick"}))
