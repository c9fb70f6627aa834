"""SQLite's own enforcement while a model's query runs: an authorizer, limits and a deadline.

The authorizer is asked by SQLite itself, for every table column a statement reads and every
function it calls, when the statement is prepared: reads are allowed only on the space's tables,
functions only from ``SQLITE_FUNCTIONS``, and everything else (PRAGMA, ATTACH, schema tables,
table-valued functions, writes) is denied. The limits bound what one statement can make: each
value at ``MAX_VALUE_BYTES`` (a value built bigger fails at once, instead of growing the server by
gigabytes), the SQL, the expression depth, compound selects and function arguments; no database
may be attached. Connections are opened without a statement cache, so every statement is
authorized afresh.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opensupervisor.tools.sql_functions import SQLITE_FUNCTIONS

MAX_VALUE_BYTES = 1_000_000
MAX_COLUMNS = 128
LIMITS = {
    sqlite3.SQLITE_LIMIT_LENGTH: MAX_VALUE_BYTES,
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: 256_000,
    # Twice the columns a query may return: the result is read through a wrapper that adds one
    # column (the full length of a cut value) per column.
    sqlite3.SQLITE_LIMIT_COLUMN: 2 * MAX_COLUMNS + 8,
    sqlite3.SQLITE_LIMIT_EXPR_DEPTH: 200,
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 64,
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 64,
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 1000,
    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER: 0,
    sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH: 1,
}
_ACTIONS = {getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ") for name in (
    "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE", "CREATE_TEMP_TRIGGER",
    "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "DELETE", "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX",
    "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER", "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "INSERT", "PRAGMA",
    "TRANSACTION", "UPDATE", "ATTACH", "DETACH", "ALTER_TABLE", "REINDEX", "ANALYZE", "CREATE_VTABLE",
    "DROP_VTABLE", "SAVEPOINT")}
Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]


@dataclass(frozen=True, slots=True)
class Reads:
    tables: frozenset[str]  # the space's tables (lower-case names in ``main``)
    ctes: frozenset[str] = frozenset()  # the query's CTE names
    relations: frozenset[str] = frozenset()  # every table and view of the database


def authorizer(reads: Reads, refused: list[str]) -> Authorizer:
    """Allows reading the space's tables and calling allow-listed functions; denies anything else
    and says why in ``refused``. SQLite reports a read without columns (``count(*)``) of a CTE as
    a read of a table by that name: allowed when the name is a CTE of the query and no table."""
    listing = ", ".join(sorted(reads.tables))

    def check(action: int, arg1: str | None, arg2: str | None, db: str | None, _source: str | None) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            name = (arg1 or "").lower()
            if name in reads.tables and db in (None, "main"):
                return sqlite3.SQLITE_OK
            if not arg2 and db is None and name in reads.ctes and name not in reads.relations:
                return sqlite3.SQLITE_OK
            refused.append(f"reading the table {arg1} is not allowed (this space reads only {listing})")
        elif action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in SQLITE_FUNCTIONS:
                return sqlite3.SQLITE_OK
            refused.append(f"the function {arg2}() is not allowed in a space's queries")
        else:
            what = _ACTIONS.get(action, f"action {action}")
            refused.append(f"{what} is not allowed in a space's queries" + (f" ({arg1})" if arg1 else ""))
        return sqlite3.SQLITE_DENY

    return check


@contextmanager
def guarded(conn: sqlite3.Connection, reads: Reads, deadline: float, refused: list[str]) -> Iterator[None]:
    """While the block runs: the authorizer, the limits and a progress handler past ``deadline``
    (the watchdog's interrupt is the other half: it stops even one long step)."""
    previous = {category: conn.setlimit(category, value) for category, value in LIMITS.items()}
    conn.set_authorizer(authorizer(reads, refused))
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)
        conn.set_authorizer(None)
        for category, value in previous.items():
            conn.setlimit(category, value)


def load_schema(conn: sqlite3.Connection) -> None:
    """Read the schema now, without limits: SQLite parses it at a connection's first statement, and
    a table wider than the query limits allow must still be readable."""
    conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()


def relation_names(conn: sqlite3.Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute("SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')")]
