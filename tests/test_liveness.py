"""An executor's heartbeat cannot be starved: not by a blocked event loop, not by a start-up backlog."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from opensupervisor.runs.maintenance import Housekeeping, Maintenance
from opensupervisor.store import Store
from opensupervisor.store.schema import executors, responses

TIMEOUT_S = 2.0


class FakeEngine:
    """The durable engine as housekeeping sees it; ``states`` blocks the loop as a slow lookup could."""

    pool = "pool"
    host = "here"

    def __init__(self, executor_id: str, pid: int, lookup_s: float = 0.0) -> None:
        self.executor_id = executor_id
        self.pid = pid
        self.lookup_s = lookup_s
        self.recovered: list[str] = []
        self.looked_up = 0
        self.queries = 0

    async def recover(self, executor_id: str) -> int:
        self.recovered.append(executor_id)
        return 0

    async def states(self, response_ids: list[str]) -> dict[str, str]:
        time.sleep(self.lookup_s)  # noqa: ASYNC251 - on purpose: nothing else on the loop runs meanwhile
        self.looked_up += len(response_ids)
        self.queries += 1
        return dict.fromkeys(response_ids, "ENQUEUED")

    async def forget_finished(self, before_ms: int) -> int:
        return 0


def _maintenance(store: Store, engine: FakeEngine) -> Maintenance:
    return Maintenance(store, engine, Housekeeping(executor_timeout_s=TIMEOUT_S))


def _heartbeat_at(store: Store, executor_id: str) -> int | None:
    with store.engine.connect() as conn:
        value = conn.execute(select(executors.c.heartbeat_at).where(executors.c.id == executor_id)).scalar()
    return None if value is None else int(value)


def test_a_process_whose_event_loop_is_blocked_is_not_taken_for_dead(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/store.db")
        await store.migrate()
        # Both in this live process, so that only the heartbeat can make one look dead.
        blocked, watcher = FakeEngine("blocked", os.getpid()), FakeEngine("watcher", os.getpid())
        first, second = _maintenance(store, blocked), _maintenance(store, watcher)
        await first.start()
        await second.start()
        try:
            time.sleep(TIMEOUT_S * 1.5)  # noqa: ASYNC251 - the loop is stuck; the heartbeat threads are not
            await second.recover_dead()
            assert watcher.recovered == []
            beat = _heartbeat_at(store, "blocked")
            assert beat is not None and time.time() * 1000 - beat < 1500
        finally:
            await first.stop()
            await second.stop()
            await store.close()

    asyncio.run(scenario())


def test_a_process_starting_with_a_backlog_beats_at_once_and_reconciles_in_the_background(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/store.db")
        await store.migrate()
        rows: list[dict[str, Any]] = [
            {"id": f"resp_{i:04d}", "owner": "u", "status": "queued", "background": True, "stream": False,
             "created_at": 1, "previous_response_id": None, "heartbeat_at": 0, "response": "{}", "request": "{}",
             "owner_executor": "gone"}
            for i in range(200)]
        with store.engine.begin() as conn:
            conn.execute(insert(responses), rows)
        engine = FakeEngine("starting", os.getpid(), lookup_s=2.0)  # 2 pages: 4 s with the loop held
        maintenance = _maintenance(store, engine)
        started = time.monotonic()
        await maintenance.start()
        try:
            assert time.monotonic() - started < 1.0, "start-up work does not hold the start up"
            assert _heartbeat_at(store, "starting") is not None  # registered before any of it
            deadline = time.monotonic() + 20
            while engine.looked_up < 200 and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, polled
                await asyncio.sleep(0.05)
            assert engine.looked_up == 200, "the whole backlog is reconciled"
            assert engine.queries == 2, "one lookup a page, not one a run"
            beat = _heartbeat_at(store, "starting")
            assert beat is not None and time.time() * 1000 - beat < 1500, "it beat while reconciling"
        finally:
            await maintenance.stop()
            await store.close()

    asyncio.run(scenario())


def test_a_stalled_process_on_this_machine_loses_its_runs_but_keeps_its_claims(tmp_path: Path) -> None:
    """Silent past the timeout, its runs are recovered; its process still exists, so it stays
    registered (a call it claimed is not run again). One whose process is gone is removed."""
    stalled = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()

    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/store.db")
        await store.migrate()
        engine = FakeEngine("watcher", os.getpid())
        maintenance = _maintenance(store, engine)
        try:
            for name, pid in (("stalled", stalled.pid), ("gone", gone.pid)):
                await maintenance.executors.register(name, FakeEngine.host, pid)
            with store.engine.begin() as conn:
                conn.execute(update(executors).where(executors.c.id == "stalled").values(heartbeat_at=0))
            await maintenance.recover_dead()
            assert sorted(engine.recovered) == ["gone", "stalled"]
            assert _heartbeat_at(store, "stalled") is not None, "still registered"
            assert _heartbeat_at(store, "gone") is None
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        stalled.kill()
        stalled.wait()
