"""MCP approval requests as issued and used: every answer to one is acted on once, by one response.

A row is written when a response shows an ``mcp_approval_request``, whatever the response's
``store``, and is marked with the response that acts on an answer to it. The mark is one conditional
``UPDATE`` per request, in one transaction for all of a request's answers: of two continuations
carrying the same answer, in any processes, on SQLite or PostgreSQL, exactly one wins (the other
finds the row marked, or waits for the winner's lock and then finds it marked).

Rows live as long as an answer is accepted (``lifetime_s``) and are removed after that, so the table
holds at most the requests of one lifetime; a deleted response's unanswered requests go with it.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from sqlalchemy import Row, and_, delete, or_, select, update

from opensupervisor.store.schema import approvals, items
from opensupervisor.store.store import Store, now_ms

DEFAULT_LIFETIME_S = 7 * 86400.0
# Expired rows are removed at most this often per process (with the next request issued).
PURGE_EVERY_MS = 60_000
Refusal = Literal["used", "unknown"]


class IssuedApprovals:
    def __init__(self, store: Store, lifetime_s: float = DEFAULT_LIFETIME_S) -> None:
        self.store = store
        self.lifetime_s = lifetime_s
        self._purged_at = 0

    async def issue(self, request_id: str, principal: str, response_id: str) -> None:
        """Record a request as issued to ``principal`` by ``response_id``. A durable run that replays
        the request records it again: the row already there (maybe used) stays as it is."""
        now = now_ms()
        purge = now - self._purged_at >= PURGE_EVERY_MS
        if purge:
            self._purged_at = now
        row = {"request_id": request_id, "principal": principal, "response_id": response_id, "issued_at": now,
               "expires_at": now + int(self.lifetime_s * 1000)}

        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(self.store.dialect_insert(approvals).values(**row).on_conflict_do_nothing(
                    index_elements=["request_id"]))
                if purge:
                    conn.execute(delete(approvals).where(approvals.c.expires_at < now))

        await self.store.write(write)

    async def pending(self, principal: str, limit: int) -> list[dict[str, Any]]:
        """The requests issued to ``principal`` that no response acted on and that still take an
        answer, newest first, each with its item as its response stored it (a ``store: false``
        response's are not listed: nothing of them is kept to show)."""
        now = now_ms()
        query = (select(approvals.c.request_id, approvals.c.response_id, approvals.c.issued_at,
                        approvals.c.expires_at, items.c.item)
                 .join(items, and_(items.c.response_id == approvals.c.response_id, items.c.kind == "output",
                                   items.c.item_id == approvals.c.request_id))
                 .where(approvals.c.principal == principal, approvals.c.used_by.is_(None),
                        approvals.c.expires_at > now)
                 .order_by(approvals.c.issued_at.desc(), approvals.c.request_id).limit(limit))

        def read() -> list[dict[str, Any]]:
            with self.store.engine.connect() as conn:
                return [{"id": r.request_id, "object": "approval_request", "response_id": r.response_id,
                         "issued_at": r.issued_at, "expires_at": r.expires_at, "item": orjson.loads(r.item)}
                        for r in conn.execute(query)]

        return await self.store.run(read)

    async def use(self, request_ids: list[str], principal: str, response_id: str) -> dict[str, Refusal]:
        """Mark every request as used by ``response_id``, all or none; the refused ones and why.

        ``used``: another response acted on an answer to it. ``unknown``: never issued to this
        principal, past its lifetime, or its issuing response was deleted. Marking again for the same
        response succeeds (a write retried after a lost connection).
        """
        def write() -> dict[str, Refusal]:
            now = now_ms()
            with self.store.engine.connect() as conn:
                transaction = conn.begin()
                refused: dict[str, Refusal] = {}
                for rid in sorted(request_ids):  # rows locked in one order: two claims never deadlock
                    marked = conn.execute(update(approvals).where(
                        approvals.c.request_id == rid, approvals.c.principal == principal,
                        approvals.c.expires_at > now,
                        or_(approvals.c.used_by.is_(None), approvals.c.used_by == response_id),
                    ).values(used_by=response_id, used_at=now)).rowcount
                    if marked != 1:
                        refused[rid] = _why(conn.execute(select(approvals.c.principal, approvals.c.used_by,
                                                                approvals.c.expires_at).where(
                            approvals.c.request_id == rid)).first(), principal, now)
                if refused:
                    transaction.rollback()
                else:
                    transaction.commit()
                return refused

        return await self.store.write(write)

    async def release(self, response_id: str) -> None:
        """Unmark what ``response_id`` marked: it was refused before it ran anything."""
        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(update(approvals).where(approvals.c.used_by == response_id).values(
                    used_by=None, used_at=None))

        await self.store.write(write)

    async def forget(self, response_id: str) -> None:
        """Remove the unanswered requests of a deleted response: they can no longer be answered.
        Used ones stay until they expire, so that a replayed answer is still refused as used."""
        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(delete(approvals).where(approvals.c.response_id == response_id,
                                                     approvals.c.used_by.is_(None)))

        await self.store.write(write)


def _why(row: Row[Any, Any, Any] | None, principal: str, now: int) -> Refusal:
    """A row that is there, this principal's, unexpired and still not marked for us is used; anything
    else is unknown (another principal's request looks the same as one never issued)."""
    if row is None:
        return "unknown"
    return "used" if row.principal == principal and row.used_by is not None and row.expires_at > now else "unknown"
