"""The admin API: catalog functions registered at run time (``/admin/v1/functions``), admins only.

A registered function carries its code inline (``source_code``), never a path on the server. It is
checked exactly like a workspace file's function, stored, and offered by every server process
(this one at once, the others within a few seconds). The rules are the admin services'
(``opensupervisor.admin``), which the CLI applies too.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.admin.common import require_admin
from opensupervisor.admin.functions import FunctionAdmin
from opensupervisor.runtime import Runtime
from opensupervisor.server.auth import authenticate
from opensupervisor.server.state import JSONResponse
from opensupervisor.wire.request import parse_json_body

BASE = "/admin/v1/functions"


def admin_state(request: Request, what: str = "the function catalog") -> Runtime:
    state: Runtime = request.app.state.os
    require_admin(authenticate(request, state.admin_token), what)
    return state


async def json_body(request: Request) -> dict[str, object]:
    """The request's JSON object; an empty body is an empty object."""
    raw = await request.body()
    return parse_json_body(raw) if raw.strip() else {}


def _functions(request: Request) -> FunctionAdmin:
    state = admin_state(request)
    return FunctionAdmin(state.functions, state.registered)


async def list_functions(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _functions(request).listing()})


async def get_function(request: Request) -> Response:
    return JSONResponse(_functions(request).get(request.path_params["name"]))


async def put_function(request: Request) -> Response:
    admin = _functions(request)
    return JSONResponse(await admin.put(request.path_params["name"], parse_json_body(await request.body())))


async def delete_function(request: Request) -> Response:
    name = request.path_params["name"]
    await _functions(request).remove(name)
    return JSONResponse({"name": name, "deleted": True})


def admin_routes() -> list[BaseRoute]:
    return [
        Route(BASE, list_functions, methods=["GET"]),
        Route(f"{BASE}/{{name}}", get_function, methods=["GET"]),
        Route(f"{BASE}/{{name}}", put_function, methods=["PUT"]),
        Route(f"{BASE}/{{name}}", delete_function, methods=["DELETE"]),
    ]
