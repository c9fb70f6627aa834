"""``genie_space``: text-to-SQL over real SQLite, DuckDB and PostgreSQL databases, through the HTTP API."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import psycopg
import pytest

from opensupervisor.errors import ToolError
from opensupervisor.identity import ADMIN
from opensupervisor.tools.sql_engines import ReadOnlyDatabase
from tests.conftest import Server, ThreadServer, require_postgres

REVIEWS = [(1, "Great product", 0), (2, "Broken on arrival, refund now!", 1), (3, "Fine", 0),
           (4, "It caught fire", 1)]
COUNT_SQL = "SELECT count(*) AS urgent FROM reviews WHERE urgent = 1"


def sql_reply(sql: str, description: str = "Counts urgent reviews") -> str:
    return orjson.dumps({"sql": sql, "description": description}).decode()


def scripted_space_workspace(folder: Path, spaces: str) -> Path:
    """A workspace whose model asks the space, then answers; the space's inner model call is scripted too."""
    def turn(text: str) -> str:
        return "{ text = " + orjson.dumps(text).decode() + " }"

    path = folder / "workspace.toml"
    path.write_text(f"""
name = "genie-tests"

[models.sql]
provider = "scripted"

[[models.sql.script]]
when = "how many urgent reviews"
turns = [{turn(sql_reply(COUNT_SQL))}]

[[models.sql.script]]
when = "wipe the reviews"
turns = [{turn(sql_reply("DROP TABLE reviews"))}]
repeat_last = true

[[models.sql.script]]
when = "first try badly"
turns = [{turn(sql_reply("SELECT * FROM secrets"))}, {turn(sql_reply(COUNT_SQL))}]

[[models.sql.script]]
when = "count via the space"
turns = [
  {{ tool_calls = [{{ name = "genie_reviews", arguments = {{ question = "How many urgent reviews are there?" }} }}] }},
  {{ text = "Two reviews are urgent." }},
]

[[models.sql.script]]
when = "attack via the space"
turns = [
  {{ tool_calls = [{{ name = "genie_reviews", arguments = {{ question = "Please wipe the reviews table" }} }}] }},
  {{ text = "I could not do that." }},
]

{spaces}
""")
    return path


def make_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, body TEXT, urgent INTEGER)")
        conn.execute("CREATE TABLE secrets (token TEXT)")
        conn.executemany("INSERT INTO reviews VALUES (?, ?, ?)", REVIEWS)
        conn.execute("INSERT INTO secrets VALUES ('hunter2')")


def space(space_id: str, url: str, tables: str = '["reviews"]') -> str:
    return f"""
[genie_spaces.{space_id}]
database_url = "{url}"
tables = {tables}
description = "Customer reviews"
instructions = "urgent = 1 marks a review that needs attention."
column_descriptions = {{ "reviews.urgent" = "1 when the review needs attention" }}
max_attempts = 2
[[genie_spaces.{space_id}.example_queries]]
question = "List the urgent reviews"
sql = "SELECT id, body FROM reviews WHERE urgent = 1 ORDER BY id"
"""


@pytest.fixture(scope="module")
def sqlite_space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("genie")
    make_sqlite(folder / "reviews.db")
    config = scripted_space_workspace(folder, space("reviews", "sqlite:///reviews.db"))
    with ThreadServer(f"sqlite:///{folder}/state.db", config) as server:
        yield server, folder / "reviews.db"


def genie(space_id: str = "reviews") -> Any:
    return {"type": "genie_space", "genie_space": {"id": space_id, "description": "Answers review questions with SQL"}}


def outputs(response: Any) -> list[str]:
    return [item.output for item in response.output if item.type == "function_call_output"]


def test_the_model_asks_the_space_and_answers(sqlite_space: tuple[Server, Path]) -> None:
    server, _ = sqlite_space
    response = server.client().responses.create(model="sql", input="count via the space", tools=[genie()])
    call, output, answer = response.output
    assert call.type == "function_call" and call.name == "genie_reviews" and call.status == "completed"
    assert output.type == "function_call_output" and output.call_id == call.call_id
    assert output.output == (f"SQL: {COUNT_SQL}\n\nDescription: Counts urgent reviews\n\n"
                             "|   urgent |\n|----------|\n|        2 |\n\nRow count: 1 rows")
    assert answer.type == "message" and response.output_text == "Two reviews are urgent."


def test_the_older_genie_dialect_names_the_same_space(sqlite_space: tuple[Server, Path]) -> None:
    """``{"type": "genie", "genie": {"name", "description", "space_id"}}``, from the Supervisor API's first
    version (published apps still send it)."""
    server, _ = sqlite_space
    older: Any = {"type": "genie", "genie": {"name": "reviews", "description": "Reviews", "space_id": "reviews"}}
    response = server.client().responses.create(model="sql", input="count via the space", tools=[older])
    assert response.output[0].name == "genie_reviews" and response.output_text == "Two reviews are urgent."
    with pytest.raises(openai.BadRequestError) as info:
        server.client().responses.create(model="sql", input="hi", tools=[
            {"type": "genie", "genie": {"name": "x", "space_id": "nope"}}])
    assert info.value.body["param"] == "tools[0].genie.space_id"


def test_a_destructive_question_writes_nothing(sqlite_space: tuple[Server, Path]) -> None:
    server, db = sqlite_space
    response = server.client().responses.create(model="sql", input="attack via the space", tools=[genie()])
    [output] = outputs(response)
    assert output == ("Error: no usable SQL after 2 attempts; last problem: only SELECT queries are allowed, "
                      "not DROP")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM reviews").fetchone() == (4,)


def test_an_unknown_space_is_a_400_naming_its_id(sqlite_space: tuple[Server, Path]) -> None:
    server, _ = sqlite_space
    with pytest.raises(openai.BadRequestError) as info:
        server.client().responses.create(model="sql", input="hi", tools=[genie("nope")])
    assert info.value.body["param"] == "tools[0].genie_space.id"
    assert info.value.body["message"] == "Genie space 'nope' does not exist in this workspace."


@pytest.mark.anyio
async def test_refused_sql_goes_back_to_the_model_once(sqlite_space: tuple[Server, Path]) -> None:
    from opensupervisor.models.catalog import ModelCatalog
    from opensupervisor.tools.genie import GenieSpaces
    from opensupervisor.workspace import load_workspace

    _, db = sqlite_space
    ws = load_workspace(db.parent / "workspace.toml")
    spaces = GenieSpaces(ws, ModelCatalog(ws))
    tools = spaces.factory(_spec(), ws)
    ctx: Any = _Ctx()
    text = await tools.call_tool(ctx, "genie_reviews", {"question": "first try badly, then count"})
    assert text.startswith(f"SQL: {COUNT_SQL}") and "|        2 |" in text
    example = await tools.call_tool(ctx, "genie_reviews", {"question": "list the urgent reviews!"})
    assert example.startswith("SQL: SELECT id, body FROM reviews WHERE urgent = 1 ORDER BY id")
    assert "Trusted example query" in example and "Broken on arrival" in example
    await spaces.aclose()


class _Body:
    model = "sql"


class _Request:
    body = _Body()


class _Ctx:
    request = _Request()
    principal = ADMIN


def _spec() -> Any:
    from opensupervisor.wire.request import ToolSpec

    return ToolSpec(index=0, type="genie_space", config={"id": "reviews"}, raw={})


FORBIDDEN = ["DROP TABLE reviews", "UPDATE reviews SET urgent = 0", "DELETE FROM reviews",
             "ATTACH DATABASE 'x.db' AS x", "PRAGMA writable_schema = 1", "COPY reviews TO 'out.csv'",
             "SELECT 1; DELETE FROM reviews", "SELECT * FROM secrets", "INSERT INTO reviews VALUES (9, 'x', 0)"]


@pytest.mark.parametrize("sql", FORBIDDEN)
def test_the_guard_refuses_writes_files_and_other_tables(sql: str) -> None:
    from opensupervisor.tools.sql_guard import UnsafeSQL, check_query

    for dialect in ("sqlite", "duckdb", "postgres"):
        with pytest.raises(UnsafeSQL):
            check_query(sql, dialect=dialect, tables={"reviews"}, max_rows=10)


def make_duckdb(path: Path) -> None:
    import duckdb

    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE reviews (id INTEGER, body VARCHAR, urgent INTEGER)")
    conn.executemany("INSERT INTO reviews VALUES (?, ?, ?)", REVIEWS)
    conn.close()


@pytest.fixture
def pg_reviews() -> Iterator[tuple[str, str]]:
    url = require_postgres()
    schema = f"genie_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.reviews (id INTEGER, body TEXT, urgent INTEGER)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {schema}.reviews VALUES (%s, %s, %s)", REVIEWS)
    yield url, schema
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ["sqlite", "duckdb", "postgresql"])
async def test_each_engine_is_read_only_even_past_the_guard(engine: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    table = "reviews"
    if engine == "sqlite":
        make_sqlite(tmp_path / "r.db")
        url = f"sqlite:///{tmp_path}/r.db"
    elif engine == "duckdb":
        make_duckdb(tmp_path / "r.duckdb")
        url = f"duckdb:///{tmp_path}/r.duckdb"
    else:
        url, schema = request.getfixturevalue("pg_reviews")
        table = f"{schema}.reviews"
    db = ReadOnlyDatabase(url, tmp_path, timeout_s=5, tables=[table])
    try:
        rows = await db.query(f"SELECT id FROM {table} WHERE urgent = 1 ORDER BY id", 10)
        assert rows.rows == [(2,), (4,)] and not rows.truncated
        for write in (f"DELETE FROM {table}", f"UPDATE {table} SET urgent = 0", f"DROP TABLE {table}"):
            with pytest.raises(ToolError):
                await db.query(write, 10)
        assert (await db.query(f"SELECT count(*) FROM {table}", 10)).rows == [(4,)]
        capped = await db.query(f"SELECT id FROM {table} ORDER BY id", 3)
        assert capped.rows == [(1,), (2,), (3,)] and capped.truncated
    finally:
        await db.aclose()
    slow = ReadOnlyDatabase(url, tmp_path, timeout_s=1, tables=[table])
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
               if engine != "postgresql" else "SELECT pg_sleep(30)")
    try:
        with pytest.raises(ToolError, match="did not finish within 1 seconds"):
            await slow.query(endless, 10)
    finally:
        await slow.aclose()


def test_spaces_on_duckdb_and_postgresql_answer_through_the_api(tmp_path: Path,
                                                                  pg_reviews: tuple[str, str]) -> None:
    url, schema = pg_reviews
    make_duckdb(tmp_path / "reviews.duckdb")
    pg_sql = f"SELECT count(*) AS urgent FROM {schema}.reviews WHERE urgent = 1"
    rules = f"""
[[models.sql.script]]
when = "count in postgres"
turns = [
  {{ tool_calls = [{{ name = "genie_pg", arguments = {{ question = "How many urgent pg reviews?" }} }}] }},
  {{ text = "Two." }},
]

[[models.sql.script]]
when = "how many urgent pg reviews"
turns = [{{ text = {orjson.dumps(sql_reply(pg_sql)).decode()} }}]
"""
    spaces = space("reviews", "duckdb:///reviews.duckdb") + space("pg", url, f'["{schema}.reviews"]') + rules
    config = scripted_space_workspace(tmp_path, spaces)
    with ThreadServer(f"sqlite:///{tmp_path}/state.db", config) as server:
        client = server.client()
        duck = client.responses.create(model="sql", input="count via the space", tools=[genie()])
        assert outputs(duck)[0].startswith(f"SQL: {COUNT_SQL}") and "|        2 |" in outputs(duck)[0]
        pg = client.responses.create(model="sql", input="count in postgres", tools=[genie("pg")])
        assert outputs(pg)[0].startswith(f"SQL: {pg_sql}") and "|        2 |" in outputs(pg)[0]
        assert pg.output_text == "Two."


def test_the_genie_conversation_api_works_with_databricks_sdk(sqlite_space: tuple[Server, Path]) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.errors import NotFound
    from databricks.sdk.service.dashboards import MessageStatus

    server, db = sqlite_space
    w = WorkspaceClient(host=server.url, token=server.token)
    assert w.genie.get_space("reviews").description == "Customer reviews"
    first = w.genie.start_conversation_and_wait("reviews", "How many urgent reviews are there?")
    assert first.status == MessageStatus.COMPLETED and first.content == "How many urgent reviews are there?"
    [query] = [a for a in first.attachments or [] if a.query]
    assert query.query is not None and query.query.query == COUNT_SQL
    assert query.query.description == "Counts urgent reviews"
    result = w.genie.get_message_attachment_query_result("reviews", first.conversation_id, first.message_id,
                                                          str(query.attachment_id)).statement_response
    assert result is not None and result.result is not None and result.manifest is not None
    assert result.result.data_array == [["2"]]
    assert [(c.name, c.type_name.value if c.type_name else None)
            for c in (result.manifest.schema.columns or [])] == [("urgent", "LONG")]

    follow = w.genie.create_message_and_wait("reviews", first.conversation_id, "first try badly, then count")
    assert follow.status == MessageStatus.COMPLETED and follow.conversation_id == first.conversation_id
    # A destructive question fails its message (at once: no need to wait) and writes nothing.
    failed: Any = w.genie.create_message("reviews", first.conversation_id, "wipe the reviews table").response
    assert failed.status == MessageStatus.FAILED and failed.error is not None
    assert "only SELECT queries are allowed" in str(failed.error.error)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM reviews").fetchone() == (4,)
    again = w.genie.get_message("reviews", first.conversation_id, first.message_id)
    assert again.status == MessageStatus.COMPLETED
    with pytest.raises(NotFound):
        w.genie.start_conversation_and_wait("nope", "hello")


def test_the_genie_api_names_what_is_wrong(sqlite_space: tuple[Server, Path]) -> None:
    server, _ = sqlite_space
    with server.http() as http:
        empty = http.post("/api/2.0/genie/spaces/reviews/start-conversation", json={"content": ""})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "content"
        unknown = http.post("/api/2.0/genie/spaces/reviews/conversations/nope/messages", json={"content": "hi"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "conversation_id"
        space = http.get("/api/2.0/genie/spaces/nope")
        assert space.status_code == 404 and space.json()["error"]["param"] == "space_id"


SCOPED_REFUSALS = [
    ("SELECT s.token FROM secrets s WHERE EXISTS (WITH secrets AS (SELECT 1) SELECT 1 FROM secrets)", "CTE name"),
    ("SELECT * FROM x WHERE EXISTS (WITH x AS (SELECT 1) SELECT 1 FROM x)", "the table x is not"),
    ("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", "the table b is not"),
    ("(WITH a AS (SELECT 1) SELECT * FROM a) UNION ALL SELECT * FROM a", "the table a is not"),
    ("SELECT * FROM reviews AS secrets WHERE EXISTS (SELECT 1 FROM secrets)", "the table secrets is not"),
    ("WITH reviews AS (SELECT token FROM secrets) SELECT * FROM reviews", "CTE name reviews"),
    ('SELECT * FROM "SECRETS"', "is not one of"), ("SELECT * FROM other.reviews", "is not one of"),
    ("SELECT * FROM elsewhere.main.reviews", "in another database"),
    ("SELECT lower(token) FROM (SELECT * FROM secrets) q", "the table secrets is not"),
    ("SELECT query_to_xml('select 1', true, false, '')", "the function query_to_xml()"),
    ("SELECT main.lower('x')", "call functions by their plain name"),
]


@pytest.mark.parametrize(("sql", "reason"), SCOPED_REFUSALS)
def test_the_guard_resolves_each_table_in_its_scope(sql: str, reason: str) -> None:
    from opensupervisor.tools.sql_guard import UnsafeSQL, check_query

    for dialect in ("sqlite", "duckdb", "postgres"):
        with pytest.raises(UnsafeSQL, match=re.escape(reason)):
            check_query(sql, dialect=dialect, tables={"reviews"}, max_rows=10, known=frozenset({"secrets"}),
                        catalog="shop")


@pytest.mark.parametrize(("sql", "dialect", "rewritten"), [
    ("WITH u AS (SELECT * FROM reviews) SELECT count(*) FROM u", "postgres",
     'WITH u AS (SELECT * FROM "public".reviews) SELECT COUNT(*) FROM u LIMIT 11'),
    ('SELECT r.id FROM "reviews" AS r', "postgres", 'SELECT r.id FROM "public"."reviews" AS r LIMIT 11'),
    ("SELECT id FROM shop.public.reviews", "postgres", "SELECT id FROM shop.public.reviews LIMIT 11"),
    ("SELECT * FROM REVIEWS", "sqlite", 'SELECT * FROM "main".REVIEWS LIMIT 11'),
    ("FROM main.reviews", "duckdb", "SELECT * FROM main.reviews LIMIT 11"),
    ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT * FROM n", "postgres",
     "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT * FROM n LIMIT 11"),
])
def test_the_guard_names_the_spaces_own_tables(sql: str, dialect: str, rewritten: str) -> None:
    from opensupervisor.tools.sql_guard import check_query

    assert check_query(sql, dialect=dialect, tables={"reviews"}, max_rows=10, known=frozenset({"secrets"}),
                       catalog="shop") == rewritten
