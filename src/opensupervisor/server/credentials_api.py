"""Each user's own credentials for connections that run on behalf of their caller (``per_user``).

``PUT /v1/connections/{name}/credential`` with ``{"bearer_token": "..."}`` stores the caller's
token (sealed); ``DELETE`` removes it; ``GET /v1/connections/credentials`` lists the connections
the caller has one for (never the tokens). An admin may act for another principal with
``"principal"`` in the body (``?principal=`` on ``DELETE`` and ``GET``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import Forbidden, InvalidRequest, NotFound
from opensupervisor.identity import Principal
from opensupervisor.server.auth import authenticate
from opensupervisor.server.state import AppState, JSONResponse
from opensupervisor.wire.request import parse_json_body
from opensupervisor.wire.validation import raise_validation


class CredentialBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    bearer_token: str = Field(min_length=1, max_length=16384)
    principal: str | None = None


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.os
    return state


def _connection(state: AppState, request: Request) -> str:
    name = str(request.path_params["name"])
    entry = state.connections.entries.get(name)
    if entry is None:
        raise NotFound(f"Connection '{name}' not found.", param="name")
    if not entry.per_user:
        raise InvalidRequest(f"The connection '{name}' uses its own credentials, not each user's.", param="name",
                             code="invalid_value")
    return name


async def _subject(state: AppState, caller: Principal, name: str | None) -> Principal:
    """The principal whose credential is meant: the caller, or (for admins) the one named."""
    if name is None or name == caller.name:
        return caller
    if not caller.is_admin:
        raise Forbidden("Only an admin may manage another principal's credentials.", param="principal")
    found = await state.principals.by_name(name)
    if found is None:
        raise NotFound(f"No principal named '{name}'.", param="principal")
    return Principal(id=found.id, name=found.name)


async def put_credential(request: Request) -> Response:
    state = _state(request)
    caller = authenticate(request)
    name = _connection(state, request)
    try:
        body = CredentialBody.model_validate(parse_json_body(await request.body()))
    except ValidationError as exc:
        raise_validation(exc)
    subject = await _subject(state, caller, body.principal)
    await state.credentials.put(name, subject.id, body.bearer_token)
    return JSONResponse({"connection": name, "principal": subject.name, "stored": True})


async def delete_credential(request: Request) -> Response:
    state = _state(request)
    caller = authenticate(request)
    name = _connection(state, request)
    subject = await _subject(state, caller, request.query_params.get("principal"))
    if not await state.credentials.remove(name, subject.id):
        raise NotFound(f"There is no credential of '{subject.name}' for connection '{name}'.", param="name")
    return JSONResponse({"connection": name, "principal": subject.name, "deleted": True})


async def list_credentials(request: Request) -> Response:
    state = _state(request)
    subject = await _subject(state, authenticate(request), request.query_params.get("principal"))
    rows = await state.credentials.connections_of(subject.id)
    return JSONResponse({"object": "list", "principal": subject.name,
                         "data": [{"connection": c, "updated_at": u} for c, u in rows]})


def credential_routes() -> list[BaseRoute]:
    return [
        Route("/v1/connections/credentials", list_credentials, methods=["GET"]),
        Route("/v1/connections/{name}/credential", put_credential, methods=["PUT"]),
        Route("/v1/connections/{name}/credential", delete_credential, methods=["DELETE"]),
    ]
