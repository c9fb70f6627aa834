"""What every step of a run can see: who is calling, which response it is, and the request."""

from __future__ import annotations

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
