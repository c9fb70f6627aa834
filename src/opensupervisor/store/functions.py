"""Stored catalog functions (registered at run time through the admin API or the CLI)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from opensupervisor.store.schema import functions
from opensupervisor.store.store import Store, now_ms

Row = tuple[str, dict[str, Any], str | None, int]


class RegisteredFunctions:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, name: str, entry: dict[str, Any], source_code: str | None) -> None:
        row = {"name": name, "entry": orjson.dumps(entry).decode(), "source_code": source_code,
               "updated_at": now_ms()}

        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(delete(functions).where(functions.c.name == name))
                conn.execute(insert(functions), [row])

        await self.store.write(write)

    async def remove(self, name: str) -> bool:
        def write() -> bool:
            with self.store.transaction() as conn:
                return bool(conn.execute(delete(functions).where(functions.c.name == name)).rowcount)

        return await self.store.write(write)

    async def all(self) -> list[Row]:
        def read() -> list[Row]:
            with self.store.engine.connect() as conn:
                rows = conn.execute(select(functions).order_by(functions.c.name))
                return [(r.name, orjson.loads(r.entry), r.source_code, int(r.updated_at)) for r in rows]

        return await self.store.run(read)
