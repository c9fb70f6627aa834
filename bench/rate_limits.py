"""What a rate-limit decision costs per request, by where the counters live.

For each backend (SQLite and PostgreSQL through the store, Redis), times ``RateLimiter.admit`` for
a user in two limited groups under an endpoint limit (four buckets, the gateway's richest case),
one request at a time and 32 at once, against one plain round trip to the same backend
(``SELECT 1`` or ``PING``). Prints microseconds per decision and the ratio to that round trip.
Figures are ratios of one run on one machine.

    .venv/bin/python bench/rate_limits.py [--decisions 2000] [--pg postgresql://postgres@127.0.0.1:5432/test]
        [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text

from opensupervisor.identity import Principal
from opensupervisor.identity.limits import Counters, RateLimit, RateLimiter
from opensupervisor.store import Store
from opensupervisor.store.rate_limits import DatabaseCounters
from opensupervisor.store.redis_counters import RedisCounters

MODEL = f"bench-{secrets.token_hex(3)}"
LIMITS = [RateLimit(key="endpoint", calls=10**9), RateLimit(key="user_group", principal="a", calls=10**9),
          RateLimit(key="user_group", principal="b", calls=10**9)]


async def timed(call: Callable[[], Awaitable[object]], count: int, concurrency: int) -> list[float]:
    """Seconds per call, ``concurrency`` callers sharing ``count`` calls."""
    laps: list[float] = []

    async def caller(share: int) -> None:
        for _ in range(share):
            started = time.perf_counter()
            await call()
            laps.append(time.perf_counter() - started)

    await asyncio.gather(*(caller(count // concurrency) for _ in range(concurrency)))
    return laps


async def measure(name: str, counters: Counters, round_trip: Callable[[], Awaitable[object]], count: int) -> None:
    limiter = RateLimiter({MODEL: LIMITS}, counters)
    users = [Principal(id=f"p_{i}", name=f"user{i}", groups=frozenset({"a", "b"})) for i in range(64)]
    turn = iter(range(10**9))

    async def admit() -> object:
        return await limiter.admit(users[next(turn) % len(users)], MODEL)

    await timed(admit, 100, 4)  # warm the pools
    for concurrency in (1, 32):
        base = await timed(round_trip, count, concurrency)
        decisions = await timed(admit, count, concurrency)
        p50, plain = statistics.median(decisions), statistics.median(base)
        p99 = statistics.quantiles(decisions, n=100)[98]
        print(f"{name:10} x{concurrency:<3} decision p50 {p50 * 1e6:8.0f} us  p99 {p99 * 1e6:8.0f} us  "
              f"round trip p50 {plain * 1e6:7.0f} us  ratio {p50 / plain:5.1f}x")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name, url in (("sqlite", f"sqlite:///{Path(folder) / 'bench.db'}"), ("postgresql", args.pg)):
            store = Store(url)
            await store.migrate()

            def select_one(store: Store = store) -> None:
                with store.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))

            async def plain(store: Store = store, select_one: Callable[[], None] = select_one) -> None:
                await store.run(select_one)

            await measure(name, DatabaseCounters(store), plain, args.decisions)
            await store.close()
    counters = RedisCounters(args.redis)
    await measure("redis", counters, counters.client.ping, args.decisions)
    await counters.aclose()


if __name__ == "__main__":
    asyncio.run(main())
