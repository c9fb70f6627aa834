"""Rate-limit counters in Redis (``OPENSUPERVISOR_REDIS_URL``), for deployments that have one:
a hash per bucket and minute, kept for three minutes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis

from opensupervisor.identity.limits import WINDOW_S, Counts, Verdict

PREFIX = "opensupervisor:rate"
KEEP_S = 180


def _key(bucket: str, minute: int) -> str:
    return f"{PREFIX}:{minute}:{bucket}"


class RedisCounters:
    def __init__(self, url: str) -> None:
        self.client: redis.Redis = redis.Redis.from_url(url)

    async def admit(self, buckets: list[str], now: float, decide: Callable[[dict[str, Counts]], Verdict]
                    ) -> Verdict:
        """Count the call and read the counts in one transaction (one round trip), decide, and take
        the call back when refused. Hot buckets (an endpoint's) are shared by every request, so an
        optimistic read-then-write would keep retrying under load; counting first never admits past
        a limit. At worst, a burst exactly at a limit sees a refused call for a moment and refuses
        a request that would have just fit."""
        minute = int(now // WINDOW_S)
        ordered = sorted(set(buckets))
        async with self.client.pipeline(transaction=True) as pipe:
            for bucket in ordered:
                pipe.hincrby(_key(bucket, minute), "calls", 1)
                pipe.expire(_key(bucket, minute), KEEP_S)
                pipe.hget(_key(bucket, minute), "tokens")
                pipe.hmget(_key(bucket, minute - 1), "calls", "tokens")
            replies: list[Any] = await pipe.execute()
        counts: dict[str, Counts] = {}
        for i, bucket in enumerate(ordered):
            calls, _, tokens, (previous_calls, previous_tokens) = replies[4 * i:4 * i + 4]
            counts[bucket] = Counts(_int(previous_calls), _int(previous_tokens), int(calls), _int(tokens))
        verdict = decide(counts)
        if not verdict.allowed:
            await asyncio.shield(self.release(ordered, minute))  # a cancelled caller still gives it back
        return verdict

    async def release(self, buckets: list[str], minute: int) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            for bucket in sorted(set(buckets)):
                pipe.hincrby(_key(bucket, minute), "calls", -1)
            await pipe.execute()

    async def add_tokens(self, charges: list[tuple[list[str], int]], now: float) -> None:
        minute = int(now // WINDOW_S)
        async with self.client.pipeline(transaction=False) as pipe:
            for buckets, tokens in charges:
                for bucket in set(buckets):
                    pipe.hincrby(_key(bucket, minute), "tokens", tokens)
                    pipe.expire(_key(bucket, minute), KEEP_S)
            await pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()


def _int(value: bytes | str | None) -> int:
    return int(value) if value is not None else 0
