"""Runs beyond one request: disconnects, and following a run from another server process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, TOKEN, Server, ThreadServer, wait_until

CALC: Any = {"type": "test_calculator"}


def test_a_stream_abandoned_by_its_client_ends_cancelled(server: Server) -> None:
    body = {"model": MODEL, "input": "take your time", "stream": True}
    with server.http() as http, http.stream("POST", "/v1/responses", json=body) as resp:
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
    response_id = httpx.Response(200, content=first[6:]).json()["response"]["id"]
    client = server.client()
    wait_until(lambda: client.responses.retrieve(response_id).status == "cancelled", what="cancelled status")
    assert client.responses.retrieve(response_id).output == []


@pytest.fixture
def twin_servers(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Two servers sharing one database, as two worker processes would."""
    url = f"sqlite:///{tmp_path}/shared.db"
    with ThreadServer(url) as first, ThreadServer(url) as second:
        yield first, second


def test_resume_a_run_from_another_process(twin_servers: tuple[Server, Server]) -> None:
    first, second = twin_servers
    events = list(first.client().responses.create(model=MODEL, input="background tools", tools=[CALC],
                                                  background=True, stream=True))
    response_id = events[0].response.id
    resumed = list(second.client().responses.retrieve(response_id, stream=True, starting_after=3))
    assert [e.sequence_number for e in resumed] == list(range(4, len(events)))
    assert resumed[-1].type == "response.completed"
    assert second.token == TOKEN


def test_cancel_from_another_process_is_never_overwritten(twin_servers: tuple[Server, Server]) -> None:
    first, second = twin_servers
    created = first.client().responses.create(model=MODEL, input="take your time", background=True)
    wait_until(lambda: second.client().responses.retrieve(created.id).status == "in_progress", what="pickup")
    assert second.client().responses.cancel(created.id).status == "cancelled"
    assert first.client().responses.retrieve(created.id).status == "cancelled"


def test_concurrent_cancels_agree_and_end_the_stream(server: Server) -> None:
    import concurrent.futures

    client = server.client()
    created = client.responses.create(model=MODEL, input="take your time", background=True, stream=True)
    first = next(iter(created))
    response_id = first.response.id
    wait_until(lambda: client.responses.retrieve(response_id).status == "in_progress", what="pickup")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(lambda _: server.client().responses.cancel(response_id).status, range(3)))
    assert statuses == ["cancelled"] * 3
    assert client.responses.retrieve(response_id).status == "cancelled"
    resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=0))
    assert resumed[-1].type == "response.failed" and resumed[-1].response.status == "cancelled"


def test_cancel_from_another_process_stops_the_run(twin_servers: tuple[Server, Server]) -> None:
    first, second = twin_servers
    created = first.client().responses.create(model=MODEL, input="slow loop", tools=[CALC], background=True,
                                              stream=True)
    response_id = next(iter(created)).response.id
    wait_until(lambda: second.client().responses.retrieve(response_id).status == "in_progress", what="pickup")
    assert second.client().responses.cancel(response_id).status == "cancelled"
    log = list(second.client().responses.retrieve(response_id, stream=True, starting_after=-1))
    types = [e.type for e in log]
    assert [e.sequence_number for e in log] == list(range(len(log)))
    assert types[-1] == "response.failed" and log[-1].response.status == "cancelled"
    assert "response.completed" not in types and "response.incomplete" not in types
    final = first.client().responses.retrieve(response_id)
    assert final.status == "cancelled"
    calls = [i.call_id for i in final.output if i.type == "function_call"]
    outputs = [i.call_id for i in final.output if i.type == "function_call_output"]
    assert calls == outputs  # every call is answered, so the response can be continued


def test_cancel_from_another_process_interrupts_a_long_model_call(twin_servers: tuple[Server, Server]) -> None:
    first, second = twin_servers
    created = first.client().responses.create(model=MODEL, input="take your time", background=True, stream=True)
    response_id = next(iter(created)).response.id
    wait_until(lambda: second.client().responses.retrieve(response_id).status == "in_progress", what="pickup")
    assert second.client().responses.cancel(response_id).status == "cancelled"
    # The model call would take a minute; the run notices the cancel within a heartbeat and ends.
    log = list(second.client().responses.retrieve(response_id, stream=True, starting_after=-1))
    assert log[-1].type == "response.failed" and log[-1].response.status == "cancelled"
    assert [e.sequence_number for e in log] == list(range(len(log)))


def test_a_running_response_cannot_be_deleted_from_any_process(twin_servers: tuple[Server, Server]) -> None:
    first, second = twin_servers
    created = first.client().responses.create(model=MODEL, input="take your time", background=True)
    with second.http() as http:
        refused = http.delete(f"/v1/responses/{created.id}")
    assert refused.status_code == 400 and refused.json()["error"]["message"] == "Cannot delete an in-flight response."
    first.client().responses.cancel(created.id)
    second.client().responses.delete(created.id)


def test_a_store_failure_mid_run_ends_the_stream_with_an_error(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "fragile.db"
    with ThreadServer(f"sqlite:///{db}") as srv:
        stream = srv.client().responses.create(model=MODEL, input="slow loop", tools=[CALC], background=True,
                                               stream=True)
        events = iter(stream)
        first = next(events)
        with sqlite3.connect(db) as conn:  # the items table disappears under the running server
            conn.execute("ALTER TABLE os_response_items RENAME TO os_items_away")
        rest = list(events)
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE os_items_away RENAME TO os_response_items")
    assert first.type == "response.created"
    assert [e.type for e in rest[-2:]] == ["error", "response.failed"]
    assert rest[-1].response.error.code == "server_error"
