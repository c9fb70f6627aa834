"""What every step of a run can see: who is calling, which response it is, and the request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from opensupervisor.identity import Principal
from opensupervisor.wire.request import ParsedRequest


@dataclass(slots=True)
class RunContext:
    response_id: str
    principal: Principal
    request: ParsedRequest
    # Free slots for toolsets and wrappers (per-run caches, conversation ids …), never for the loop.
    state: dict[str, Any] = field(default_factory=dict)
    # The conversation before this run (earlier responses of the chain and the new input), read-only:
    # for toolsets that keep state with a remote service across a chain (a Genie conversation).
    history: list[dict[str, Any]] = field(default_factory=list)
    # What to release when the run ends (sessions a toolset kept open for the run's calls).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self.closers.append(closer)

    async def close(self) -> None:
        closers, self.closers = self.closers, []
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:  # one failing release must not keep the others
                logging.getLogger(__name__).exception("releasing a resource of run %s failed", self.response_id)
