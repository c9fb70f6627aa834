"""Connections registered at run time: the entry without secrets, and the secrets sealed."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from opensupervisor.store.schema import connections
from opensupervisor.store.store import Store, now_ms
from opensupervisor.vault import Vault

# (name, entry without secrets, secrets, updated_at in epoch ms)
Row = tuple[str, dict[str, Any], dict[str, Any], int]


class StoredConnections:
    def __init__(self, store: Store, vault: Vault) -> None:
        self.store = store
        self.vault = vault

    async def put(self, name: str, entry: dict[str, Any], secrets: dict[str, Any]) -> None:
        row = {"name": name, "entry": orjson.dumps(entry).decode(),
               "sealed": self.vault.seal(orjson.dumps(secrets).decode()), "updated_at": now_ms()}

        def write() -> None:
            with self.store.engine.begin() as conn:
                conn.execute(delete(connections).where(connections.c.name == name))
                conn.execute(insert(connections), [row])

        await self.store.write(write)

    async def remove(self, name: str) -> bool:
        def write() -> bool:
            with self.store.engine.begin() as conn:
                return bool(conn.execute(delete(connections).where(connections.c.name == name)).rowcount)

        return await self.store.write(write)

    async def all(self) -> list[Row]:
        def read() -> list[Any]:
            with self.store.engine.connect() as conn:
                return list(conn.execute(select(connections).order_by(connections.c.name)))

        rows = await self.store.run(read)
        return [(r.name, orjson.loads(r.entry), orjson.loads(self.vault.open(r.sealed)) if r.sealed else {},
                 int(r.updated_at)) for r in rows]
