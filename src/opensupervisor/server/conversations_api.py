"""``/v1/conversations``: OpenAI's Conversations API, under every Responses prefix.

A conversation belongs to the principal that created it (admins see every one). ``conversation``
on ``POST /v1/responses`` runs a response after its items and appends the response's input and
output to it (``runs.conversations``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.identity import Principal
from opensupervisor.runs.conversations import ConversationService
from opensupervisor.runtime import Runtime
from opensupervisor.server.auth import authenticate
from opensupervisor.server.state import JSONResponse
from opensupervisor.wire.conversations import parse_create, parse_items, parse_update
from opensupervisor.wire.request import check_include, parse_json_body
from opensupervisor.wire.validation import page_query


def _caller(request: Request) -> tuple[Principal, ConversationService]:
    state: Runtime = request.app.state.os
    return authenticate(request, state.admin_token), state.service.conversations


def _include(request: Request) -> None:
    """``include`` is accepted as on responses: what it asks for is always there or never is."""
    check_include(request.query_params.getlist("include") + request.query_params.getlist("include[]"))


async def create_conversation(request: Request) -> Response:
    principal, conversations = _caller(request)
    metadata, items = parse_create(parse_json_body(await request.body()))
    return JSONResponse(await conversations.create(principal, metadata, items))


async def retrieve_conversation(request: Request) -> Response:
    principal, conversations = _caller(request)
    return JSONResponse(await conversations.get(request.path_params["conversation_id"], principal))


async def update_conversation(request: Request) -> Response:
    principal, conversations = _caller(request)
    metadata = parse_update(parse_json_body(await request.body()))
    return JSONResponse(await conversations.update(request.path_params["conversation_id"], principal, metadata))


async def delete_conversation(request: Request) -> Response:
    principal, conversations = _caller(request)
    return JSONResponse(await conversations.delete(request.path_params["conversation_id"], principal))


async def list_items(request: Request) -> Response:
    principal, conversations = _caller(request)
    limit, order, after = page_query(request.query_params)
    _include(request)
    page = await conversations.list_items(request.path_params["conversation_id"], principal, limit=limit, order=order,
                                          after=after)
    return JSONResponse(page)


async def create_items(request: Request) -> Response:
    principal, conversations = _caller(request)
    _include(request)
    items = parse_items(parse_json_body(await request.body()))
    return JSONResponse(await conversations.add_items(request.path_params["conversation_id"], principal, items))


async def retrieve_item(request: Request) -> Response:
    principal, conversations = _caller(request)
    _include(request)
    params = request.path_params
    return JSONResponse(await conversations.item(params["conversation_id"], principal, params["item_id"]))


async def delete_item(request: Request) -> Response:
    principal, conversations = _caller(request)
    params = request.path_params
    return JSONResponse(await conversations.delete_item(params["conversation_id"], principal, params["item_id"]))


def conversation_routes(prefixes: tuple[str, ...]) -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for prefix in prefixes:
        one, items = f"{prefix}/conversations/{{conversation_id}}", f"{prefix}/conversations/{{conversation_id}}/items"
        out += [
            Route(f"{prefix}/conversations", create_conversation, methods=["POST"]),
            Route(one, retrieve_conversation, methods=["GET"]),
            Route(one, update_conversation, methods=["POST"]),
            Route(one, delete_conversation, methods=["DELETE"]),
            Route(items, list_items, methods=["GET"]),
            Route(items, create_items, methods=["POST"]),
            Route(f"{items}/{{item_id}}", retrieve_item, methods=["GET"]),
            Route(f"{items}/{{item_id}}", delete_item, methods=["DELETE"]),
        ]
    return out
