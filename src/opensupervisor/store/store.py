"""The response store: responses, their items and event logs in SQLite (default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, and_, delete, event, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from opensupervisor.core.events import Event
from opensupervisor.errors import ConfigError
from opensupervisor.store.schema import events, items, responses

Item = dict[str, Any]
MIGRATIONS = Path(__file__).parent / "migrations"


def async_url(url: str) -> str:
    """Pick the asyncio driver for a plain ``sqlite://`` or ``postgresql://`` URL."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError and ValueError alike for bad URLs
        raise ConfigError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite"))
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class Store:
    """All reads and writes of stored responses. Callers pass the owner; other owners' rows are invisible."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            db = make_url(self.url).database
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(self.url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (serialized across processes on PostgreSQL)."""
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_xact_lock(7426301)"))
            await conn.run_sync(_upgrade)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- writes --------------------------------------------------------------------------------

    async def create(self, response: dict[str, Any], *, owner: str, request: dict[str, Any], stream: bool,
                     input_items: list[Item], output: list[Item], new_events: list[Event]) -> None:
        row = {
            "id": response["id"], "owner": owner, "status": response["status"],
            "background": response["background"], "stream": stream, "created_at": response["created_at"],
            "previous_response_id": response["previous_response_id"],
            "response": _dumps(_without_output(response)), "request": _dumps(request),
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(responses), [row])
            await self._insert_items(conn, response["id"], "input", dict(enumerate(input_items)))
            await self._insert_items(conn, response["id"], "output", dict(enumerate(output)))
            await self._insert_events(conn, response["id"], new_events)

    async def append(self, response_id: str, *, output: dict[int, Item], new_events: list[Event],
                     response: dict[str, Any] | None = None) -> None:
        """Add finished output items (by output index) and the events so far, in one transaction.

        ``response``, when given, replaces the stored response object (a status change).
        """
        async with self.engine.begin() as conn:
            if response is not None:
                await conn.execute(update(responses).where(responses.c.id == response_id).values(
                    status=response["status"], response=_dumps(_without_output(response))))
            await self._insert_items(conn, response_id, "output", output)
            await self._insert_events(conn, response_id, new_events)

    async def finish(self, response: dict[str, Any], *, output: dict[int, Item], new_events: list[Event]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(responses).where(responses.c.id == response["id"]).values(
                    status=response["status"], response=_dumps(_without_output(response))))
            await self._insert_items(conn, response["id"], "output", output)
            await self._insert_events(conn, response["id"], new_events)

    async def set_status(self, response: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(responses).where(responses.c.id == response["id"]).values(
                status=response["status"], response=_dumps(_without_output(response))))

    async def delete(self, response_id: str, owner: str | None) -> bool:
        async with self.engine.begin() as conn:
            found = await self._owned(conn, response_id, owner)
            if found is None:
                return False
            for table in (events, items):
                await conn.execute(delete(table).where(table.c.response_id == response_id))
            await conn.execute(delete(responses).where(responses.c.id == response_id))
            return True

    @staticmethod
    async def _insert_items(conn: AsyncConnection, response_id: str, kind: str, new: dict[int, Item]) -> None:
        if new:
            await conn.execute(insert(items), [
                {"response_id": response_id, "kind": kind, "position": pos, "item_id": it.get("id"),
                 "item": _dumps(it)} for pos, it in new.items()])

    @staticmethod
    async def _insert_events(conn: AsyncConnection, response_id: str, new: list[Event]) -> None:
        if new:
            await conn.execute(insert(events), [
                {"response_id": response_id, "sequence_number": e.sequence_number, "event": e.json.decode()}
                for e in new])

    # -- reads ---------------------------------------------------------------------------------

    @staticmethod
    async def _owned(conn: AsyncConnection, response_id: str, owner: str | None) -> Any:
        query = select(responses.c.response, responses.c.owner, responses.c.stream).where(
            responses.c.id == response_id)
        if owner is not None:
            query = query.where(responses.c.owner == owner)
        return (await conn.execute(query)).first()

    async def get(self, response_id: str, owner: str | None) -> dict[str, Any] | None:
        """The response with the output items stored so far, or None (unknown or another owner's)."""
        async with self.engine.connect() as conn:
            row = await self._owned(conn, response_id, owner)
            if row is None:
                return None
            response: dict[str, Any] = orjson.loads(row.response)
            response["output"] = await self._items(conn, response_id, "output")
            return response

    async def meta(self, response_id: str, owner: str | None) -> tuple[dict[str, Any], bool] | None:
        """The stored response without output, and whether it was created with ``stream``."""
        async with self.engine.connect() as conn:
            row = await self._owned(conn, response_id, owner)
            return None if row is None else (orjson.loads(row.response), bool(row.stream))

    async def _items(self, conn: AsyncConnection, response_id: str, kind: str) -> list[Item]:
        rows = await conn.execute(select(items.c.item).where(
            and_(items.c.response_id == response_id, items.c.kind == kind)).order_by(items.c.position))
        return [orjson.loads(r.item) for r in rows]

    async def input_items(self, response_id: str, owner: str | None) -> list[Item] | None:
        async with self.engine.connect() as conn:
            if await self._owned(conn, response_id, owner) is None:
                return None
            return await self._items(conn, response_id, "input")

    async def history(self, response_id: str, owner: str | None) -> list[Item] | None:
        """Everything a continuation sees: the chain's inputs and outputs, oldest first."""
        chain: list[list[Item]] = []
        current: str | None = response_id
        async with self.engine.connect() as conn:
            while current is not None:
                row = await self._owned(conn, current, owner)
                if row is None:
                    if current == response_id:
                        return None
                    break  # an older link was deleted: the chain starts here
                inputs = await self._items(conn, current, "input")
                # Output items that repeat an input item (a background response's echoed history)
                # carry that item's id; the history holds them once.
                seen = {i["id"] for i in inputs if i.get("id")}
                outputs = [o for o in await self._items(conn, current, "output") if o.get("id") not in seen]
                chain.append(inputs + outputs)
                current = orjson.loads(row.response).get("previous_response_id")
        return [item for part in reversed(chain) for item in part]

    async def find_item(self, item_id: str, owner: str | None) -> Item | None:
        query = select(items.c.item).select_from(items.join(responses, responses.c.id == items.c.response_id)
                                                 ).where(items.c.item_id == item_id).limit(1)
        if owner is not None:
            query = query.where(responses.c.owner == owner)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else dict(orjson.loads(row.item))

    async def events_after(self, response_id: str, after: int) -> list[Event]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(events.c.event).where(
                and_(events.c.response_id == response_id, events.c.sequence_number > after)
            ).order_by(events.c.sequence_number))
            return [Event.from_json(r.event.encode()) for r in rows]


def _without_output(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "output"}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; NORMAL is durable at commit boundaries in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _upgrade(conn: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    try:
        command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise ConfigError(f"database migration failed: {exc}") from exc
