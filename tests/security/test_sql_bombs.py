"""Genie spaces under a hostile model: giant values, huge results, memory and CPU bombs.

The server runs in this test process, so its memory is this process's: the peak (``VmHWM``, reset
through ``/proc/self/clear_refs``) may grow less than 200 MB during any bomb. A query over its time
limit stops within a second of it and leaves no query thread running; every cut says what it cut.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import require_postgres, wait_until
from tests.security.hostile import (
    Rig,
    SqlDatabases,
    ask_space,
    ask_space_timed,
    hostile_server,
    make_sql_files,
    postgres_space_database,
    sql_spaces_body,
)

TIMEOUT_S = 2.0
T = TypeVar("T")
MB = 1024 * 1024


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("sql-bombs")
    sqlite, duck = make_sql_files(folder)
    with postgres_space_database(require_postgres()) as (url, admin, role, database):
        dbs = SqlDatabases(sqlite, duck, url, admin, role, database)
        with hostile_server(folder, sql_spaces_body(dbs, timeout_s=TIMEOUT_S)) as running:
            yield running


def status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert match, field
    return int(match.group(1)) * 1024


def peak_growth(run: Callable[[], T]) -> tuple[int, T]:
    """How far the process's peak memory rose above its size while ``run`` ran, and its result."""
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from the current size
    before = status("VmRSS")
    result = run()
    return status("VmHWM") - before, result


def busy_query_threads() -> list[str]:
    """Threads of the spaces' pools that are still inside a query."""
    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1) if thread.name.startswith("sql-space") else None
        while frame is not None:
            if frame.f_code.co_name == "_query" and frame.f_code.co_filename.endswith("sql_engines.py"):
                busy.append(thread.name)
                break
            frame = frame.f_back
    return busy


GIANT_CELLS = [
    ("sq", "SELECT printf('%.*c', 900000, 'x') AS big, 1 AS n", "900,000 characters, cut at 2,048"),
    ("dk", "SELECT repeat('x', 5000000) AS big, 1 AS n", "5,000,000 characters, cut at 2,048"),
    ("pg", "SELECT repeat('x', 20000000) AS big, 1 AS n", "20,000,000 characters, cut at 2,048"),
    ("pg", "SELECT repeat('ab', 5000)::bytea AS big, 1 AS n", "cut at 2,048"),
]


@pytest.mark.parametrize(("space", "sql", "note"), GIANT_CELLS)
def test_a_giant_value_is_cut_by_the_database(rig: Rig, space: str, sql: str, note: str) -> None:
    growth, result = peak_growth(lambda: ask_space(rig, space, sql))
    output, _ = result
    assert note in output and "1 value was cut at 2,048 characters." in output, output[:3000]
    assert len(output) < 8000 and re.search(r"\|\s+1 \|$", output, re.M), output[-500:]
    assert growth < 200 * MB, growth // MB


MANY_ROWS = {
    "sq": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) "
          "SELECT i, printf('%.*c', 3000, 'y') AS pad FROM n",
    # DuckDB builds the whole sorted result before the first row: a smaller one stays far past the
    # output cap and well inside the 2-second limit on a busy machine.
    "dk": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
          "SELECT i, repeat('y', 3000) AS pad FROM n ORDER BY i",
    "pg": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) "
          "SELECT i, repeat('y', 3000) AS pad FROM n",
}


@pytest.mark.parametrize("space", sorted(MANY_ROWS))
def test_a_huge_result_stops_at_the_output_cap_and_says_so(rig: Rig, space: str) -> None:
    output, _ = ask_space(rig, space, MANY_ROWS[space])
    assert len(output) <= 64 * 1024 + 400, len(output)
    assert "(truncated)" in output or "Output truncated" in output, output[-600:]
    assert "values were cut at 2,048 characters." in output or "Output truncated" in output
    assert re.search(r"^\|\s+1 \| y{2048}… \[3,000 characters, cut at 2,048\] \|$", output, re.M), output[:400]


def test_rows_stop_at_max_rows(rig: Rig) -> None:
    output, _ = ask_space(rig, "sq", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
                                     "SELECT i FROM n")
    assert "Row count: 100+ rows" in output and "The result was cut at 100 rows (truncated)." in output


MEMORY_BOMBS = [
    ("sq", "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r WHERE length(s) < 1000000000) "
           "SELECT max(length(s)) FROM r", "grew past 1,000,000 bytes"),
    ("sq", "SELECT length(replace(printf('%.*c', 999999, 'x'), 'x', 'yyyyyyyyyy'))", "grew past 1,000,000 bytes"),
    ("sq", "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
           "SELECT length(group_concat(printf('%.*c', 900000, 'x'), '')) FROM n", "grew past 1,000,000 bytes"),
    ("dk", "WITH RECURSIVE r(n, s) AS (SELECT 1, repeat('x', 1000000) UNION ALL SELECT n + 1, s FROM r "
           "WHERE n < 3000) SELECT length(string_agg(s, '')) FROM r", "memory limit"),
    ("dk", "SELECT length(repeat('x', 300000000))", "Error: "),
    ("dk", "SELECT length(repeat(repeat('x', 10000), 100000))", "memory limit"),
    ("pg", "SELECT repeat('x', 50000000) AS big", "50,000,000 characters, cut at 2,048"),
]


@pytest.mark.parametrize(("space", "sql", "expected"), MEMORY_BOMBS)
def test_a_memory_bomb_stays_out_of_the_server(rig: Rig, space: str, sql: str, expected: str) -> None:
    growth, result = peak_growth(lambda: ask_space(rig, space, sql))
    output, _ = result
    assert expected in output, output[:2000]
    assert growth < 200 * MB, f"the server grew by {growth // MB} MB"


TIME_BOMBS = [
    ("sq", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"),
    ("sq", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
           "SELECT max(length(replace(printf('%.*c', 900000, 'x'), 'x', 'y'))) FROM c"),
    ("sq", "SELECT count(*) FROM reviews a, reviews b, reviews c, reviews d, reviews e, reviews f, reviews g, "
           "reviews h, reviews i, reviews j, reviews k, reviews l, reviews m, reviews n, reviews o, reviews p"),
    ("dk", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
           "SELECT max(x) FROM c"),
    ("dk", "SELECT count(*) FROM reviews a, reviews b, reviews c, reviews d, reviews e, reviews f, reviews g, "
           "reviews h, reviews i, reviews j, reviews k, reviews l, reviews m, reviews n, reviews o, reviews p "
           "WHERE a.body || p.body <> 'z'"),
    ("pg", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"),
    ("pg", "SELECT count(*) FROM reviews a, reviews b, reviews c, reviews d, reviews e, reviews f, reviews g, "
           "reviews h, reviews i, reviews j, reviews k, reviews l, reviews m, reviews n, reviews o, reviews p "
           "WHERE md5(a.body || p.body) <> 'z'"),
]


@pytest.mark.parametrize(("space", "sql"), TIME_BOMBS)
def test_a_time_bomb_stops_at_the_limit_and_leaves_no_thread(rig: Rig, space: str, sql: str) -> None:
    growth, result = peak_growth(lambda: ask_space_timed(rig, space, sql))
    output, elapsed = result
    assert output.endswith(f"the query did not finish within {TIMEOUT_S:g} seconds") or "memory limit" in output, \
        output[:1000]
    assert elapsed < TIMEOUT_S + 1, elapsed
    wait_until(lambda: not busy_query_threads(), timeout=1.0, what="the query threads to finish")
    assert growth < 200 * MB, f"the server grew by {growth // MB} MB"
