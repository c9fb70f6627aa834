"""Assembling a running instance from settings and a workspace: what ``serve`` and ``worker`` share.

Every resource joins one exit stack as soon as it exists, so the instance comes apart in the reverse
of the order it was built in, and a failure halfway through releases exactly what was built so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from opensupervisor import __version__
from opensupervisor.admin.connections import connection_rows
from opensupervisor.core.approval import ApprovalSigner
from opensupervisor.core.loop import LoopLimits
from opensupervisor.demo import token as demo_token
from opensupervisor.errors import ConfigError
from opensupervisor.identity.auth_failures import FailedAuth
from opensupervisor.identity.grants import Access
from opensupervisor.identity.limits import Counters, RateLimiter
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs.accounting import Accounting
from opensupervisor.runs.assemble import RunDeps
from opensupervisor.runs.compaction import Compactor
from opensupervisor.runs.conversations import ConversationService
from opensupervisor.runs.dispatch import Dispatcher
from opensupervisor.runs.durable import ENGINE, EngineConfig, system_database_url
from opensupervisor.runs.gate import Gate
from opensupervisor.runs.inference_tables import InferenceTables, TableConfig
from opensupervisor.runs.maintenance import Housekeeping, Maintenance
from opensupervisor.runs.service import BackgroundLimits, ResponseService
from opensupervisor.runs.traces import RunTraces
from opensupervisor.settings import Settings
from opensupervisor.store import Store
from opensupervisor.store.approvals import IssuedApprovals
from opensupervisor.store.connections import StoredConnections
from opensupervisor.store.conversations import Conversations
from opensupervisor.store.credentials import UserCredentials
from opensupervisor.store.functions import RegisteredFunctions
from opensupervisor.store.grants import StoredGrants
from opensupervisor.store.keys import shared_key
from opensupervisor.store.principals import Principals
from opensupervisor.store.rate_limits import DatabaseCounters, StoredRateLimits
from opensupervisor.store.run_queue import RunQueue
from opensupervisor.store.usage import Usage
from opensupervisor.tools import apps, connections, genie, knowledge_assistant, mcp_tool, uc_functions
from opensupervisor.tools.registry import ToolRegistry, load_plugins
from opensupervisor.tracing.export import exporters_from_env
from opensupervisor.tracing.spans import Recording, Tracing
from opensupervisor.tracing.tables import TraceStore
from opensupervisor.vault import Vault
from opensupervisor.workspace import Workspace

log = logging.getLogger(__name__)
ToolSetup = Callable[[ToolRegistry], None]
REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class Runtime:
    """A running instance; the server's routes read it as ``request.app.state.os``."""

    settings: Settings
    workspace: Workspace
    store: Store
    catalog: ModelCatalog
    service: ResponseService
    spaces: genie.GenieSpaces
    functions: uc_functions.FunctionCatalog
    registered: RegisteredFunctions
    connections: connections.Connections
    stored_connections: StoredConnections
    assistants: knowledge_assistant.KnowledgeAssistants
    principals: Principals
    access: Access
    stored_grants: StoredGrants
    usage: Usage
    limiter: RateLimiter
    stored_limits: StoredRateLimits
    credentials: UserCredentials
    # The bootstrap admin's token; empty where nothing answers HTTP (a worker), which no caller can
    # present, since a request without a token never reaches the comparison.
    admin_token: str
    vault: Vault
    started_at: int  # seconds since the epoch; the ``created`` time of the models listed
    auth_failures: FailedAuth


@dataclass(frozen=True, slots=True)
class _Tools:
    registry: ToolRegistry
    spaces: genie.GenieSpaces
    assistants: knowledge_assistant.KnowledgeAssistants
    functions: uc_functions.FunctionCatalog
    registered: RegisteredFunctions
    connections: connections.Connections
    stored_connections: StoredConnections
    credentials: UserCredentials


@dataclass(frozen=True, slots=True)
class _Governance:
    access: Access
    stored_grants: StoredGrants
    usage: Usage
    limiter: RateLimiter
    stored_limits: StoredRateLimits


@contextlib.asynccontextmanager
async def running(settings: Settings, ws: Workspace, tool_setup: ToolSetup | None = None, *,
                  admin_token: str = "") -> AsyncIterator[Runtime]:
    """Migrate the store, build the catalog and tools, join durable execution; undo it all on exit."""
    async with contextlib.AsyncExitStack() as stack:
        store = await _store(stack, settings, ws)
        catalog = ModelCatalog(ws)
        stack.push_async_callback(catalog.aclose)
        vault = Vault.load(settings.data_dir)
        tools = await _tools(stack, settings, ws, store, catalog, vault, tool_setup)
        governance = await _governance(stack, settings, ws, store)
        concurrency = ws.background.worker_concurrency if settings.worker_concurrency is None \
            else settings.worker_concurrency
        service = await _service(stack, settings, ws, store, catalog, vault, tools, governance, concurrency)
        await _join_engine(stack, settings, ws, store, service, concurrency)
        rt = Runtime(settings=settings, workspace=ws, store=store, catalog=catalog, service=service,
                     spaces=tools.spaces, functions=tools.functions, registered=tools.registered,
                     connections=tools.connections, stored_connections=tools.stored_connections,
                     assistants=tools.assistants, principals=Principals(store), access=governance.access,
                     stored_grants=governance.stored_grants, usage=governance.usage, limiter=governance.limiter,
                     stored_limits=governance.stored_limits, credentials=tools.credentials,
                     admin_token=admin_token, vault=vault, started_at=int(time.time()),
                     auth_failures=FailedAuth(ws.auth.max_failures_per_minute))
        _start_background(stack, rt)
        yield rt


async def _store(stack: contextlib.AsyncExitStack, settings: Settings, ws: Workspace) -> Store:
    store = Store(settings.database_url)
    # Closed last: everything built after it may still write to it while it comes apart.
    stack.push_async_callback(store.close)
    await store.migrate()
    # Before the apps and connections that send it are built.
    await demo_token.settle(ws, lambda: shared_key(store, "demo_servers"))
    return store


async def _tools(stack: contextlib.AsyncExitStack, settings: Settings, ws: Workspace, store: Store,
                 catalog: ModelCatalog, vault: Vault, tool_setup: ToolSetup | None) -> _Tools:
    """The hosted tool kinds, in the order they register (the mcp tool builds on connections; the
    Databricks routes, plugins and ``tool_setup`` come last so that they may replace a kind)."""
    registry = ToolRegistry(ws)
    spaces = genie.register(registry, ws, catalog)
    stack.push_async_callback(spaces.aclose)
    assistants = knowledge_assistant.register(registry, ws, catalog, settings.knowledge_database_url)
    stack.push_async_callback(assistants.aclose)
    functions = uc_functions.register(registry, ws, settings.data_dir / "functions")
    stack.push_async_callback(functions.aclose)
    app_tools = apps.register(registry, ws, settings.self_url)
    stack.push_async_callback(app_tools.aclose)
    conns = connections.register(registry, ws, settings.self_url)
    mcp_tool.register(registry, ws)
    registered = RegisteredFunctions(store)
    functions.load(await registered.all())
    credentials = conns.credentials = UserCredentials(store, vault)
    stored_connections = StoredConnections(store, vault)
    conns.load(connection_rows(await stored_connections.all()))
    if ws.databricks is not None:
        from opensupervisor.tools import databricks  # its routes and client: only a workspace with [databricks]

        remote = databricks.register(registry, ws, credentials, await shared_key(store, "databricks"))
        if remote is not None:
            stack.push_async_callback(remote.aclose)
    load_plugins(registry, ws.plugins)
    if tool_setup is not None:
        tool_setup(registry)
    return _Tools(registry, spaces, assistants, functions, registered, conns, stored_connections, credentials)


async def _governance(stack: contextlib.AsyncExitStack, settings: Settings, ws: Workspace,
                      store: Store) -> _Governance:
    """Who may use what (grants), what they used, and how fast they may go (rate limits)."""
    access = Access(ws.access.grants, ws.access.default)
    stored_grants = StoredGrants(store)
    access.load(await stored_grants.all())
    usage = Usage(store)
    stack.push_async_callback(usage.aclose)
    limiter = RateLimiter({name: entry.rate_limits for name, entry in ws.models.items()}, _counters(settings, store))
    stack.push_async_callback(limiter.aclose)
    stored_limits = StoredRateLimits(store)
    limiter.load(await stored_limits.all())
    return _Governance(access, stored_grants, usage, limiter, stored_limits)


async def _service(stack: contextlib.AsyncExitStack, settings: Settings, ws: Workspace, store: Store,
                   catalog: ModelCatalog, vault: Vault, tools: _Tools, governance: _Governance,
                   concurrency: int) -> ResponseService:
    """The response service and what it records into: traces, trace tables, inference tables."""
    registry, spaces = tools.registry, tools.spaces
    access, usage, limiter = governance.access, governance.usage, governance.limiter
    signer = ApprovalSigner(await shared_key(store, "mcp_approval"))
    tracing = Tracing(recording=Recording(ws.tracing.record_inputs, ws.tracing.record_outputs),
                      processors=exporters_from_env(), version=__version__)
    stack.callback(tracing.shutdown)
    trace_store = TraceStore(settings.data_dir / "traces", settings.trace_database_url,
                             max_destinations_per_principal=ws.tracing.max_destinations_per_principal)
    stack.push_async_callback(trace_store.aclose)
    inference = _inference_tables(settings, ws)
    if inference is not None:
        stack.push_async_callback(inference.aclose)
    # No response runs past the background run time: a hold older than that (and a minute) is void.
    conversations = ConversationService(store, Conversations(store, max_hold_s=ws.background.max_run_time_s + 60),
                                        Compactor(vault, summary_model(ws)))
    service = ResponseService(RunDeps(catalog, _loop_limits(ws), signer, store, conversations), registry, ENGINE,
                              vault,
                              gate=Gate(access, Accounting(usage, limiter, inference), spaces.own_model),
                              traces=RunTraces(tracing, trace_store),
                              approvals=IssuedApprovals(store, ws.limits.approval_lifetime_s),
                              background_limits=_background_limits(ws, concurrency))
    return service


async def _join_engine(stack: contextlib.AsyncExitStack, settings: Settings, ws: Workspace, store: Store,
                       service: ResponseService, concurrency: int) -> None:
    """Attach the service to durable execution and start housekeeping; on exit housekeeping stops,
    then the service, then the engine lets go of it."""
    await ENGINE.attach(service, _engine_config(settings, ws, concurrency))
    stack.push_async_callback(ENGINE.detach, service)
    # Closed here, not where it is built: closing stops its runs, whose steps need the engine.
    stack.push_async_callback(service.aclose)
    maintenance = Maintenance(store, ENGINE, _housekeeping(ws))
    await maintenance.start()
    stack.push_async_callback(maintenance.stop)
    if concurrency > 0:  # registered as an executor first: what it takes names this process
        dispatcher = Dispatcher(RunQueue(store, ENGINE.executor_id, ENGINE.pool), service.room, service.start_queued,
                                poll_interval_s=ws.background.poll_interval_s)
        service.background.wake = dispatcher.wake
        dispatcher.start()
        stack.push_async_callback(dispatcher.stop)


def _start_background(stack: contextlib.AsyncExitStack, rt: Runtime) -> None:
    """Tasks that run beside the instance; cancelled, and waited for, before anything else goes."""
    tasks = [
        asyncio.create_task(_watch_registered(
            rt.functions, rt.registered, rt.connections, rt.stored_connections,
            lambda: _reload_governance(rt.access, rt.stored_grants, rt.limiter, rt.stored_limits))),
        asyncio.create_task(rt.assistants.ingest_on_start()),
        asyncio.create_task(rt.spaces.inspect_all()),
    ]
    stack.push_async_callback(_cancel, tasks)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _watch_registered(catalog: uc_functions.FunctionCatalog, registered: RegisteredFunctions,
                            conns: connections.Connections, stored: StoredConnections,
                            governance: Callable[[], Awaitable[None]]) -> None:
    """Functions, connections, grants and rate limits changed through another process apply here
    within seconds."""
    while True:
        await asyncio.sleep(REFRESH_S)
        try:
            catalog.load(await registered.all())
            conns.load(connection_rows(await stored.all()))
            await governance()
        except Exception:  # a database hiccup: the next round retries
            log.exception("reloading the registered functions and connections failed")


async def _reload_governance(access: Access, stored_grants: StoredGrants, limiter: RateLimiter,
                             stored_limits: StoredRateLimits) -> None:
    access.load(await stored_grants.all())
    limiter.load(await stored_limits.all())


def _inference_tables(settings: Settings, ws: Workspace) -> InferenceTables | None:
    section = ws.inference_table
    if section is None or not section.enabled:
        return None
    config = TableConfig(section.catalog_name, section.schema_name, section.table_name_prefix or ws.name,
                         section.max_payload_bytes)
    return InferenceTables(config, settings.data_dir / "tables", settings.trace_database_url)


def _counters(settings: Settings, store: Store) -> Counters:
    if settings.redis_url:
        from opensupervisor.store.redis_counters import RedisCounters  # only deployments with Redis need it

        return RedisCounters(settings.redis_url)
    return DatabaseCounters(store)


def _loop_limits(ws: Workspace) -> LoopLimits:
    limits = ws.limits
    return LoopLimits(max_turns=limits.max_turns, tool_timeout_s=limits.tool_timeout_s,
                      max_tool_output_chars=limits.max_tool_output_chars,
                      max_output_chars=limits.max_output_chars,
                      max_tool_arguments_chars=limits.max_tool_arguments_chars,
                      max_hosted_calls_per_turn=limits.max_hosted_calls_per_turn,
                      max_hosted_calls_per_response=limits.max_hosted_calls_per_response)


def _background_limits(ws: Workspace, concurrency: int) -> BackgroundLimits:
    bg = ws.background
    return BackgroundLimits(max_queued=bg.max_queued, max_run_time_s=bg.max_run_time_s,
                            worker_concurrency=concurrency, idempotency_keys_ttl_s=bg.idempotency_keys_ttl_s)


def _engine_config(settings: Settings, ws: Workspace, concurrency: int) -> EngineConfig:
    return EngineConfig(system_database_url(settings.database_url, settings.system_database_url),
                        schema=settings.system_schema,
                        worker_concurrency=concurrency, synchronous_commit=ws.background.synchronous_commit)


def _housekeeping(ws: Workspace) -> Housekeeping:
    bg = ws.background
    return Housekeeping(executor_timeout_s=bg.executor_timeout_s, retention_s=bg.retention_days * 86400,
                        purge_interval_s=bg.purge_interval_s)


def summary_model(ws: Workspace) -> str | None:
    """The catalog model that writes compaction summaries (``[compaction] model``), when the file names one."""
    name = ws.compaction.model
    if name is not None and name not in ws.models:
        raise ConfigError(f"[compaction] model: '{name}' is not a model of the workspace (one of: "
                          f"{', '.join(ws.models) or 'none'}).")
    return name
