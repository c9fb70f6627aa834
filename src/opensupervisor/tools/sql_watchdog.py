"""One thread that stops queries at their deadline, whatever the query is doing.

A progress handler or a timeout inside the engine only helps when the engine checks it; the
watchdog calls the connection's own stop (``sqlite3.Connection.interrupt``, DuckDB's
``interrupt``, psycopg's ``cancel_safe``) from outside, so the query's thread really returns.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable


class Watchdog:
    """Calls each armed ``stop`` at its deadline unless it was disarmed first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, stop: Callable[[], None]) -> int:
        with self._cond:
            token = next(self._ids)
            self._armed[token] = stop
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sql-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        """After this returns, the token's ``stop`` is not running and never will (it runs under the
        same lock), so a pooled connection is never stopped in its next query."""
        with self._cond:
            self._armed.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                stop = self._armed.pop(token)
                with contextlib.suppress(Exception):  # a connection already closed has nothing to stop
                    stop()


WATCHDOG = Watchdog()
