"""Listings beyond OpenAI's routes, for the console and for scripts: ``GET /v1/responses`` (the
caller's stored responses, filtered and paginated), ``GET /v1/responses/{id}/events`` (a streamed
or background response's stored event log, as JSON, whatever OpenAI lets ``?stream=true``
replay) and ``GET /v1/tools`` (the workspace's hosted tools the caller may use, each with the entry
a request's ``tools`` takes) and ``GET /v1/approvals`` (the caller's MCP approval requests that
wait for an answer, across runs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import Forbidden, InvalidRequest
from opensupervisor.identity import Principal
from opensupervisor.runs.stored import listing, not_found, owner
from opensupervisor.runtime import Runtime
from opensupervisor.server.auth import authenticate
from opensupervisor.server.state import JSONResponse
from opensupervisor.store.listing import MissingCursor, ResponseFilter, list_responses
from opensupervisor.wire.response import ResponseStatus
from opensupervisor.wire.validation import INT32_MAX, page_query, query_int

STATUSES: tuple[str, ...] = get_args(ResponseStatus)


def catalog_routes(prefixes: tuple[str, ...]) -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for prefix in prefixes:
        out += [Route(f"{prefix}/responses", list_stored, methods=["GET"]),
                Route(f"{prefix}/responses/{{response_id}}/events", list_events, methods=["GET"]),
                Route(f"{prefix}/tools", list_tools, methods=["GET"]),
                Route(f"{prefix}/approvals", list_approvals, methods=["GET"])]
    return out


async def list_stored(request: Request) -> Response:
    """``?status=&model=&background=&user=&since=&until=`` and OpenAI's ``limit``/``order``/``after``."""
    principal = authenticate(request)
    state: Runtime = request.app.state.os
    query = request.query_params
    limit, order, after = page_query(query)
    background = _choice(query, "background", ("true", "false"))
    where = ResponseFilter(owner=await _owner(state, principal, query.get("user")),
                           status=_choice(query, "status", STATUSES), model=query.get("model") or None,
                           background=None if background is None else background == "true",
                           since=_seconds(query, "since"), until=_seconds(query, "until"))
    try:
        page, more = await list_responses(state.store, where, limit=limit, order=order, after=after)
    except MissingCursor as exc:
        raise InvalidRequest(f"Response with id '{exc}' is not in this listing.", param="after",
                             code="invalid_value") from exc
    names = {p.id: p.name for p in await state.principals.all()} if principal.is_admin else {}
    for response in page:
        owner = response.pop("owner")
        response["user"] = principal.name if not principal.is_admin else names.get(owner, owner)
    return JSONResponse(listing(page, has_more=more))


async def _owner(state: Runtime, principal: Principal, user: str | None) -> str | None:
    """Whose responses are listed: the caller's own; an admin's listing is everyone's, or ``user``'s."""
    if not principal.is_admin:
        if user not in (None, "", principal.name):
            raise Forbidden("Only an admin may list another principal's responses.", param="user")
        return principal.id
    if not user:
        return None
    if user == "admin":
        return "admin"
    found = await state.principals.by_name(user)
    if found is None:
        raise InvalidRequest(f"No principal named '{user}'.", param="user", code="invalid_value")
    return found.id


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """A query parameter that is one of ``allowed``, or absent (None); anything else is a 400 naming it."""
    value = query.get(name) or None
    if value is not None and value not in allowed:
        raise InvalidRequest(f"Invalid value for '{name}': must be one of {', '.join(allowed)}.", param=name,
                             code="invalid_value")
    return value


def _seconds(query: Mapping[str, str], name: str) -> int | None:
    """An optional time in epoch seconds."""
    return query_int(query, name, default=0, low=0, high=INT32_MAX) if name in query else None


async def list_events(request: Request) -> Response:
    """``?after=<sequence number>&limit=`` (1 to 5,000, default 1,000): the log's events in order."""
    principal = authenticate(request)
    state: Runtime = request.app.state.os
    response_id = request.path_params["response_id"]
    query = request.query_params
    after = query_int(query, "after", default=-1, low=-1, high=INT32_MAX)
    limit = query_int(query, "limit", default=1000, low=1, high=5000)
    stored = await state.store.meta(response_id, owner(principal))
    if stored is None:
        raise not_found(response_id)
    if not stored.stream and not stored.response["background"]:
        raise InvalidRequest("This response keeps no event log: it was neither streamed nor run in the background.",
                             param="response_id", code="no_event_log")
    data = [event.data for event in await state.store.events_after(response_id, after, limit + 1)]
    return JSONResponse({"object": "list", "data": data[:limit], "has_more": len(data) > limit})


async def list_approvals(request: Request) -> Response:
    """``?limit=`` (1 to 100, default 100): the caller's MCP approval requests still waiting for an
    answer, across responses, newest first."""
    principal = authenticate(request)
    state: Runtime = request.app.state.os
    limit = query_int(request.query_params, "limit", default=100, low=1, high=100)
    return JSONResponse({"object": "list", "data": await state.service.approvals.pending(principal.id, limit)})


async def list_tools(request: Request) -> Response:
    """Each hosted tool of the workspace the caller may use: its kind, name, description and the
    entry to put in a request's ``tools``."""
    principal = authenticate(request)
    state: Runtime = request.app.state.os
    grants = state.access.grants
    data = [tool for tool in _workspace_tools(state) if grants.may(principal, tool.pop("object"))]
    return JSONResponse({"object": "list", "data": data})


def _workspace_tools(state: Runtime) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for space_id, space in sorted(state.spaces.spaces.items()):
        out.append(_tool("genie_space", "genie_space", space_id, space.description, {"id": space_id}))
    functions = {**state.functions.functions, **state.functions.registered}
    for name, function in sorted(functions.items()):
        out.append(_tool("uc_function", "function", name, function.entry.description, {"name": name}))
    for ka, entry in sorted(state.assistants.entries.items()):
        out.append(_tool("knowledge_assistant", "knowledge_assistant", ka, entry.description,
                         {"knowledge_assistant_id": ka}))
    for name, raw in sorted(state.workspace.apps.items()):
        out.append(_tool("app", "app", name, raw.get("description"), {"name": name}))
    connections = {**state.connections.entries, **{n: e for n, (_, e) in state.connections.stored.items()}}
    for name, conn in sorted(connections.items()):
        out.append(_tool("uc_connection", "connection", name, conn.description, {"name": name}))
    return out


def _tool(kind: str, grant_kind: str, name: str, description: str | None, names: dict[str, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": kind, kind: {**names, **({"description": description} if description else {})}}
    return {"object": f"{grant_kind}:{name}", "type": kind, "name": name, "description": description,
            "tool": entry}
