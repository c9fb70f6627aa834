"""HTTP routes. The Responses routes answer under ``/v1`` and the two Databricks AI Gateway prefixes."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.core.events import Event
from opensupervisor.errors import APIError, NotFound
from opensupervisor.identity import Principal
from opensupervisor.metrics import REGISTRY
from opensupervisor.runs.assemble import Prepared
from opensupervisor.runs.idempotency import HEADER as IDEMPOTENCY_HEADER
from opensupervisor.runs.idempotency import Held, Replay, check_stored, checked_key, request_hash
from opensupervisor.runtime import Runtime
from opensupervisor.server.admin_api import admin_routes
from opensupervisor.server.auth import authenticate
from opensupervisor.server.catalog_api import catalog_routes
from opensupervisor.server.connections_api import connection_routes
from opensupervisor.server.console import console_routes
from opensupervisor.server.conversations_api import conversation_routes
from opensupervisor.server.credentials_api import credential_routes
from opensupervisor.server.docs_page import docs_routes
from opensupervisor.server.embeddings_api import embeddings_routes
from opensupervisor.server.genie_api import genie_routes
from opensupervisor.server.knowledge_api import knowledge_routes
from opensupervisor.server.limits_api import limits_routes
from opensupervisor.server.openapi import openapi_routes
from opensupervisor.server.principals_api import principal_routes
from opensupervisor.server.sse import EventStream
from opensupervisor.server.state import JSONResponse
from opensupervisor.server.websocket_api import websocket_routes
from opensupervisor.wire.request import parse_compact_request, parse_create_request, parse_json_body
from opensupervisor.wire.validation import INT32_MAX, page_query, query_int

PREFIXES = ("/v1", "/ai-gateway/mlflow/v1", "/mlflow/v1")


def _state(request: Request) -> Runtime:
    state: Runtime = request.app.state.os
    return state


def _principal(request: Request) -> Principal:
    return authenticate(request, _state(request).admin_token)


def _sse(events: AsyncGenerator[Event], state: Runtime,
         unstarted: Callable[[], Awaitable[None]] | None = None) -> Response:
    return EventStream(events, keepalive_s=state.workspace.limits.sse_keepalive_s, unstarted=unstarted)


async def create_response(request: Request) -> Response:
    principal = _principal(request)
    service = _state(request).service
    started, raw, held = time.time(), None, None
    header = request.headers.get(IDEMPOTENCY_HEADER)
    try:
        key = None if header is None else checked_key(header)
        raw = parse_json_body(await request.body())
        fingerprint = request_hash(request.url.path, raw)  # before anything reads the body further
        parsed = parse_create_request(raw)
        if key is not None:
            check_stored(parsed.body)
            claimed = await service.idempotency.claim(principal, key, fingerprint, parsed.body)
            if isinstance(claimed, Replay):
                return _replayed(claimed, _state(request))
            held = claimed
        prepared = await service.prepare(parsed, principal, raw, echo_history=not request.url.path.startswith("/v1/"),
                                         traceparent=request.headers.get("traceparent"))
        if held is not None:
            try:
                await held.bind(prepared.response["id"])
            except BaseException:
                await service.discard(prepared)
                raise
    except BaseException as exc:
        if held is not None:
            await held.release()
        if isinstance(exc, APIError):
            service.accounting.refused(principal, raw, exc, started)
        raise
    return await _run(_state(request), prepared, held)


async def _run(state: Runtime, prepared: Prepared, held: Held | None) -> Response:
    """Run a prepared response. A key it holds is released if its response was never stored (a
    full queue, a client gone before the response was written), so that a retry may run it."""
    body, service = prepared.plan.request.body, state.service
    try:
        if body.background:
            queued, events = await service.start_background(prepared)
            return _sse(events, state) if body.stream else JSONResponse(queued)
        if body.stream:
            async def never_ran() -> None:  # the client left before the stream began
                await service.discard(prepared)
                if held is not None:
                    await held.release()

            events = service.events(prepared)
            return _sse(events if held is None else _settling(events, held), state, never_ran)
        return JSONResponse(await service.run_to_end(prepared))
    except BaseException:
        if held is not None:
            await held.release()
        raise
    finally:
        if held is not None and not body.background and not body.stream:
            await held.release()


async def _settling(events: AsyncGenerator[Event], held: Held | None) -> AsyncGenerator[Event]:
    try:
        async for event in events:
            yield event
    finally:
        if held is not None:
            await held.release()


def _replayed(replay: Replay, state: Runtime) -> Response:
    response = _sse(replay.events, state) if replay.events is not None else JSONResponse(replay.response)
    response.headers["Idempotent-Replayed"] = "true"
    return response


async def retrieve_response(request: Request) -> Response:
    principal = _principal(request)
    service = _state(request).service
    response_id = request.path_params["response_id"]
    query = request.query_params
    if query.get("stream", "false").lower() != "true":
        return JSONResponse(await service.stored.get(response_id, principal))
    # -1 replays the whole log; a sequence number is an INTEGER column.
    after = query_int(query, "starting_after", default=-1, low=-1, high=INT32_MAX)
    return _sse(await service.resume(response_id, principal, after), _state(request))


async def delete_response(request: Request) -> Response:
    principal = _principal(request)
    return JSONResponse(await _state(request).service.stored.delete(request.path_params["response_id"], principal))


async def cancel_response(request: Request) -> Response:
    principal = _principal(request)
    return JSONResponse(await _state(request).service.stored.cancel(request.path_params["response_id"], principal))


async def list_input_items(request: Request) -> Response:
    principal = _principal(request)
    limit, order, after = page_query(request.query_params)
    page = await _state(request).service.stored.input_items(
        request.path_params["response_id"], principal, limit=limit, order=order, after=after)
    return JSONResponse(page)


async def compact_response(request: Request) -> Response:
    principal = _principal(request)
    body, items = parse_compact_request(parse_json_body(await request.body()))
    return JSONResponse(await _state(request).service.compact(body, items, principal))


def _model_object(state: Runtime, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": state.started_at,
            "owned_by": state.workspace.models[name].provider}


async def list_models(request: Request) -> Response:
    """The models the caller may query (``CAN_QUERY``); the others are not named at all."""
    principal = _principal(request)
    state = _state(request)
    grants = state.access.grants
    data = [_model_object(state, name) for name in state.workspace.models if grants.may(principal, f"model:{name}")]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    principal = _principal(request)
    state = _state(request)
    name = request.path_params["model_id"]
    # A model the caller may not query answers as one that does not exist: names reveal nothing.
    if name not in state.workspace.models or not state.access.grants.may(principal, f"model:{name}"):
        raise NotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model",
                       code="model_not_found")
    return JSONResponse(_model_object(state, name))


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
        *openapi_routes(),
        *docs_routes(),
        *genie_routes(),
        *admin_routes(),
        *connection_routes(),
        *knowledge_routes(),
        *principal_routes(),
        *limits_routes(),
        *credential_routes(),
        *embeddings_routes(PREFIXES),
        *conversation_routes(PREFIXES),
        *websocket_routes(PREFIXES),
        *catalog_routes(PREFIXES),
        *console_routes(),
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
            Route(f"{prefix}/models/{{model_id:path}}", retrieve_model, methods=["GET"]),
        ]
    return out
