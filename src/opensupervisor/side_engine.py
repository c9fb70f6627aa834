"""Engines for the databases beside the store (knowledge index, trace and inference tables): PostgreSQL through
psycopg, or SQLite in WAL mode that does not wait for the disk at each commit (the data there can
be rebuilt or spared; the store's own engine is stricter)."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Connection, Engine, MetaData, text
from sqlalchemy.engine import make_url

from opensupervisor.engines import WAL, postgres_engine, sqlite_engine
from opensupervisor.files import private_dir


def side_engine(url: str, *, pool_size: int = 4) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return postgres_engine(parsed, pool_size=pool_size, pool_pre_ping=True)
    # Used from several threads (ingestion, the trace writer); a locked file is waited for up to 30 s.
    return sqlite_engine(url, pragmas=WAL, connect_args={"check_same_thread": False, "timeout": 30})


class CatalogTables:
    """Tables named by a Unity Catalog ``catalog.schema``: the SQLite file
    ``<folder>/<catalog>.<schema>.db``, or the PostgreSQL schema ``<catalog>__<schema>`` at ``url``."""

    def __init__(self, folder: Path, url: str | None = None) -> None:
        self.folder = folder
        self.url = url if url is not None and make_url(url).get_backend_name() == "postgresql" else None
        self._engines: dict[str, Engine] = {}
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    def path_of(self, catalog: str, schema: str, owner: str | None = None) -> Path:
        """The SQLite file; an owner's files are in a folder of their own."""
        return (self.folder if owner is None else self.folder / owner) / f"{catalog}.{schema}.db"

    def schema_of(self, catalog: str, schema: str, owner: str | None = None) -> str:
        """The PostgreSQL schema; an owner's start with ``<owner>$``, which no shared one can (names
        hold letters, digits and underscores only)."""
        return f"{catalog}__{schema}" if owner is None else f"{owner}${catalog}__{schema}"

    def engine(self, catalog: str, schema: str, owner: str | None = None) -> tuple[Engine, str | None]:
        """The engine and the schema (None on SQLite) where ``catalog.schema``'s tables live."""
        with self._lock:
            if self.url is not None:
                if "pg" not in self._engines:
                    self._engines["pg"] = side_engine(self.url, pool_size=2)
                return self._engines["pg"], self.schema_of(catalog, schema, owner)
            path = self.path_of(catalog, schema, owner)
            key = str(path)
            if key not in self._engines:
                private_dir(path.parent)
                self._engines[key] = side_engine(f"sqlite:///{path}")
            return self._engines[key], None

    def ensure(self, conn: Connection, metadata: MetaData, schema: str | None) -> None:
        """Create the schema and ``metadata``'s tables, once per process."""
        key = f"{conn.engine.url}|{schema}|{','.join(sorted(metadata.tables))}"
        if key in self._ready:
            return
        if schema is not None:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        metadata.create_all(conn)
        self._ready.add(key)

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
