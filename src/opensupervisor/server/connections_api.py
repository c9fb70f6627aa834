"""The admin API for connections (``/admin/v1/connections``), admins only.

A stored connection's secrets (``bearer_token``, ``oauth.client_secret``, ``headers``) are sealed
with the server's key and never returned: reads show the kind of auth and the header names only.
Every server process picks a change up within a few seconds (this one at once).
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import ConfigError, InvalidRequest, NotFound
from opensupervisor.runtime import connection_rows
from opensupervisor.server.admin_api import admin_state
from opensupervisor.server.state import AppState, JSONResponse
from opensupervisor.tools.connections import NAME, ConnectionEntry, build_server
from opensupervisor.wire.request import parse_json_body
from opensupervisor.wire.validation import check_timeout, raise_validation

BASE = "/admin/v1/connections"
WHAT = "connections"


def _describe(state: AppState, name: str) -> dict[str, object]:
    entry = state.connections.entries[name]
    origin = "workspace" if name in state.connections.in_file else "stored"
    return {"name": name, "origin": origin, **entry.public()}


async def list_connections(request: Request) -> Response:
    state = admin_state(request, WHAT)
    return JSONResponse({"object": "list", "data": [_describe(state, n) for n in sorted(state.connections.entries)]})


async def get_connection(request: Request) -> Response:
    state = admin_state(request, WHAT)
    name = request.path_params["name"]
    if name not in state.connections.entries:
        raise NotFound(f"Connection '{name}' does not exist.", param="name")
    return JSONResponse(_describe(state, name))


async def put_connection(request: Request) -> Response:
    state = admin_state(request, WHAT)
    name = request.path_params["name"]
    if not NAME.match(name):
        raise InvalidRequest("A connection name may hold letters, digits, '_', '.' and '-'.", param="name",
                             code="invalid_value")
    if name in state.connections.in_file:
        raise InvalidRequest(f"Connection '{name}' is declared in the workspace file; change it there.",
                             param="name", code="invalid_value")
    try:
        entry = ConnectionEntry.model_validate(parse_json_body(await request.body()))
    except ValidationError as exc:
        raise_validation(exc)
    check_timeout(entry.timeout_s)
    try:
        build_server(name, entry)  # every credential it names must be at hand
    except ConfigError as exc:
        raise InvalidRequest(str(exc).removeprefix(f"connections.{name}: "), param=_param_of(str(exc)),
                             code="invalid_value") from exc
    await state.stored_connections.put(name, entry.without_secrets(), entry.secrets())
    await _reload(state)
    return JSONResponse(_describe(state, name))


async def delete_connection(request: Request) -> Response:
    state = admin_state(request, WHAT)
    name = request.path_params["name"]
    if name in state.connections.in_file:
        raise InvalidRequest(f"Connection '{name}' is declared in the workspace file; remove it there.",
                             param="name", code="invalid_value")
    if not await state.stored_connections.remove(name):
        raise NotFound(f"Connection '{name}' does not exist.", param="name")
    await state.credentials.remove_connection(name)  # a later connection of this name must not get them
    await _reload(state)
    return JSONResponse({"name": name, "deleted": True})


async def _reload(state: AppState) -> None:
    state.connections.load(connection_rows(await state.stored_connections.all()))


def _param_of(message: str) -> str:
    if "oauth" in message:
        return "oauth.client_secret_env" if "client_secret_env" in message else "oauth"
    return "bearer_token_env"


def connection_routes() -> list[BaseRoute]:
    return [
        Route(BASE, list_connections, methods=["GET"]),
        Route(f"{BASE}/{{name}}", get_connection, methods=["GET"]),
        Route(f"{BASE}/{{name}}", put_connection, methods=["PUT"]),
        Route(f"{BASE}/{{name}}", delete_connection, methods=["DELETE"]),
    ]
