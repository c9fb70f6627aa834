"""Inference tables: a row per request with the gateway's columns, for JSON, streamed, background and
refused requests, on SQLite and PostgreSQL, and the 10 MiB payload cap."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import sqlalchemy as sa

from opensupervisor.runs.inference_tables import Exchange, InferenceTables, TableConfig
from tests.conftest import SCRATCH, TOKEN, Server, ThreadServer, require_postgres, wait_until

ANSWER = "Logged and answered."


def workspace(folder: Path, catalog: str) -> Path:
    path = folder / "workspace.toml"
    path.write_text(f'''name = "logged"

[models.agent]
provider = "scripted"
[[models.agent.script]]
turns = [{{ text = "{ANSWER}" }}]

[inference_table]
catalog_name = "{catalog}"
schema_name = "logs"
table_name_prefix = "agent"
''', encoding="utf-8")
    return path


def rows(engine: sa.Engine, schema: str | None, count: int) -> list[dict[str, Any]]:
    def enough() -> bool:
        try:
            with engine.connect() as conn:
                return int(conn.execute(sa.text(f"SELECT count(*) FROM {_name(schema)}")).scalar_one()) >= count
        except sa.exc.SQLAlchemyError:  # the table is made with the first batch
            return False

    wait_until(enough, what=f"{count} inference table rows")
    with engine.connect() as conn:
        found = [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {_name(schema)}"))]
    return sorted(found, key=lambda r: str(r["request_time"]))


def _name(schema: str | None) -> str:
    return f'"{schema}".agent_payload' if schema else "agent_payload"


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    folder = tmp_path_factory.mktemp("inference")
    catalog = f"c{secrets.token_hex(4)}"
    with ThreadServer(f"sqlite:///{folder}/state.db", workspace(folder, catalog)) as running:
        yield running, catalog


def test_json_streamed_background_and_refused_requests_are_logged(logged: tuple[Server, str]) -> None:
    server, catalog = logged
    client = server.client()
    plain = client.responses.create(model="agent", input="hello", extra_body={"client_request_id": "mine-1"})
    with client.responses.stream(model="agent", input="stream please") as stream:
        streamed = stream.get_final_response()
    background = client.responses.create(model="agent", input="later", background=True)
    wait_until(lambda: client.responses.retrieve(background.id).status == "completed", what="the background run")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="agent", input="hi", tools=[{"type": "web_search_preview"}])
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")
    engine = sa.create_engine(f"sqlite:///{SCRATCH}/tables/{catalog}.logs.db")
    found = rows(engine, None, 5)
    by_id = {r["databricks_request_id"]: r for r in found}
    row = by_id[plain.id]
    assert row["client_request_id"] == "mine-1" and row["status_code"] == 200 and row["requester"] == "admin"
    assert row["served_entity_id"] == "agent" and orjson.loads(row["logging_error_codes"]) == []
    assert orjson.loads(row["request"])["input"] == "hello"
    assert str(row["request_date"]) == str(row["request_time"])[:10]
    assert orjson.loads(row["response"])["output"][0]["content"][0]["text"] == ANSWER
    aggregated = orjson.loads(by_id[streamed.id]["response"])  # the stream, stored as one response
    assert aggregated["status"] == "completed" and aggregated["output"][0]["id"] == streamed.output[0].id
    assert aggregated["output"][0]["content"][0]["text"] == streamed.output_text == ANSWER
    assert orjson.loads(by_id[background.id]["response"])["status"] == "completed"
    refused = [r for r in found if r["status_code"] >= 400]
    assert sorted(r["status_code"] for r in refused) == [400, 404]
    assert all(orjson.loads(r["response"])["error"]["message"] for r in refused)
    engine.dispose()


def test_a_request_over_the_cap_is_logged_without_its_payload(logged: tuple[Server, str]) -> None:
    server, catalog = logged
    big = "x" * (10 * 1024 * 1024 + 10)
    answered = server.client().responses.create(model="agent", input=big, store=False)
    engine = sa.create_engine(f"sqlite:///{SCRATCH}/tables/{catalog}.logs.db")

    def logged_row() -> dict[str, Any] | None:
        return next((r for r in rows(engine, None, 1) if r["databricks_request_id"] == answered.id), None)

    wait_until(lambda: logged_row() is not None, what="the big request's row")
    row = logged_row()
    assert row is not None and row["request"] is None and row["response"] is not None
    assert orjson.loads(row["logging_error_codes"]) == ["MAX_REQUEST_SIZE_EXCEEDED"]
    engine.dispose()


def test_a_response_over_the_cap_is_not_stored(tmp_path: Path) -> None:
    tables = InferenceTables(TableConfig("c", "s", "p", max_payload_bytes=1000), tmp_path)
    row = tables.row(Exchange("resp_1", 0.0, 0.5, 200, {"input": "hi"}, {"output": "y" * 2000}, "ann", "agent"))
    assert row["request"] == '{"input":"hi"}' and row["response"] is None and row["execution_duration_ms"] == 500
    assert orjson.loads(row["logging_error_codes"]) == ["MAX_RESPONSE_SIZE_EXCEEDED"]
    garbled = tables.row(Exchange("x", 0.0, 0.0, 400, None, {"error": {}}, "ann", None))  # never kept: secrets
    assert garbled["request"] is None and orjson.loads(garbled["logging_error_codes"]) == ["REQUEST_NOT_JSON"]


def test_tables_go_to_a_postgresql_schema(tmp_path: Path) -> None:
    url = require_postgres()
    catalog = f"c{secrets.token_hex(4)}"
    with ThreadServer(url, workspace(tmp_path, catalog)) as running:
        answered = openai.OpenAI(base_url=running.v1, api_key=TOKEN, max_retries=0).responses.create(
            model="agent", input="hello")
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            found = rows(engine, f"{catalog}__logs", 1)
            assert [r["databricks_request_id"] for r in found] == [answered.id]
            assert found[0]["request_date"] == found[0]["request_time"].date()
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{catalog}__logs" CASCADE'))
            engine.dispose()
