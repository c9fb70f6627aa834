"""Usage tracking: a row per response, written in batches off the hot path, and reports grouped
by principal, model and day."""

from __future__ import annotations

import functools
from typing import Any, Literal

from sqlalchemy import case, func, insert, select
from sqlalchemy.exc import IntegrityError

from opensupervisor.batches import BatchWriter
from opensupervisor.store.schema import usage
from opensupervisor.store.store import Store

GroupBy = Literal["principal", "model", "day"]
BATCH = 500
# Under load, the rows of many responses go in one transaction; a quiet server writes each within this.
LINGER_S = 0.05


class Usage:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows = BatchWriter(self._write, what="usage row(s)", batch=BATCH, linger_s=LINGER_S)

    def record(self, row: dict[str, Any]) -> None:
        """Queue a response's usage row (never blocks)."""
        self._rows.put(row)

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        await self.store.write(functools.partial(self._insert, rows))

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        try:
            with self.store.transaction() as conn:
                conn.execute(insert(usage), rows)
        except IntegrityError:  # a resumed background run records again: keep the first row
            for row in rows:
                try:
                    with self.store.transaction() as conn:
                        conn.execute(insert(usage), [row])
                except IntegrityError:
                    pass

    async def flush(self) -> None:
        await self._rows.flush()

    async def aclose(self) -> None:
        await self._rows.aclose()

    async def report(self, group_by: list[GroupBy], *, since: str | None = None, until: str | None = None,
                     principal: str | None = None) -> list[dict[str, Any]]:
        """Totals per group: responses, tokens in and out (the loop's, and those of tools' own model
        calls), model and tool calls, mean latency."""
        keys = [usage.c[g] for g in group_by]
        query = select(*keys, func.count().label("responses"),
                       func.sum(usage.c.input_tokens).label("input_tokens"),
                       func.sum(usage.c.output_tokens).label("output_tokens"),
                       func.sum(usage.c.tool_input_tokens).label("tool_input_tokens"),
                       func.sum(usage.c.tool_output_tokens).label("tool_output_tokens"),
                       func.sum(usage.c.model_calls).label("model_calls"),
                       func.sum(usage.c.tool_calls).label("tool_calls"),
                       func.avg(usage.c.latency_ms).label("mean_latency_ms"),
                       func.sum(case((usage.c.status != "completed", 1), else_=0)).label("not_completed"))
        if since:
            query = query.where(usage.c.day >= since)
        if until:
            query = query.where(usage.c.day <= until)
        if principal:
            query = query.where(usage.c.principal == principal)
        if keys:
            query = query.group_by(*keys).order_by(*keys)

        def read() -> list[dict[str, Any]]:
            with self.store.engine.connect() as conn:
                return [{**{g: r[i] for i, g in enumerate(group_by)},
                         "responses": int(r.responses), "input_tokens": int(r.input_tokens or 0),
                         "output_tokens": int(r.output_tokens or 0),
                         "tool_input_tokens": int(r.tool_input_tokens or 0),
                         "tool_output_tokens": int(r.tool_output_tokens or 0), "model_calls": int(r.model_calls or 0),
                         "tool_calls": int(r.tool_calls or 0),
                         "mean_latency_ms": round(float(r.mean_latency_ms or 0), 1),
                         "not_completed": int(r.not_completed or 0)} for r in conn.execute(query)]

        return await self.store.run(read)
