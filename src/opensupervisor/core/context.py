"""What every step of a run can see: who is calling, which response it is, and the request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from opensupervisor.identity import Principal
from opensupervisor.wire.request import ParsedRequest

T = TypeVar("T")


@dataclass(frozen=True, slots=True, eq=False)
class Slot(Generic[T]):
    """A typed place for a toolset's per-run state (a cache, a counter, open sessions): ``name``
    for reading it in a debugger, ``make`` for its value the first time a run asks."""

    name: str
    make: Callable[[], T]


@dataclass(slots=True)
class RunContext:
    response_id: str
    principal: Principal
    request: ParsedRequest
    # Toolsets' per-run state (caches, conversation ids …) by ``Slot``; never the loop's (``slot``).
    state: dict[Slot[Any], Any] = field(default_factory=dict)
    # The conversation before this run (earlier responses of the chain and the new input), read-only:
    # for toolsets that keep state with a remote service across a chain (a Genie conversation).
    history: list[dict[str, Any]] = field(default_factory=list)
    # What to release when the run ends (sessions a toolset kept open for the run's calls).
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def slot(self, slot: Slot[T]) -> T:
        """This run's value of ``slot`` (made on first use)."""
        if slot not in self.state:
            self.state[slot] = slot.make()
        return cast(T, self.state[slot])

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        self.closers.append(closer)

    async def close(self) -> None:
        closers, self.closers = self.closers, []
        for closer in reversed(closers):
            try:
                await closer()
            except Exception:  # one failing release must not keep the others
                logging.getLogger(__name__).exception("releasing a resource of run %s failed", self.response_id)
