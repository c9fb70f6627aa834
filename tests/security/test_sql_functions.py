"""SQL functions under a hostile model: its arguments are bound, never SQL, and no call outlives its
deadline (the database stops it, and the watchdog interrupts the connection from outside).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import require_postgres, wait_until
from tests.security.hostile import Rig, hostile_server

TIMEOUT_S = 1.5
# A recursive count as long as the model asks: without a deadline it runs for hours.
COUNT_TO = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :n) SELECT count(*) AS n FROM c"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("sql_functions")
    with sqlite3.connect(folder / "notes.db") as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes VALUES (1, 'first')")
    pg = require_postgres()
    body = f"""
[functions."main.sq.count_to"]
language = "sql"
database_url = "sqlite:///notes.db"
sql = "{COUNT_TO}"
parameters = [{{ name = "n", type = "integer" }}]
timeout_s = {TIMEOUT_S}

[functions."main.sq.find"]
language = "sql"
database_url = "sqlite:///notes.db"
sql = "SELECT id, body FROM notes WHERE body = :body"
parameters = [{{ name = "body", type = "string" }}]

[functions."main.pg.sleep"]
language = "sql"
database_url = "{pg}"
sql = "SELECT pg_sleep(:s) AS slept, :tag AS tag"
parameters = [{{ name = "s", type = "number" }}, {{ name = "tag", type = "string" }}]
timeout_s = {TIMEOUT_S}

[functions."main.pg.count_to"]
language = "sql"
database_url = "{pg}"
sql = "{COUNT_TO}"
parameters = [{{ name = "n", type = "integer" }}]
timeout_s = {TIMEOUT_S}
"""
    with hostile_server(folder, body) as running:
        running.attack([fn("main.sq.find")], calls=[("main__sq__find", {"body": "first"})])  # warm up
        yield running


def fn(name: str) -> dict[str, Any]:
    return {"type": "uc_function", "uc_function": {"name": name}}


def call(rig: Rig, name: str, args: dict[str, Any]) -> tuple[str, float]:
    """The call's output, and how long it took in the server (its tool span)."""
    [output], [took] = rig.timed_attack([fn(name)], calls=[(name.replace(".", "__"), args)])
    return output, took


def busy_threads() -> int:
    """CPU seconds this process burns in a quarter of a second, as a count of busy threads."""
    start = time.process_time()
    time.sleep(0.25)
    return round((time.process_time() - start) / 0.25)


@pytest.mark.parametrize("name", ["main.sq.count_to", "main.pg.count_to"])
def test_a_query_past_its_deadline_stops_there_and_its_thread_with_it(rig: Rig, name: str) -> None:
    output, took = call(rig, name, {"n": 10**12})
    assert output == f"Error: the function did not finish within {TIMEOUT_S:g} seconds"
    assert took < TIMEOUT_S + 1
    # The query's thread returned: nothing in the server keeps a core busy.
    wait_until(lambda: busy_threads() == 0, timeout=5, what="no thread still running the query")
    assert call(rig, name, {"n": 10})[0] == '{"columns":["n"],"rows":[[10]]}'


def test_postgresql_holds_no_statement_after_the_deadline(rig: Rig) -> None:
    tag = f"t-{uuid.uuid4().hex}"
    output, took = call(rig, "main.pg.sleep", {"s": 600, "tag": tag})
    assert output == f"Error: the function did not finish within {TIMEOUT_S:g} seconds"
    assert took < TIMEOUT_S + 1
    with psycopg.connect(require_postgres()) as conn:
        def gone() -> bool:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE "
                               "'%pg_sleep%' AND pid <> pg_backend_pid()").fetchone()
            return row is not None and row[0] == 0
        wait_until(gone, timeout=5, what="the statement to be cancelled")


@pytest.mark.parametrize("body", ["x' OR '1'='1", "first'; DROP TABLE notes; --", "first\" OR 1=1 --"])
def test_arguments_are_bound_never_sql(rig: Rig, body: str) -> None:
    output, _ = call(rig, "main.sq.find", {"body": body})
    assert output == '{"columns":["id","body"],"rows":[]}'
    with sqlite3.connect(rig.folder / "notes.db") as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_calls_of_others_go_on_while_one_overruns(rig: Rig) -> None:
    results: list[str] = []
    slow = threading.Thread(target=lambda: results.append(call(rig, "main.sq.count_to", {"n": 10**12})[0]))
    slow.start()
    output, took = call(rig, "main.sq.find", {"body": "first"})
    slow.join()
    assert output == '{"columns":["id","body"],"rows":[[1,"first"]]}' and took < TIMEOUT_S
    assert results == [f"Error: the function did not finish within {TIMEOUT_S:g} seconds"]


def test_the_database_file_is_unchanged(rig: Rig) -> None:
    path: Path = rig.folder / "notes.db"
    before = path.read_bytes()
    call(rig, "main.sq.count_to", {"n": 10**12})
    call(rig, "main.sq.find", {"body": "first'; DELETE FROM notes; --"})
    assert path.read_bytes() == before
