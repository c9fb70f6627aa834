"""Genie spaces under a hostile model: SQL that the parser checks one way and the database reads another.

The guard checks sqlglot's tree, but the database runs the SQL sqlglot writes back from it, and the
writer prints some nodes as bare text: an operator, a date part, a collation (DuckDB's transpiler
turns a string into one), or runs a table name into the keyword after it. Each attack here got the
marker of an unlisted table out of DuckDB, or took an advisory lock on PostgreSQL, until the guard
checked those words and the SQL as written out. Every attack goes through the real HTTP API and must
come back as a clear ``Error: ...``, with the marker in no output nor stored response and nothing
written or locked; the variants that were refused already stay refused, and analysts' queries that
use the same syntax plainly still work.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
import pytest

from tests.conftest import require_postgres
from tests.security.hostile import (
    MARKER,
    Rig,
    SqlDatabases,
    hostile_server,
    make_sql_files,
    per_space,
    postgres_space_database,
    refused,
    sql_spaces_body,
)
from tests.security.hostile import harmless_attack as attack

ENGINES = ("sq", "dk", "pg")
Attack = tuple[tuple[str, ...], str, str]  # (spaces, SQL, what the refusal names)


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlDatabases]:
    folder = tmp_path_factory.mktemp("sql-review")
    sqlite, duck = make_sql_files(folder)
    # A table whose name is a listed one run into a keyword: what the engine read for ``reviews LATERAL``.
    with duckdb.connect(str(duck)) as conn:
        conn.execute(f"CREATE TABLE reviewslateral AS SELECT '{MARKER}' AS ssn")
    with postgres_space_database(require_postgres()) as (url, admin, role, database):
        yield SqlDatabases(sqlite, duck, url, admin, role, database)


@pytest.fixture(scope="module")
def rig(dbs: SqlDatabases) -> Iterator[Rig]:
    with hostile_server(dbs.sqlite.parent, sql_spaces_body(dbs)) as running:
        yield running




# (spaces, SQL, what the refusal names): each of these leaked the marker or locked, before the fix.
WRITTEN_BARE: list[Attack] = [
    # DuckDB's writer turns a string collation into bare words.
    (("dk",), "SELECT body COLLATE 'nocase, (SELECT ssn FROM secret) AS leaked' FROM reviews",
     "is not a collation name"),
    # A date part given as a string is written out bare by DuckDB's date arithmetic.
    (("dk",), "SELECT date_add(DATE '2020-01-01', 1, 'DAY AS d, (SELECT ssn FROM secret) AS leaked') FROM reviews",
     "is not a date part or keyword"),
    (("dk",), "SELECT date_add(DATE '2020-01-01', 1, 'DAY AS d, * FROM main.audit UNION ALL SELECT NULL, body') "
              "FROM reviews", "is not a date part or keyword"),
    (("dk",), "SELECT date_add(DATE '2020-01-01', 1, 'DAY AS d, getvariable(''x'') AS v') FROM reviews",
     "is not a date part or keyword"),
    (("dk",), "SELECT timestamp_sub(TIMESTAMP '2020-01-01', 1, 'DAY AS d, (SELECT ssn FROM audit) AS leaked') "
              "FROM reviews", "is not a date part or keyword"),
    # OPERATOR(...) keeps the text of its tokens, a string's included, and writes it out bare.
    (("dk",), "SELECT 1 OPERATOR('+) 1 AS a, (SELECT ssn FROM secret) AS b, 1 OPERATOR(+') 1 FROM reviews",
     "does not name an operator"),
    (("pg",), "SELECT 1 OPERATOR('+) 1 AS a, pg_advisory_lock(4242) AS b, 1 OPERATOR(+') 1 FROM reviews",
     "does not name an operator"),
    (("pg",), "SELECT 1 OPERATOR('+) 1 AS a, pg_try_advisory_lock(4243) AS b, 1 OPERATOR(+') 1",
     "does not name an operator"),
    # The writer runs the table's name into LATERAL: the engine reads the table reviewslateral.
    (("dk",), "SELECT * FROM reviews LATERAL body", "reads differently once written out for the database"),
]
# Readings sqlglot gets wrong that the engines refused only by luck or by their own checks.
MISREAD: list[Attack] = [
    (("sq",), f"SELECT 1 AS x FROM reviews WHERE '{MARKER}' IN secret", "IN takes a list or a subquery"),
    (("sq",), "SELECT id FROM reviews WHERE body IN main.audit", "IN takes a list or a subquery"),
    (("sq",), "SELECT 1 AS x WHERE 'sql' IN sqlite_master", "IN takes a list or a subquery"),
    (ENGINES, "SELECT * FROM secret AS s AT x", "only the space's tables may be read"),
]
# Variants that were refused already, and stay refused.
STILL_REFUSED: list[Attack] = [
    (("dk",), "SELECT * FROM (PIVOT secret ON ssn)", "the table secret is not"),
    (("dk",), "SELECT * FROM (DESCRIBE secret)", "DESCRIBE is not allowed"),
    (("dk",), "SELECT * FROM reviews ASOF JOIN secret ON true", "the table secret is not"),
    (("dk",), "SELECT * FROM memory.main.secret", "in another database"),
    (("dk",), "SELECT * FROM secret AT (VERSION => 1)", "the table secret is not"),
    (("dk",), "SELECT date_trunc('day, (SELECT ssn FROM secret) AS leaked', DATE '2020-01-01') FROM reviews",
     "the database refused the query"),  # a string the writer keeps a string
    (("pg",), 'SELECT U&"pg_advisory_lock"(1)', "the function pg_advisory_lock()"),
    (("pg",), 'SELECT "pg_catalog"."pg_advisory_lock"(1)', "call functions by their plain name"),
    (("pg",), "SELECT * FROM ROWS FROM (pg_advisory_lock(1))", "the function pg_advisory_lock()"),
    (("pg",), "SELECT 'secret'::pg_catalog.regclass", "is not allowed"),
    (("pg",), "SELECT 'a\\' || (SELECT ssn FROM secret) || '' AS x", "the table secret is not"),
    (("pg",), "SELECT E'\\'' AS a, (SELECT ssn FROM secret) AS b", "the table secret is not"),
    (("sq",), "SELECT * FROM [secret]", "the table secret is not"),
    (("sq",), "SELECT * FROM SQLITE_MASTER", "the system catalog sqlite_master"),
    (("sq",), "SELECT * FROM reviews INDEXED BY secret", "the table secret is not"),
]
ATTACKS = per_space(WRITTEN_BARE + MISREAD + STILL_REFUSED)


@pytest.mark.parametrize(("space", "sql", "reason"), ATTACKS)
def test_sql_the_database_would_read_differently_is_refused(rig: Rig, dbs: SqlDatabases, space: str, sql: str,
                                                            reason: str) -> None:
    refused(rig, dbs, space, sql, reason)


# The same syntax, written plainly, is an analyst's.
PLAIN = [
    ("dk", "SELECT body COLLATE nocase AS b FROM reviews ORDER BY id", "Great product"),
    ("dk", "SELECT date_add(DATE '2020-01-01', 1, 'day') AS d FROM reviews WHERE id = 1", "2020-01-02"),
    ("dk", "SELECT date_trunc('month', DATE '2020-02-03') AS d", "2020-02-01"),
    ("dk", "SELECT TIMESTAMP '2020-01-01 10:00:00' AS t", "2020-01-01 10:00:00"),
    ("pg", "SELECT date_trunc('month', DATE '2020-02-03') AS d", "2020-02-01"),
    ("pg", "SELECT 40 OPERATOR(pg_catalog.+) 2 AS answer", "42"),
    ("pg", 'SELECT body COLLATE "C" AS b FROM reviews WHERE id = 3', "Fine"),
    ("sq", "SELECT id FROM reviews WHERE body IN ('Fine', 'Nope')", "3"),
    *[(space, "SELECT 7 /* nested /* x */ FROM secret */ AS seven", "7") for space in ("dk", "pg")],
]


@pytest.mark.parametrize(("space", "sql", "expected"), PLAIN)
def test_plain_syntax_still_works(rig: Rig, dbs: SqlDatabases, space: str, sql: str, expected: str) -> None:
    output = attack(rig, dbs, space, sql)
    assert not output.startswith("Error") and expected in output, output
