"""What is recorded about each request once it is answered, off the hot path: its usage row, the
tokens its rate-limit buckets are charged, and its inference table row."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from opensupervisor.errors import APIError
from opensupervisor.identity import Principal
from opensupervisor.identity.limits import RateLimiter, Ticket
from opensupervisor.runs.assemble import Prepared
from opensupervisor.runs.inference_tables import Exchange, InferenceTables
from opensupervisor.store.usage import Usage
from opensupervisor.vault import redact_request


@dataclass(slots=True)
class Accounting:
    usage: Usage | None = None
    limiter: RateLimiter | None = None
    inference: InferenceTables | None = None

    def finished(self, prepared: Prepared, mode: str, started: float, seconds: float) -> None:
        """A run ended."""
        run, spans = prepared.run, prepared.spans
        response = run.emitter.response
        if self.usage is not None:
            self.usage.record(_usage_row(prepared, mode, seconds))
        ticket = prepared.plan.ticket
        if self.limiter is not None and ticket is not None:
            spent = int((response.get("usage") or {}).get("total_tokens", 0)) + \
                sum(c["input_tokens"] + c["output_tokens"] for c in spans.tool_model_calls)
            self.limiter.charge(ticket, spent)
        if self.inference is not None:
            request = prepared.recorder.request  # as stored: sealed secrets stay sealed
            self.inference.record(Exchange(response["id"], started, seconds, 200, redact_request(request), response,
                                           run.ctx.principal.name, response["model"]))

    def direct(self, row: dict[str, Any], ticket: Ticket | None) -> None:
        """A call that ran outside a response (a Genie message, embeddings) ended: ``row`` is its usage."""
        if self.usage is not None:
            self.usage.record(row)
        if self.limiter is not None and ticket is not None:
            self.limiter.charge(ticket, int(row["input_tokens"]) + int(row["output_tokens"]) +
                                int(row["tool_input_tokens"]) + int(row["tool_output_tokens"]))

    @contextlib.asynccontextmanager
    async def admission(self, principal: Principal, model: str) -> AsyncIterator[Ticket | None]:
        """Count a request against its rate limits (429 when over); if preparing it fails after that,
        the call is given back."""
        ticket = await self.limiter.admit(principal, model) if self.limiter is not None else None
        try:
            yield ticket
        except BaseException:
            if ticket is not None and self.limiter is not None:
                await self.limiter.release(ticket)
            raise

    async def release(self, ticket: Ticket | None) -> None:
        """Give back the call of a request that was admitted but will not run."""
        if self.limiter is not None and ticket is not None:
            await self.limiter.release(ticket)

    def refused(self, principal: Principal, raw: dict[str, Any] | None, error: APIError, started: float) -> None:
        """A request answered with an error before any run started (400, 403, 404, 413, 429)."""
        if self.inference is None:
            return
        model = raw.get("model") if raw is not None else None
        self.inference.record(Exchange(str(uuid.uuid4()), started, time.time() - started, error.status_code,
                                       redact_request(raw) if raw is not None else None, error.body(),
                                       principal.name, model if isinstance(model, str) else None))


def _usage_row(prepared: Prepared, mode: str, seconds: float) -> dict[str, Any]:
    run, spans = prepared.run, prepared.spans
    response = run.emitter.response
    usage = response.get("usage") or {}
    calls, tools = spans.model_calls, spans.tool_model_calls
    return {"response_id": response["id"], "principal": run.ctx.principal.name, "model": response["model"],
            "day": time.strftime("%Y-%m-%d", time.gmtime(response["created_at"])),
            "created_at": int(response["created_at"]), "mode": mode, "status": response["status"],
            "input_tokens": int(usage.get("input_tokens", 0)), "output_tokens": int(usage.get("output_tokens", 0)),
            "model_calls": len(calls), "tool_calls": run.hosted_calls, "latency_ms": int(seconds * 1000),
            "tool_input_tokens": sum(int(c["input_tokens"]) for c in tools),
            "tool_output_tokens": sum(int(c["output_tokens"]) for c in tools),
            "calls": orjson.dumps([*calls, *tools]).decode()}
