"""SQLAlchemy engines for the server's own databases: the store, DBOS's system database, and the
side databases (knowledge index, trace and inference tables).

A SQLite file is created private (``files.private_sqlite``) before SQLite opens it, and every
connection to it runs the pragmas its caller chose: each database trades durability for speed
differently. PostgreSQL is reached through psycopg.

The databases a workspace names for its tools (Genie spaces, SQL functions) are not opened here:
they are the operator's, and ``tools.sql_engines`` and ``tools.uc_functions`` open them read-only
or with their own pools, never creating a file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import URL, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from opensupervisor.errors import ConfigError
from opensupervisor.files import private_sqlite

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
# Errors of the connection rather than of a statement: the database is down, unreachable, refusing
# connections, locked past the busy timeout, or every pooled connection is taken.
UNREACHABLE = (OperationalError, InterfaceError, PoolTimeout)

# WAL lets readers run beside the writer; NORMAL is durable at commit boundaries in WAL mode, and
# commits do not wait for the disk.
WAL = ("journal_mode=WAL", "synchronous=NORMAL")


def engine_url(url: str) -> str:
    """Pick the driver for a plain ``sqlite://`` or ``postgresql://`` URL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+pysqlite"))
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")


def sqlite_engine(url: str, *, pragmas: Sequence[str], isolation_level: str | None = None,
                  **options: Any) -> Engine:
    """An engine on the SQLite file of ``url``, created ``0600`` if missing. Each new connection
    runs ``PRAGMA p`` for every ``p`` of ``pragmas``, after setting the sqlite3 driver's
    ``isolation_level`` when one is given (``"IMMEDIATE"``: a transaction takes the write lock
    when it begins). ``options`` go to ``create_engine``."""
    private_sqlite(url)
    engine = create_engine(url, **options)

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if isolation_level is not None:
            dbapi_conn.isolation_level = isolation_level
        cursor = dbapi_conn.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    return engine


def postgres_engine(url: str | URL, *, pool_size: int, **options: Any) -> Engine:
    """An engine on the PostgreSQL database of ``url`` through psycopg, whatever driver ``url`` names.
    ``options`` go to ``create_engine``."""
    return create_engine(make_url(url).set(drivername="postgresql+psycopg"), pool_size=pool_size, **options)


def again_if_dropped(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn``, run again once when its connection turned out dead (the database restarted, or dropped
    idle connections): the pool has then been emptied, and the second try connects afresh."""
    try:
        return fn(*args, **kwargs)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.info("a pooled database connection was dead; trying once more on a new one")
        return fn(*args, **kwargs)
