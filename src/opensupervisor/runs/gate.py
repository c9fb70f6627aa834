"""The one access check and admission for every route that runs a model or a tool.

``/v1/responses``, the Genie conversation API and ``/v1/embeddings`` all pass here: the caller's
grant on the model, on every object a tool entry names (resolved by ``tools.targets``, exactly as
the tools resolve it) and on the model a Genie space writes its SQL with; then the model's rate
limits. Work that runs outside a response (a Genie message, an embedding request) leaves a usage
row and charges its tokens like a response does.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from opensupervisor.errors import Forbidden, NotFound
from opensupervisor.identity import Principal
from opensupervisor.identity.grants import Access
from opensupervisor.runs.accounting import Accounting
from opensupervisor.tools.targets import target
from opensupervisor.tracing.wrappers import ModelCall, counting_model_calls
from opensupervisor.wire.request import ToolSpec


def _no_space_model(space_id: str) -> str | None:
    return None


@dataclass(slots=True)
class DirectUse:
    """What a call outside a response used, filled in while it runs."""

    input_tokens: int = 0
    output_tokens: int = 0
    # Model calls the caller made itself (a summary), beside those counted inside tools.
    model_calls: int = 0
    status: str = "completed"
    calls: list[ModelCall] = field(default_factory=list)


@dataclass(slots=True)
class Gate:
    access: Access
    accounting: Accounting
    # A Genie space's own SQL model, when it sets one (otherwise the run's model writes the SQL).
    space_model: Callable[[str], str | None] = _no_space_model

    def check(self, principal: Principal, model: str, specs: Iterable[ToolSpec]) -> None:
        """403 naming the model or the first tool entry ``principal`` may not use."""
        named: list[tuple[str, str, str]] = []
        for spec in specs:
            found = target(spec)
            if found is None:
                continue
            named.append((spec.param, found.kind, found.name))
            own = self.space_model(found.name) if found.kind == "genie_space" else None
            if own is not None:
                named.append((spec.param, "model", own))
        self.access.grants.check_request(principal, model, named)

    def check_space(self, principal: Principal, space_id: str, model: str | None) -> None:
        """A space the caller may not run does not exist for them (404); its SQL model needs CAN_QUERY."""
        grants = self.access.grants
        if not grants.may(principal, f"genie_space:{space_id}"):
            raise NotFound(f"Genie space '{space_id}' does not exist.", param="space_id")
        if model is not None and not grants.may(principal, f"model:{model}"):
            raise Forbidden(f"You do not have CAN_QUERY on model '{model}', which this space writes its SQL with.",
                            param="space_id")

    def check_model(self, principal: Principal, model: str) -> None:
        if not self.access.grants.may(principal, f"model:{model}"):
            raise Forbidden(f"You do not have CAN_QUERY on model '{model}'.", param="model")

    @contextlib.asynccontextmanager
    async def direct(self, principal: Principal, model: str, mode: str) -> AsyncIterator[DirectUse]:
        """Admit one call to ``model`` outside a response (429 over a rate limit), count the model calls
        made inside, and record its usage when it ends."""
        started, began = time.perf_counter(), time.time()
        use = DirectUse()
        async with self.accounting.admission(principal, model) as ticket:
            with counting_model_calls() as use.calls:
                try:
                    yield use
                except BaseException:
                    use.status = "failed"
                    raise
                finally:
                    self.accounting.direct(_usage_row(principal, model, mode, use, began,
                                                      time.perf_counter() - started), ticket)


def _usage_row(principal: Principal, model: str, mode: str, use: DirectUse, began: float,
               seconds: float) -> dict[str, Any]:
    tool_in = sum(int(c["input_tokens"]) for c in use.calls)
    tool_out = sum(int(c["output_tokens"]) for c in use.calls)
    return {"response_id": f"{mode}_{uuid.uuid4().hex}", "principal": principal.name, "model": model,
            "day": time.strftime("%Y-%m-%d", time.gmtime(began)), "created_at": int(began), "mode": mode,
            "status": use.status, "input_tokens": use.input_tokens, "output_tokens": use.output_tokens,
            "model_calls": use.model_calls, "tool_calls": 0, "latency_ms": int(seconds * 1000),
            "tool_input_tokens": tool_in, "tool_output_tokens": tool_out, "calls": orjson.dumps(use.calls).decode()}
