"""The engines of the server's own databases: each SQLite file private, each connection with the
pragmas its database needs, PostgreSQL through psycopg with the pool its caller asked for."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from opensupervisor.engines import WAL, engine_url, postgres_engine, sqlite_engine
from opensupervisor.errors import ConfigError
from opensupervisor.runs.durable import _sqlite_engine as dbos_engine
from opensupervisor.side_engine import side_engine
from opensupervisor.store import Store


def settings(engine: sa.Engine) -> dict[str, object]:
    """What a new connection of ``engine`` runs with."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        found: dict[str, object] = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                                    for p in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")}
        found["isolation_level"] = raw.isolation_level
    return found


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    old = os.umask(0o022)  # SQLite's own files would be 0644
    try:
        yield tmp_path
    finally:
        os.umask(old)


def pool(engine: sa.Engine) -> tuple[int, int]:
    queue = engine.pool
    assert isinstance(queue, sa.QueuePool)
    return queue.size(), queue._max_overflow


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_store_waits_10_seconds_for_a_lock(folder: Path) -> None:
    store = Store(f"sqlite:///{folder}/state.db")
    try:
        assert settings(store.engine) == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 10000,
                                          "foreign_keys": 0, "isolation_level": ""}
        assert pool(store.engine) == (8, 8)
        assert private(folder / "state.db")
    finally:
        asyncio.run(store.close())


def test_the_side_engine_is_shared_by_threads(folder: Path) -> None:
    engine = side_engine(f"sqlite:///{folder}/side.db")
    try:
        assert settings(engine) == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 30000,
                                    "foreign_keys": 0, "isolation_level": ""}
        assert private(folder / "side.db")
    finally:
        engine.dispose()


def test_the_dbos_engine_serializes_writers_up_front(folder: Path) -> None:
    engine = dbos_engine(f"sqlite:///{folder}/dbos.db")
    try:
        assert settings(engine) == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 30000,
                                    "foreign_keys": 1, "isolation_level": "IMMEDIATE"}
        assert private(folder / "dbos.db")
    finally:
        engine.dispose()


def test_a_sqlite_file_there_already_keeps_its_mode(folder: Path) -> None:
    shared = folder / "shared.db"
    shared.touch(mode=0o640)
    engine = sqlite_engine(f"sqlite:///{shared}", pragmas=WAL)
    try:
        assert settings(engine)["journal_mode"] == "wal"
        assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    finally:
        engine.dispose()


def test_postgresql_goes_through_psycopg_with_the_pool_asked_for() -> None:
    engine = postgres_engine("postgresql://u:p%40ss@db.invalid:5433/x", pool_size=3, max_overflow=1)
    assert engine.url.drivername == "postgresql+psycopg" and engine.url.password == "p@ss"
    assert pool(engine) == (3, 1)
    side = side_engine("postgresql://db.invalid/x", pool_size=2)
    assert side.url.drivername == "postgresql+psycopg" and side.pool._pre_ping and pool(side) == (2, 10)
    store = Store("postgresql://db.invalid/x")  # connects only when used
    # The store pings no connection before use: it retries one found dead (tests/test_store_outage.py).
    assert store.engine.url.drivername == "postgresql+psycopg" and not store.engine.pool._pre_ping
    assert pool(store.engine) == (8, 8)
    asyncio.run(store.close())


def test_engine_urls() -> None:
    assert engine_url("sqlite:///a.db") == "sqlite+pysqlite:///a.db"
    assert engine_url("postgres://u:p@h/x") == "postgresql+psycopg://u:p@h/x"
    for bad, message in (("nonsense", "not a database URL"), ("mysql://h/x", "unsupported database 'mysql'")):
        with pytest.raises(ConfigError, match=message):
            engine_url(bad)
