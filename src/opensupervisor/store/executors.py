"""The registry of processes that run responses, with their heartbeats.

DBOS recovers a process's unfinished workflows only when asked for that process's executor id;
this registry is how the live processes sharing a database notice that one of them died. A
foreground (not background) response names the executor that runs it in its stored options, so
that the responses of a process that died can be ended.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson
from sqlalchemy import delete, func, insert, or_, select, update

from opensupervisor.store.response_rows import queued_runs
from opensupervisor.store.schema import executors, responses
from opensupervisor.store.store import RUNNING, Store, now_ms

# The key of a foreground response's stored options that names the executor running it.
EXECUTOR_OPTION = "executor"


class Executor(NamedTuple):
    id: str
    host: str
    pid: int
    heartbeat_at: int


class QuietRun(NamedTuple):
    id: str
    status: str
    taken_by: str


class Executors:
    def __init__(self, store: Store, pool: str) -> None:
        self.store = store
        self.pool = pool

    async def register(self, executor_id: str, host: str, pid: int) -> None:
        await self.store.write(lambda: self.register_now(executor_id, host, pid))

    def register_now(self, executor_id: str, host: str, pid: int) -> None:
        """``register``, on the calling thread (the heartbeat's own, which a busy event loop cannot hold up)."""
        row = {"id": executor_id, "pool": self.pool, "host": host, "pid": pid, "started_at": now_ms(),
               "heartbeat_at": now_ms()}
        with self.store.transaction() as conn:
            conn.execute(delete(executors).where(executors.c.id == executor_id))
            conn.execute(insert(executors), [row])

    async def beat(self, executor_id: str) -> bool:
        return await self.store.write(lambda: self.beat_now(executor_id))

    def beat_now(self, executor_id: str) -> bool:
        """False when this executor is no longer registered (another process took it for dead)."""
        with self.store.transaction() as conn:
            self.store.no_wait_for_disk(conn)
            return bool(conn.execute(update(executors).where(executors.c.id == executor_id).values(
                heartbeat_at=now_ms())).rowcount)

    async def foreground_of(self, executor_id: str) -> list[str]:
        """The ids of the running foreground responses that ``executor_id`` runs."""
        def read() -> list[str]:
            with self.store.engine.connect() as conn:
                rows = conn.execute(select(responses.c.id, responses.c.options).where(
                    responses.c.background.is_(False), responses.c.status.in_(RUNNING)))
                return [r.id for r in rows
                        if r.options and orjson.loads(r.options).get(EXECUTOR_OPTION) == executor_id]

        return await self.store.run(read)

    async def others(self, executor_id: str) -> list[Executor]:
        def read() -> list[Executor]:
            with self.store.engine.connect() as conn:
                rows = conn.execute(select(executors.c.id, executors.c.host, executors.c.pid,
                                           executors.c.heartbeat_at).where(
                    executors.c.pool == self.pool, executors.c.id != executor_id))
                return [Executor(r.id, r.host, r.pid, r.heartbeat_at) for r in rows]

        return await self.store.run(read)

    async def count_queued(self) -> int:
        def read() -> int:
            with self.store.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(responses).where(queued_runs())).scalar_one())

        return await self.store.run(read)

    async def quiet_runs(self, quiet_ms: int, *, after: str = "", limit: int = 100) -> list[QuietRun]:
        """Background responses still running, taken by a process, whose runner has been quiet for
        ``quiet_ms``; by id from ``after``, at most ``limit`` (a backlog is read a page at a time).
        Runs waiting in the queue are not among them: nothing is amiss with those; nor are another
        pool's runs, whose workflows (and their states) are in another DBOS database."""
        def read() -> list[QuietRun]:
            with self.store.engine.connect() as conn:
                return [QuietRun(r.id, r.status, r.owner_executor) for r in conn.execute(
                    select(responses.c.id, responses.c.status, responses.c.owner_executor).where(
                        responses.c.background.is_(True), responses.c.status.in_(RUNNING),
                        responses.c.owner_executor.is_not(None), responses.c.heartbeat_at < now_ms() - quiet_ms,
                        or_(responses.c.run_pool == self.pool, responses.c.run_pool.is_(None)),
                        responses.c.id > after).order_by(responses.c.id).limit(limit))]

        return await self.store.run(read)

    async def remove(self, executor_id: str) -> None:
        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(delete(executors).where(executors.c.id == executor_id))

        await self.store.write(write)
