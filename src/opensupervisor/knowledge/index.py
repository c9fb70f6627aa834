"""Where knowledge assistants' passages live: documents, chunks and their embeddings, in SQL.

The index is derived data, kept in its own tables (``os_kb_*``) of a SQLite or PostgreSQL database
(by default the store's). Each knowledge assistant has a ``version`` that every change bumps, so
the searchers of every process know when to reload.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url

from opensupervisor.knowledge.chunking import Chunk

T = TypeVar("T")
metadata = MetaData()

documents = Table(
    "os_kb_documents",
    metadata,
    Column("ka", String(255), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("title", Text, nullable=False),
    Column("ingested_at", BigInteger, nullable=False),
)

chunks = Table(
    "os_kb_chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ka", String(255), nullable=False),
    Column("path", String(1024), nullable=False),
    Column("ordinal", Integer, nullable=False),
    Column("heading", Text, nullable=False),
    Column("start_char", Integer, nullable=False),
    Column("end_char", Integer, nullable=False),
    Column("text", Text, nullable=False),
    # float32 little-endian, normalized: cosine similarity is a dot product.
    Column("embedding", LargeBinary, nullable=False),
    Index("ix_os_kb_chunks_doc", "ka", "path"),
)

state = Table(
    "os_kb_state",
    metadata,
    Column("ka", String(255), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("embedder", String(255), nullable=False),
)


@dataclass(frozen=True, slots=True)
class Passage:
    id: int
    path: str
    title: str
    heading: str
    start: int
    end: int
    text: str


@dataclass(slots=True)
class Snapshot:
    """All of one knowledge assistant's passages and their embeddings, as of ``version``."""

    version: int
    passages: list[Passage]
    vectors: np.ndarray[Any, np.dtype[np.float32]]


class KnowledgeIndex:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        metadata.create_all(self.engine)
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    async def write(self, fn: Callable[[], T]) -> T:
        async with self._lock:  # SQLite: one writer at a time in this process
            return await asyncio.to_thread(fn)

    def close(self) -> None:
        self.engine.dispose()

    # -- documents ---------------------------------------------------------------------------

    async def hashes(self, ka: str) -> dict[str, str]:
        def read() -> dict[str, str]:
            with self.engine.connect() as conn:
                rows = conn.execute(select(documents.c.path, documents.c.sha256).where(documents.c.ka == ka))
                return {r.path: r.sha256 for r in rows}

        return await self.run(read)

    async def replace(self, ka: str, path: str, sha256: str, title: str, new: list[Chunk],
                      vectors: np.ndarray[Any, np.dtype[np.float32]], embedder: str) -> None:
        """Put one document's chunks in place of its old ones (one transaction)."""
        rows = [{"ka": ka, "path": path, "ordinal": c.ordinal, "heading": c.heading, "start_char": c.start,
                 "end_char": c.end, "text": c.text, "embedding": vectors[i].astype("<f4").tobytes()}
                for i, c in enumerate(new)]

        def write() -> None:
            with self.engine.begin() as conn:
                conn.execute(delete(chunks).where(chunks.c.ka == ka, chunks.c.path == path))
                conn.execute(delete(documents).where(documents.c.ka == ka, documents.c.path == path))
                conn.execute(insert(documents), [{"ka": ka, "path": path, "sha256": sha256, "title": title,
                                                  "ingested_at": int(time.time() * 1000)}])
                if rows:
                    conn.execute(insert(chunks), rows)
                _bump(conn, ka, embedder)

        await self.write(write)

    async def remove(self, ka: str, paths: list[str], embedder: str) -> None:
        def write() -> None:
            with self.engine.begin() as conn:
                for path in paths:
                    conn.execute(delete(chunks).where(chunks.c.ka == ka, chunks.c.path == path))
                    conn.execute(delete(documents).where(documents.c.ka == ka, documents.c.path == path))
                _bump(conn, ka, embedder)

        await self.write(write)

    async def embedder_of(self, ka: str) -> str | None:
        def read() -> str | None:
            with self.engine.connect() as conn:
                value = conn.execute(select(state.c.embedder).where(state.c.ka == ka)).scalar()
                return None if value is None else str(value)

        return await self.run(read)

    # -- reading -----------------------------------------------------------------------------

    async def version(self, ka: str) -> int:
        def read() -> int:
            with self.engine.connect() as conn:
                return int(conn.execute(select(state.c.version).where(state.c.ka == ka)).scalar() or 0)

        return await self.run(read)

    async def snapshot(self, ka: str) -> Snapshot:
        def read() -> Snapshot:
            with self.engine.connect() as conn:
                version = int(conn.execute(select(state.c.version).where(state.c.ka == ka)).scalar() or 0)
                titles = dict(conn.execute(select(documents.c.path, documents.c.title).where(documents.c.ka == ka))
                              .tuples().all())
                rows = conn.execute(select(chunks).where(chunks.c.ka == ka).order_by(chunks.c.path,
                                                                                     chunks.c.ordinal)).all()
            passages = [Passage(r.id, r.path, titles.get(r.path, r.path), r.heading, r.start_char, r.end_char, r.text)
                        for r in rows]
            vectors = np.vstack([np.frombuffer(r.embedding, dtype="<f4") for r in rows]) if rows \
                else np.zeros((0, 1), dtype=np.float32)
            return Snapshot(version, passages, vectors.astype(np.float32, copy=False))

        return await self.run(read)


def _bump(conn: Any, ka: str, embedder: str) -> None:
    changed = conn.execute(update(state).where(state.c.ka == ka)
                           .values(version=state.c.version + 1, embedder=embedder)).rowcount
    if not changed:
        conn.execute(insert(state), [{"ka": ka, "version": 1, "embedder": embedder}])


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True, pool_size=4)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine
