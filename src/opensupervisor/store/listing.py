"""``GET /v1/responses``: a caller's stored responses, newest first, filtered and paginated.

Pages are keyset pages on ``(created_ms, id)``, so a page does not shift while responses are
created; ``after`` names the last response of the page before. The model filter reads the
stored response's JSON (SQLite's ``json_extract``, PostgreSQL's ``->>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, cast, func, or_, select
from sqlalchemy.dialects.postgresql import JSONB

from opensupervisor.store.schema import responses
from opensupervisor.store.store import Store


@dataclass(frozen=True, slots=True)
class ResponseFilter:
    owner: str | None = None  # None: everyone's (an admin's listing)
    status: str | None = None
    model: str | None = None
    background: bool | None = None
    since: int | None = None  # created_at at or after (epoch seconds)
    until: int | None = None  # created_at before


class MissingCursor(LookupError):
    """``after`` names no response the listing could have shown."""


async def list_responses(store: Store, where: ResponseFilter, *, limit: int, order: str,
                         after: str | None) -> tuple[list[dict[str, Any]], bool]:
    """A page of stored responses (without their output items) and whether more follow."""

    def read() -> tuple[list[dict[str, Any]], bool]:
        with store.engine.connect() as conn:
            conditions = _conditions(where, store.is_sqlite)
            if after is not None:
                cursor = conn.execute(select(responses.c.created_ms).where(
                    responses.c.id == after, *conditions)).first()
                if cursor is None:
                    raise MissingCursor(after)
                conditions.append(_past(cursor.created_ms or 0, after, order))
            # A row without the column (none the server writes) counts as the oldest, as in ``_past``.
            keys = ((responses.c.created_ms.desc().nulls_last(), responses.c.id.desc()) if order == "desc"
                    else (responses.c.created_ms.asc().nulls_first(), responses.c.id.asc()))
            rows = conn.execute(select(responses.c.response, responses.c.owner).where(*conditions)
                                .order_by(*keys).limit(limit + 1)).all()
        page = [{**_without_output(orjson.loads(r.response)), "owner": r.owner} for r in rows[:limit]]
        return page, len(rows) > limit

    return await store.run(read)


def _without_output(response: dict[str, Any]) -> dict[str, Any]:
    response.pop("output", None)  # stored apart; a listing does not read the items
    return response


def _conditions(where: ResponseFilter, sqlite: bool) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if where.owner is not None:
        out.append(responses.c.owner == where.owner)
    if where.status is not None:
        out.append(responses.c.status == where.status)
    if where.background is not None:
        out.append(responses.c.background == where.background)
    if where.since is not None:
        out.append(responses.c.created_at >= where.since)
    if where.until is not None:
        out.append(responses.c.created_at < where.until)
    if where.model is not None:
        model = (func.json_extract(responses.c.response, "$.model") if sqlite
                 else cast(responses.c.response, JSONB)["model"].astext)
        out.append(model == where.model)
    return out


def _past(created_ms: int, response_id: str, order: str) -> ColumnElement[bool]:
    when = func.coalesce(responses.c.created_ms, 0)
    if order == "desc":
        return or_(when < created_ms, and_(when == created_ms, responses.c.id < response_id))
    return or_(when > created_ms, and_(when == created_ms, responses.c.id > response_id))
