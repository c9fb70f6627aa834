"""The Starlette application: lifespan wiring and error handling."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from opensupervisor.core.loop import LoopLimits
from opensupervisor.errors import APIError
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.runs.durable import ENGINE, EngineConfig, system_database_url
from opensupervisor.runs.maintenance import Housekeeping, Maintenance
from opensupervisor.runs.service import BackgroundLimits, ResponseService
from opensupervisor.server.routes import routes
from opensupervisor.server.state import AppState, JSONResponse
from opensupervisor.settings import Settings, ensure_admin_token
from opensupervisor.store import Store
from opensupervisor.tools.registry import ToolRegistry, load_plugins
from opensupervisor.workspace import Workspace, load_workspace

log = logging.getLogger(__name__)


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers or None)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": "not_found" if exc.status_code == 404 else None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {"error": {"message": "The server had an error while processing your request.",
                      "type": "server_error", "param": None, "code": "server_error"}}
    return JSONResponse(body, status_code=500)


ToolSetup = Callable[[ToolRegistry], None]


def create_app(settings: Settings, *, workspace: Workspace | None = None,
               tool_setup: ToolSetup | None = None) -> Starlette:
    """The application for ``settings``. ``tool_setup`` registers extra hosted tool kinds."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ws = workspace or load_workspace(settings.config)
        token, _ = ensure_admin_token(settings)
        store = Store(settings.database_url)
        await store.migrate()
        catalog = ModelCatalog(ws)
        registry = ToolRegistry(ws)
        load_plugins(registry, ws.plugins)
        if tool_setup is not None:
            tool_setup(registry)
        service = _service(settings, ws, store, catalog, registry)
        await ENGINE.attach(service, engine_config(settings, ws))
        maintenance = Maintenance(store, ENGINE, housekeeping(ws))
        await maintenance.start()
        app.state.os = AppState(settings, ws, token, service, catalog, int(time.time()))
        try:
            yield
        finally:
            await maintenance.stop()
            await service.aclose()
            await ENGINE.detach(service)
            await catalog.aclose()
            await store.close()

    return Starlette(
        routes=routes(),
        lifespan=lifespan,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )


def _service(settings: Settings, ws: Workspace, store: Store, catalog: ModelCatalog,
             registry: ToolRegistry) -> ResponseService:
    limits = LoopLimits(max_turns=ws.limits.max_turns, tool_timeout_s=ws.limits.tool_timeout_s)
    bg = ws.background
    concurrency = bg.worker_concurrency if settings.worker_concurrency is None else settings.worker_concurrency
    background = BackgroundLimits(max_queued=bg.max_queued, max_run_time_s=bg.max_run_time_s,
                                  worker_concurrency=concurrency)
    return ResponseService(store, catalog, registry, limits, ENGINE, background)


def engine_config(settings: Settings, ws: Workspace) -> EngineConfig:
    bg = ws.background
    concurrency = bg.worker_concurrency if settings.worker_concurrency is None else settings.worker_concurrency
    return EngineConfig(system_database_url(settings.database_url, settings.system_database_url),
                        schema=settings.system_schema, poll_interval_s=bg.poll_interval_s,
                        worker_concurrency=concurrency)


def housekeeping(ws: Workspace) -> Housekeeping:
    bg = ws.background
    return Housekeeping(executor_timeout_s=bg.executor_timeout_s, retention_s=bg.retention_days * 86400,
                        purge_interval_s=bg.purge_interval_s)


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` (used with several worker processes)."""
    return create_app(Settings.from_env())
