"""Each user's own credentials, for tools that run on behalf of their caller.

``PUT /v1/connections/{name}/credential`` with ``{"bearer_token": "..."}`` stores the caller's
token for a ``per_user`` connection (sealed); ``DELETE`` removes it; ``GET
/v1/connections/credentials`` lists the connections the caller has one for (never the tokens).
``/v1/databricks/credential`` does the same for the caller's Databricks token: the workspace's
remote tools then run as them. An admin may act for another principal with ``"principal"`` in the
body (``?principal=`` on ``DELETE`` and ``GET``).
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
from opensupervisor.tools.databricks.client import USER_CREDENTIAL
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
    if "name" not in request.path_params:  # /v1/databricks/credential
        if state.workspace.databricks is None:
            raise NotFound("This workspace has no Databricks workspace configured.", param="databricks")
        return USER_CREDENTIAL
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
    return JSONResponse({"connection": _label(name), "principal": subject.name, "stored": True})


async def delete_credential(request: Request) -> Response:
    state = _state(request)
    caller = authenticate(request)
    name = _connection(state, request)
    subject = await _subject(state, caller, request.query_params.get("principal"))
    if not await state.credentials.remove(name, subject.id):
        raise NotFound(f"There is no credential of '{subject.name}' for connection '{name}'.", param="name")
    return JSONResponse({"connection": _label(name), "principal": subject.name, "deleted": True})


async def list_credentials(request: Request) -> Response:
    state = _state(request)
    subject = await _subject(state, authenticate(request), request.query_params.get("principal"))
    rows = await state.credentials.connections_of(subject.id)
    return JSONResponse({"object": "list", "principal": subject.name,
                         "data": [{"connection": _label(c), "updated_at": u} for c, u in rows]})


def _label(name: str) -> str:
    return "databricks" if name == USER_CREDENTIAL else name


def credential_routes() -> list[BaseRoute]:
    return [
        Route("/v1/connections/credentials", list_credentials, methods=["GET"]),
        Route("/v1/connections/{name}/credential", put_credential, methods=["PUT"]),
        Route("/v1/connections/{name}/credential", delete_credential, methods=["DELETE"]),
        Route("/v1/databricks/credential", put_credential, methods=["PUT"]),
        Route("/v1/databricks/credential", delete_credential, methods=["DELETE"]),
    ]
