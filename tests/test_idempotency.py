"""``Idempotency-Key`` on creates: a retry answers with the response the first attempt made and never
runs it twice, through the real SDKs, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from databricks.sdk import WorkspaceClient
from databricks_openai import DatabricksOpenAI

from opensupervisor.store import Store
from opensupervisor.store.idempotency import IdempotencyKeys
from tests.conftest import MODEL, Server, wait_until

LEDGER: Any = {"type": "test_ledger"}
HEADER = "Idempotency-Key"


def key() -> dict[str, str]:
    return {HEADER: f"idem-{uuid.uuid4()}"}


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file the ``test_ledger`` tool records each execution in (read when the tool runs)."""
    path = tmp_path / "ledger.db"
    monkeypatch.setenv("OPENSUPERVISOR_TEST_LEDGER", str(path))
    return path


def executions(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])


def user_token(server: Server) -> str:
    name = f"idem-{uuid.uuid4().hex[:8]}"
    with server.http() as http:
        assert http.post("/admin/v1/principals", json={"name": name}).status_code == 200
        return str(http.post(f"/admin/v1/principals/{name}/tokens", json={}).json()["token"])


def error(exc: openai.APIStatusError) -> dict[str, Any]:
    body: dict[str, Any] = exc.response.json()["error"]
    return body


def test_a_retried_background_create_answers_with_the_same_response_and_runs_once(
        any_server: Server, ledger: Path) -> None:
    client, headers = any_server.client(), key()
    first = client.responses.create(model=MODEL, input="idem-ledger", tools=[LEDGER], background=True,
                                    extra_headers=headers)
    again = client.responses.with_raw_response.create(model=MODEL, input="idem-ledger", tools=[LEDGER],
                                                      background=True, extra_headers=headers)
    assert again.parse().id == first.id and again.headers["Idempotent-Replayed"] == "true"
    wait_until(lambda: client.responses.retrieve(first.id).status == "completed", what="the run to complete")
    ended = client.responses.create(model=MODEL, input="idem-ledger", tools=[LEDGER], background=True,
                                    extra_headers=headers)
    assert ended.id == first.id and ended.status == "completed" and ended.output_text == "Recorded once."
    assert executions(ledger) == 1


def test_a_retried_foreground_create_answers_with_the_stored_response(server: Server) -> None:
    client, headers = server.client(), key()
    first = client.responses.create(model=MODEL, input="weather in Paris?", extra_headers=headers)
    again = client.responses.create(model=MODEL, input="weather in Paris?", extra_headers=headers)
    assert again.id == first.id and again.model_dump() == first.model_dump()
    streamed = client.responses.create(model=MODEL, input="a stream", stream=True, extra_headers=(k := key()))
    created = next(e for e in streamed if e.type == "response.completed").response
    replayed = list(client.responses.create(model=MODEL, input="a stream", stream=True, extra_headers=k))
    assert replayed[-1].type == "response.completed" and replayed[-1].response.id == created.id


def test_the_same_key_with_another_body_is_a_conflict(server: Server) -> None:
    client, headers = server.client(), key()
    client.responses.create(model=MODEL, input="one", extra_headers=headers)
    with pytest.raises(openai.ConflictError) as raised:
        client.responses.create(model=MODEL, input="two", extra_headers=headers)
    assert error(raised.value)["param"] == HEADER and error(raised.value)["code"] == "idempotency_key_reused"
    assert raised.value.response.headers["x-should-retry"] == "false"  # the SDKs would retry a 409 in vain
    # The route is part of the request: the same body on a Databricks route is another request.
    with server.http() as http:
        other = http.post("/mlflow/v1/responses", json={"model": MODEL, "input": "one"}, headers=headers)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.parametrize("bad", ["", "x" * 256, "tab\there", "clé"])
def test_a_malformed_key_is_refused(server: Server, bad: str) -> None:
    with server.http() as http:
        resp = http.post("/v1/responses", json={"model": MODEL, "input": "hi"},
                         headers={HEADER: bad.encode("utf-8")})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == HEADER and resp.json()["error"]["code"] == "invalid_idempotency_key"


def test_a_key_needs_store(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        server.client().responses.create(model=MODEL, input="hi", store=False, extra_headers=key())
    assert error(raised.value)["param"] == HEADER


def test_a_refused_first_attempt_leaves_the_key_for_a_corrected_retry(server: Server) -> None:
    client, headers = server.client(), key()
    for _ in range(2):  # refused again, not a conflict: nothing was stored under the key
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="no-such-model", input="hi", extra_headers=headers)
    done = client.responses.create(model=MODEL, input="hi", extra_headers=headers)
    assert client.responses.create(model=MODEL, input="hi", extra_headers=headers).id == done.id


def test_keys_are_per_principal(server: Server) -> None:
    headers = key()
    mine = server.client().responses.create(model=MODEL, input="hi", extra_headers=headers)
    other = openai.OpenAI(base_url=server.v1, api_key=user_token(server), max_retries=0)
    theirs = other.responses.create(model=MODEL, input="hi", extra_headers=headers)
    assert theirs.id != mine.id
    assert other.responses.create(model=MODEL, input="hi", extra_headers=headers).id == theirs.id


def test_a_deleted_response_frees_its_key(server: Server) -> None:
    client, headers = server.client(), key()
    first = client.responses.create(model=MODEL, input="hi", extra_headers=headers)
    client.responses.delete(first.id)
    assert client.responses.create(model=MODEL, input="hi", extra_headers=headers).id != first.id


@pytest.mark.parametrize("background", [True, False])
def test_concurrent_creates_with_one_key_make_one_run(any_server: Server, ledger: Path, background: bool) -> None:
    headers = key()

    async def race() -> list[str]:
        client = any_server.async_client()
        async with client:
            created = await asyncio.gather(*[
                client.responses.create(model=MODEL, input="idem-ledger", tools=[LEDGER], background=background,
                                        extra_headers=headers) for _ in range(4)])
        return [r.id for r in created]

    ids = asyncio.run(race())
    assert len(set(ids)) == 1
    client = any_server.client()
    wait_until(lambda: client.responses.retrieve(ids[0]).status == "completed", what="the run to complete")
    assert executions(ledger) == 1


def test_a_retry_while_the_first_foreground_run_goes_on_is_told_to_retry_later(server: Server) -> None:
    client, headers = server.client(timeout=30), key()
    first: list[str] = []
    thread = threading.Thread(target=lambda: first.append(
        client.responses.create(model=MODEL, input="idem-slow", extra_headers=headers).id))
    thread.start()
    time.sleep(0.5)
    with pytest.raises(openai.ConflictError) as raised:
        client.responses.create(model=MODEL, input="idem-slow", extra_headers=headers)
    assert error(raised.value)["code"] == "idempotency_key_in_use" and error(raised.value)["param"] == HEADER
    assert raised.value.response.headers["Retry-After"] == "1"
    thread.join()
    assert client.responses.create(model=MODEL, input="idem-slow", extra_headers=headers).id == first[0]


@pytest.fixture
def dbx(server: Server) -> Iterator[DatabricksOpenAI]:
    client = DatabricksOpenAI(workspace_client=WorkspaceClient(host=server.url, token=server.token, auth_type="pat"),
                              use_ai_gateway=True)
    yield client
    client.close()


def test_databricks_openai_sends_the_key_per_call(dbx: DatabricksOpenAI) -> None:
    headers = key()
    first = dbx.responses.create(model=MODEL, input="hi", background=True, extra_headers=headers)
    assert dbx.responses.create(model=MODEL, input="hi", background=True, extra_headers=headers).id == first.id


def test_a_claim_whose_process_died_before_storing_anything_is_taken_over(tmp_path: Path) -> None:
    async def check() -> None:
        store = Store(f"sqlite:///{tmp_path / 'keys.db'}")
        await store.migrate()
        try:
            keys = IdempotencyKeys(store, ttl_s=60)
            assert (await keys.claim("alice", "k", "h", "gone-process")).state == "new"
            # Not a registered executor: nothing came of its claim, so the next request takes it.
            assert (await keys.claim("alice", "k", "h", "live-process")).state == "new"
            assert (await keys.claim("alice", "k", "other", "gone-process")).state == "mismatch"
            await keys.bind("alice", "k", "resp_never_stored")
            assert (await keys.claim("alice", "k", "h", "live-process")).state == "pending"
            await keys.release("alice", "k", "resp_never_stored")  # not stored: the key is free again
            assert (await keys.claim("alice", "k", "h", "live-process")).state == "new"
            assert await IdempotencyKeys(store).purge() == 0  # within its lifetime
            await IdempotencyKeys(store, ttl_s=0).claim("bob", "k", "h", "live-process")
            assert await IdempotencyKeys(store).purge() == 1  # past its lifetime: the purge task removes it
        finally:
            await store.close()

    asyncio.run(check())
