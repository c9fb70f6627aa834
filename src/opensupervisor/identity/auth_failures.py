"""Failed authentication: counted, logged and, per client address, slowed down.

Every request refused for its credentials counts in ``opensupervisor_auth_failures_total{reason}``
and is logged at WARNING with the client address and the reason (never the token). After
``[auth] max_failures_per_minute`` failures from one address within a minute, that address's
requests without valid credentials get ``429`` with ``Retry-After`` until the oldest failure leaves
the window. Valid credentials (the bootstrap admin's included) are never refused here: they are
resolved before this module is asked, so a client behind the same address keeps working.

The window is kept per process: with several processes an address gets up to the limit in each.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from opensupervisor.errors import APIError, RateLimited, Unauthorized
from opensupervisor.metrics import AUTH_FAILURES

log = logging.getLogger("opensupervisor.server.auth")
WINDOW_S = 60.0
# Addresses remembered at once; past it the one that failed least recently is forgotten first.
MAX_ADDRESSES = 4096


@dataclass(slots=True)
class AuthFailure:
    """Why a request's credentials do not count: the error to answer and its metric reason."""

    error: Unauthorized
    reason: str  # missing, malformed, unknown, expired, revoked
    refusal: APIError | None = field(default=None)  # what this request was answered, once decided


class FailedAuth:
    """The failures of each client address in the last minute, and who is blocked."""

    def __init__(self, max_per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.max_per_minute = max_per_minute
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def refuse(self, address: str, failure: AuthFailure) -> APIError:
        """The error for a request whose credentials failed; counted once per request."""
        if failure.refusal is not None:
            return failure.refusal
        wait = self.blocked_for(address)
        if wait is not None:
            AUTH_FAILURES.labels("blocked").inc()
            failure.refusal = RateLimited(
                f"Too many failed authentication attempts from this address; retry after {wait:.0f} seconds.",
                retry_after_s=wait, code="too_many_auth_failures")
            return failure.refusal
        AUTH_FAILURES.labels(failure.reason).inc()
        log.warning("authentication failed from %s: %s credentials", address, failure.reason)
        if self._record(address):
            log.warning("authentication from %s is refused for up to %.0f s: %d failures within a minute",
                        address, WINDOW_S, self.max_per_minute)
        failure.refusal = failure.error
        return failure.refusal

    def blocked_for(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may now."""
        times = self._failures.get(address)
        if self.max_per_minute <= 0 or times is None or len(times) < self.max_per_minute:
            return None
        wait = times[0] + WINDOW_S - self.clock()
        return wait if wait > 0 else None

    def _record(self, address: str) -> bool:
        """Count one failure; true when it is the one that reaches the limit."""
        if self.max_per_minute <= 0:
            return False
        now = self.clock()
        times = self._failures.get(address)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
            times = self._failures[address] = deque(maxlen=self.max_per_minute)
        else:
            self._failures.move_to_end(address)
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        times.append(now)
        return len(times) == self.max_per_minute
