"""The admin API: catalog functions registered at run time (``/admin/v1/functions``), admins only.

A registered function carries its code inline (``source_code``), never a path on the server. It is
checked exactly like a workspace file's function, stored, and offered by every server process
(this one at once, the others within a few seconds).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import ConfigError, Forbidden, InvalidRequest, NotFound
from opensupervisor.server.auth import authenticate
from opensupervisor.server.state import AppState, JSONResponse
from opensupervisor.tools.uc_functions import Function, FunctionEntry
from opensupervisor.wire.request import parse_json_body
from opensupervisor.wire.validation import check_timeout, raise_validation

BASE = "/admin/v1/functions"


def admin_state(request: Request, what: str = "the function catalog") -> AppState:
    state: AppState = request.app.state.os
    if not authenticate(request, state.admin_token).is_admin:
        raise Forbidden(f"Only an admin may manage {what}.")
    return state


def _describe(function: Function, origin: str) -> dict[str, Any]:
    return {"name": function.full_name, "tool_name": function.tool.name, "language": function.entry.language,
            "description": function.tool.description, "parameters": function.tool.parameters, "origin": origin}


async def list_functions(request: Request) -> Response:
    state = admin_state(request)
    catalog = state.functions
    data = [_describe(f, "workspace") for f in catalog.functions.values()]
    data += [_describe(f, "registered") for f in catalog.registered.values()]
    return JSONResponse({"object": "list", "data": data})


async def get_function(request: Request) -> Response:
    state = admin_state(request)
    name = request.path_params["name"]
    function = state.functions.lookup(name)
    if function is None:
        raise NotFound(f"Function '{name}' does not exist.", param="name")
    return JSONResponse(_describe(function, "workspace" if name in state.functions.functions else "registered"))


async def put_function(request: Request) -> Response:
    state = admin_state(request)
    name = request.path_params["name"]
    body = parse_json_body(await request.body())
    source_code = body.pop("source_code", None)
    if source_code is not None and not isinstance(source_code, str):
        raise InvalidRequest("Invalid type for 'source_code': expected a string.", param="source_code",
                             code="invalid_type")
    if "source" in body:
        raise InvalidRequest("A registered function sends its code as 'source_code', not a 'source' path.",
                             param="source", code="invalid_value")
    try:
        entry = FunctionEntry.model_validate(body)
        check_timeout(entry.timeout_s)
        function = state.functions.build(name, entry, source_code)
    except ValidationError as exc:
        raise_validation(exc)
    except ConfigError as exc:
        message = str(exc).removeprefix(f"functions.{name}: ").removeprefix(f"functions.{name} ")
        raise InvalidRequest(message, param=_param_of(message), code="invalid_value") from exc
    await state.registered.put(name, entry.model_dump(exclude_defaults=True), source_code)
    state.functions.load(await state.registered.all())
    return JSONResponse(_describe(function, "registered"))


async def delete_function(request: Request) -> Response:
    state = admin_state(request)
    name = request.path_params["name"]
    if name in state.functions.functions:
        raise InvalidRequest(f"Function '{name}' is declared in the workspace file; remove it there.",
                             param="name", code="invalid_value")
    if not await state.registered.remove(name):
        raise NotFound(f"Function '{name}' does not exist.", param="name")
    state.functions.load(await state.registered.all())
    return JSONResponse({"name": name, "deleted": True})


def _param_of(message: str) -> str:
    """Which field a catalog's complaint is about."""
    if "the name must be" in message or "workspace file" in message:
        return "name"
    if "database_url and sql" in message:
        return "sql"
    return "source_code"


def admin_routes() -> list[BaseRoute]:
    return [
        Route(BASE, list_functions, methods=["GET"]),
        Route(f"{BASE}/{{name}}", get_function, methods=["GET"]),
        Route(f"{BASE}/{{name}}", put_function, methods=["PUT"]),
        Route(f"{BASE}/{{name}}", delete_function, methods=["DELETE"]),
    ]
