"""The Starlette application: lifespan wiring and error handling."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from opensupervisor.demo.servers import DemoServers
from opensupervisor.errors import APIError, ServerError
from opensupervisor.runtime import ToolSetup, running
from opensupervisor.server.auth import ResolveCaller
from opensupervisor.server.request_body import BoundedBody
from opensupervisor.server.routes import routes
from opensupervisor.server.sse import RAW_SEND
from opensupervisor.server.state import JSONResponse, error_response
from opensupervisor.settings import Settings, ensure_admin_token
from opensupervisor.workspace import Workspace, load_workspace

log = logging.getLogger(__name__)


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
    if isinstance(exc, APIError):  # raised outside a route, by a middleware
        return error_response(exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(ServerError())


class App(Starlette):
    """The Starlette application, which also hands the server's own ``send`` down the stack
    (``RAW_SEND``): a stream's body messages need none of the middleware's wrappers, which watch
    for the response's start only, and showed as a tenth of a stream's work."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, workspace: Workspace | None = None,
               tool_setup: ToolSetup | None = None) -> Starlette:
    """The application for ``settings``. ``tool_setup`` registers extra hosted tool kinds."""
    ws = workspace or load_workspace(settings.config)
    demo = DemoServers() if ws.demo_servers else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        token, _ = ensure_admin_token(settings)
        async with contextlib.AsyncExitStack() as stack:
            if demo is not None:
                await demo.start(stack)
            rt = await stack.enter_async_context(running(settings, ws, tool_setup, admin_token=token))
            if demo is not None:
                demo.take_token()
            app.state.os = rt
            yield

    return App(
        routes=routes() + (demo.routes() if demo is not None else []),
        lifespan=lifespan,
        middleware=[Middleware(BoundedBody, max_bytes=ws.limits.max_body_bytes, timeout_s=ws.limits.body_timeout_s),
                    Middleware(ResolveCaller)],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error},
    )


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` (used with several worker processes)."""
    return create_app(Settings.from_env())
