"""Random keys the server makes once and every process sharing the store reads."""

from __future__ import annotations

import secrets

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from opensupervisor.store.schema import keys
from opensupervisor.store.store import Store


async def shared_key(store: Store, name: str) -> bytes:
    """The key ``name``: made on first use by whichever process asks first (32 random bytes)."""

    def write() -> bytes:
        try:
            with store.transaction() as conn:
                conn.execute(insert(keys), [{"name": name, "value": secrets.token_hex(32)}])
        except IntegrityError:
            pass  # another process made it first: use theirs
        with store.engine.connect() as conn:
            return bytes.fromhex(conn.execute(select(keys.c.value).where(keys.c.name == name)).scalar_one())

    return await store.write(write)
