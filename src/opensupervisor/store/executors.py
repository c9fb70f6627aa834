"""The registry of processes that run background responses, with their heartbeats.

DBOS recovers a process's unfinished workflows only when asked for that process's executor id;
this registry is how the live processes sharing a database notice that one of them died.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import delete, insert, select, update

from opensupervisor.store.schema import executors
from opensupervisor.store.store import Store, now_ms


class Executor(NamedTuple):
    id: str
    host: str
    pid: int
    heartbeat_at: int


class Executors:
    def __init__(self, store: Store, pool: str) -> None:
        self.store = store
        self.pool = pool

    async def register(self, executor_id: str, host: str, pid: int) -> None:
        row = {"id": executor_id, "pool": self.pool, "host": host, "pid": pid, "started_at": now_ms(),
               "heartbeat_at": now_ms()}

        def write() -> None:
            with self.store.engine.begin() as conn:
                conn.execute(delete(executors).where(executors.c.id == executor_id))
                conn.execute(insert(executors), [row])

        await self.store.write(write)

    async def beat(self, executor_id: str) -> None:
        def write() -> None:
            with self.store.engine.begin() as conn:
                self.store.no_wait_for_disk(conn)
                conn.execute(update(executors).where(executors.c.id == executor_id).values(heartbeat_at=now_ms()))

        await self.store.write(write)

    async def others(self, executor_id: str) -> list[Executor]:
        def read() -> list[Executor]:
            with self.store.engine.connect() as conn:
                rows = conn.execute(select(executors.c.id, executors.c.host, executors.c.pid,
                                           executors.c.heartbeat_at).where(
                    executors.c.pool == self.pool, executors.c.id != executor_id))
                return [Executor(r.id, r.host, r.pid, r.heartbeat_at) for r in rows]

        return await self.store.run(read)

    async def remove(self, executor_id: str) -> None:
        def write() -> None:
            with self.store.engine.begin() as conn:
                conn.execute(delete(executors).where(executors.c.id == executor_id))

        await self.store.write(write)
