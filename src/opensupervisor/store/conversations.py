"""Conversations and their items, owned like responses (an admin's ``owner`` is None: any owner's).

Items keep the order they were added in (``position``). A response run in a conversation holds it
from its start to its end, when its input and output are appended in the transaction that records
its ending (``ending_write``): of two responses in one conversation, the second waits for the
first's items, or is refused while the first runs (``claim``). A hold outlives a crash only as long
as it must: a foreground response's hold ends with its process (its executor row,
``store.executors``), a background one's when its response stops running, or at ``max_hold_s``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import orjson
from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select, update

from opensupervisor.store.response_rows import dumps
from opensupervisor.store.schema import conversation_items, conversations, executors, responses
from opensupervisor.store.store import RUNNING, Store, now_ms
from opensupervisor.wire.items import Item

# How long a background response's hold stands before its row is written (it takes milliseconds).
BACKGROUND_GRACE_MS = 60_000

Claim = Literal["held", "missing", "busy"]


class Page(NamedTuple):
    items: list[Item]
    has_more: bool


class Conversations:
    def __init__(self, store: Store, max_hold_s: float) -> None:
        self.store = store
        self.max_hold_ms = int(max_hold_s * 1000)

    async def create(self, conversation_id: str, owner: str, metadata: dict[str, str],
                     new_items: list[Item]) -> dict[str, Any]:
        now = now_ms()
        row = {"id": conversation_id, "owner": owner, "created_at": now // 1000, "metadata": dumps(metadata),
               "next_position": 0}

        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(insert(conversations), [row])
                if new_items:
                    _append(conn, conversation_id, new_items)

        await self.store.write(write)
        return _shown(row)

    async def get(self, conversation_id: str, owner: str | None) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            with self.store.engine.connect() as conn:
                row = conn.execute(_select_owned(conversation_id, owner)).first()
            return None if row is None else _shown(row._asdict())

        return await self.store.run(read)

    async def update(self, conversation_id: str, owner: str | None, metadata: dict[str, str]) -> dict[str, Any] | None:
        def write() -> dict[str, Any] | None:
            with self.store.transaction() as conn:
                row = conn.execute(update(conversations).where(*_owned(conversation_id, owner)).values(
                    metadata=dumps(metadata)).returning(*_SHOWN)).first()
            return None if row is None else _shown(row._asdict())

        return await self.store.write(write)

    async def delete(self, conversation_id: str, owner: str | None) -> bool:
        def write() -> bool:
            with self.store.transaction() as conn:
                if not conn.execute(delete(conversations).where(*_owned(conversation_id, owner))).rowcount:
                    return False
                conn.execute(delete(conversation_items).where(conversation_items.c.conversation_id == conversation_id))
                return True

        return await self.store.write(write)

    async def add(self, conversation_id: str, owner: str | None, new_items: list[Item]) -> list[Item] | None:
        """Append items; those whose id the conversation holds already are left out. None: no such conversation."""
        def write() -> list[Item] | None:
            with self.store.transaction() as conn:
                if conn.execute(_select_owned(conversation_id, owner)).first() is None:
                    return None
                return _append(conn, conversation_id, new_items)

        return await self.store.write(write)

    async def items(self, conversation_id: str, owner: str | None) -> list[Item] | None:
        """Every item, oldest first (what a response in the conversation sees before its input)."""
        def read() -> list[Item] | None:
            with self.store.engine.connect() as conn:
                if conn.execute(_select_owned(conversation_id, owner)).first() is None:
                    return None
                rows = conn.execute(select(conversation_items.c.item).where(
                    conversation_items.c.conversation_id == conversation_id).order_by(conversation_items.c.position))
                return [orjson.loads(r.item) for r in rows]

        return await self.store.run(read)

    async def page(self, conversation_id: str, owner: str | None, *, limit: int, ascending: bool,
                   after: str | None) -> Page | Literal["unknown_after"] | None:
        """A page of items in either order, after the item with id ``after``."""
        column = conversation_items.c.position

        def read() -> Page | Literal["unknown_after"] | None:
            with self.store.engine.connect() as conn:
                if conn.execute(_select_owned(conversation_id, owner)).first() is None:
                    return None
                where = [conversation_items.c.conversation_id == conversation_id]
                if after is not None:
                    start = _position(conn, conversation_id, after)
                    if start is None:
                        return "unknown_after"
                    where.append(column > start if ascending else column < start)
                rows = conn.execute(select(conversation_items.c.item).where(*where).order_by(
                    column if ascending else column.desc()).limit(limit + 1)).all()
            found = [orjson.loads(r.item) for r in rows]
            return Page(found[:limit], len(found) > limit)

        return await self.store.run(read)

    async def item(self, conversation_id: str, owner: str | None, item_id: str) -> Item | Literal["missing"] | None:
        """The item, None when the conversation holds no such item, "missing" when there is no conversation."""
        def read() -> Item | Literal["missing"] | None:
            with self.store.engine.connect() as conn:
                if conn.execute(_select_owned(conversation_id, owner)).first() is None:
                    return "missing"
                row = conn.execute(select(conversation_items.c.item).where(
                    conversation_items.c.conversation_id == conversation_id,
                    conversation_items.c.item_id == item_id).limit(1)).first()
            return None if row is None else dict(orjson.loads(row.item))

        return await self.store.run(read)

    async def delete_item(self, conversation_id: str, owner: str | None,
                          item_id: str) -> dict[str, Any] | Literal[False] | None:
        """The conversation after the delete; False when it holds no such item, None when there is no conversation."""
        def write() -> dict[str, Any] | Literal[False] | None:
            with self.store.transaction() as conn:
                row = conn.execute(_select_owned(conversation_id, owner)).first()
                if row is None:
                    return None
                removed = conn.execute(delete(conversation_items).where(
                    conversation_items.c.conversation_id == conversation_id,
                    conversation_items.c.item_id == item_id)).rowcount
                return _shown(row._asdict()) if removed else False

        return await self.store.write(write)

    # -- a response's hold ---------------------------------------------------------------------

    async def claim(self, conversation_id: str, owner: str | None, response_id: str, executor: str | None) -> Claim:
        """Hold the conversation for ``response_id``, run by ``executor`` (None: a background response,
        whichever process runs it). Claiming again for the same response succeeds (a resumed run)."""
        now = now_ms()
        free = _free(now, response_id, self.max_hold_ms)

        def write() -> Claim:
            with self.store.transaction() as conn:
                changed = conn.execute(update(conversations).where(*_owned(conversation_id, owner), free).values(
                    busy_response=response_id, busy_executor=executor, busy_at=now)).rowcount
                if changed:
                    return "held"
                return "busy" if conn.execute(_select_owned(conversation_id, owner)).first() else "missing"

        return await self.store.write(write)

    def ending_write(self, conversation_id: str, response_id: str, new_items: list[Item], *, status: str,
                     appended: frozenset[str], stored: bool) -> Callable[[Connection], None]:
        """The write that joins the transaction recording a response's ending: its items appended
        when it ended as one of ``appended`` (and, when ``stored``, its row says so: a background
        run cancelled meanwhile adds nothing), and its hold ended either way. A conversation
        deleted meanwhile takes nothing."""
        def write(conn: Connection) -> None:
            ended = status if not stored else conn.execute(
                select(responses.c.status).where(responses.c.id == response_id)).scalar()
            # Only while it holds the conversation: a hold taken for void (its process was taken for
            # dead, and the response failed) lets the next response build on the items before it.
            holds = conn.execute(select(conversations.c.id).where(
                conversations.c.id == conversation_id, conversations.c.busy_response == response_id)).first()
            if ended == status and status in appended and holds is not None:
                _append(conn, conversation_id, new_items)
            _release(conn, conversation_id, response_id)

        return write

    async def in_transaction(self, fn: Callable[[Connection], None]) -> None:
        def write() -> None:
            with self.store.transaction() as conn:
                fn(conn)

        await self.store.write(write)

    async def release(self, conversation_id: str, response_id: str) -> None:
        """End a response's hold without appending anything (it failed, or never ran)."""
        await self.in_transaction(lambda conn: _release(conn, conversation_id, response_id))


def _owned(conversation_id: str, owner: str | None) -> list[Any]:
    where = [conversations.c.id == conversation_id]
    if owner is not None:
        where.append(conversations.c.owner == owner)
    return where


_SHOWN = (conversations.c.id, conversations.c.created_at, conversations.c.metadata)


def _select_owned(conversation_id: str, owner: str | None) -> Any:
    return select(*_SHOWN).where(*_owned(conversation_id, owner))


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "conversation", "created_at": row["created_at"],
            "metadata": orjson.loads(row["metadata"])}


def _position(conn: Connection, conversation_id: str, item_id: str) -> int | None:
    found = conn.execute(select(func.min(conversation_items.c.position)).where(
        conversation_items.c.conversation_id == conversation_id, conversation_items.c.item_id == item_id)).scalar()
    return None if found is None else int(found)


def _item_rows(conversation_id: str, start: int, new_items: list[Item], now: int) -> list[dict[str, Any]]:
    return [{"conversation_id": conversation_id, "position": start + i, "item_id": item["id"], "item": dumps(item),
             "created_at": now} for i, item in enumerate(new_items)]


def _append(conn: Connection, conversation_id: str, new_items: list[Item]) -> list[Item]:
    # The UPDATE first: it locks the row (PostgreSQL) or the database (SQLite), so concurrent appends
    # take turns and each reads the positions the one before it took.
    start = conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(
        next_position=conversations.c.next_position).returning(conversations.c.next_position)).scalar_one()
    ids = [item["id"] for item in new_items]
    held = set(conn.execute(select(conversation_items.c.item_id).where(
        conversation_items.c.conversation_id == conversation_id, conversation_items.c.item_id.in_(ids))).scalars())
    fresh: list[Item] = []
    for item in new_items:
        if item["id"] not in held:
            held.add(item["id"])
            fresh.append(item)
    if fresh:
        conn.execute(insert(conversation_items), _item_rows(conversation_id, start, fresh, now_ms()))
        conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(
            next_position=start + len(fresh)))
    return fresh


def _release(conn: Connection, conversation_id: str, response_id: str) -> None:
    conn.execute(update(conversations).where(conversations.c.id == conversation_id,
                                             conversations.c.busy_response == response_id).values(
        busy_response=None, busy_executor=None, busy_at=None))


def _free(now: int, response_id: str, max_hold_ms: int) -> Any:
    """Whether a conversation may be claimed by ``response_id``: nobody holds it, it holds it already,
    or its holder is gone (its process, for a foreground response; its run, for a background one)."""
    held_by, executor, since = conversations.c.busy_response, conversations.c.busy_executor, conversations.c.busy_at
    foreground, background = executor.is_not(None), executor.is_(None)
    process_gone = and_(foreground, ~exists().where(executors.c.id == executor))
    # A background response's row is written right after its hold is taken: a missing one is taken for
    # gone (never stored, or deleted once it ended) only after a grace period.
    run_over = and_(background, or_(
        exists().where(responses.c.id == held_by, responses.c.status.not_in(RUNNING)),
        and_(since < now - BACKGROUND_GRACE_MS, ~exists().where(responses.c.id == held_by))))
    # A foreground response has no time limit: its hold lasts while its process does.
    too_long = and_(background, since < now - max_hold_ms)
    return or_(held_by.is_(None), held_by == response_id, too_long, process_gone, run_over)
