"""Each user's own credential for a connection that runs on behalf of its caller, sealed at rest.

Reads are cached for a few seconds per process; a change made here applies here at once and in the
other processes within ``CACHE_S``.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, select

from opensupervisor.store.schema import user_credentials
from opensupervisor.store.store import Store, now_ms
from opensupervisor.vault import Vault

CACHE_S = 5.0


class UserCredentials:
    def __init__(self, store: Store, vault: Vault) -> None:
        self.store = store
        self.vault = vault
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}

    async def put(self, connection: str, principal_id: str, token: str) -> None:
        row = {"connection": connection, "principal_id": principal_id, "sealed": self.vault.seal(token),
               "updated_at": now_ms()}

        def write() -> None:
            stmt = self.store.dialect_insert(user_credentials).values(**row)
            with self.store.transaction() as conn:
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["connection", "principal_id"],
                    set_={"sealed": row["sealed"], "updated_at": row["updated_at"]}))

        await self.store.write(write)
        self._cache.pop((connection, principal_id), None)

    async def remove(self, connection: str, principal_id: str) -> bool:
        def write() -> bool:
            with self.store.transaction() as conn:
                return bool(conn.execute(delete(user_credentials).where(
                    user_credentials.c.connection == connection,
                    user_credentials.c.principal_id == principal_id)).rowcount)

        removed = await self.store.write(write)
        self._cache.pop((connection, principal_id), None)
        return removed

    async def remove_connection(self, connection: str) -> int:
        """Remove every user's credential for ``connection`` (left by one that is gone: a new
        connection of the same name must not receive them)."""
        def write() -> int:
            with self.store.transaction() as conn:
                return int(conn.execute(delete(user_credentials).where(
                    user_credentials.c.connection == connection)).rowcount)

        removed = await self.store.write(write)
        self.forget(connection)
        return removed

    def forget(self, connection: str) -> None:
        """Drop what this process keeps of a connection's credentials (it was removed or replaced)."""
        for key in [k for k in self._cache if k[0] == connection]:
            del self._cache[key]

    async def token(self, connection: str, principal_id: str) -> str | None:
        key = (connection, principal_id)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]

        def read() -> str | None:
            with self.store.engine.connect() as conn:
                return conn.execute(select(user_credentials.c.sealed).where(
                    user_credentials.c.connection == connection,
                    user_credentials.c.principal_id == principal_id)).scalar_one_or_none()

        sealed = await self.store.run(read)
        token = self.vault.open(sealed) if sealed is not None else None
        self._cache[key] = (time.monotonic(), token)
        return token

    async def connections_of(self, principal_id: str) -> list[tuple[str, int]]:
        """The connections ``principal_id`` has a credential for, and when each was stored."""
        def read() -> list[tuple[str, int]]:
            with self.store.engine.connect() as conn:
                return [(r.connection, int(r.updated_at)) for r in conn.execute(
                    select(user_credentials.c.connection, user_credentials.c.updated_at).where(
                        user_credentials.c.principal_id == principal_id).order_by(user_credentials.c.connection))]

        return await self.store.run(read)
