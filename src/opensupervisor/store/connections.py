"""Connections registered at run time: the entry without secrets, and the secrets sealed.

Removing one removes every user's credential for it in the same transaction: a later connection of
the same name (which may point elsewhere) must never receive them.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from opensupervisor.store.schema import connections, user_credentials
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
            with self.store.transaction() as conn:
                conn.execute(delete(connections).where(connections.c.name == name))
                conn.execute(insert(connections), [row])

        await self.store.write(write)

    async def remove(self, name: str) -> bool:
        """Remove ``name`` and its users' credentials; False when no such connection is stored."""
        def write() -> bool:
            with self.store.transaction() as conn:
                if not conn.execute(delete(connections).where(connections.c.name == name)).rowcount:
                    return False
                conn.execute(delete(user_credentials).where(user_credentials.c.connection == name))
                return True

        return await self.store.write(write)

    async def all(self) -> list[Row]:
        def read() -> list[Any]:
            with self.store.engine.connect() as conn:
                return list(conn.execute(select(connections).order_by(connections.c.name)))

        rows = await self.store.run(read)
        return [(r.name, orjson.loads(r.entry), orjson.loads(self.vault.open(r.sealed)) if r.sealed else {},
                 int(r.updated_at)) for r in rows]
