"""The admin API for principals, tokens, grants and usage (``/admin/v1/principals``, ``/tokens``,
``/grants``, ``/usage``), admins only.

Users, service principals and groups; group members; personal access tokens, returned once when
made and only by id afterwards. Revoking a token takes effect on every process within seconds. The
rules are the admin services' (``opensupervisor.admin``), which the CLI applies too.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.admin.governance import GrantAdmin
from opensupervisor.admin.identity import PrincipalAdmin, usage_report
from opensupervisor.server.admin_api import admin_state, json_body
from opensupervisor.server.state import JSONResponse

BASE = "/admin/v1/principals"
WHAT = "principals and tokens"


def _grants(request: Request) -> GrantAdmin:
    state = admin_state(request, WHAT)
    return GrantAdmin(state.access, state.stored_grants, state.principals)


def _principals(request: Request) -> PrincipalAdmin:
    state = admin_state(request, WHAT)
    return PrincipalAdmin(state.principals, GrantAdmin(state.access, state.stored_grants, state.principals).reload)


async def create_principal(request: Request) -> Response:
    admin = _principals(request)
    return JSONResponse((await admin.create(await json_body(request))).public())


async def list_principals(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [p.public() for p in await _principals(request).all()]})


async def delete_principal(request: Request) -> Response:
    name = request.path_params["name"]
    await _principals(request).remove(name)
    return JSONResponse({"name": name, "deleted": True})


async def change_member(request: Request) -> Response:
    admin = _principals(request)
    member = await admin.set_member(request.path_params["name"], await json_body(request), request.method == "POST")
    return JSONResponse(member.public())


async def create_token(request: Request) -> Response:
    admin = _principals(request)
    token, record = await admin.issue_token(request.path_params["name"], await json_body(request))
    return JSONResponse({**record.public(), "token": token})


async def list_tokens(request: Request) -> Response:
    rows = await _principals(request).tokens(request.query_params.get("principal"))
    return JSONResponse({"object": "list", "data": [t.public() for t in rows]})


async def revoke_token(request: Request) -> Response:
    token_id = request.path_params["id"]
    await _principals(request).revoke(token_id)
    return JSONResponse({"id": token_id, "revoked": True})


async def list_grants(request: Request) -> Response:
    return JSONResponse({"object": "list", **_grants(request).listing()})


async def put_grant(request: Request) -> Response:
    """Who may use an object (the list replaces the one before)."""
    admin = _grants(request)
    return JSONResponse(await admin.put(str(request.path_params["object"]), await json_body(request)))


async def delete_grant(request: Request) -> Response:
    obj = str(request.path_params["object"])
    await _grants(request).remove(obj)
    return JSONResponse({"object": obj, "deleted": True})


async def usage(request: Request) -> Response:
    """Usage totals; ``group_by`` any of principal, model, day (comma-separated); ``since``/``until``
    days (YYYY-MM-DD, inclusive); ``principal`` one caller."""
    state = admin_state(request, WHAT)
    query = request.query_params
    report = await usage_report(state.usage, query.get("group_by"), since=query.get("since"),
                                until=query.get("until"), principal=query.get("principal"))
    return JSONResponse({"object": "list", **report})


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
        Route("/admin/v1/usage", usage, methods=["GET"]),
        Route("/admin/v1/grants/{object}", put_grant, methods=["PUT"]),
        Route("/admin/v1/grants/{object}", delete_grant, methods=["DELETE"]),
    ]
