"""The admin API for knowledge assistants: their state, and ingestion (``/admin/v1/knowledge_assistants``).
The rules are the admin services' (``opensupervisor.admin``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.admin.knowledge import KnowledgeAdmin
from opensupervisor.server.admin_api import admin_state, json_body
from opensupervisor.server.state import JSONResponse

BASE = "/admin/v1/knowledge_assistants"
WHAT = "knowledge assistants"


def _knowledge(request: Request) -> KnowledgeAdmin:
    return KnowledgeAdmin(admin_state(request, WHAT).assistants)


async def list_assistants(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": await _knowledge(request).listing()})


async def ingest_assistant(request: Request) -> Response:
    """Ingest now; ``{"paths": [...]}`` limits it to files or folders inside the sources."""
    admin = _knowledge(request)
    ka = request.path_params["id"]
    admin.check(ka)  # an unknown assistant is a 404 whatever the body holds
    return JSONResponse(await admin.ingest(ka, await json_body(request)))


def knowledge_routes() -> list[BaseRoute]:
    return [
        Route(BASE, list_assistants, methods=["GET"]),
        Route(f"{BASE}/{{id}}/ingest", ingest_assistant, methods=["POST"]),
    ]
