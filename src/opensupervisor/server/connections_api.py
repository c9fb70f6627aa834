"""The admin API for connections (``/admin/v1/connections``), admins only.

A stored connection's secrets (``bearer_token``, ``oauth.client_secret``, ``headers``) are sealed
with the server's key and never returned: reads show the kind of auth and the header names only.
Its ``url`` and ``oauth.token_url`` must match the workspace's ``[outbound] allowed_urls``.
Every server process picks a change up within a few seconds (this one at once). The rules are the
admin services' (``opensupervisor.admin``), which the CLI applies too.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.admin.connections import ConnectionAdmin
from opensupervisor.server.admin_api import admin_state
from opensupervisor.server.state import JSONResponse
from opensupervisor.wire.request import parse_json_body

BASE = "/admin/v1/connections"
WHAT = "connections"


def _connections(request: Request) -> ConnectionAdmin:
    state = admin_state(request, WHAT)
    return ConnectionAdmin(state.connections, state.stored_connections, state.credentials)


async def list_connections(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": _connections(request).listing()})


async def get_connection(request: Request) -> Response:
    return JSONResponse(_connections(request).get(request.path_params["name"]))


async def put_connection(request: Request) -> Response:
    admin = _connections(request)
    return JSONResponse(await admin.put(request.path_params["name"], parse_json_body(await request.body())))


async def delete_connection(request: Request) -> Response:
    name = request.path_params["name"]
    await _connections(request).remove(name)
    return JSONResponse({"name": name, "deleted": True})


def connection_routes() -> list[BaseRoute]:
    return [
        Route(BASE, list_connections, methods=["GET"]),
        Route(f"{BASE}/{{name}}", get_connection, methods=["GET"]),
        Route(f"{BASE}/{{name}}", put_connection, methods=["PUT"]),
        Route(f"{BASE}/{{name}}", delete_connection, methods=["DELETE"]),
    ]
