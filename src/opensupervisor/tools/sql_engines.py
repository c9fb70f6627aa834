"""Read-only access to a space's database (SQLite, DuckDB or PostgreSQL), enforced by the engine.

- SQLite: the file opened ``mode=ro`` and ``query_only``; while a model's query runs, an authorizer
  allows only the space's tables and allow-listed functions, and limits bound every value
  (``tools.sql_sqlite``).
- DuckDB: a model's query runs in a child process with an address-space limit, killed at the
  deadline (``tools.sql_duckdb``), the file opened ``read_only`` with external access off (no files,
  no network, no extensions), its configuration locked, a memory limit and one thread.
- PostgreSQL: read-only transactions with statement, lock and idle timeouts and a fixed search path,
  as the caller's role where the space maps users to roles (``tools.sql_postgres``); the grants of
  the space's login are the boundary, and a login that can read more is reported at start.

Every query has a deadline that a watchdog enforces from outside (``tools.sql_watchdog``), and its
result is bounded as it is fetched (``tools.sql_results``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from opensupervisor import tracing
from opensupervisor.core.bounds import DEFAULT_CELL_CHARS, DEFAULT_OUTPUT_CHARS
from opensupervisor.errors import ConfigError, ToolError
from opensupervisor.tools import sql_duckdb, sql_postgres, sql_sqlite
from opensupervisor.tools.sql_guard import cte_names, listed_tables
from opensupervisor.tools.sql_results import Bounds, Rows, fetch, probe, wrapped
from opensupervisor.tools.sql_roles import check_roles, database_error, role_for, set_role
from opensupervisor.tools.sql_watchdog import WATCHDOG

if TYPE_CHECKING:
    import duckdb

__all__ = ["Column", "Inspection", "ReadOnlyDatabase", "Rows", "check_roles", "database_error", "role_for",
           "set_role"]

DIALECTS = {"sqlite": "sqlite", "duckdb": "duckdb", "postgresql": "postgres"}
MAX_COLUMNS = {"sqlite": sql_sqlite.MAX_COLUMNS, "duckdb": sql_duckdb.MAX_COLUMNS, "postgresql": 500}
# What a database may raise; a DuckDB space adds DuckDB's (DuckDB is imported by the first DuckDB
# space: a process with none never loads it).
_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, SQLAlchemyError)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Inspection:
    """What the database holds beside the space's tables."""
    known: frozenset[str] = frozenset()  # every relation name (no CTE may take one)
    catalog: str | None = None  # the database's own name
    # Who (``""``: the space's login; else a database role) can read which unlisted tables.
    readable: dict[str, list[str]] = field(default_factory=dict)


class ReadOnlyDatabase:
    """One space's database and tables. Queries run on a small thread pool; each has a deadline."""

    def __init__(self, url: str, base_dir: Path, *, timeout_s: float, tables: Sequence[str]) -> None:
        self.timeout_s = timeout_s
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"not a database URL: {url!r}", param="database_url") from exc
        self.backend = parsed.get_backend_name()
        if self.backend not in DIALECTS:
            raise ConfigError(f"unsupported database {self.backend!r}: use sqlite://, duckdb:// or postgresql://",
                              param="database_url")
        self.dialect = DIALECTS[self.backend]
        self.listed = listed_tables(list(tables), self.dialect)
        self.path = Path()
        self._relations: frozenset[str] | None = None  # SQLite: its tables and views, read at first query
        self.engine = self._engine(parsed, base_dir)
        self._workers = sql_duckdb.Workers(str(self.path)) if self.backend == "duckdb" else None
        self._errors = _ERRORS
        if self.backend == "duckdb":
            import duckdb

            self._errors = (*_ERRORS, duckdb.Error)
        self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sql-space")

    def _engine(self, url: sa.URL, base_dir: Path) -> sa.Engine | None:
        if self.backend in ("sqlite", "duckdb"):
            if not url.database or url.database == ":memory:":
                raise ConfigError("a space's SQLite or DuckDB database must be a file", param="database_url")
            path = Path(url.database)
            self.path = path if path.is_absolute() else base_dir / path
        if self.backend == "duckdb":
            return None  # opened per query (an open DuckDB file blocks its writer), see _duckdb
        if self.backend == "sqlite":
            # Pooled: an idle SQLite reader blocks no writer. No statement cache: each statement is
            # prepared, so authorized, again.
            engine = sa.create_engine(f"sqlite+pysqlite:///file:{self.path}?mode=ro&uri=true", pool_size=4,
                                      connect_args={"check_same_thread": False, "cached_statements": 0})

            @sa.event.listens_for(engine, "connect")
            def _read_only(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute("PRAGMA query_only = ON")
                sql_sqlite.load_schema(dbapi_conn)

            return engine
        ms = int(self.timeout_s * 1000)
        return sa.create_engine(url.set(drivername="postgresql+psycopg"), pool_size=2, max_overflow=2,
                                pool_pre_ping=True, connect_args={"options": (
                                    f"-c default_transaction_read_only=on -c statement_timeout={ms} "
                                    f"-c idle_in_transaction_session_timeout={ms + 5000}")})

    def _duckdb(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        return duckdb.connect(str(self.path), read_only=True, config=sql_duckdb.CONFIG)

    def _sa(self) -> sa.Engine:
        assert self.engine is not None
        return self.engine

    async def _in_thread(self, work: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._threads, work)

    async def describe(self, tables: list[str]) -> dict[str, list[Column]]:
        """The columns of each table (a table that does not exist is a configuration error)."""
        def read() -> dict[str, list[Column]]:
            out: dict[str, list[Column]] = {}
            for table in tables:
                schema, _, name = table.rpartition(".")
                try:
                    columns = self._columns(schema, name)
                except self._errors as exc:
                    raise ConfigError(f"table {table!r}: {database_error(exc)}", param="tables") from exc
                if not columns:
                    raise ConfigError(f"table {table!r} does not exist", param="tables")
                out[table] = columns
            return out

        result: dict[str, list[Column]] = await self._in_thread(read)
        return result

    def _columns(self, schema: str, name: str) -> list[Column]:
        if self.backend == "duckdb":  # duckdb-engine's inspector reads PostgreSQL catalogs DuckDB lacks
            query = ("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?"
                     " AND table_schema = ? ORDER BY ordinal_position")
            with self._duckdb() as conn:
                rows = conn.execute(query, [name, schema or "main"]).fetchall()
            return [Column(str(r[0]), str(r[1])) for r in rows]
        return [Column(str(c["name"]), str(c["type"]))
                for c in sa.inspect(self._sa()).get_columns(name, schema=schema or None)]

    async def inspect(self, roles: list[str]) -> Inspection:
        """Every relation name, the database's name and who can read unlisted tables (PostgreSQL's
        login and ``roles``; DuckDB, which has no grants: the file itself)."""
        def read() -> Inspection:
            if self.backend == "duckdb":
                with self._duckdb() as conn:
                    rows = conn.execute("SELECT table_schema, table_name FROM information_schema.tables "
                                        "WHERE table_catalog = current_database()").fetchall()
                    catalog = str(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]
                unlisted = [f"{s}.{n}" for s, n in rows if (s.lower(), n.lower()) not in self.listed]
                return Inspection(frozenset(n for _, n in rows), catalog, {"": unlisted})
            with self._sa().connect() as conn:
                raw: Any = conn.connection.driver_connection
                if self.backend == "sqlite":
                    return Inspection(frozenset(sql_sqlite.relation_names(raw)))
                known, readable, database = sql_postgres.inspect(raw, self.listed, roles)
                return Inspection(frozenset(known), database, readable)

        try:
            result: Inspection = await self._in_thread(read)
        except self._errors as exc:
            raise ToolError(f"the space's database is not usable: {database_error(exc)}") from exc
        return result

    async def query(self, sql: str, max_rows: int, role: str | None = None, *,
                    cell_chars: int = DEFAULT_CELL_CHARS, output_chars: int = DEFAULT_OUTPUT_CHARS) -> Rows:
        """Run a checked query (as ``role``, on PostgreSQL), each value cut at ``cell_chars`` and
        fetching stopped past ``output_chars``; a database error or the deadline is a ``ToolError``."""
        attributes = {"db.system": self.dialect, **({"db.role": role} if role else {})}
        bounds = Bounds(max_rows, cell_chars, output_chars)
        with tracing.span("sql", "RETRIEVER", inputs={"sql": sql}, attributes=attributes) as span:
            rows: Rows = await self._in_thread(lambda: self._query(sql, bounds, role))
            span.attribute("db.row_count", len(rows.rows))
            span.outputs({"columns": rows.columns, "row_count": len(rows.rows), "truncated": rows.truncated,
                          "cut_values": rows.cut_values})
            return rows

    def _query(self, sql: str, bounds: Bounds, role: str | None) -> Rows:
        deadline = time.monotonic() + self.timeout_s
        refused: list[str] = []
        try:
            if self._workers is not None:
                return self._workers.query(sql, bounds, deadline)
            with self._sa().connect() as conn:
                raw: Any = conn.connection.driver_connection
                if self.backend == "sqlite":
                    if self._relations is None:
                        self._relations = frozenset(n.lower() for n in sql_sqlite.relation_names(raw))
                    reads = sql_sqlite.Reads(frozenset(name for _, name in self.listed),
                                             cte_names(sql, self.dialect), self._relations)
                    with sql_sqlite.guarded(raw, reads, deadline, refused):
                        return self._run(raw.cursor(), raw.cursor(), sql, bounds, deadline, raw.interrupt)
                try:
                    schemas = sorted({schema for schema, _ in self.listed})
                    raw.execute(sql_postgres.session(deadline - time.monotonic(), schemas, role))
                    with raw.cursor(name="space_query") as named:
                        return self._run(raw.cursor(), named, sql, bounds, deadline,
                                         lambda: raw.cancel_safe(timeout=2))
                finally:
                    _end(raw)
        except sql_duckdb.WorkerError as exc:
            raise self._worker_error(exc) from exc
        except self._errors as exc:
            raise self._error(exc, deadline, refused) from exc

    def _run(self, cursor: Any, rows_cursor: Any, sql: str, bounds: Bounds, deadline: float,
             stop: Callable[[], None]) -> Rows:
        """The columns from a probe, then the rows of the wrapped query; ``stop`` at the deadline."""
        token = WATCHDOG.arm(deadline, stop)
        try:
            cursor.execute(probe(sql))
            columns = [str(d[0]) for d in cursor.description or []]
            if len(columns) > MAX_COLUMNS[self.backend]:
                raise ToolError(f"the query returns {len(columns)} columns; a space's query may return at most "
                                f"{MAX_COLUMNS[self.backend]}")
            if not columns:
                return Rows([], [], False)
            rows_cursor.execute(wrapped(self.backend, sql, len(columns), bounds.cell_chars))
            return fetch(rows_cursor.fetchmany, self.backend, columns, bounds)
        finally:
            WATCHDOG.disarm(token)

    def _worker_error(self, exc: sql_duckdb.WorkerError) -> ToolError:
        if exc.kind == "timeout":
            return ToolError(f"the query did not finish within {self.timeout_s:g} seconds")
        if exc.kind in ("memory", "crashed"):
            return ToolError(f"the query needs more than the space's memory limit ({sql_duckdb.DUCKDB_MEMORY} for "
                             f"the engine, {sql_duckdb.MEMORY_BYTES // 2**20:,} MB in all): {exc}")
        return ToolError(f"the database refused the query: {exc}")

    def _duckdb_interrupted(self, exc: BaseException) -> bool:
        if self.backend != "duckdb":
            return False
        import duckdb

        return isinstance(exc, duckdb.InterruptException)

    def _error(self, exc: BaseException, deadline: float, refused: list[str]) -> ToolError:
        text = database_error(exc)
        if refused:
            return ToolError(f"the database refused the query: {refused[0]}")
        if time.monotonic() >= deadline or isinstance(exc, psycopg.errors.QueryCanceled) or text == "interrupted" \
                or self._duckdb_interrupted(exc):
            return ToolError(f"the query did not finish within {self.timeout_s:g} seconds")
        if "string or blob too big" in text:
            return ToolError(f"a value in the query grew past {sql_sqlite.MAX_VALUE_BYTES:,} bytes, the most one "
                             "value may hold in a space's query")
        return ToolError(f"the database refused the query: {text}")

    async def aclose(self) -> None:
        self._threads.shutdown(wait=False)
        if self._workers is not None:
            self._workers.close()
        if self.engine is not None:
            self.engine.dispose()


def _end(raw: Any) -> None:
    """End a PostgreSQL query's transaction and release any session-level advisory lock it took: such a
    lock outlives the rollback and would stay on the pooled connection (the function allow-list
    refuses the lock functions; this holds even if a query got past it). One round trip, as the
    rollback alone."""
    try:
        raw.execute("ROLLBACK; SELECT pg_catalog.pg_advisory_unlock_all()")
    except psycopg.Error:
        raw.rollback()  # a broken connection: the pool drops it, and its locks with it
