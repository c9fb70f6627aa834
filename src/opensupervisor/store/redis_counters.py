"""Rate-limit counters in Redis (``OPENSUPERVISOR_REDIS_URL``), for deployments that have one:
a hash per bucket and minute, kept for three minutes."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as redis

from opensupervisor.identity.limits import WINDOW_S, Counts, Verdict

PREFIX = "opensupervisor:rate"
KEEP_S = 180
MAX_ATTEMPTS = 50


def _key(bucket: str, minute: int) -> str:
    return f"{PREFIX}:{minute}:{bucket}"


class RedisCounters:
    def __init__(self, url: str) -> None:
        self.client: redis.Redis = redis.Redis.from_url(url)

    async def admit(self, buckets: list[str], now: float, decide: Callable[[dict[str, Counts]], Verdict]
                    ) -> Verdict:
        """Read, decide and count in one optimistic transaction (WATCH/MULTI): when another request
        counts in the same buckets meanwhile, it starts over, so no decision rests on stale counts."""
        minute = int(now // WINDOW_S)
        ordered = sorted(set(buckets))
        current = [_key(b, minute) for b in ordered]
        previous = [_key(b, minute - 1) for b in ordered]
        for _ in range(MAX_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*current, *previous)
                    counts: dict[str, Counts] = {}
                    for bucket, now_key, before_key in zip(ordered, current, previous, strict=True):
                        calls, tokens = await pipe.hmget(now_key, "calls", "tokens")
                        previous_calls, previous_tokens = await pipe.hmget(before_key, "calls", "tokens")
                        counts[bucket] = Counts(_int(previous_calls), _int(previous_tokens), _int(calls) + 1,
                                                _int(tokens))
                    verdict = decide(counts)
                    if not verdict.allowed:
                        return verdict  # leaving the block resets the pipeline, which stops watching
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for key in current:
                        pipe.hincrby(key, "calls", 1)
                        pipe.expire(key, KEEP_S)
                    await pipe.execute()
                    return verdict
                except redis.WatchError:
                    continue
        raise RuntimeError(f"the rate-limit counters stayed contended for {MAX_ATTEMPTS} attempts")

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
