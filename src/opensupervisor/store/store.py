"""The response store: responses, their items and event logs in SQLite (default) or PostgreSQL.

Each operation is one short transaction run on a worker thread with SQLAlchemy's synchronous engine
(sqlite3, psycopg). Measured on the target machines, one thread hop per transaction costs a fifth
of what the asyncio drivers cost, where every statement crosses threads or greenlets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, and_, delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from opensupervisor.core.eventlog import LogSlice, Row, parse
from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.engines import UNREACHABLE, WAL, again_if_dropped, engine_url, postgres_engine, sqlite_engine
from opensupervisor.errors import ConfigError, StoreUnavailable
from opensupervisor.store.group_commit import GroupCommit
from opensupervisor.store.response_rows import (
    RUN_COLUMNS,
    RunRecord,
    Stored,
    admit_queued,
    advance,
    dumps,
    ending_rows,
    execute_fast,
    insert_rows_sqlite,
    last_sequence,
    notify_waiting,
    owned_response,
    run_record,
    small_rows,
    still_there,
    stored_items,
    to_event_rows,
    to_item_rows,
    without_output,
)
from opensupervisor.store.schema import events, idempotency_keys, items, responses, run_steps
from opensupervisor.wire.items import Item
from opensupervisor.wire.response import usage

MIGRATIONS = Path(__file__).parent / "migrations"
INSERT_RESPONSE = insert(responses)
POOL_SIZE = 8
RUNNING = frozenset({"queued", "in_progress"})
RETRY_FIRST_WAIT_S = 0.05  # before a write's second try; each later one waits twice as long, plus jitter
P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)


class Store:
    """All reads and writes of stored responses. Callers pass the owner; other owners' rows are invisible."""

    def __init__(self, url: str) -> None:
        self.url = engine_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.engine: Engine
        if self.is_sqlite:
            # A writer that finds the file locked waits for it (up to 10 s) rather than failing at once.
            self.engine = sqlite_engine(self.url, pragmas=(*WAL, "busy_timeout=10000"), pool_size=POOL_SIZE,
                                        max_overflow=POOL_SIZE)
        else:
            # No ping per checkout (~18 round trips a background run): ``run`` retries a dead connection.
            self.engine = postgres_engine(self.url, pool_size=POOL_SIZE, max_overflow=POOL_SIZE)
        self._threads = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="store")
        self._group = GroupCommit(self.engine) if self.is_sqlite else None
        # The dialect's INSERT, which has ``on_conflict_do_nothing`` and ``on_conflict_do_update``.
        self.dialect_insert = sqlite_insert if self.is_sqlite else postgresql_insert
        self._insert_items = self.dialect_insert(items).on_conflict_do_nothing()
        self._insert_events = self.dialect_insert(events).on_conflict_do_nothing()

    def transaction(self) -> AbstractContextManager[Connection]:
        """The transaction a write runs in: on SQLite, its share of the batch being committed
        (``store.group_commit``) when it runs through ``write``; else one of its own."""
        return self.engine.begin() if self._group is None else self._group.transaction()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the store's threads. Once started, a write always finishes: a cancelled caller
        waits for it before the cancellation goes on, so nothing is half-recorded or lost."""
        call = functools.partial(again_if_dropped, fn, *args, **kwargs)
        return await self._settle(asyncio.get_running_loop().run_in_executor(self._threads, call))

    async def _write_once(self, fn: Callable[[], T], small: bool = False) -> T:
        if self._group is None:
            return await self.run(fn)
        if small:
            done, value = self._group.now(fn)
            if done:
                return value  # type: ignore[return-value]
        return await self._settle(asyncio.wrap_future(self._group.submit(fn)))

    async def _settle(self, future: asyncio.Future[T]) -> T:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                try:
                    await asyncio.wait([future])
                except asyncio.CancelledError:
                    continue  # cancel scopes re-deliver; the write still has to land first
            raise
        except UNREACHABLE as exc:  # the database, not the request, is at fault: the client may retry
            log.warning("the database cannot be reached: %s", str(exc).splitlines()[0])
            raise StoreUnavailable() from exc

    async def write(self, fn: Callable[[], T], *, small: bool = False) -> T:
        """Run a write, retrying transient database errors (a locked SQLite file, a dropped
        connection). Every write is idempotent: inserts ignore rows already there. A ``small`` one
        (a few KB) on SQLite runs at once on this thread when nothing else writes (``GroupCommit.now``)."""
        # The first try runs outside tenacity, whose per-call set-up showed in profiles of the hot
        # path; the retries after it wait as tenacity's would have from the first try on: the
        # exponential back-off from 50 ms with up to 1 s of jitter, capped at 1 s, 4 tries in all.
        try:
            return await self._write_once(fn, small)
        except StoreUnavailable:
            await asyncio.sleep(min(RETRY_FIRST_WAIT_S + random.uniform(0, 1), 1))
        back_off = wait_exponential_jitter(multiplier=2 * RETRY_FIRST_WAIT_S, max=1)
        retrying = AsyncRetrying(stop=stop_after_attempt(3), wait=back_off,
                                 retry=retry_if_exception_type(StoreUnavailable), reraise=True)
        async for attempt in retrying:
            with attempt:
                return await self._write_once(fn)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (serialized across processes on PostgreSQL)."""
        await self.run(self._migrate)

    def _migrate(self) -> None:
        try:
            with self.engine.begin() as conn:
                if not self.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(7426301)"))
                cfg = Config()
                cfg.set_main_option("script_location", str(MIGRATIONS))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise ConfigError(f"database {self.engine.url.render_as_string()}: migration failed: {exc}") from exc

    async def close(self) -> None:
        if self._group is not None:
            self._group.close()  # the writes queued before it finish first
        self._threads.shutdown(wait=True)
        self.engine.dispose()

    # -- writes --------------------------------------------------------------------------------

    async def create(self, response: dict[str, Any], *, owner: str, request: dict[str, Any], stream: bool,
                     input_items: list[Item], output: list[Item], new_events: Sequence[Event | Row],
                     options: dict[str, Any] | None = None, max_queued: int | None = None,
                     pool: str | None = None, taken_by: str | None = None,
                     also: Callable[[Connection], None] | None = None) -> None:
        """Insert a response with its first items and events (and what ``also`` writes with them). With
        ``max_queued`` (a queued background response) the insert is refused with ``QueueFull`` when
        that many are queued already.

        A background response of ``pool`` waits in that pool's queue (``store.run_queue``) unless
        ``taken_by``, the executor that runs it, is given; a waiting one wakes the processes listening."""
        row = {
            "id": response["id"], "owner": owner, "status": response["status"],
            "background": response["background"], "stream": stream, "created_at": response["created_at"],
            "created_ms": now_ms(), "previous_response_id": response["previous_response_id"], "heartbeat_at": now_ms(),
            "response": dumps(without_output(response)), "request": dumps(request),
            "options": dumps(options) if options else None, "owner_executor": taken_by,
            "run_pool": pool,
        }
        rows = to_item_rows(response["id"], "input", dict(enumerate(input_items)))
        rows += to_item_rows(response["id"], "output", dict(enumerate(output)))
        event_rows = to_event_rows(response["id"], new_events)

        def write() -> None:
            with self.transaction() as conn:
                execute_fast(conn, INSERT_RESPONSE, row)
                if max_queued is not None:
                    admit_queued(conn, max_queued, postgresql=not self.is_sqlite)
                self.insert_rows(conn, rows, event_rows)
                if pool is not None and taken_by is None:
                    notify_waiting(conn)
                if also is not None:
                    also(conn)

        await self.write(write, small=small_rows(rows, event_rows, row))

    async def append(self, response_id: str, *, output: dict[int, Item], new_events: Sequence[Event | Row],
                     response: dict[str, Any] | None = None, guard: bool = False,
                     epoch: int | None = None, also: Callable[[Connection], None] | None = None) -> bool:
        """Add finished output items (by output index) and the events so far, in one transaction.

        ``response``, when given, replaces the stored response object (a status change); only a
        running response changes, so a finished or cancelled one never flips back. With ``guard``
        (a background run's own writes) the answer is False when the response stopped running
        meanwhile, cancelled or deleted, perhaps by another process: then its items and non-terminal
        events are still written, its status and terminal event are not, and the run must stop.

        ``epoch`` (``store.ownership``): another process claimed the run since → ``RunSuperseded``;
        ``also`` writes more in the same transaction once the fence lets it through (a run's steps)."""
        rows = to_item_rows(response_id, "output", output)
        event_rows = to_event_rows(response_id, new_events)
        from_statuses = RUNNING | ({"cancelled"} if response and response["status"] == "cancelled" else set())

        def write() -> bool:
            with self.transaction() as conn:
                if response is None and not guard and epoch is None:  # items of a run nobody else can stop
                    self.insert_rows(conn, rows, event_rows)
                    return True
                # The UPDATE comes first: it locks the row (PostgreSQL) or the database (SQLite), so a
                # concurrent cancel is either wholly before this write or wholly after it.
                values: dict[str, Any] = {"rid": response_id, "beat": now_ms()}
                if epoch is not None:
                    values["epoch"] = epoch
                if response is not None:
                    values.update(new_status=response["status"], body=dumps(without_output(response)))
                changed = execute_fast(conn, advance(from_statuses, fenced=epoch is not None,
                                                     changes=response is not None), values)
                if not changed:
                    if not still_there(conn, response_id, epoch):
                        return False
                    if guard:
                        event_rows[:] = [r for r in event_rows if r["type"] not in TERMINAL_EVENTS]
                self.insert_rows(conn, rows, event_rows)
                if also is not None:
                    also(conn)
                return bool(changed) or not guard

        return await self.write(write, small=small_rows(rows, event_rows))

    async def cancel(self, response_id: str, owner: str | None) -> str | None:
        """Mark a running response cancelled: the status it had, None when it was not running (or is not there).

        A queued response has no run to write its ending, so its terminal event is written here, in
        the same transaction: every log ends with one, and followers stop at once. A response in
        progress gets its ending from its run, which finds the cancel at its next write."""
        def write() -> str | None:
            with self.transaction() as conn:
                row = conn.execute(update(responses).where(
                    responses.c.id == response_id, responses.c.status.in_(RUNNING),
                    *([responses.c.owner == owner] if owner is not None else [])).values(status="cancelled")
                    .returning(responses.c.response)).first()
                if row is None:
                    return None
                stored = orjson.loads(row.response)  # its status is still the one before the cancel
                response = dict(stored, status="cancelled", usage=stored.get("usage") or usage(0, 0))
                conn.execute(update(responses).where(responses.c.id == response_id).values(response=dumps(response)))
                if stored["status"] == "queued":
                    self.insert_rows(conn, [], ending_rows(conn, response_id, response))
                return str(stored["status"])

        return await self.write(write)

    async def heartbeat(self, response_id: str) -> bool:
        """Note that the run of a response is alive; False when it should stop (no longer running)."""
        def write() -> bool:
            with self.transaction() as conn:
                self.no_wait_for_disk(conn)  # a heartbeat lost in a database crash is harmless
                return bool(conn.execute(advance(RUNNING, fenced=False, changes=False),
                                         {"rid": response_id, "beat": now_ms()}).rowcount)

        return await self.write(write)

    async def fail(self, response_ids: list[str], message: str) -> int:
        """End running responses as failed, with a terminal event so that followers finish."""
        def write() -> int:
            with self.transaction() as conn:
                rows = conn.execute(select(responses.c.id, responses.c.response).where(
                    responses.c.id.in_(response_ids), responses.c.status.in_(RUNNING))).all()
                for row in rows:
                    response = dict(orjson.loads(row.response), status="failed",
                                    error={"code": "server_error", "message": message})
                    conn.execute(update(responses).where(responses.c.id == row.id).values(
                        status="failed", response=dumps(response)))
                    self.insert_rows(conn, [], ending_rows(conn, row.id, response))
                return len(rows)

        return await self.write(write)

    async def purge(self, created_before: int, *, batch: int = 500) -> int:
        """Delete finished background responses created before ``created_before`` (epoch seconds)."""
        def write() -> int:
            with self.transaction() as conn:
                ids = list(conn.execute(select(responses.c.id).where(
                    responses.c.background.is_(True), responses.c.created_at < created_before,
                    responses.c.status.not_in(RUNNING)).limit(batch)).scalars())
                for table in (events, items, idempotency_keys, run_steps):
                    conn.execute(delete(table).where(table.c.response_id.in_(ids)))
                conn.execute(delete(responses).where(responses.c.id.in_(ids)))
                return len(ids)

        total = 0
        while (done := await self.write(write)) > 0:
            total += done
        return total

    async def delete(self, response_id: str, owner: str | None) -> bool:
        def write() -> bool:
            with self.transaction() as conn:
                if owned_response(conn, response_id, owner) is None:
                    return False
                # A deleted response frees the key that made it: there is nothing left to answer with.
                for table in (events, items, idempotency_keys, run_steps):
                    conn.execute(delete(table).where(table.c.response_id == response_id))
                conn.execute(delete(responses).where(responses.c.id == response_id))
                return True

        return await self.run(write)

    def no_wait_for_disk(self, conn: Connection) -> None:
        """Let this transaction's commit return before it is on disk (PostgreSQL; SQLite's WAL mode
        already does). For writes whose loss in a database crash does no harm."""
        if not self.is_sqlite:
            conn.execute(text("SET LOCAL synchronous_commit = off"))

    def insert_rows(self, conn: Connection, item_rows: list[dict[str, Any]], event_rows: list[dict[str, Any]]) -> None:
        # ON CONFLICT DO NOTHING: a retried write may find its rows already there.
        if self.is_sqlite:
            insert_rows_sqlite(conn, item_rows, event_rows)
            return
        if item_rows:
            conn.execute(self._insert_items, item_rows)
        if event_rows:
            conn.execute(self._insert_events, [{k: v for k, v in r.items() if k != "type"} for r in event_rows])

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, response_id: str, owner: str | None) -> dict[str, Any] | None:
        """The response with the output items stored so far, or None (unknown or another owner's)."""
        def read() -> dict[str, Any] | None:
            with self.engine.connect() as conn:
                row = owned_response(conn, response_id, owner)
                if row is None:
                    return None
                response: dict[str, Any] = orjson.loads(row.response)
                response["output"] = stored_items(conn, response_id, "output")
                return response

        return await self.run(read)

    async def meta(self, response_id: str, owner: str | None) -> Stored | None:
        """The stored response without output, whether it was streamed, and its run's heartbeat."""
        def read() -> Stored | None:
            with self.engine.connect() as conn:
                row = owned_response(conn, response_id, owner)
                return None if row is None else Stored(
                    orjson.loads(row.response), bool(row.stream), row.heartbeat_at, row.owner_executor is None)

        return await self.run(read)

    async def load_run(self, response_id: str) -> RunRecord | None:
        def read() -> RunRecord | None:
            with self.engine.connect() as conn:
                row = conn.execute(select(*RUN_COLUMNS).where(responses.c.id == response_id)).first()
                return None if row is None else run_record(row, stored_items(conn, response_id, "input"))

        return await self.run(read)

    async def input_items(self, response_id: str, owner: str | None) -> list[Item] | None:
        def read() -> list[Item] | None:
            with self.engine.connect() as conn:
                if owned_response(conn, response_id, owner) is None:
                    return None
                return stored_items(conn, response_id, "input")

        return await self.run(read)

    async def history(self, response_id: str, owner: str | None) -> list[Item] | None:
        """Everything a continuation sees: the chain's inputs and outputs, oldest first."""
        return await self.run(self._history, response_id, owner)

    def _history(self, response_id: str, owner: str | None) -> list[Item] | None:
        chain: list[list[Item]] = []
        current: str | None = response_id
        with self.engine.connect() as conn:
            while current is not None:
                row = owned_response(conn, current, owner)
                if row is None:
                    if current == response_id:
                        return None
                    break  # an older link was deleted: the chain starts here
                inputs = stored_items(conn, current, "input")
                # Output items that repeat an input item (a background response's echoed history)
                # carry that item's id; the history holds them once.
                seen = {i["id"] for i in inputs if i.get("id")}
                outputs = [o for o in stored_items(conn, current, "output") if o.get("id") not in seen]
                chain.append(inputs + outputs)
                current = orjson.loads(row.response).get("previous_response_id")
        return [item for part in reversed(chain) for item in part]

    async def find_item(self, item_id: str, owner: str | None) -> Item | None:
        query = select(items.c.item).select_from(items.join(responses, responses.c.id == items.c.response_id)
                                                 ).where(items.c.item_id == item_id).limit(1)
        if owner is not None:
            query = query.where(responses.c.owner == owner)

        def read() -> Item | None:
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
            return None if row is None else dict(orjson.loads(row.item))

        return await self.run(read)

    async def events_after(self, response_id: str, after: int, limit: int | None = None) -> LogSlice:
        """The log after sequence number ``after`` (at most ``limit`` events), with the items its rows show."""
        query = select(events.c.event).where(
            and_(events.c.response_id == response_id, events.c.sequence_number > after)
        ).order_by(events.c.sequence_number).limit(limit)

        def read() -> LogSlice:
            with self.engine.connect() as conn:
                entries, needed = parse(r.event for r in conn.execute(query))
                shown: dict[int, Item] = {}
                if needed:
                    shown = {r.position: orjson.loads(r.item) for r in conn.execute(
                        select(items.c.position, items.c.item).where(
                            items.c.response_id == response_id, items.c.kind == "output",
                            items.c.position.in_(sorted(needed))))}
            return LogSlice(entries, shown, after)

        return await self.run(read)

    async def last_sequence(self, response_id: str) -> int:
        """The sequence number of the last event in the log (-1 when there is none)."""
        def read() -> int:
            with self.engine.connect() as conn:
                return last_sequence(conn, response_id)

        return await self.run(read)


def now_ms() -> int:
    return int(time.time() * 1000)
