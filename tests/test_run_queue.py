"""The store's queue of background runs: who takes what, in which order, and who is woken."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from opensupervisor.core.events import Event
from opensupervisor.store import Store
from opensupervisor.store.run_queue import RunQueue


async def _take(queue: RunQueue, limit: int) -> list[str]:
    return [record.response["id"] for record in await queue.take(limit)]


async def _queued(store: Store, pool: str | None, *, created_at: int, taken_by: str | None = None,
                  status: str = "queued") -> str:
    rid = f"resp_q{created_at}_" + uuid.uuid4().hex[:12]
    response: dict[str, Any] = {"id": rid, "object": "response", "status": status, "background": True,
                                "created_at": created_at, "previous_response_id": None, "output": []}
    await store.create(response, owner="u1", request={"model": "m"}, stream=False, output=[],
                       input_items=[{"type": "message", "role": "user", "content": "hi"}],
                       new_events=[Event({"type": "response.created", "sequence_number": 0, "response": response})],
                       pool=pool, taken_by=taken_by)
    return rid


def test_the_oldest_waiting_runs_of_the_pool_are_taken_once(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        pool = uuid.uuid4().hex
        first, second = RunQueue(store, "exec-a", pool), RunQueue(store, "exec-b", pool)
        ids = [await _queued(store, pool, created_at=t) for t in (3, 1, 2)]
        await _queued(store, uuid.uuid4().hex, created_at=0)  # another pool's: never taken here
        await _queued(store, pool, created_at=0, taken_by="exec-c")  # started where it was accepted
        ended = await _queued(store, pool, created_at=0)
        assert await store.cancel(ended, None) == "queued"
        assert await _take(first, 2) == [ids[1], ids[2]]  # oldest first
        assert await _take(second, 5) == [ids[0]]
        assert await _take(first, 5) == [] and await _take(second, 5) == []
        assert not await second.release(ids[1], "exec-b"), "only the taker hands a run back"
        assert await first.release(ids[1], "exec-a")
        [record] = await second.take(5)
        assert record.response["id"] == ids[1] and record.request == {"model": "m"} and record.owner == "u1"
        assert record.input_items == [{"type": "message", "role": "user", "content": "hi"}]
        await store.close()

    asyncio.run(scenario())


def test_concurrent_takers_never_take_one_run_twice(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        pool = uuid.uuid4().hex
        ids = {await _queued(store, pool, created_at=t) for t in range(60)}
        queues = [RunQueue(store, f"exec-{n}", pool) for n in range(4)]

        async def drain(queue: RunQueue) -> list[str]:
            got: list[str] = []
            while taken := await _take(queue, 3):
                got += taken
            return got

        taken = [rid for got in await asyncio.gather(*(drain(q) for q in queues)) for rid in got]
        assert sorted(taken) == sorted(ids), "each waiting run taken exactly once"
        await store.close()

    asyncio.run(scenario())


def test_a_queued_run_wakes_the_listening_processes(store_url: str) -> None:
    """On PostgreSQL the create notifies in its own transaction; on SQLite there is nothing to listen to."""
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        pool = uuid.uuid4().hex
        queue = RunQueue(store, "exec-a", pool)
        woken = asyncio.Event()
        listening = asyncio.create_task(queue.listen(woken.set))
        try:
            if store.is_sqlite:
                await asyncio.wait_for(listening, 5)  # returns at once
                return
            await asyncio.wait_for(woken.wait(), 10)  # the first wake comes when it starts listening
            woken.clear()
            rid = await _queued(store, pool, created_at=1)
            await asyncio.wait_for(woken.wait(), 10)  # the create woke the listener
            assert await _take(queue, 1) == [rid]
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
            await store.close()

    asyncio.run(scenario())
