"""The queue of background runs, in the store itself.

Processes that share one durable-execution database (a pool, ``DurableEngine.pool``) share one
queue. A background run is waiting while it runs and no process has taken it (``owner_executor`` is
empty): a new queued run, or one handed back because the process that took it died before its
workflow started. A process with room takes the oldest waiting runs in one statement (on
PostgreSQL, rows another process is taking are skipped, not waited for) and starts their
workflows itself (``runs.dispatch``).

On PostgreSQL each create of a queued run notifies the processes listening on ``RUNS_CHANNEL`` in its
own transaction, so a waiting run is taken within milliseconds instead of at the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson
import psycopg
from sqlalchemy import ColumnElement, and_, bindparam, select, update

from opensupervisor.store.response_rows import RUN_COLUMNS, RUNS_CHANNEL, RunRecord, notify_waiting, one_of, run_record
from opensupervisor.store.schema import items, responses
from opensupervisor.store.store import RUNNING, Store, now_ms
from opensupervisor.wire.items import Item

log = logging.getLogger(__name__)
# How long a lost listening connection waits before it connects again.
RELISTEN_S = 1.0


def waiting_runs(pool: str) -> ColumnElement[bool]:
    """Background runs of ``pool`` still running that no process has taken (the partial index's condition)."""
    return and_(responses.c.owner_executor.is_(None), responses.c.background.is_(True),
                responses.c.run_pool == pool, one_of(responses.c.status, RUNNING))


class RunQueue:
    def __init__(self, store: Store, executor_id: str, pool: str) -> None:
        self.store = store
        self.executor_id = executor_id
        waiting = waiting_runs(pool)
        # Materialized: PostgreSQL runs it once. As a subquery of the UPDATE it may run again for each
        # row the UPDATE scans, locking rows (skipped by every other process) that it then does not take.
        oldest = select(responses.c.id).where(waiting).order_by(responses.c.created_at, responses.c.id).limit(
            bindparam("n")).with_for_update(skip_locked=True).cte("oldest").prefix_with(
                "MATERIALIZED", dialect="postgresql")
        self._take = update(responses).where(responses.c.id.in_(select(oldest.c.id)), waiting).values(
            owner_executor=executor_id, heartbeat_at=bindparam("beat")).returning(
                responses.c.id, responses.c.created_at, *RUN_COLUMNS)
        self._any = select(responses.c.id).where(waiting).limit(1)
        self._release = update(responses).where(
            responses.c.id == bindparam("rid"), responses.c.owner_executor == bindparam("was"),
            one_of(responses.c.status, RUNNING)).values(owner_executor=None)

    async def take(self, limit: int, *, look_first: bool = True) -> list[RunRecord]:
        """Take up to ``limit`` of the oldest waiting runs for this process, oldest first, read as
        their workflows need them (which then need not load them again)."""
        def waiting() -> bool:
            with self.store.engine.connect() as conn:
                return conn.execute(self._any).first() is not None

        def write() -> list[RunRecord]:
            with self.store.transaction() as conn:
                taken = sorted(conn.execute(self._take, {"n": limit, "beat": now_ms()}).all(),
                               key=lambda row: (row.created_at, row.id))
                inputs: dict[str, list[Item]] = {row.id: [] for row in taken}
                if taken:
                    for item in conn.execute(select(items.c.response_id, items.c.item).where(
                            items.c.response_id.in_(list(inputs)), items.c.kind == "input").order_by(
                            items.c.response_id, items.c.position)):
                        inputs[item.response_id].append(orjson.loads(item.item))
                return [run_record(row, inputs[row.id]) for row in taken]

        if look_first and not await self.store.run(waiting):  # nothing waits: no write, no lock
            return []
        return await self.store.write(write)

    async def release(self, response_id: str, taken_by: str) -> bool:
        """Hand a run back to the queue (``taken_by`` took it and will not start it); True when it was."""
        def write() -> bool:
            with self.store.transaction() as conn:
                released = bool(conn.execute(self._release, {"rid": response_id, "was": taken_by}).rowcount)
                if released:
                    notify_waiting(conn)
                return released

        return await self.store.write(write)

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` at every notification, until cancelled (PostgreSQL only: returns at once on
        SQLite). A lost connection is made again; the dispatcher's own polling covers the gap."""
        if self.store.is_sqlite:
            return
        url = self.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {RUNS_CHANNEL}")
                    wake()  # whatever was queued while not listening
                    async for _ in conn.notifies():
                        wake()
            except psycopg.Error as exc:
                log.info("listening for queued runs failed (%s); listening again in %.0f s", exc, RELISTEN_S)
            await asyncio.sleep(RELISTEN_S)
