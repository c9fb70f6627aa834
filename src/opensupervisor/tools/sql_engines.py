"""Read-only access to a space's database: SQLite, DuckDB or PostgreSQL, with a timeout and a row cap.

Read-only is enforced by the engine, not only by the SQL check: SQLite opens the file with
``mode=ro`` and ``query_only``; DuckDB opens it ``read_only`` without external access (no files,
no extensions); PostgreSQL sessions default to read-only transactions with a statement timeout.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from opensupervisor import tracing
from opensupervisor.errors import ConfigError, ToolError
from opensupervisor.identity import Principal

DIALECTS = {"sqlite": "sqlite", "duckdb": "duckdb", "postgresql": "postgres"}
ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def check_roles(roles: dict[str, str], url: str, where: str) -> None:
    """``database_roles``: PostgreSQL only, each role a plain identifier; raises ``ConfigError``."""
    if not roles:
        return
    if make_url(url).get_backend_name() != "postgresql":
        raise ConfigError(f"{where}.database_roles: database roles need a postgresql:// database")
    for who, role in roles.items():
        if not ROLE.match(role):
            raise ConfigError(f"{where}.database_roles.{who}: {role!r} is not a database role name")


def role_for(roles: dict[str, str], principal: Principal, what: str) -> str | None:
    """The database role ``principal``'s queries run as (on behalf of the user): their own mapping,
    else their first group's (by name), else ``"*"``'s. None: the database's own user, when there
    are no roles or for an admin without a mapping. A caller with none may not query."""
    if not roles:
        return None
    for key in (principal.name, *sorted(principal.groups), "*"):
        if key in roles:
            return roles[key]
    if principal.is_admin:
        return None
    raise ToolError(f"{what} runs queries as each user's database role, and '{principal.name}' has none")


def set_role(conn: sa.Connection, role: str | None) -> None:
    """Run the rest of this transaction as ``role`` (the database then decides what it may read)."""
    if role is not None:
        conn.exec_driver_sql(f'SET LOCAL ROLE "{role}"')


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class Rows:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


class ReadOnlyDatabase:
    """One space's database. Queries run on a small thread pool; each has a deadline."""

    def __init__(self, url: str, base_dir: Path, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"not a database URL: {url!r}") from exc
        self.backend = parsed.get_backend_name()
        if self.backend not in DIALECTS:
            raise ConfigError(f"unsupported database {self.backend!r}: use sqlite://, duckdb:// or postgresql://")
        self.dialect = DIALECTS[self.backend]
        self.engine = self._engine(parsed, base_dir)
        self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sql-space")

    def _engine(self, url: sa.URL, base_dir: Path) -> sa.Engine:
        if self.backend in ("sqlite", "duckdb"):
            path = Path(url.database or "")
            if not url.database or url.database == ":memory:":
                raise ConfigError("a space's SQLite or DuckDB database must be a file")
            path = path if path.is_absolute() else base_dir / path
        if self.backend == "sqlite":
            # Pooled: an idle SQLite reader blocks no writer. (DuckDB's is not pooled: it would.)
            engine = sa.create_engine(f"sqlite+pysqlite:///file:{path}?mode=ro&uri=true", pool_size=4,
                                      connect_args={"check_same_thread": False})

            @sa.event.listens_for(engine, "connect")
            def _read_only(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute("PRAGMA query_only = ON")

            return engine
        if self.backend == "duckdb":
            return sa.create_engine(f"duckdb:///{path}", poolclass=sa.NullPool, connect_args={
                "read_only": True, "config": {"enable_external_access": False}})
        ms = int(self.timeout_s * 1000)
        return sa.create_engine(url.set(drivername="postgresql+psycopg"), pool_size=2, max_overflow=2,
                                pool_pre_ping=True, connect_args={
                                    "options": f"-c default_transaction_read_only=on -c statement_timeout={ms}"})

    async def describe(self, tables: list[str]) -> dict[str, list[Column]]:
        """The columns of each table (a table that does not exist is a configuration error)."""
        def read() -> dict[str, list[Column]]:
            out: dict[str, list[Column]] = {}
            for table in tables:
                schema, _, name = table.rpartition(".")
                try:
                    columns = self._columns(schema, name)
                except SQLAlchemyError as exc:
                    raise ConfigError(f"table {table!r}: {str(exc).splitlines()[0]}") from exc
                if not columns:
                    raise ConfigError(f"table {table!r} does not exist")
                out[table] = columns
            return out

        return await asyncio.get_running_loop().run_in_executor(self._threads, read)

    def _columns(self, schema: str, name: str) -> list[Column]:
        if self.backend == "duckdb":  # duckdb-engine's inspector reads PostgreSQL catalogs DuckDB lacks
            query = sa.text("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = :name"
                            " AND table_schema = :schema ORDER BY ordinal_position")
            with self.engine.connect() as conn:
                rows = conn.execute(query, {"name": name, "schema": schema or "main"}).all()
            return [Column(str(r[0]), str(r[1])) for r in rows]
        return [Column(str(c["name"]), str(c["type"]))
                for c in sa.inspect(self.engine).get_columns(name, schema=schema or None)]

    async def query(self, sql: str, max_rows: int, role: str | None = None) -> Rows:
        """Run a checked query (as ``role``, on PostgreSQL); a database error or the timeout becomes
        a ``ToolError``."""
        attributes = {"db.system": self.dialect, **({"db.role": role} if role else {})}
        with tracing.span("sql", "RETRIEVER", inputs={"sql": sql}, attributes=attributes) as span:
            rows = await asyncio.get_running_loop().run_in_executor(self._threads, self._query, sql, max_rows, role)
            span.attribute("db.row_count", len(rows.rows))
            span.outputs({"columns": rows.columns, "row_count": len(rows.rows), "truncated": rows.truncated})
            return rows

    def _query(self, sql: str, max_rows: int, role: str | None) -> Rows:
        deadline = time.monotonic() + self.timeout_s
        try:
            with self.engine.connect() as conn:
                raw = conn.connection.driver_connection
                timer = self._arm_timeout(raw, deadline)
                try:
                    set_role(conn, role)
                    result = conn.exec_driver_sql(sql)
                    columns = list(result.keys())
                    rows = [tuple(r) for r in result.fetchmany(max_rows + 1)]
                finally:
                    if timer is not None:
                        timer.cancel()
                    conn.rollback()
        except SQLAlchemyError as exc:
            if time.monotonic() >= deadline or "timeout" in str(exc).lower() or "interrupt" in str(exc).lower():
                raise ToolError(f"the query did not finish within {self.timeout_s:g} seconds") from exc
            raise ToolError(f"the database refused the query: {database_error(exc)}") from exc
        return Rows(columns, rows[:max_rows], len(rows) > max_rows)

    def _arm_timeout(self, raw: Any, deadline: float) -> threading.Timer | None:
        if self.backend == "sqlite":
            raw.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
            return None
        if self.backend == "duckdb":
            timer = threading.Timer(max(deadline - time.monotonic(), 0), raw.interrupt)
            timer.daemon = True
            timer.start()
            return timer
        return None  # PostgreSQL: statement_timeout

    async def aclose(self) -> None:
        self._threads.shutdown(wait=False)
        self.engine.dispose()


def database_error(exc: SQLAlchemyError) -> str:
    """The first line of what the database said (not SQLAlchemy's wrapping)."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
