"""Where knowledge assistants' passages live: documents, chunks and their embeddings, in SQL.

The index is derived data, kept in its own tables (``os_kb_*``) of a SQLite or PostgreSQL database
(by default the store's). Each knowledge assistant has a ``version`` that every change bumps, so
the searchers of every process know when to reload.

On PostgreSQL the embeddings also go to a ``vector`` column (the ``pgvector`` extension, which the
server enables and which must be installed) with an HNSW index per knowledge assistant, and vector
search runs in the database; on SQLite it runs in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError

from opensupervisor.errors import ConfigError
from opensupervisor.knowledge.chunking import Chunk
from opensupervisor.side_engine import side_engine

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


PG_SETUP = [
    "CREATE EXTENSION IF NOT EXISTS vector",
    "CREATE TABLE IF NOT EXISTS os_kb_vectors (chunk_id integer PRIMARY KEY REFERENCES os_kb_chunks(id) "
    "ON DELETE CASCADE, ka varchar(255) NOT NULL, embedding vector NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ix_os_kb_vectors_ka ON os_kb_vectors (ka)",
]


class KnowledgeIndex:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = side_engine(url)
        self.pgvector = self.engine.dialect.name == "postgresql"
        metadata.create_all(self.engine)
        if self.pgvector:
            try:
                with self.engine.begin() as conn:
                    conn.execute(text("SELECT pg_advisory_xact_lock(727001)"))  # one process sets up at a time
                    for statement in PG_SETUP:
                        conn.execute(text(statement))
            except DBAPIError as exc:
                raise ConfigError("knowledge assistants on PostgreSQL need the pgvector extension: install it "
                                  f"on the database server (README, 'Knowledge assistants'): {exc.orig}") from exc
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
                if rows and self.pgvector:
                    ids = conn.execute(insert(chunks).returning(chunks.c.id, sort_by_parameter_order=True),
                                       rows).scalars().all()
                    _store_vectors(conn, ka, list(ids), vectors)
                elif rows:
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

    async def nearest(self, ka: str, query: np.ndarray[Any, Any], limit: int, source: str | None) -> list[int]:
        """PostgreSQL: the ids of the ``limit`` chunks closest to ``query`` (cosine), by the HNSW index."""
        dim = len(query)
        literal = "[" + ",".join(f"{x:.7g}" for x in query.tolist()) + "]"
        where = "v.ka = :ka" + (" AND c.path LIKE :pattern ESCAPE '\\'" if source else "")
        sql = text(f"SELECT v.chunk_id FROM os_kb_vectors v JOIN os_kb_chunks c ON c.id = v.chunk_id WHERE {where} "
                   f"ORDER BY v.embedding::vector({dim}) <=> CAST(:q AS vector({dim})) LIMIT :n")
        params: dict[str, Any] = {"ka": ka, "q": literal, "n": limit}
        if source:
            params["pattern"] = _like(source)

        def read() -> list[int]:
            with self.engine.begin() as conn:
                conn.execute(text("SET LOCAL hnsw.ef_search = 200"))
                conn.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
                return [int(r[0]) for r in conn.execute(sql, params)]

        return await self.run(read)

    async def snapshot(self, ka: str) -> Snapshot:
        def read() -> Snapshot:
            with self.engine.connect() as conn:
                version = int(conn.execute(select(state.c.version).where(state.c.ka == ka)).scalar() or 0)
                titles = dict(conn.execute(select(documents.c.path, documents.c.title).where(documents.c.ka == ka))
                              .tuples().all())
                    # With pgvector the database searches the vectors: they stay there.
                columns = [c for c in chunks.c if not (self.pgvector and c.name == "embedding")]
                rows = conn.execute(select(*columns).where(chunks.c.ka == ka).order_by(chunks.c.path,
                                                                                       chunks.c.ordinal)).all()
            passages = [Passage(r.id, r.path, titles.get(r.path, r.path), r.heading, r.start_char, r.end_char, r.text)
                        for r in rows]
            vectors = np.vstack([np.frombuffer(r.embedding, dtype="<f4") for r in rows]) if rows and not self.pgvector \
                else np.zeros((0, 1), dtype=np.float32)
            return Snapshot(version, passages, vectors.astype(np.float32, copy=False))

        return await self.run(read)


def _store_vectors(conn: Connection, ka: str, ids: list[int], vectors: np.ndarray[Any, Any]) -> None:
    dim = vectors.shape[1]
    conn.execute(text("INSERT INTO os_kb_vectors (chunk_id, ka, embedding) VALUES (:id, :ka, CAST(:v AS vector))"),
                 [{"id": i, "ka": ka, "v": "[" + ",".join(f"{x:.7g}" for x in row.tolist()) + "]"}
                  for i, row in zip(ids, vectors, strict=True)])
    name = f"os_kb_hnsw_{hashlib.md5(ka.encode()).hexdigest()[:12]}_{dim}"
    quoted = ka.replace("'", "''")
    conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON os_kb_vectors USING hnsw "
                      f"((embedding::vector({dim})) vector_cosine_ops) WHERE ka = '{quoted}'"))


def _like(glob: str) -> str:
    """A shell-style glob as a LIKE pattern (``*`` any run, ``?`` one character)."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _bump(conn: Any, ka: str, embedder: str) -> None:
    changed = conn.execute(update(state).where(state.c.ka == ka)
                           .values(version=state.c.version + 1, embedder=embedder)).rowcount
    if not changed:
        conn.execute(insert(state), [{"ka": ka, "version": 1, "embedder": embedder}])
