"""Genie spaces under a hostile model: SQL that tries to read, write or reach past the space.

Each engine's space lists only ``reviews``; the databases hold unlisted tables with a marker. Every
attack goes through the real HTTP API (the hostile upstream writes the SQL) and must come back as
a clear ``Error: ...`` output, with the marker in no output nor stored response, and nothing
written: the SQLite and DuckDB files byte-identical, PostgreSQL's tables, replication slots,
advisory locks and large objects unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ProcessServer, require_postgres, wait_until
from tests.security.hostile import (
    MARKER,
    Rig,
    SqlDatabases,
    hostile_server,
    make_sql_files,
    per_space,
    pg_state,
    postgres_space_database,
    refused,
    sql_spaces_body,
)
from tests.security.hostile import harmless_attack as attack

ENGINES = ("sq", "dk", "pg")


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlDatabases]:
    folder = tmp_path_factory.mktemp("sql-attacks")
    sqlite, duck = make_sql_files(folder)
    with postgres_space_database(require_postgres()) as (url, admin, role, database):
        yield SqlDatabases(sqlite, duck, url, admin, role, database)


@pytest.fixture(scope="module")
def rig(dbs: SqlDatabases) -> Iterator[Rig]:
    with hostile_server(dbs.sqlite.parent, sql_spaces_body(dbs)) as running:
        yield running




# (spaces, SQL, what the refusal names). The table allow-list, resolved in scope:
TABLES = [
    (ENGINES, "SELECT s.ssn FROM secret s WHERE EXISTS (WITH secret AS (SELECT 1) SELECT 1 FROM secret)",
     "the CTE name secret is the name of a table"),
    (ENGINES, "WITH RECURSIVE secret(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM secret WHERE n < 3) "
              "SELECT * FROM secret", "the CTE name secret is the name of a table"),
    (ENGINES, "WITH REVIEWS AS (SELECT ssn AS body FROM secret) SELECT body FROM reviews",
     "the CTE name reviews is the name of a table"),
    (ENGINES, "WITH a AS (SELECT * FROM b), b AS (SELECT ssn FROM secret) SELECT * FROM a", "the table b"),
    (ENGINES, "SELECT * FROM x WHERE EXISTS (WITH x AS (SELECT 1) SELECT 1 FROM x)", "the table x is not"),
    (ENGINES, "(WITH a AS (SELECT 1 AS n) SELECT n FROM a) UNION ALL SELECT count(*) FROM a", "the table a is not"),
    (ENGINES, "SELECT * FROM reviews AS secret WHERE EXISTS (SELECT 1 FROM secret)", "the table secret is not"),
    (("sq", "dk"), 'SELECT * FROM "SECRET"', "the table secret is not"),
    (("pg",), 'SELECT * FROM "SECRET"', "the table SECRET is not"),
    (ENGINES, "SELECT * FROM SeCrEt", "the table secret is not"),
    (("sq", "dk"), "SELECT * FROM main.secret", "the table main.secret is not"),
    (("pg",), 'SELECT * FROM "public"."secret"', "the table public.secret is not"),
    (("pg",), "SELECT * FROM test.public.secret", "the table test.public.secret is in another database"),
    (("sq",), "SELECT * FROM temp.secret", "the schema temp"),
    (ENGINES, "SELECT id FROM reviews WHERE id IN (SELECT length(ssn) FROM secret)", "the table secret is not"),
    (ENGINES, "SELECT r.id, s.ssn FROM reviews r JOIN secret s ON 1 = 1", "the table secret is not"),
    (ENGINES, "SELECT body FROM reviews UNION SELECT ssn FROM secret", "the table secret is not"),
    (ENGINES, "SELECT (SELECT ssn FROM secret LIMIT 1) AS x FROM reviews", "the table secret is not"),
    (("pg", "dk"), "SELECT * FROM reviews, LATERAL (SELECT ssn FROM secret) x", "the table secret is not"),
    (("dk",), "FROM secret", "the table secret is not"),
    (("dk",), "SELECT * FROM reviews POSITIONAL JOIN audit", "the table audit is not"),
    (("pg",), "TABLE secret", "the table secret is not"),
    (("sq", "dk"), "SELECT count(*) FROM audit", "the table audit is not"),
]
# System catalogs: other users' SQL, settings, roles, the schema.
CATALOGS = [
    (("sq",), "SELECT sql FROM sqlite_master", "the system catalog sqlite_master"),
    (("sq",), "SELECT sql FROM sqlite_schema", "the system catalog sqlite_schema"),
    (("sq",), "SELECT * FROM sqlite_temp_master", "the system catalog sqlite_temp_master"),
    (("sq",), "SELECT * FROM pragma_table_info('secret')", "not allowed"),
    (("pg",), "SELECT * FROM pg_shadow", "the system catalog pg_shadow"),
    (("pg",), "SELECT query FROM pg_stat_activity", "the system catalog pg_stat_activity"),
    (("pg",), "SELECT * FROM pg_settings", "the system catalog pg_settings"),
    (("pg",), "SELECT rolname FROM pg_catalog.pg_roles", "the schema pg_catalog"),
    (("pg", "dk"), "SELECT table_name FROM information_schema.tables", "the schema information_schema"),
    (("dk",), "SELECT * FROM duckdb_tables()", "not allowed"),
    (("dk",), "SELECT * FROM duckdb_settings()", "not allowed"),
]
# Functions that take SQL text or relation names, reach files, other databases or the server.
FUNCTIONS = [
    (("pg",), "SELECT query_to_xml('select * from secret', true, false, '')", "the function query_to_xml()"),
    (("pg",), "SELECT pg_catalog.query_to_xml('select * from secret', true, false, '')", "call functions by"),
    (("pg",), 'SELECT "query_to_xml"(\'select * from secret\', true, false, \'\')', "the function query_to_xml()"),
    (("pg",), "SELECT table_to_xml('secret', true, false, '')", "the function table_to_xml()"),
    (("pg",), "SELECT dblink_connect('c', 'dbname=postgres')", "the function dblink_connect()"),
    (("pg",), "SELECT dblink_send_query('c', 'CREATE TABLE public.pwned ()')", "the function dblink_send_query()"),
    (("pg",), "SELECT * FROM dblink('dbname=postgres', 'select 1') AS t(a int)", "the function dblink()"),
    (("pg",), "SELECT pg_create_physical_replication_slot('sec_slot')",
     "the function pg_create_physical_replication_slot()"),
    (("pg",), "SELECT pg_switch_wal()", "the function pg_switch_wal()"),
    (("pg",), "SELECT pg_advisory_lock(42)", "the function pg_advisory_lock()"),
    (("pg",), "SELECT pg_try_advisory_lock(42)", "the function pg_try_advisory_lock()"),
    (("pg",), "SELECT lo_creat(-1)", "the function lo_creat()"),
    (("pg",), "SELECT lo_import('/etc/passwd')", "the function lo_import()"),
    (("pg",), "SELECT pg_read_file('/etc/passwd')", "the function pg_read_file()"),
    (("pg",), "SELECT current_setting('data_directory')", "the function current_setting()"),
    (("pg",), "SELECT set_config('default_transaction_read_only', 'off', false)", "the function set_config()"),
    (("pg",), "SELECT pg_sleep(30)", "the function pg_sleep()"),
    (("pg",), "SELECT 'secret'::regclass", "the type REGCLASS"),
    (("pg",), "SELECT * FROM generate_series(1, 3)", "the function generate_series()"),
    (("dk",), "SELECT * FROM read_csv('/etc/passwd')", "the function read_csv()"),
    (("dk",), "SELECT * FROM read_parquet('x.parquet')", "the function read_parquet()"),
    (("dk",), "SELECT * FROM glob('/etc/*')", "the function glob()"),
    (("dk",), "SELECT * FROM read_text('/etc/passwd')", "the function read_text()"),
    (("dk",), "SELECT * FROM query_table('secret')", "the function query_table()"),
    (("dk",), "SELECT * FROM query('select * from secret')", "the function query()"),
    (("dk",), "SELECT * FROM '/etc/passwd'", "the table /etc/passwd is not"),
    (("dk",), "SELECT current_setting('memory_limit')", "the function current_setting()"),
    (("dk",), "SELECT getvariable('x')", "the function getvariable()"),
    (("sq",), "SELECT load_extension('/tmp/evil')", "the function load_extension()"),
    (("sq",), "SELECT readfile('/etc/passwd')", "the function readfile()"),
    (("sq",), "SELECT fts3_tokenizer('simple')", "the function fts3_tokenizer()"),
    (("sq",), "SELECT sqlite_version()", "the function sqlite_version()"),
    (("sq",), "SELECT length(replace(hex(zeroblob(150000000)), '0', 'ab'))", "the function zeroblob()"),
]
# Statements that write, attach, configure or lock.
STATEMENTS = [
    (ENGINES, "DELETE FROM reviews", "only SELECT queries are allowed"),
    (ENGINES, "SELECT 1; DELETE FROM reviews", "exactly one statement"),
    (("sq", "dk"), "ATTACH DATABASE '/tmp/x.db' AS x", "only SELECT queries are allowed"),
    (("sq",), "PRAGMA writable_schema = 1", "only SELECT queries are allowed"),
    (("dk", "pg"), "SET search_path = public", "only SELECT queries are allowed"),
    (("dk",), "INSTALL httpfs", "only SELECT queries are allowed"),
    (("dk",), "SUMMARIZE secret", "only SELECT queries are allowed"),
    (("dk",), "COPY reviews TO '/tmp/out.csv'", "only SELECT queries are allowed"),
    (("pg",), "SELECT * INTO pwned FROM reviews", "INTO is not allowed"),
    (("pg",), "SELECT * FROM reviews FOR UPDATE", "LOCK is not allowed"),
    (ENGINES, "WITH d AS (DELETE FROM reviews RETURNING *) SELECT * FROM d", "is not allowed"),
]
ATTACKS = per_space(TABLES + CATALOGS + FUNCTIONS + STATEMENTS)


@pytest.mark.parametrize(("space", "sql", "reason"), ATTACKS)
def test_an_attack_is_refused_with_its_reason(rig: Rig, dbs: SqlDatabases, space: str, sql: str,
                                              reason: str) -> None:
    refused(rig, dbs, space, sql, reason)


LEGITIMATE = [
    ("SELECT count(*) AS urgent FROM reviews WHERE urgent = 1", "|        2 |"),
    ("WITH u AS (SELECT * FROM reviews WHERE urgent = 1) SELECT count(*) AS n FROM u", "|   2 |"),
    ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT sum(i) AS s FROM n",
     "|   6 |"),
    ("SELECT r.id, upper(r.body) AS b, row_number() OVER (ORDER BY r.id DESC) AS rn FROM Reviews AS r "
     "WHERE r.urgent = 1 ORDER BY r.id", "IT CAUGHT FIRE"),
    ("SELECT urgent, count(*) AS n, round(avg(length(body)), 1) AS avg_len FROM reviews GROUP BY urgent "
     "ORDER BY urgent", "Row count: 2 rows"),
    ("SELECT coalesce(nullif(body, 'Fine'), 'ok') AS b, CASE WHEN urgent = 1 THEN 'yes' ELSE 'no' END AS u "
     "FROM reviews ORDER BY id", "| ok "),
    ("SELECT body FROM reviews WHERE body LIKE '%fire%' UNION ALL SELECT body FROM reviews WHERE id = 1",
     "Great product"),
]


@pytest.mark.parametrize("space", ENGINES)
@pytest.mark.parametrize(("sql", "expected"), LEGITIMATE)
def test_an_analysts_query_still_works(rig: Rig, dbs: SqlDatabases, space: str, sql: str, expected: str) -> None:
    output = attack(rig, dbs, space, sql)
    assert not output.startswith("Error") and expected in output, output


def test_the_engines_refuse_on_their_own(dbs: SqlDatabases) -> None:
    """Past the parser, the engines hold: SQLite's authorizer, and PostgreSQL's grants for the
    space's login (dblink, replication slots, files and server-side large objects need privileges
    it does not have)."""
    import sqlite3

    from opensupervisor.tools.sql_sqlite import Reads, guarded

    conn = sqlite3.connect(f"file:{dbs.sqlite}?mode=ro", uri=True, cached_statements=0)
    for sql, reason in (("SELECT ssn FROM secret", "reading the table secret"),
                        ("SELECT count(*) FROM secret", "reading the table secret"),
                        ("SELECT name FROM sqlite_master", "reading the table sqlite_master"),
                        ("SELECT load_extension('x')", "the function load_extension()"),
                        ("SELECT * FROM pragma_table_info('secret')", "not allowed"),
                        ("ATTACH DATABASE ':memory:' AS x", "ATTACH is not allowed"),
                        ("PRAGMA table_info(secret)", "PRAGMA is not allowed")):
        refused: list[str] = []
        with guarded(conn, Reads(frozenset({"reviews"})), 1e12, refused), pytest.raises(sqlite3.Error):
            conn.execute(sql).fetchall()
        assert refused and reason in refused[0], (sql, refused)
    with guarded(conn, Reads(frozenset({"reviews"})), 1e12, []), pytest.raises(sqlite3.Error, match="too big"):
        conn.execute("SELECT length(replace(printf('%.*c', 999999, 'x'), 'x', 'yy'))").fetchall()
    conn.close()
    with psycopg.connect(dbs.pg_url, autocommit=True) as pg:
        for sql in ("SELECT ssn FROM secret", "SELECT dblink_connect('c', 'dbname=postgres user=postgres')",
                    "SELECT pg_create_physical_replication_slot('sec_slot')", "SELECT pg_read_file('/etc/passwd')",
                    "SELECT lo_import('/etc/passwd')", "SELECT pg_switch_wal()", "SELECT * FROM pg_shadow"):
            with pytest.raises(psycopg.Error):
                pg.execute(sql)
    assert MARKER in pg_state(dbs)[1][1]


def test_a_lock_past_the_parser_does_not_outlive_its_query(dbs: SqlDatabases) -> None:
    """Session-level advisory locks need no privilege and outlive a rollback: the engine layer
    releases them when a query ends, so one that got past the function allow-list would still not
    stay on a pooled connection."""
    import asyncio

    from opensupervisor.tools.sql_engines import ReadOnlyDatabase

    async def lock_twice() -> tuple[list[list[tuple[Any, ...]]], object]:
        db = ReadOnlyDatabase(dbs.pg_url, Path("."), timeout_s=5, tables=["reviews"])
        try:
            rows = [(await db.query(f"SELECT pg_advisory_lock({key}) IS NULL AS locked", 10)).rows
                    for key in (4242, 4243)]
            return rows, pg_state(dbs)[3]  # while the pool still holds its connections
        finally:
            await db.aclose()

    assert asyncio.run(lock_twice()) == ([[(False,)], [(False,)]], (0,))


def test_the_server_warns_at_start_when_a_login_reads_more_than_its_space(dbs: SqlDatabases, tmp_path: Path) -> None:
    """A real ``opensupervisor serve``: the warnings are in its log before any question is asked
    (PostgreSQL: the login's grants; DuckDB, which has no grants: the file's other tables), and a
    space whose database cannot be reached is reported without stopping the server."""
    config = tmp_path / "ws.toml"
    config.write_text(f"""
[models.m]
provider = "scripted"
[genie_spaces.wide]
database_url = "{dbs.pg_admin_url}"
tables = ["reviews"]
[genie_spaces.narrow]
database_url = "{dbs.pg_url}"
tables = ["reviews"]
[genie_spaces.file]
database_url = "duckdb:///{dbs.duckdb}"
tables = ["reviews"]
[genie_spaces.gone]
database_url = "sqlite:///missing/nothing.db"
tables = ["reviews"]
""")
    server = ProcessServer(tmp_path, config=config, database_url=f"sqlite:///{tmp_path}/state.db")
    with server:
        def reported() -> bool:
            log = server.log_path.read_text(errors="replace")
            return all(f"'{space}'" in log for space in ("wide", "file", "gone"))
        wait_until(reported, timeout=30, what="the start-up warnings")
    log = server.log_path.read_text(errors="replace")
    assert "Genie space 'wide': its database login can read tables the space does not list: public.secret" in log
    assert "Genie space 'file': its database login can read tables the space does not list: main.audit, " \
           "main.secret" in log
    assert "Genie space 'gone': its database could not be inspected at start-up" in log
    assert "'narrow'" not in log
