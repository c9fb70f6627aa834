"""The admin API for rate limits (``/admin/v1/rate-limits``), admins only, and the AI Gateway's own
``PUT /api/2.0/serving-endpoints/{name}/ai-gateway``, so ``WorkspaceClient().serving_endpoints
.put_ai_gateway(name, rate_limits=[...])`` works against this server.

Limits set here replace the workspace file's for that model, on every process within seconds;
deleting them brings the file's back. The rules are the admin services' (``opensupervisor.admin``),
which the CLI applies too.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.admin.governance import LimitAdmin
from opensupervisor.server.admin_api import admin_state
from opensupervisor.server.state import JSONResponse
from opensupervisor.wire.request import parse_json_body

WHAT = "rate limits"


def _limits(request: Request) -> LimitAdmin:
    state = admin_state(request, WHAT)
    return LimitAdmin(state.limiter, state.stored_limits, state.workspace.models)


async def list_limits(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _limits(request).listing()})


async def put_limits(request: Request) -> Response:
    admin = _limits(request)
    return JSONResponse(await admin.put(str(request.path_params["model"]), parse_json_body(await request.body())))


async def delete_limits(request: Request) -> Response:
    model = str(request.path_params["model"])
    await _limits(request).remove(model)
    return JSONResponse({"model": model, "deleted": True})


async def put_ai_gateway(request: Request) -> Response:
    admin = _limits(request)
    body = parse_json_body(await request.body())
    return JSONResponse(await admin.put_gateway(str(request.path_params["name"]), body))


def limits_routes() -> list[BaseRoute]:
    return [
        Route("/admin/v1/rate-limits", list_limits, methods=["GET"]),
        Route("/admin/v1/rate-limits/{model:path}", put_limits, methods=["PUT"]),
        Route("/admin/v1/rate-limits/{model:path}", delete_limits, methods=["DELETE"]),
        Route("/api/2.0/serving-endpoints/{name}/ai-gateway", put_ai_gateway, methods=["PUT"]),
    ]
