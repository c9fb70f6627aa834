"""HTTP routes. The Responses routes answer under ``/v1`` and the two Databricks AI Gateway prefixes."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.core.events import Event
from opensupervisor.errors import APIError, InvalidRequest, NotFound, PayloadTooLarge
from opensupervisor.identity import Principal
from opensupervisor.metrics import REGISTRY
from opensupervisor.server.admin_api import admin_routes
from opensupervisor.server.auth import authenticate
from opensupervisor.server.connections_api import connection_routes
from opensupervisor.server.credentials_api import credential_routes
from opensupervisor.server.embeddings_api import embeddings_routes
from opensupervisor.server.genie_api import genie_routes
from opensupervisor.server.knowledge_api import knowledge_routes
from opensupervisor.server.limits_api import limits_routes
from opensupervisor.server.principals_api import principal_routes
from opensupervisor.server.sse import EventStream
from opensupervisor.server.state import AppState, JSONResponse
from opensupervisor.wire.request import parse_create_request, parse_json_body

PREFIXES = ("/v1", "/ai-gateway/mlflow/v1", "/mlflow/v1")


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.os
    return state


def _principal(request: Request) -> Principal:
    return authenticate(request, _state(request).admin_token)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _sse(events: AsyncGenerator[Event]) -> Response:
    return EventStream(events)


async def create_response(request: Request) -> Response:
    principal = _principal(request)
    state = _state(request)
    service = state.service
    started, raw = time.time(), None
    try:
        raw = parse_json_body(await _read_body(request, state.workspace.limits.max_body_bytes))
        parsed = parse_create_request(raw)
        prepared = await service.prepare(parsed, principal, raw, echo_history=not request.url.path.startswith("/v1/"),
                                         traceparent=request.headers.get("traceparent"))
    except APIError as exc:
        service.accounting.refused(principal, raw, exc, started)
        raise
    body = parsed.body
    if body.background:
        queued, events = await service.start_background(prepared)
        if body.stream:
            return _sse(events)
        return JSONResponse(queued)
    if body.stream:
        return _sse(service.events(prepared))
    return JSONResponse(await service.run_to_end(prepared))


async def retrieve_response(request: Request) -> Response:
    principal = _principal(request)
    service = _state(request).service
    response_id = request.path_params["response_id"]
    query = request.query_params
    if query.get("stream", "false").lower() != "true":
        return JSONResponse(await service.get(response_id, principal))
    after = _int_param(query.get("starting_after"), "starting_after", default=-1)
    return _sse(await service.resume(response_id, principal, after))


def _int_param(value: str | None, name: str, *, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid value for '{name}': expected an integer.", param=name,
                             code="invalid_value") from exc


async def delete_response(request: Request) -> Response:
    principal = _principal(request)
    return JSONResponse(await _state(request).service.delete(request.path_params["response_id"], principal))


async def cancel_response(request: Request) -> Response:
    principal = _principal(request)
    return JSONResponse(await _state(request).service.cancel(request.path_params["response_id"], principal))


async def list_input_items(request: Request) -> Response:
    principal = _principal(request)
    query = request.query_params
    limit = _int_param(query.get("limit"), "limit", default=20)
    if not 1 <= limit <= 100:
        raise InvalidRequest("Invalid value for 'limit': must be between 1 and 100.", param="limit",
                             code="invalid_value")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': must be 'asc' or 'desc'.", param="order",
                             code="invalid_value")
    page = await _state(request).service.input_items(
        request.path_params["response_id"], principal, limit=limit, order=order, after=query.get("after"))
    return JSONResponse(page)


async def compact_response(request: Request) -> Response:
    _principal(request)
    raise NotFound("POST /responses/compact is not supported by this server.", code="unsupported_endpoint")


async def list_models(request: Request) -> Response:
    _principal(request)
    state = _state(request)
    data: list[dict[str, Any]] = [
        {"id": name, "object": "model", "created": state.started_at, "owned_by": entry.provider}
        for name, entry in state.workspace.models.items()
    ]
    return JSONResponse({"object": "list", "data": data})


async def databricks_config(request: Request) -> Response:
    # The databricks SDK asks this on every client construction, unauthenticated, and retries for
    # minutes on 429/503 or silence: answer at once with nothing to discover.
    return JSONResponse({})


async def ai_gateway_endpoints(request: Request) -> Response:
    return JSONResponse({"endpoints": []})


async def metrics_text(request: Request) -> Response:
    # Operational counters only (no prompts, no ids): readable without a token, like /healthz.
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "time": int(time.time())})


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = [
        Route("/.well-known/databricks-config", databricks_config, methods=["GET"]),
        Route("/api/ai-gateway/v2/endpoints", ai_gateway_endpoints, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_text, methods=["GET"]),
        *genie_routes(),
        *admin_routes(),
        *connection_routes(),
        *knowledge_routes(),
        *principal_routes(),
        *limits_routes(),
        *credential_routes(),
        *embeddings_routes(PREFIXES),
    ]
    for prefix in PREFIXES:
        out += [
            Route(f"{prefix}/responses", create_response, methods=["POST"]),
            Route(f"{prefix}/responses/compact", compact_response, methods=["POST"]),
            Route(f"{prefix}/responses/{{response_id}}", retrieve_response, methods=["GET"]),
            Route(f"{prefix}/responses/{{response_id}}", delete_response, methods=["DELETE"]),
            Route(f"{prefix}/responses/{{response_id}}/cancel", cancel_response, methods=["POST"]),
            Route(f"{prefix}/responses/{{response_id}}/input_items", list_input_items, methods=["GET"]),
            Route(f"{prefix}/models", list_models, methods=["GET"]),
        ]
    return out
