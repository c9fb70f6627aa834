"""Rate limits as the AI Gateway defines them: queries and tokens per minute, per endpoint (a model).

Levels and precedence (https://docs.databricks.com/aws/en/ai-gateway/rate-limits-beta):

* ``endpoint``: one bucket for all traffic to the model; over it, every request is refused.
* ``user`` without ``principal``: the default limit, one bucket per caller without a custom limit.
* ``user`` or ``service_principal`` with ``principal``: that caller's own bucket; it beats groups.
* ``user_group``: one bucket shared by the group's members. A caller in several limited groups is
  refused only once every one of those groups is over its limit.

A limit with both ``calls`` (QPM) and ``tokens`` (TPM) refuses when either is over: the stricter
wins. Counts are a sliding window over the current and the previous minute, kept where every
process sees them (the database, or Redis), so limits hold across workers. A request counts as one
call when admitted; its tokens (the response's ``usage.total_tokens``) count when it ends, so a
token limit refuses the requests that come after the minute's tokens are spent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from opensupervisor.batches import BatchWriter
from opensupervisor.errors import RateLimited
from opensupervisor.identity.principal import Principal
from opensupervisor.metrics import REGISTRY

log = logging.getLogger(__name__)
COUNTER_ERRORS = Counter("opensupervisor_rate_limit_counter_errors",
                         "Rate-limit counter reads or writes that failed (the request was admitted)",
                         registry=REGISTRY)

WINDOW_S = 60.0
MAX_LIMITS = 20
MAX_GROUP_LIMITS = 5
# Far above any real limit, and small enough for every counter and column that holds one.
MAX_PER_MINUTE = 10**12
Key = Literal["endpoint", "user", "user_group", "service_principal"]


class RateLimit(BaseModel):
    """One limit, in the shape of the gateway's ``AiGatewayRateLimit``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: Key = "endpoint"
    principal: str | None = Field(default=None, min_length=1)
    calls: int | None = Field(default=None, ge=0, le=MAX_PER_MINUTE)
    tokens: int | None = Field(default=None, ge=0, le=MAX_PER_MINUTE)
    renewal_period: Literal["minute"] = "minute"

    @model_validator(mode="after")
    def _consistent(self) -> RateLimit:
        if self.calls is None and self.tokens is None:
            raise ValueError("a rate limit needs 'calls' (per minute), 'tokens' (per minute) or both")
        if self.key == "endpoint" and self.principal is not None:
            raise ValueError("an endpoint limit applies to everyone and takes no 'principal'")
        if self.key in ("user_group", "service_principal") and self.principal is None:
            raise ValueError(f"a '{self.key}' limit needs 'principal'")
        return self


def check_limits(limits: list[RateLimit]) -> list[RateLimit]:
    """The gateway's bounds on one endpoint's limits; raises ``ValueError`` naming the problem."""
    if len(limits) > MAX_LIMITS:
        raise ValueError(f"at most {MAX_LIMITS} rate limits per model")
    if sum(limit.key == "user_group" for limit in limits) > MAX_GROUP_LIMITS:
        raise ValueError(f"at most {MAX_GROUP_LIMITS} group rate limits per model")
    seen: set[tuple[str, str | None]] = set()
    for limit in limits:
        who = (limit.key if limit.key != "service_principal" else "user", limit.principal)
        if who in seen:
            raise ValueError(f"two rate limits for {limit.key} {limit.principal or ''}".rstrip())
        seen.add(who)
    return limits


class Counts(NamedTuple):
    """A bucket's calls and tokens in the previous and the current minute (this request included)."""

    previous_calls: float
    previous_tokens: float
    calls: float
    tokens: float


@dataclass(frozen=True, slots=True)
class Check:
    bucket: str
    limit: RateLimit


@dataclass(frozen=True, slots=True)
class Plan:
    """The buckets one request is counted in: all of ``required`` must admit it, and at least one
    of ``any_of`` when there are any (a caller's groups)."""

    required: tuple[Check, ...]
    any_of: tuple[Check, ...]

    @property
    def buckets(self) -> list[str]:
        return [check.bucket for check in (*self.required, *self.any_of)]


def plan(model: str, principal: Principal, limits: Iterable[RateLimit]) -> Plan | None:
    """Which limits apply to ``principal`` calling ``model``; None when none do."""
    endpoint: list[Check] = []
    own: Check | None = None
    default: Check | None = None
    groups: list[Check] = []
    for limit in limits:
        if limit.key == "endpoint":
            endpoint.append(Check(f"{model}|endpoint", limit))
        elif limit.key == "user_group":
            if limit.principal in principal.groups:
                groups.append(Check(f"{model}|group:{limit.principal}", limit))
        elif limit.principal is None:
            default = Check(f"{model}|user:{principal.name}", limit)
        elif limit.principal == principal.name:
            own = Check(f"{model}|user:{principal.name}", limit)
    if own is not None:
        required, any_of = [*endpoint, own], []
    elif groups:
        required, any_of = endpoint, groups
    else:
        required, any_of = [*endpoint, *([default] if default else [])], []
    if not required and not any_of:
        return None
    return Plan(tuple(required), tuple(any_of))


def wait_s(limit: RateLimit, counts: Counts, fraction: float) -> float:
    """Seconds until ``limit`` admits one more call, ``fraction`` of the way through the minute;
    0 when it admits it now. ``counts`` include the call being decided."""
    waits = [0.0]
    if limit.calls is not None:
        waits.append(_wait(limit.calls, counts.previous_calls, counts.calls - 1, need=1, fraction=fraction))
    if limit.tokens is not None:
        # Tokens are known only after a request: one more is admitted while the minute has any left.
        waits.append(_wait(limit.tokens, counts.previous_tokens, counts.tokens, need=1e-9, fraction=fraction))
    return max(waits)


def _wait(limit: float, previous: float, current: float, *, need: float, fraction: float) -> float:
    """Sliding window: the estimate ``previous * (1 - f) + current`` must leave room for ``need``."""
    if previous * (1 - fraction) + current + need <= limit:
        return 0.0
    room = limit - current - need
    if room >= 0 and previous > 0:  # later in this minute, as the previous one weighs less
        return (1 - room / previous - fraction) * WINDOW_S
    if limit - need < 0:
        return math.inf  # a zero limit never admits anything
    then = 1 - (limit - need) / current if current > 0 else 0.0  # into the next minute
    return (1 - fraction + max(then, 0.0)) * WINDOW_S


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: float = 0.0
    refused_by: str = ""


def judge(plan: Plan, counts: Mapping[str, Counts], fraction: float) -> Verdict:
    """Admit or refuse a request counted in ``plan``'s buckets."""
    blocked = [(wait_s(c.limit, counts[c.bucket], fraction), c) for c in plan.required]
    blocked = [(w, c) for w, c in blocked if w > 0]
    if plan.any_of:
        groups = [(wait_s(c.limit, counts[c.bucket], fraction), c) for c in plan.any_of]
        if all(w > 0 for w, _ in groups):
            blocked.append(min(groups, key=lambda pair: pair[0]))
    if not blocked:
        return Verdict(True)
    wait, check = max(blocked, key=lambda pair: pair[0])
    return Verdict(False, wait, _describe(check))


def _describe(check: Check) -> str:
    limit = check.limit
    rates = " and ".join(part for part in (f"{limit.calls} queries" if limit.calls is not None else "",
                                           f"{limit.tokens} tokens" if limit.tokens is not None else "") if part)
    who = {"endpoint": "the model", "user_group": f"group '{limit.principal}'"}.get(
        limit.key, f"'{limit.principal}'" if limit.principal else "each user")
    return f"{rates} per minute for {who}"


class Counters(Protocol):
    """Where the minute counts live, shared by every process of the deployment."""

    async def admit(self, buckets: list[str], now: float, decide: Callable[[dict[str, Counts]], Verdict]
                    ) -> Verdict:
        """Count one call in each bucket, and take it back unless ``decide`` admits it."""
        ...

    async def add_tokens(self, charges: list[tuple[list[str], int]], now: float) -> None:
        """Count finished requests' tokens in their buckets."""
        ...

    async def release(self, buckets: list[str], minute: int) -> None:
        """Take back one call counted in ``minute``."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Ticket:
    """The buckets an admitted request was counted in, and the minute; its tokens go there when it ends."""

    buckets: list[str]
    minute: int


class RateLimiter:
    """The limits of each model (the workspace file's, or the admin API's, which replace them) and
    the shared counters; ``admit`` before a run, ``charge`` its tokens after."""

    def __init__(self, declared: Mapping[str, list[RateLimit]], counters: Counters,
                 clock: Callable[[], float] = time.time) -> None:
        self.declared = {model: list(limits) for model, limits in declared.items() if limits}
        self.stored: dict[str, list[RateLimit]] = {}
        self.counters = counters
        self.clock = clock
        self._charges = BatchWriter(self._add_tokens, what="token charge(s)", batch=10_000)

    def load(self, stored: Mapping[str, list[RateLimit]]) -> None:
        self.stored = dict(stored)

    def limits(self, model: str) -> list[RateLimit]:
        return self.stored.get(model, self.declared.get(model, []))

    def listing(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for model in sorted({*self.declared, *self.stored}):
            source = "api" if model in self.stored else "workspace"
            out[model] = {"rate_limits": [limit.model_dump(exclude_none=True) for limit in self.limits(model)],
                          "source": source}
        return out

    async def admit(self, principal: Principal, model: str) -> Ticket | None:
        """Count the request, or raise ``RateLimited`` (429 with Retry-After) naming the limit."""
        chosen = plan(model, principal, self.limits(model))
        if chosen is None:
            return None
        now = self.clock()
        fraction = (now % WINDOW_S) / WINDOW_S
        try:
            verdict = await self.counters.admit(chosen.buckets, now, lambda counts: judge(chosen, counts, fraction))
        except Exception:  # the counters' database or Redis is down: limits must not take the service down
            COUNTER_ERRORS.inc()
            log.warning("rate-limit counters are unavailable; admitting the request", exc_info=True)
            return None
        if not verdict.allowed:
            raise RateLimited(f"Rate limit exceeded: {verdict.refused_by} on model '{model}'. "
                              "Retry after the time in the Retry-After header.", retry_after_s=verdict.retry_after_s)
        return Ticket(chosen.buckets, int(now // WINDOW_S))

    async def release(self, ticket: Ticket) -> None:
        """Give back the call of an admitted request that did not run (refused later, queue full)."""
        try:
            await self.counters.release(ticket.buckets, ticket.minute)
        except Exception:  # a call counted once too often is the lesser harm
            COUNTER_ERRORS.inc()
            log.warning("giving back a rate-limited call failed", exc_info=True)

    def charge(self, ticket: Ticket, tokens: int) -> None:
        """Queue a finished request's tokens (never blocks; written in batches)."""
        if tokens <= 0:
            return
        self._charges.put((ticket.buckets, tokens))

    async def _add_tokens(self, charges: list[tuple[list[str], int]]) -> None:
        await self.counters.add_tokens(charges, self.clock())

    async def flush(self) -> None:
        await self._charges.flush()

    async def aclose(self) -> None:
        await self._charges.aclose()
        await self.counters.aclose()
