"""Rate limits set through the admin API, and the shared per-minute counters in the database."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from sqlalchemy import Connection, and_, delete, select, update

from opensupervisor.identity.limits import WINDOW_S, Counts, RateLimit, Verdict
from opensupervisor.store.schema import rate_counters, rate_limits
from opensupervisor.store.store import Store, now_ms


class StoredRateLimits:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, model: str, limits: list[RateLimit]) -> None:
        row = {"model": model, "updated_at": now_ms(),
               "limits": orjson.dumps([limit.model_dump(exclude_none=True) for limit in limits]).decode()}

        def write() -> None:
            stmt = self.store.dialect_insert(rate_limits).values(**row)
            with self.store.transaction() as conn:
                conn.execute(stmt.on_conflict_do_update(index_elements=["model"], set_={
                    "limits": row["limits"], "updated_at": row["updated_at"]}))

        await self.store.write(write)

    async def remove(self, model: str) -> bool:
        def write() -> bool:
            with self.store.transaction() as conn:
                return bool(conn.execute(delete(rate_limits).where(rate_limits.c.model == model)).rowcount)

        return await self.store.write(write)

    async def all(self) -> dict[str, list[RateLimit]]:
        def read() -> dict[str, list[RateLimit]]:
            with self.store.engine.connect() as conn:
                return {r.model: [RateLimit.model_validate(x) for x in orjson.loads(r.limits)]
                        for r in conn.execute(select(rate_limits))}

        return await self.store.run(read)


class DatabaseCounters:
    """Counters in the store's database: one row per bucket and minute, locked in bucket order by
    the upsert, so concurrent requests of any process count one after another."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def admit(self, buckets: list[str], now: float, decide: Callable[[dict[str, Counts]], Verdict]
                    ) -> Verdict:
        minute = int(now // WINDOW_S)
        ordered = sorted(set(buckets))

        def write() -> Verdict:
            with self.store.transaction() as conn:
                current = self._bump(conn, {b: 0 for b in ordered}, minute, calls=1)
                previous = {r.bucket: (r.calls, r.tokens) for r in conn.execute(
                    select(rate_counters.c.bucket, rate_counters.c.calls, rate_counters.c.tokens).where(
                        rate_counters.c.bucket.in_(ordered), rate_counters.c.minute == minute - 1))}
                counts = {b: Counts(*previous.get(b, (0, 0)), *current[b]) for b in ordered}
                verdict = decide(counts)
                if not verdict.allowed:
                    conn.execute(update(rate_counters).where(
                        rate_counters.c.bucket.in_(ordered), rate_counters.c.minute == minute).values(
                        calls=rate_counters.c.calls - 1))
                return verdict

        return await self.store.write(write)

    def _bump(self, conn: Connection, tokens: dict[str, int], minute: int, *, calls: int) -> dict[str, tuple[int, int]]:
        """Add ``calls`` and each bucket's tokens in one statement (rows locked in bucket order);
        returns every bucket's counts after it."""
        rows = [{"bucket": b, "minute": minute, "calls": calls, "tokens": t} for b, t in sorted(tokens.items())]
        inserted = self.store.dialect_insert(rate_counters).values(rows)
        stmt = inserted.on_conflict_do_update(
            index_elements=["bucket", "minute"],
            set_={"calls": rate_counters.c.calls + inserted.excluded.calls,
                  "tokens": rate_counters.c.tokens + inserted.excluded.tokens},
        ).returning(rate_counters.c.bucket, rate_counters.c.calls, rate_counters.c.tokens)
        return {r.bucket: (int(r.calls), int(r.tokens)) for r in conn.execute(stmt)}

    async def release(self, buckets: list[str], minute: int) -> None:
        def write() -> None:
            with self.store.transaction() as conn:
                conn.execute(update(rate_counters).where(
                    rate_counters.c.bucket.in_(sorted(set(buckets))), rate_counters.c.minute == minute,
                    rate_counters.c.calls > 0).values(calls=rate_counters.c.calls - 1))

        await self.store.write(write)

    async def add_tokens(self, charges: list[tuple[list[str], int]], now: float) -> None:
        minute = int(now // WINDOW_S)
        totals: dict[str, int] = {}
        for buckets, tokens in charges:
            for bucket in set(buckets):
                totals[bucket] = totals.get(bucket, 0) + tokens

        def write() -> None:
            with self.store.transaction() as conn:
                if totals:
                    self._bump(conn, totals, minute, calls=0)
                # Minutes before the previous one no longer count.
                conn.execute(delete(rate_counters).where(and_(rate_counters.c.minute < minute - 1)))

        await self.store.write(write)

    async def aclose(self) -> None:
        """The store closes its own engine."""
