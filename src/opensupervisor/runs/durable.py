"""Durable execution of background runs: DBOS workflows, steps recorded in the store.

A background response runs as a DBOS workflow whose id is the response id, started by the process
that takes the run (``runs.dispatch``); when that process dies, DBOS runs it again in another process
(or the same one restarted). Every model call and every hosted tool call (and each tool listing) is a step of the run
(``runs.checkpoints``), recorded in the store with the run's own writes: a resumed run gets each
finished step's output instead of calling the model or the tool a second time. The loop is the same
loop as everywhere else; only its model and its toolsets are wrapped here (``DurableModel``,
``DurableCalls``, ``RecordedListing``).

DBOS keeps one instance per process. ``DurableEngine`` owns it and serves every app of the process
(production runs one; tests run several), which register as runners.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SetWorkflowID
from dbos._core import WorkflowHandleAsyncTask
from dbos._dbos import _get_dbos_instance

from opensupervisor import __version__
from opensupervisor.core.contracts import (
    Model,
    ModelEvent,
    ModelRequest,
    ToolDef,
    Toolset,
    WrapperModel,
    WrapperToolset,
)
from opensupervisor.core.loop import CANCELLED, not_run
from opensupervisor.engines import WAL, engine_url, sqlite_engine
from opensupervisor.errors import ConfigError, ModelError
from opensupervisor.runs.checkpoints import OUTCOME, TEXT, TOOLS, Outcome, Steps
from opensupervisor.store.ownership import CallClaim

if TYPE_CHECKING:
    from opensupervisor.core.context import RunContext

log = logging.getLogger(__name__)
WORKFLOW = "opensupervisor.background_response"
# The DBOS queue of runs recovered from a dead process; looked at once a second (recovery is rare).
RECOVERED = "opensupervisor-recovered"
RECOVERED_POLL_S = 1.0
# DBOS only recovers a workflow with the application version that started it. Runs survive a
# restart or redeploy of the same release; a new release does not replay an older one's runs, nor
# one recorded in another step format.
STEP_FORMAT = 2
APP_VERSION = f"opensupervisor-{__version__}-steps{STEP_FORMAT}"
# Connections per process to DBOS's database (its default of 20 exhausts PostgreSQL's 100 at five processes).
SYSTEM_POOL_SIZE = 6


class DurableModel(WrapperModel):
    """A model whose every call is one step, streamed live while it runs.

    The call runs in a task that feeds its events to the loop as they come and returns them all as
    the step's result. A resumed run gets that result at once and never asks the model again.
    ``in_flight`` tells the recorder that what the loop has seen of this call is not final yet.
    """

    def __init__(self, inner: Model, steps: Steps) -> None:
        super().__init__(inner)
        self.steps = steps
        self.in_flight = False

    def holding(self) -> bool:
        return self.in_flight

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        live: asyncio.Queue[ModelEvent | None] = asyncio.Queue()

        async def call() -> Outcome:
            outcome = Outcome([])
            try:
                async with aclosing(self.inner.request_stream(request)) as stream:
                    async for model_event in stream:
                        outcome.events.append(model_event)
                        live.put_nowait(model_event)
            except ModelError as exc:  # recorded as data: a resumed run fails the same way
                outcome.error = (exc.code, exc.message, exc.retryable)
            return outcome

        self.in_flight = True
        task = asyncio.ensure_future(self.steps("model", call, OUTCOME))
        task.add_done_callback(lambda _: live.put_nowait(None))
        seen = 0
        try:
            while (model_event := await live.get()) is not None:
                seen += 1
                yield model_event
            outcome = task.result()
            self.in_flight = False
            for model_event in outcome.events[seen:]:  # all of them when the step was replayed
                yield model_event
            if outcome.error is not None:
                code, message, retryable = outcome.error
                raise ModelError(message, code=code, retryable=retryable)
        finally:
            self.in_flight = False
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)



# Claims the hosted call of the step in flight before it runs; raises ``RunSuperseded`` when the
# run is no longer this process's (``store.ownership``).
CallFence = Callable[[], Awaitable[CallClaim]]
CLAIMED_ELSEWHERE = ("This call was started by another server process that may have run it, so it was not run "
                     "again; its outcome is unknown.")
RUN_STOPPED = not_run(CANCELLED)


class DurableCalls(WrapperToolset):
    """A toolset whose every call is one step: a resumed run gets the recorded output (the work of
    the wrappers inside, its span and its timeout, included) and never calls the tool again.

    A step still in flight in a process taken for dead is not finished, so the process that resumed
    the run would run it a second time; ``fence`` claims each call first, inside its step (a
    replayed step claims nothing), and refuses a call another live process claimed, or one of a
    run cancelled meanwhile."""

    def __init__(self, inner: Toolset, steps: Steps, fence: CallFence | None = None) -> None:
        super().__init__(inner)
        self.steps = steps
        self.fence = fence

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        async def call() -> str:
            claim = "claimed" if self.fence is None else await self.fence()
            if claim == "elsewhere":
                return CLAIMED_ELSEWHERE
            if claim == "stopped":  # the run's next write finds it cancelled and ends it
                return RUN_STOPPED
            return await self.inner.call_tool(ctx, name, arguments)

        return await self.steps(f"tool:{name}", call, TEXT, effect=True)


class RecordedListing(WrapperToolset):
    """A toolset whose listing is one step when it may change (a remote server's): a resumed run,
    and every wrapper above this one, sees the tools the run saw before."""

    def __init__(self, inner: Toolset, steps: Steps, tool_type: str) -> None:
        super().__init__(inner)
        self.steps = steps
        self.tool_type = tool_type

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        if not self.listing_may_change:
            return await self.inner.list_tools(ctx)
        return await self.steps(f"list_tools:{self.tool_type}", lambda: self.inner.list_tools(ctx), TOOLS)


class Runner(Protocol):
    """An app's side of the workflow: run the stored response, if it is one of this app's."""

    async def run_durable(self, response_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    system_database_url: str
    schema: str = "dbos"
    worker_concurrency: int = 16
    # PostgreSQL: whether DBOS's workflow records wait for the disk (see the README's guarantees).
    synchronous_commit: bool = True


class DurableEngine:
    """The process's DBOS instance: launched by the first app that attaches, destroyed with the last."""

    def __init__(self) -> None:
        self.runners: list[Runner] = []
        self.config: EngineConfig | None = None
        self.executor_id = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._lock = asyncio.Lock()

    @property
    def pool(self) -> str:
        """Names the system database: executors recover each other only within one pool."""
        assert self.config is not None
        key = f"{self.config.system_database_url}#{self.config.schema}"
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    async def attach(self, runner: Runner, config: EngineConfig) -> None:
        async with self._lock:
            if not self.runners:
                self._launch(config)
                await DBOS.register_queue_async(RECOVERED, worker_concurrency=max(config.worker_concurrency, 1),
                                                polling_interval_sec=RECOVERED_POLL_S, on_conflict="always_update")
            self.runners.append(runner)

    def _launch(self, config: EngineConfig) -> None:
        self.config = config
        dbos_config: DBOSConfig = {
            "name": "opensupervisor", "system_database_url": config.system_database_url,
            "application_version": APP_VERSION, "executor_id": self.executor_id, "log_level": "WARNING",
            "dbos_system_schema": config.schema, "sys_db_pool_size": SYSTEM_POOL_SIZE,
        }
        if config.system_database_url.startswith("sqlite"):
            dbos_config["system_database_engine"] = _sqlite_engine(config.system_database_url)
        else:
            # No ping before each checkout (DBOS's default; four per step): DBOS retries an operation
            # whose connection turned out dead until the database answers again. Given connect_args
            # replace DBOS's own, so its application name is kept here.
            connect_args = {"application_name": "dbos_transact"}
            if not config.synchronous_commit:
                connect_args["options"] = "-c synchronous_commit=off"
            dbos_config["db_engine_kwargs"] = {"pool_pre_ping": False, "connect_args": connect_args}
        try:
            DBOS(config=dbos_config)
            # New runs wait in the store's queue (``runs.dispatch``); DBOS's queue only hands out
            # recovered ones, to the processes that run runs.
            if config.worker_concurrency <= 0:
                DBOS.listen_queues([])
            DBOS.launch()  # on this loop: DBOS then runs workflows on it too
        except Exception as exc:
            DBOS.destroy(destroy_registry=False)
            raise ConfigError(f"cannot start durable execution on {config.system_database_url}: {exc}") from exc

    async def detach(self, runner: Runner) -> None:
        async with self._lock:
            self.runners.remove(runner)
            if not self.runners:
                await asyncio.to_thread(DBOS.destroy, destroy_registry=False, workflow_completion_timeout_sec=0)
                self.config = None

    async def start(self, response_id: str) -> bool:
        """Start the run's workflow now, in this process; False when it was started before (DBOS runs
        a workflow only for the start that created it), so it does not run here."""
        with SetWorkflowID(response_id):
            handle = await DBOS.start_workflow_async(background_response, response_id)
        return isinstance(handle, WorkflowHandleAsyncTask)

    async def cancel(self, response_id: str) -> None:
        await DBOS.cancel_workflow_async(response_id)

    async def state(self, response_id: str) -> str | None:
        """The DBOS status of a response's workflow (PENDING, ENQUEUED, SUCCESS, …), None when there is
        none, and ``OTHER_RELEASE`` for an unfinished one that another release started (never resumed here)."""
        status = await DBOS.get_workflow_status_async(response_id)
        return None if status is None else _state(str(status.status), status.app_version)

    async def states(self, response_ids: list[str]) -> dict[str, str]:
        """``state`` of many responses in one query; those with no workflow are left out."""
        found = await DBOS.list_workflows_async(workflow_ids=response_ids, load_input=False, load_output=False)
        return {w.workflow_id: _state(str(w.status), w.app_version) for w in found}

    async def recover(self, executor_id: str) -> int:
        """Hand the unfinished runs of a dead executor to whichever live process that runs runs
        dequeues them first (DBOS's own recovery would queue them for every process, servers that
        only accept runs included)."""
        def hand_over() -> int:
            system = _get_dbos_instance()._sys_db
            pending = system.get_pending_workflows(executor_id, APP_VERSION)
            return sum(system.reenqueue_for_recovery(w.workflow_id, [executor_id], RECOVERED) for w in pending)

        return await asyncio.to_thread(hand_over)

    async def forget_finished(self, before_ms: int, *, limit: int = 500) -> int:
        """Delete the workflow records of runs that ended before ``before_ms`` (their responses keep everything)."""
        cutoff = datetime.datetime.fromtimestamp(before_ms / 1000, tz=datetime.UTC).isoformat()
        done = await DBOS.list_workflows_async(status=["SUCCESS", "ERROR", "CANCELLED"], name=WORKFLOW,
                                               end_time=cutoff, limit=limit, load_input=False, load_output=False)
        ids = [w.workflow_id for w in done]
        if ids:
            await DBOS.delete_workflows_async(ids)
        return len(ids)

    async def run(self, response_id: str) -> None:
        for runner in list(self.runners):
            if await runner.run_durable(response_id):
                return
        log.warning("background response %s is not in any store of this process; nothing to run", response_id)


ENGINE = DurableEngine()


def _state(status: str, app_version: str | None) -> str:
    return "OTHER_RELEASE" if status in ("PENDING", "ENQUEUED") and app_version != APP_VERSION else status


@DBOS.workflow(name=WORKFLOW)
async def background_response(response_id: str) -> None:
    await ENGINE.run(response_id)


def system_database_url(store_url: str, override: str | None) -> str:
    """DBOS's own database: given, else beside the store (a sibling SQLite file, or the same PostgreSQL)."""
    if override:
        return override
    url = sa.make_url(engine_url(store_url))
    if url.get_backend_name() == "sqlite":
        db = url.database or ""
        if not db or db == ":memory:":
            raise ConfigError("background runs need a file or server database, not an in-memory SQLite one")
        base, _, _ = db.rpartition(".") if "." in os.path.basename(db) else (db, "", "")
        return f"sqlite:///{base}.dbos.db"
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_engine(url: str) -> sa.Engine:
    """DBOS's SQLite engine with WAL: commits do not wait for the disk (measured: 50x faster here).
    Writers serialize up front (``IMMEDIATE``), as in DBOS's own engine."""
    return sqlite_engine(url, pragmas=(*WAL, "busy_timeout=30000", "foreign_keys=ON"), isolation_level="IMMEDIATE")
