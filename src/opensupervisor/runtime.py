"""Assembling a running instance from settings and a workspace: what ``serve`` and ``worker`` share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from opensupervisor import __version__
from opensupervisor.admin.connections import connection_rows
from opensupervisor.core.approval import ApprovalSigner
from opensupervisor.core.loop import LoopLimits
from opensupervisor.demo import token as demo_token
from opensupervisor.identity.grants import Access
from opensupervisor.identity.limits import Counters, RateLimiter
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs.accounting import Accounting
from opensupervisor.runs.assemble import RunDeps
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
from opensupervisor.store.credentials import UserCredentials
from opensupervisor.store.functions import RegisteredFunctions
from opensupervisor.store.grants import StoredGrants
from opensupervisor.store.keys import shared_key
from opensupervisor.store.rate_limits import DatabaseCounters, StoredRateLimits
from opensupervisor.store.usage import Usage
from opensupervisor.tools import apps, connections, databricks, genie, knowledge_assistant, mcp_tool, uc_functions
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
    access: Access
    stored_grants: StoredGrants
    usage: Usage
    limiter: RateLimiter
    stored_limits: StoredRateLimits
    credentials: UserCredentials


@contextlib.asynccontextmanager
async def running(settings: Settings, ws: Workspace, tool_setup: ToolSetup | None = None) -> AsyncIterator[Runtime]:
    """Migrate the store, build the catalog and tools, join durable execution; undo it all on exit."""
    store = Store(settings.database_url)
    await store.migrate()
    # Before the apps and connections that send it are built.
    await demo_token.settle(ws, lambda: shared_key(store, "demo_servers"))
    catalog = ModelCatalog(ws)
    registry = ToolRegistry(ws)
    spaces = genie.register(registry, ws, catalog)
    assistants = knowledge_assistant.register(registry, ws, catalog, settings.knowledge_database_url)
    functions = uc_functions.register(registry, ws, settings.data_dir / "functions")
    app_tools = apps.register(registry, ws, settings.self_url)
    conns = connections.register(registry, ws, settings.self_url)
    mcp_tool.register(registry, ws)
    registered = RegisteredFunctions(store)
    functions.load(await registered.all())
    vault = Vault.load(settings.data_dir)
    credentials = conns.credentials = UserCredentials(store, vault)
    access = Access(ws.access.grants, ws.access.default)
    usage = Usage(store)
    stored_grants = StoredGrants(store)
    access.load(await stored_grants.all())
    limiter = RateLimiter({name: entry.rate_limits for name, entry in ws.models.items()}, _counters(settings, store))
    stored_limits = StoredRateLimits(store)
    limiter.load(await stored_limits.all())
    stored_connections = StoredConnections(store, vault)
    conns.load(connection_rows(await stored_connections.all()))
    remote = databricks.register(registry, ws, credentials,
                                 await shared_key(store, "databricks") if ws.databricks is not None else b"")
    load_plugins(registry, ws.plugins)
    if tool_setup is not None:
        tool_setup(registry)
    concurrency = ws.background.worker_concurrency if settings.worker_concurrency is None \
        else settings.worker_concurrency
    signer = ApprovalSigner(await shared_key(store, "mcp_approval"))
    tracing = Tracing(recording=Recording(ws.tracing.record_inputs, ws.tracing.record_outputs),
                      processors=exporters_from_env(), version=__version__)
    trace_store = TraceStore(settings.data_dir / "traces", settings.trace_database_url,
                             max_destinations_per_principal=ws.tracing.max_destinations_per_principal)
    inference = _inference_tables(settings, ws)
    service = ResponseService(RunDeps(catalog, _loop_limits(ws), signer, store), registry, ENGINE, vault,
                              gate=Gate(access, Accounting(usage, limiter, inference), spaces.own_model),
                              traces=RunTraces(tracing, trace_store),
                              approvals=IssuedApprovals(store, ws.limits.approval_lifetime_s),
                              background_limits=_background_limits(ws, concurrency))
    try:
        await ENGINE.attach(service, _engine_config(settings, ws, concurrency))
        maintenance = Maintenance(store, ENGINE, _housekeeping(ws))
        try:
            await maintenance.start()
            try:
                watcher = asyncio.create_task(_watch_registered(
                    functions, registered, conns, stored_connections,
                    lambda: _reload_governance(access, stored_grants, limiter, stored_limits)))
                ingesting = asyncio.create_task(assistants.ingest_on_start())
                inspecting = asyncio.create_task(spaces.inspect_all())
                try:
                    yield Runtime(settings, ws, store, catalog, service, spaces, functions, registered, conns,
                                  stored_connections, assistants, access, stored_grants, usage, limiter,
                                  stored_limits, credentials)
                finally:
                    watcher.cancel()
                    ingesting.cancel()
                    inspecting.cancel()
            finally:
                await maintenance.stop()
                await service.aclose()
        finally:
            await ENGINE.detach(service)
    finally:
        await spaces.aclose()
        await assistants.aclose()
        await trace_store.aclose()
        await usage.aclose()
        await limiter.aclose()
        if inference is not None:
            await inference.aclose()
        tracing.shutdown()
        await functions.aclose()
        await app_tools.aclose()
        if remote is not None:
            await remote.aclose()
        await catalog.aclose()
        await store.close()


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
                            worker_concurrency=concurrency)


def _engine_config(settings: Settings, ws: Workspace, concurrency: int) -> EngineConfig:
    return EngineConfig(system_database_url(settings.database_url, settings.system_database_url),
                        schema=settings.system_schema, poll_interval_s=ws.background.poll_interval_s,
                        worker_concurrency=concurrency, synchronous_commit=ws.background.synchronous_commit)


def _housekeeping(ws: Workspace) -> Housekeeping:
    bg = ws.background
    return Housekeeping(executor_timeout_s=bg.executor_timeout_s, retention_s=bg.retention_days * 86400,
                        purge_interval_s=bg.purge_interval_s)
