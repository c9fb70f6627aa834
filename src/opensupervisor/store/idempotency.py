"""Idempotency keys of create requests: one row per (principal, key), claimed before the run starts.

The claim is an ``INSERT`` on the primary key, so of two creates with the same key, in any
processes, on SQLite or PostgreSQL, exactly one inserts the row (PostgreSQL makes the second wait
for the first's commit and then do nothing). The row later names the response the request made.

A claim is void when nothing came of it: its response is not stored and the process that claimed
it is no longer a registered executor (it died; housekeeping removes dead executors). A void claim
is taken over by the next request with the key, in the transaction that finds it void.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from sqlalchemy import Connection, delete, exists, select, update

from opensupervisor.store.schema import executors, idempotency_keys, responses
from opensupervisor.store.store import Store, now_ms

DEFAULT_TTL_S = 86400.0
# new: this request holds the key; mismatch: the key was used with another body; pending: another
# request holds it and its response is not stored (yet); stored: its response is in the store.
State = Literal["new", "mismatch", "pending", "stored"]


class Claim(NamedTuple):
    state: State
    response_id: str | None = None


class IdempotencyKeys:
    def __init__(self, store: Store, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s

    async def claim(self, principal: str, key: str, request_hash: str, executor: str) -> Claim:
        now = now_ms()
        row = {"principal": principal, "key": key, "request_hash": request_hash, "executor": executor,
               "response_id": None, "created_at": now, "expires_at": now + int(self.ttl_s * 1000)}
        mine = (idempotency_keys.c.principal == principal, idempotency_keys.c.key == key)

        def write() -> Claim:
            with self.store.transaction() as conn:
                conn.execute(delete(idempotency_keys).where(*mine, idempotency_keys.c.expires_at <= now))
                # RETURNING, not rowcount: psycopg reports no count for an insert that may do nothing.
                inserted = conn.execute(self.store.dialect_insert(idempotency_keys).values(**row)
                                        .on_conflict_do_nothing(index_elements=["principal", "key"])
                                        .returning(idempotency_keys.c.key)).first()
                if inserted is not None:
                    return Claim("new")
                found = conn.execute(select(idempotency_keys).where(*mine)).one()
                if found.request_hash != request_hash:
                    return Claim("mismatch", found.response_id)
                if found.response_id is not None and _stored(conn, found.response_id):
                    return Claim("stored", found.response_id)
                if found.executor != executor and not _registered(conn, found.executor):
                    taken = conn.execute(update(idempotency_keys).where(
                        *mine, idempotency_keys.c.executor == found.executor).values(**row)).rowcount
                    if taken == 1:
                        return Claim("new")
                return Claim("pending", found.response_id)

        return await self.store.write(write)

    async def bind(self, principal: str, key: str, response_id: str) -> None:
        """Name the response the holder of the key is about to store."""
        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(update(idempotency_keys).where(
                    idempotency_keys.c.principal == principal, idempotency_keys.c.key == key).values(
                    response_id=response_id))

        await self.store.write(write)

    async def release(self, principal: str, key: str, response_id: str | None) -> None:
        """Give the key back, unless ``response_id`` is stored: a request that made nothing leaves the
        key free for a corrected retry."""
        def write() -> None:
            with self.store.transaction() as conn:
                if response_id is not None and _stored(conn, response_id):
                    return
                conn.execute(delete(idempotency_keys).where(
                    idempotency_keys.c.principal == principal, idempotency_keys.c.key == key))

        await self.store.write(write)

    async def purge(self) -> int:
        """Delete the keys past their lifetime."""
        def write() -> int:
            with self.store.transaction() as conn:
                return conn.execute(delete(idempotency_keys).where(
                    idempotency_keys.c.expires_at <= now_ms())).rowcount

        return await self.store.write(write)


def _stored(conn: Connection, response_id: str) -> bool:
    return bool(conn.execute(select(exists().where(responses.c.id == response_id))).scalar())


def _registered(conn: Connection, executor: str) -> bool:
    return bool(conn.execute(select(exists().where(executors.c.id == executor))).scalar())
