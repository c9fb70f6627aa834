"""The admin API for knowledge assistants: their state, and ingestion (``/admin/v1/knowledge_assistants``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import InvalidRequest, NotFound
from opensupervisor.knowledge.ingest import OutsideSources
from opensupervisor.server.admin_api import admin_state
from opensupervisor.server.state import JSONResponse
from opensupervisor.wire.request import parse_json_body

BASE = "/admin/v1/knowledge_assistants"
WHAT = "knowledge assistants"


async def list_assistants(request: Request) -> Response:
    state = admin_state(request, WHAT)
    kas = state.assistants
    data = [{"id": ka, "description": entry.description, "sources": entry.sources,
             "version": await kas.index.version(ka), "ingesting": ka in kas.ingesting}
            for ka, entry in kas.entries.items()]
    return JSONResponse({"object": "list", "data": data})


async def ingest_assistant(request: Request) -> Response:
    """Ingest now; ``{"paths": [...]}`` limits it to files or folders inside the sources."""
    state = admin_state(request, WHAT)
    ka = request.path_params["id"]
    kas = state.assistants
    if ka not in kas.entries:
        raise NotFound(f"Knowledge assistant '{ka}' does not exist.", param="id")
    raw = await request.body()
    body = parse_json_body(raw) if raw.strip() else {}
    paths = body.get("paths")
    if paths is not None and (not isinstance(paths, list) or not all(isinstance(p, str) for p in paths)):
        raise InvalidRequest("'paths' must be a list of strings.", param="paths", code="invalid_type")
    try:
        report = await kas.ingest(ka, only=paths)
    except OutsideSources as exc:
        raise InvalidRequest(str(exc), param="paths", code="invalid_value") from exc
    return JSONResponse({"id": ka, **report.as_dict()})


def knowledge_routes() -> list[BaseRoute]:
    return [
        Route(BASE, list_assistants, methods=["GET"]),
        Route(f"{BASE}/{{id}}/ingest", ingest_assistant, methods=["POST"]),
    ]
