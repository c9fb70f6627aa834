"""Group commit on SQLite (``store.group_commit``): concurrent writes share transactions and each
stays what it was alone."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Connection, event, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import QueuePool

from opensupervisor.errors import QueueFull, StoreUnavailable
from opensupervisor.store import Store
from opensupervisor.store.schema import executors


def _row(n: int) -> dict[str, object]:
    return {"id": f"exec-{n}", "host": "h", "pid": n, "started_at": 0, "heartbeat_at": 0, "pool": "p"}


async def _count(store: Store) -> int:
    def read() -> int:
        with store.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(executors)).scalar_one())
    return await store.run(read)


def test_concurrent_writes_land_in_fewer_commits_and_read_after_write_holds(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()
        commits = 0

        def counting(_conn: Connection) -> None:
            nonlocal commits
            commits += 1

        event.listen(store.engine, "commit", counting)

        async def write(n: int) -> int:
            def fn() -> int:
                with store.transaction() as conn:
                    conn.execute(insert(executors), [_row(n)])
                    return n
            got = await store.write(fn)

            def mine() -> object:
                with store.engine.connect() as conn:
                    return conn.execute(select(executors.c.id).where(executors.c.id == f"exec-{n}")).scalar()
            assert await store.run(mine) == f"exec-{n}", "its own row is visible once the write returned"
            return got

        assert sorted(await asyncio.gather(*(write(n) for n in range(200)))) == list(range(200))
        assert await _count(store) == 200
        assert commits < 200, "waiting writes share commits"
        await store.close()

    asyncio.run(scenario())


def test_a_write_that_fails_is_undone_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()

        def ok(n: int) -> None:
            with store.transaction() as conn:
                conn.execute(insert(executors), [_row(n)])

        def fails_after_writing() -> None:
            with store.transaction() as conn:
                conn.execute(insert(executors), [_row(1000)])
                raise QueueFull("full")

        def duplicate_caught() -> str:
            # A statement that fails inside a write the write itself handles: the batch goes on.
            with store.transaction() as conn:
                with contextlib.suppress(IntegrityError):
                    conn.execute(insert(executors), [_row(0)])
                conn.execute(insert(executors), [_row(2000)])
                return "handled"

        outcomes = await asyncio.gather(
            *(store.write(functools.partial(ok, n)) for n in range(50)), store.write(fails_after_writing),
            *(store.write(functools.partial(ok, n)) for n in range(50, 100)), store.write(duplicate_caught),
            return_exceptions=True)
        assert isinstance(outcomes[50], QueueFull)
        assert outcomes[-1] == "handled"
        assert [o for o in outcomes if isinstance(o, BaseException)] == [outcomes[50]]

        def ids() -> set[str]:
            with store.engine.connect() as conn:
                return set(conn.execute(select(executors.c.id)).scalars())
        got = await store.run(ids)
        assert "exec-1000" not in got, "the failed write left nothing"
        assert got == {f"exec-{n}" for n in (*range(100), 2000)}
        await store.close()

    asyncio.run(scenario())


def test_a_write_with_a_transaction_of_its_own_runs_alone(tmp_path: Path) -> None:
    """A write that opens its own transaction on the engine (not ``Store.transaction``) would wait
    for the batch's lock: it runs after the batch instead, and still lands."""
    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()

        def own(n: int) -> int:
            with store.engine.begin() as conn:
                conn.execute(insert(executors), [_row(n)])
            return n

        def shared(n: int) -> int:
            with store.transaction() as conn:
                conn.execute(insert(executors), [_row(n)])
            return n

        got = await asyncio.wait_for(asyncio.gather(
            *(store.write(functools.partial(own if n % 3 == 0 else shared, n)) for n in range(60))), 30)
        assert sorted(got) == list(range(60))
        assert await _count(store) == 60
        pool = store.engine.pool
        # The stopped writes' connections went back: only the writer's own, kept between batches, is out.
        assert isinstance(pool, QueuePool) and pool.checkedout() == 1
        await store.close()

    asyncio.run(scenario())


def test_a_batch_that_cannot_begin_fails_its_writes_as_unavailable(tmp_path: Path) -> None:
    """Another process holding the file's write lock past the busy timeout: the writes fail as the
    store being unreachable (503 to a client), after their retries; none half-lands."""
    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()
        holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        store.engine.dispose()

        @event.listens_for(store.engine, "connect")
        def short_wait(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=50")

        def fn() -> None:
            with store.transaction() as conn:
                conn.execute(insert(executors), [_row(1)])

        with pytest.raises(StoreUnavailable):
            await store.write(fn)
        holder.execute("ROLLBACK")
        await store.write(fn)
        assert await _count(store) == 1
        holder.close()
        await store.close()

    asyncio.run(scenario())


def test_a_write_given_up_before_it_started_is_not_made_and_the_writer_goes_on(tmp_path: Path) -> None:
    """Directly on the writer: a caller that cancels a write still waiting drops it, the writes
    after it still run, and a closed writer takes no more."""
    import threading

    from opensupervisor.store.group_commit import GroupCommit

    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()
        group = GroupCommit(store.engine, name="test-writer")
        started, release = threading.Event(), threading.Event()
        ran: list[str] = []

        def blocker() -> None:
            started.set()
            release.wait(10)
            ran.append("blocker")

        first = group.submit(blocker)
        assert started.wait(10)
        dropped = group.submit(lambda: ran.append("dropped"))
        after = group.submit(lambda: ran.append("after"))
        assert dropped.cancel(), "still waiting: it can be given up"
        release.set()
        first.result(10)
        after.result(10)
        assert ran == ["blocker", "after"]
        group.close()
        with pytest.raises(RuntimeError):
            group.submit(lambda: None)
        await store.close()

    asyncio.run(scenario())


def test_a_small_write_on_an_idle_writer_runs_at_once_on_the_callers_thread(tmp_path: Path) -> None:
    """``GroupCommit.now``: no batch waits, the lock is free → the write runs here, committed when
    it returns; another process holding the lock → it is not made here (nor waits for it), and goes
    to the writer thread, which waits for the lock; a write that fails here is not half-made."""
    import threading
    import time

    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()
        await store.write(lambda: None)  # the writer's connection exists from the first batch on
        group = store._group
        assert group is not None
        ran_on: list[int] = []

        def add(n: int) -> None:
            ran_on.append(threading.get_ident())
            with store.transaction() as conn:
                conn.execute(insert(executors), [_row(n)])

        assert group.now(functools.partial(add, 1)) == (True, None)
        assert ran_on == [threading.get_ident()]
        reader = sqlite3.connect(tmp_path / "state.db")
        assert reader.execute("SELECT count(*) FROM os_executors").fetchone() == (1,)  # committed

        holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        assert group.now(functools.partial(add, 2)) == (False, None)
        assert time.monotonic() - started < 0.5  # it did not wait for the lock
        waiting = asyncio.ensure_future(store.write(functools.partial(add, 2), small=True))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the writer thread waits for the lock
        holder.execute("ROLLBACK")
        await asyncio.wait_for(waiting, 10)
        assert ran_on[-1] != threading.get_ident()

        def fails() -> None:
            add(3)
            raise IntegrityError("INSERT", None, Exception("refused"))

        assert group.now(fails) == (False, None)
        assert reader.execute("SELECT count(*) FROM os_executors").fetchone() == (2,)  # rolled back
        await store.write(functools.partial(add, 4), small=True)  # a new connection, made by the writer
        assert reader.execute("SELECT count(*) FROM os_executors").fetchone() == (3,)
        reader.close()
        holder.close()
        await store.close()

    asyncio.run(scenario())


def test_writes_made_at_once_are_checkpointed_by_the_writer_thread(tmp_path: Path) -> None:
    """The writer's commits never checkpoint (one on the caller's thread could wait for the disk);
    after ``CHECKPOINT_EVERY`` of them the writer thread moves the WAL into the database file."""
    from opensupervisor.store.group_commit import CHECKPOINT_EVERY

    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()
        await store.write(lambda: None)
        group = store._group
        assert group is not None
        database = tmp_path / "state.db"
        reader = sqlite3.connect(database)
        reader.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # what the migrations wrote, out of the way
        before = database.stat().st_size

        def add(n: int) -> None:
            with store.transaction() as conn:
                conn.execute(insert(executors), [{**_row(n), "host": "h" * 30_000}])

        for n in range(CHECKPOINT_EVERY - 2):  # the first batch was a commit too
            assert group.now(functools.partial(add, n))[0]
        assert database.stat().st_size == before  # all in the WAL so far, past 1,000 pages
        for n in range(CHECKPOINT_EVERY - 2, CHECKPOINT_EVERY):
            await store.write(functools.partial(add, n), small=True)
        deadline = asyncio.get_running_loop().time() + 10
        while database.stat().st_size == before:
            assert asyncio.get_running_loop().time() < deadline, "the writer thread did not checkpoint"
            await asyncio.sleep(0.01)
        assert reader.execute("SELECT count(*) FROM os_executors").fetchone() == (CHECKPOINT_EVERY,)
        reader.close()
        await store.close()

    asyncio.run(scenario())
