"""Idempotent creates: a create retried with the same ``Idempotency-Key`` answers with the response
the first attempt made, and never starts a second run.

Keys are per principal and compared with a hash of the route and the canonical JSON of the body
(sorted keys), taken before anything reads the body further. A request claims its key before
``prepare``; a refused request (or one that stored nothing) gives it back, so a corrected retry
may use it, as Stripe does for requests that failed validation. A request that finds the key held
waits a moment for the holder to store its response (a background response is stored as soon as it
is prepared), then answers with that response or a retryable ``409 idempotency_key_in_use``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson

from opensupervisor.core.events import Event
from opensupervisor.errors import Conflict, InvalidRequest
from opensupervisor.identity import Principal
from opensupervisor.runs.background import BackgroundRuns
from opensupervisor.runs.durable import DurableEngine
from opensupervisor.runs.stored import StoredResponses
from opensupervisor.store.idempotency import IdempotencyKeys
from opensupervisor.wire.request import CreateResponseRequest
from opensupervisor.wire.response import TERMINAL_STATUSES, Response

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
# How long a request finding its key held waits for the holder's response to be stored.
WAIT_S = 5.0
POLL_S = 0.05


def checked_key(value: str) -> str:
    if not 1 <= len(value) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in value):
        raise InvalidRequest(f"The {HEADER} header must be 1 to {MAX_KEY_CHARS} printable ASCII characters.",
                             param=HEADER, code="invalid_idempotency_key")
    return value


def request_hash(path: str, raw: Any) -> str:
    """The route counts: the same body on a Databricks route answers differently (history echo)."""
    return hashlib.sha256(path.encode() + b"\n" + orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_stored(body: CreateResponseRequest) -> None:
    if not body.store:
        raise InvalidRequest(f"{HEADER} needs store=true: a response that is not stored cannot be given back.",
                             param=HEADER, code="invalid_value")


@dataclass(slots=True)
class Held:
    """A key this request holds: bound to its response once prepared, released if nothing is stored."""

    keys: IdempotencyKeys
    principal: str
    key: str
    response_id: str | None = None

    async def bind(self, response_id: str) -> None:
        self.response_id = response_id
        await self.keys.bind(self.principal, self.key, response_id)

    async def release(self) -> None:
        await self.keys.release(self.principal, self.key, self.response_id)


@dataclass(frozen=True, slots=True)
class Replay:
    """What a retried create answers with: the stored response, or its events for a stream."""

    response: Response
    events: AsyncGenerator[Event] | None


class Idempotency:
    def __init__(self, keys: IdempotencyKeys, engine: DurableEngine, stored: StoredResponses,
                 background: BackgroundRuns) -> None:
        self.keys = keys
        self.engine = engine
        self.stored = stored
        self.background = background

    async def claim(self, principal: Principal, key: str, fingerprint: str, body: CreateResponseRequest
                    ) -> Held | Replay:
        """Hold ``key`` for this request, or the answer of the request that holds it."""
        deadline = time.monotonic() + WAIT_S
        while True:
            claim = await self.keys.claim(principal.id, key, fingerprint, self.engine.executor_id)
            if claim.state == "new":
                return Held(self.keys, principal.id, key)
            if claim.state == "mismatch":
                raise Conflict(f"This {HEADER} was already used with a different request body; use a new key.",
                               param=HEADER, code="idempotency_key_reused")
            if claim.state == "stored":
                assert claim.response_id is not None
                replay = await self._replay(claim.response_id, principal, body)
                if replay is not None:
                    return replay
            if time.monotonic() >= deadline:
                raise _in_use()
            await asyncio.sleep(POLL_S)

    async def _replay(self, response_id: str, principal: Principal, body: CreateResponseRequest
                      ) -> Replay | None:
        response = await self.stored.get(response_id, principal)
        if not response["background"] and response["status"] not in TERMINAL_STATUSES:
            return None  # a foreground run has one reader, its creator: there is nothing to give yet
        events = self.background.follow(response_id, -1) if body.stream else None
        return Replay(response, events)


def _in_use() -> Conflict:
    return Conflict(f"A request with this {HEADER} is still being processed; retry later.", param=HEADER,
                    code="idempotency_key_in_use", retry=True)
