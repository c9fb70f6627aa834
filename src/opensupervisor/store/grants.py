"""Grants stored through the admin API (the workspace file's are in the file)."""

from __future__ import annotations

import orjson
from sqlalchemy import delete, insert, select

from opensupervisor.store.schema import grants
from opensupervisor.store.store import Store, now_ms


class StoredGrants:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, obj: str, principals: list[str]) -> None:
        row = {"object": obj, "principals": orjson.dumps(sorted(set(principals))).decode(), "updated_at": now_ms()}

        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(delete(grants).where(grants.c.object == obj))
                conn.execute(insert(grants), [row])

        await self.store.write(write)

    async def remove(self, obj: str) -> bool:
        def write() -> bool:
            with self.store.transaction() as conn:
                return bool(conn.execute(delete(grants).where(grants.c.object == obj)).rowcount)

        return await self.store.write(write)

    async def all(self) -> dict[str, list[str]]:
        def read() -> dict[str, list[str]]:
            with self.store.engine.connect() as conn:
                return {r.object: list(orjson.loads(r.principals)) for r in conn.execute(select(grants))}

        return await self.store.run(read)
