"""The admin API for principals, tokens and grants (``/admin/v1/principals``, ``/tokens``, ``/grants``), admins only.

Users, service principals and groups; group members; personal access tokens, returned once when
made and only by id afterwards. Revoking a token takes effect on every process within seconds.
"""

from __future__ import annotations

import re
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import InvalidRequest, NotFound
from opensupervisor.identity.grants import check_object
from opensupervisor.server.admin_api import admin_state
from opensupervisor.server.state import JSONResponse
from opensupervisor.store.principals import MAX_TOKEN_LIFETIME_S, Conflict
from opensupervisor.store.usage import GroupBy
from opensupervisor.wire.request import parse_json_body
from opensupervisor.wire.validation import raise_validation

BASE = "/admin/v1/principals"
WHAT = "principals and tokens"
NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,255}$")


class NewPrincipal(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    kind: Literal["user", "service_principal", "group"] = "user"
    admin: bool = False


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    lifetime_seconds: int | None = Field(default=None, ge=1, le=MAX_TOKEN_LIFETIME_S)
    comment: str | None = Field(default=None, max_length=1000)


class Membership(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    member: str


async def _body(request: Request) -> dict[str, object]:
    raw = await request.body()
    return parse_json_body(raw) if raw.strip() else {}


async def create_principal(request: Request) -> Response:
    state = admin_state(request, WHAT)
    try:
        new = NewPrincipal.model_validate(await _body(request))
    except ValidationError as exc:
        raise_validation(exc)
    if not NAME.match(new.name) or new.name == "admin":
        raise InvalidRequest("A name may hold letters, digits and . _ @ + - (and may not be 'admin').",
                             param="name", code="invalid_value")
    if new.admin and new.kind == "group":
        raise InvalidRequest("A group cannot be an admin; make its members admins.", param="admin",
                             code="invalid_value")
    try:
        row = await state.principals.create(new.name, new.kind, new.admin)
    except Conflict as exc:
        raise InvalidRequest(str(exc).capitalize() + ".", param="name", code="already_exists") from exc
    return JSONResponse(row.public())


async def list_principals(request: Request) -> Response:
    state = admin_state(request, WHAT)
    return JSONResponse({"object": "list", "data": [p.public() for p in await state.principals.all()]})


async def delete_principal(request: Request) -> Response:
    state = admin_state(request, WHAT)
    name = request.path_params["name"]
    if not await state.principals.remove(name):
        raise NotFound(f"Principal '{name}' does not exist.", param="name")
    return JSONResponse({"name": name, "deleted": True})


async def change_member(request: Request) -> Response:
    state = admin_state(request, WHAT)
    group = request.path_params["name"]
    try:
        member = Membership.model_validate(await _body(request)).member
    except ValidationError as exc:
        raise_validation(exc)
    try:
        await state.principals.set_member(group, member, request.method == "POST")
    except Conflict as exc:
        raise InvalidRequest(str(exc).capitalize() + ".", param="member", code="invalid_value") from exc
    found = await state.principals.by_name(member)
    return JSONResponse(found.public() if found else {"name": member})


async def create_token(request: Request) -> Response:
    state = admin_state(request, WHAT)
    name = request.path_params["name"]
    try:
        new = NewToken.model_validate(await _body(request))
    except ValidationError as exc:
        raise_validation(exc)
    try:
        token, record = await state.principals.issue_token(name, lifetime_s=new.lifetime_seconds,
                                                           comment=new.comment)
    except Conflict as exc:
        raise NotFound(str(exc).capitalize() + ".", param="name") from exc
    return JSONResponse({**record.public(), "token": token})


async def list_tokens(request: Request) -> Response:
    state = admin_state(request, WHAT)
    rows = await state.principals.tokens(request.query_params.get("principal"))
    return JSONResponse({"object": "list", "data": [t.public() for t in rows]})


async def revoke_token(request: Request) -> Response:
    state = admin_state(request, WHAT)
    token_id = request.path_params["id"]
    if not await state.principals.revoke(token_id):
        raise NotFound(f"Token '{token_id}' does not exist or is revoked already.", param="id")
    return JSONResponse({"id": token_id, "revoked": True})


class GrantBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    principals: list[str]


async def list_grants(request: Request) -> Response:
    state = admin_state(request, WHAT)
    return JSONResponse({"object": "list", "default": state.access.default, "data": state.access.listing()})


def _object(request: Request, declared: dict[str, list[str]]) -> str:
    obj = str(request.path_params["object"])
    try:
        check_object(obj)
    except ValueError as exc:
        raise InvalidRequest(str(exc).capitalize() + ".", param="object", code="invalid_value") from exc
    if obj in declared:
        raise InvalidRequest(f"The grants on '{obj}' are declared in the workspace file; change them there.",
                             param="object", code="invalid_value")
    return obj


async def put_grant(request: Request) -> Response:
    """Who may use an object (the list replaces the one before)."""
    state = admin_state(request, WHAT)
    obj = _object(request, state.access.declared)
    try:
        names = GrantBody.model_validate(await _body(request)).principals
    except ValidationError as exc:
        raise_validation(exc)
    known = {p.name for p in await state.principals.all()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidRequest(f"No principal named {', '.join(repr(n) for n in unknown)}.", param="principals",
                             code="invalid_value")
    await state.stored_grants.put(obj, names)
    state.access.load(await state.stored_grants.all())
    return JSONResponse(next(g for g in state.access.listing() if g["object"] == obj))


async def delete_grant(request: Request) -> Response:
    state = admin_state(request, WHAT)
    obj = _object(request, state.access.declared)
    if not await state.stored_grants.remove(obj):
        raise NotFound(f"There are no grants on '{obj}'.", param="object")
    state.access.load(await state.stored_grants.all())
    return JSONResponse({"object": obj, "deleted": True})


DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


async def usage_report(request: Request) -> Response:
    """Usage totals; ``group_by`` any of principal, model, day (comma-separated); ``since``/``until``
    days (YYYY-MM-DD, inclusive); ``principal`` one caller."""
    state = admin_state(request, WHAT)
    query = request.query_params
    group_by = [g for g in query.get("group_by", "principal").split(",") if g]
    for g in group_by:
        if g not in ("principal", "model", "day"):
            raise InvalidRequest(f"Cannot group by '{g}' (principal, model, day).", param="group_by",
                                 code="invalid_value")
    for key in ("since", "until"):
        if query.get(key) and not DAY.match(query[key]):
            raise InvalidRequest(f"'{key}' is a day: YYYY-MM-DD.", param=key, code="invalid_value")
    await state.usage.flush()
    rows = await state.usage.report(cast("list[GroupBy]", group_by), since=query.get("since"),
                                    until=query.get("until"), principal=query.get("principal"))
    return JSONResponse({"object": "list", "group_by": group_by, "data": rows})


def principal_routes() -> list[BaseRoute]:
    return [
        Route(BASE, create_principal, methods=["POST"]),
        Route(BASE, list_principals, methods=["GET"]),
        Route(f"{BASE}/{{name}}", delete_principal, methods=["DELETE"]),
        Route(f"{BASE}/{{name}}/members", change_member, methods=["POST", "DELETE"]),
        Route(f"{BASE}/{{name}}/tokens", create_token, methods=["POST"]),
        Route("/admin/v1/tokens", list_tokens, methods=["GET"]),
        Route("/admin/v1/tokens/{id}", revoke_token, methods=["DELETE"]),
        Route("/admin/v1/grants", list_grants, methods=["GET"]),
        Route("/admin/v1/usage", usage_report, methods=["GET"]),
        Route("/admin/v1/grants/{object}", put_grant, methods=["PUT"]),
        Route("/admin/v1/grants/{object}", delete_grant, methods=["DELETE"]),
    ]
