"""Housekeeping of background runs, in every process that serves or runs them.

- Executors: this process beats its heartbeat on a thread of its own, from before any start-up
  work, so neither a backlog to reconcile nor an event loop held up by a long call makes a live
  process look dead; when another executor of the same pool died (its
  heartbeat went quiet, or on this host its process is gone) its unfinished runs are handed to DBOS
  recovery, which re-queues them for whichever live process takes them first, and its foreground
  responses (streamed to a client that is gone with it) are failed with a reason. One on this host
  whose process still exists (stopped, or stalled) stays registered: the hosted calls it claimed
  are not run again by the processes its runs go to.
- Reconciliation: a response taken by a process whose workflow never started (the process died
  between taking it and starting it) goes back to the queue; one whose workflow will never run
  again (it ended without recording the response's end, or another release started it) is failed
  with a reason.
- Retention: finished background responses older than the retention period are purged, the
  workflow records of finished runs soon after they end (the response keeps everything), and
  idempotency keys past their lifetime.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass

from opensupervisor import metrics
from opensupervisor.runs.background import WILL_RUN
from opensupervisor.runs.durable import DurableEngine
from opensupervisor.store import Store
from opensupervisor.store.executors import Executor, Executors, QuietRun
from opensupervisor.store.idempotency import IdempotencyKeys
from opensupervisor.store.ownership import forget_steps
from opensupervisor.store.run_queue import RunQueue

log = logging.getLogger(__name__)
BEAT_S = 1.0
RECONCILE_S = 10.0
# Quiet runs looked at per reconciliation round (each needs a workflow lookup), read a page at a time.
RECONCILE_LIMIT = 500
RECONCILE_PAGE = 100
# Workflow records are only needed while a run may resume; keep them an hour for inspection.
KEEP_WORKFLOWS_S = 3600.0
LOST = "The run of this response stopped and cannot be resumed."
OTHER_RELEASE = "The run of this response was started by another release of the server and cannot be resumed."
STOPPED = "The server stopped while answering this response."


@dataclass(frozen=True, slots=True)
class Housekeeping:
    executor_timeout_s: float = 10.0
    retention_s: float = 30 * 86400.0
    purge_interval_s: float = 3600.0


class Heartbeat:
    """This executor's heartbeat, on a daemon thread with its own short transactions: it goes on
    while the event loop is blocked (a long synchronous call, a slow start-up)."""

    def __init__(self, executors: Executors, engine: DurableEngine) -> None:
        self.executors = executors
        self.engine = engine
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Register and beat once before returning, then every ``BEAT_S`` on the thread."""
        self._register()
        self._thread = threading.Thread(target=self._run, name="executor-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _register(self) -> None:
        self.executors.register_now(self.engine.executor_id, self.engine.host, self.engine.pid)

    def _run(self) -> None:
        while not self._stopped.wait(BEAT_S):
            try:
                if not self.executors.beat_now(self.engine.executor_id):
                    # Taken for dead after a long pause: register again, or nobody would notice its end.
                    # Its runs went to other processes meanwhile; their fencing stops its own copies.
                    log.warning("executor %s was taken for dead; registering it again", self.engine.executor_id)
                    self._register()
            except Exception:  # the heartbeat must outlive a database hiccup
                log.exception("executor heartbeat failed; retrying in %.0f s", BEAT_S)


class Maintenance:
    def __init__(self, store: Store, engine: DurableEngine, config: Housekeeping) -> None:
        self.store = store
        self.engine = engine
        self.config = config
        self.executors = Executors(store, engine.pool)
        self.queue = RunQueue(store, engine.executor_id, engine.pool)
        self.heartbeat = Heartbeat(self.executors, engine)
        self._tasks: list[asyncio.Task[None]] = []
        self._reconciled_to = ""  # where the next reconciliation round starts

    async def start(self) -> None:
        """Beat first; start-up recovery and reconciliation then run in the background."""
        await asyncio.to_thread(self.heartbeat.start)
        self._tasks = [asyncio.create_task(self._start_up()),
                       asyncio.create_task(self._every(BEAT_S, self.recover_dead)),
                       asyncio.create_task(self._every(self.config.purge_interval_s, self.purge))]

    async def _start_up(self) -> None:
        try:
            await self.recover_dead()
            while await self.reconcile():  # the whole backlog once, a round at a time
                pass
        except Exception:
            log.exception("start-up housekeeping failed; it goes on every %.0f s", RECONCILE_S)
        await self._every(RECONCILE_S, self.reconcile)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.heartbeat.stop)

    async def _every(self, interval_s: float, job: object) -> None:
        assert callable(job)
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception:  # housekeeping must outlive a database hiccup
                log.exception("background housekeeping failed; retrying in %.0f s", interval_s)

    async def recover_dead(self) -> int:
        """Recover the runs of executors that died; returns how many runs were handed over."""
        recovered = 0
        for executor in await self.executors.others(self.engine.executor_id):
            if not self._dead(executor):
                continue
            count = await self.engine.recover(executor.id)
            if count:
                log.warning("executor %s stopped; %d of its background runs resume elsewhere", executor.id, count)
            # Nothing can resume a foreground run: its client was connected to the process that died.
            foreground = await self.executors.foreground_of(executor.id)
            if foreground:
                failed = await self.store.fail(foreground, STOPPED)
                log.warning("executor %s stopped; %d of its responses in progress failed", executor.id, failed)
            recovered += count
            if self._stalled_here(executor):
                # Stopped or stalled, not dead: it stays registered, so a hosted call it claimed (it
                # may be in the middle of it) is not run again elsewhere; its runs go on elsewhere.
                continue
            await self.executors.remove(executor.id)
        return recovered

    def _stalled_here(self, executor: Executor) -> bool:
        return executor.host == self.engine.host and executor.pid != self.engine.pid and _alive(executor.pid)

    def _dead(self, executor: Executor) -> bool:
        if time.time() * 1000 - executor.heartbeat_at > self.config.executor_timeout_s * 1000:
            return True
        return executor.host == self.engine.host and executor.pid != self.engine.pid and not _alive(executor.pid)

    async def reconcile(self) -> bool:
        """One round: up to ``RECONCILE_LIMIT`` quiet runs from where the last round stopped. True
        when more remain (the next round goes on from there)."""
        metrics.QUEUED.set(await self.executors.count_queued())
        quiet_ms = int(self.config.executor_timeout_s * 1000)
        seen = 0
        while seen < RECONCILE_LIMIT:
            page = await self.executors.quiet_runs(quiet_ms, after=self._reconciled_to, limit=RECONCILE_PAGE)
            states = await self.engine.states([run.id for run in page]) if page else {}
            for run in page:
                await self._reconcile_one(run, states.get(run.id))
            seen += len(page)
            if len(page) < RECONCILE_PAGE:
                self._reconciled_to = ""
                return False
            self._reconciled_to = page[-1].id
        return True

    async def _reconcile_one(self, run: QuietRun, state: str | None) -> None:
        if state in WILL_RUN:
            return
        if state is None:  # taken, but its workflow never started, so no step ever ran: queue it again
            if await self.queue.release(run.id, run.taken_by):
                log.warning("background response %s (%s) was taken by %s and never started; queueing it again",
                            run.id, run.status, run.taken_by)
        else:
            await self.store.fail([run.id], OTHER_RELEASE if state == "OTHER_RELEASE" else LOST)

    async def purge(self) -> None:
        now = time.time()
        purged = await self.store.purge(int(now - self.config.retention_s))
        forgotten = await self.engine.forget_finished(
            int((now - min(self.config.retention_s, KEEP_WORKFLOWS_S)) * 1000))
        steps = await forget_steps(self.store)
        keys = await IdempotencyKeys(self.store).purge()
        if purged or forgotten or steps or keys:
            log.info("retention: purged %d background responses, %d finished run records, the steps of %d ended "
                     "runs and %d idempotency keys", purged, forgotten, steps, keys)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user
    return True
