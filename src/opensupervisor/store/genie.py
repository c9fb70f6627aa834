"""Stored Genie conversation messages (written once, when a message is answered)."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from sqlalchemy import insert, select

from opensupervisor.store.schema import genie_messages
from opensupervisor.store.store import Store, now_ms


class StoredMessage(NamedTuple):
    message: dict[str, Any]
    result: dict[str, Any] | None


class GenieMessages:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, message: dict[str, Any], result: dict[str, Any] | None, *, owner: str) -> None:
        row = {"id": message["message_id"], "conversation_id": message["conversation_id"],
               "space_id": message["space_id"], "owner": owner, "created_at": now_ms(),
               "message": orjson.dumps(message).decode(),
               "result": orjson.dumps(result).decode() if result is not None else None}

        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(insert(genie_messages), [row])

        await self.store.write(write)

    async def conversation(self, space_id: str, conversation_id: str, owner: str | None) -> list[StoredMessage]:
        """The conversation's messages, oldest first (none: unknown, or another owner's)."""
        query = select(genie_messages.c.message, genie_messages.c.result).where(
            genie_messages.c.space_id == space_id, genie_messages.c.conversation_id == conversation_id
        ).order_by(genie_messages.c.created_at)
        if owner is not None:
            query = query.where(genie_messages.c.owner == owner)

        def read() -> list[StoredMessage]:
            with self.store.engine.connect() as conn:
                return [StoredMessage(orjson.loads(r.message), orjson.loads(r.result) if r.result else None)
                        for r in conn.execute(query)]

        return await self.store.run(read)
