"""Each user's own credentials, for tools that run on behalf of their caller.

``PUT /v1/connections/{name}/credential`` with ``{"bearer_token": "..."}`` stores the caller's
token for a ``per_user`` connection (sealed); ``DELETE`` removes it; ``GET
/v1/connections/credentials`` lists the connections the caller has one for (never the tokens).
``/v1/databricks/credential`` does the same for the caller's Databricks token: the workspace's
remote tools then run as them. An admin may act for another principal with ``"principal"`` in the
body (``?principal=`` on ``DELETE`` and ``GET``). The rules are the admin services'
(``opensupervisor.admin``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.admin.credentials import CredentialAdmin
from opensupervisor.runtime import Runtime
from opensupervisor.server.auth import authenticate
from opensupervisor.server.state import JSONResponse
from opensupervisor.wire.request import parse_json_body


def _credentials(request: Request) -> CredentialAdmin:
    state: Runtime = request.app.state.os
    return CredentialAdmin(state.connections, state.credentials, state.principals,
                           databricks=state.workspace.databricks is not None)


def _connection(request: Request) -> str | None:
    """The connection named in the path; None on ``/v1/databricks/credential``."""
    return str(request.path_params["name"]) if "name" in request.path_params else None


async def put_credential(request: Request) -> Response:
    caller = authenticate(request)
    admin = _credentials(request)
    return JSONResponse(await admin.put(caller, _connection(request), parse_json_body(await request.body())))


async def delete_credential(request: Request) -> Response:
    caller = authenticate(request)
    admin = _credentials(request)
    return JSONResponse(await admin.remove(caller, _connection(request), request.query_params.get("principal")))


async def list_credentials(request: Request) -> Response:
    caller = authenticate(request)
    listing = await _credentials(request).listing(caller, request.query_params.get("principal"))
    return JSONResponse({"object": "list", **listing})


def credential_routes() -> list[BaseRoute]:
    return [
        Route("/v1/connections/credentials", list_credentials, methods=["GET"]),
        Route("/v1/connections/{name}/credential", put_credential, methods=["PUT"]),
        Route("/v1/connections/{name}/credential", delete_credential, methods=["DELETE"]),
        Route("/v1/databricks/credential", put_credential, methods=["PUT"]),
        Route("/v1/databricks/credential", delete_credential, methods=["DELETE"]),
    ]
