"""The admin API for rate limits (``/admin/v1/rate-limits``), admins only, and the AI Gateway's own
``PUT /api/2.0/serving-endpoints/{name}/ai-gateway``, so ``WorkspaceClient().serving_endpoints
.put_ai_gateway(name, rate_limits=[...])`` works against this server.

Limits set here replace the workspace file's for that model, on every process within seconds;
deleting them brings the file's back.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import NotFound
from opensupervisor.identity.limits import RateLimit, check_limits
from opensupervisor.knowledge.local_embedder import BUNDLED
from opensupervisor.server.admin_api import admin_state
from opensupervisor.server.state import AppState, JSONResponse
from opensupervisor.wire.request import parse_json_body
from opensupervisor.wire.validation import raise_validation

WHAT = "rate limits"


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate_limits: list[RateLimit] = Field(default_factory=list)

    @field_validator("rate_limits")
    @classmethod
    def _bounds(cls, limits: list[RateLimit]) -> list[RateLimit]:
        return check_limits(limits)


class GatewayBody(LimitsBody):
    """The gateway's configuration; this server applies ``rate_limits`` and keeps the rest as sent."""

    model_config = ConfigDict(extra="allow")


def _model(request: Request, state: AppState, key: str) -> str:
    model = str(request.path_params[key])
    if model not in state.workspace.models and model != BUNDLED:  # the embedding model is limited like any
        raise NotFound(f"The model '{model}' does not exist.", param="model", code="model_not_found")
    return model


async def _parse(request: Request, body: type[LimitsBody]) -> LimitsBody:
    try:
        return body.model_validate(parse_json_body(await request.body()))
    except ValidationError as exc:
        raise_validation(exc)


async def list_limits(request: Request) -> Response:
    state = admin_state(request, WHAT)
    return JSONResponse({"object": "list", "data": [{"model": model, **entry}
                                                   for model, entry in state.limiter.listing().items()]})


async def _put(state: AppState, model: str, limits: list[RateLimit]) -> dict[str, Any]:
    await state.stored_limits.put(model, limits)
    state.limiter.load(await state.stored_limits.all())
    return {"model": model, **state.limiter.listing()[model]}


async def put_limits(request: Request) -> Response:
    state = admin_state(request, WHAT)
    model = _model(request, state, "model")
    return JSONResponse(await _put(state, model, (await _parse(request, LimitsBody)).rate_limits))


async def delete_limits(request: Request) -> Response:
    state = admin_state(request, WHAT)
    model = _model(request, state, "model")
    if not await state.stored_limits.remove(model):
        raise NotFound(f"No rate limits were set on '{model}' through the API.", param="model")
    state.limiter.load(await state.stored_limits.all())
    return JSONResponse({"model": model, "deleted": True})


async def put_ai_gateway(request: Request) -> Response:
    state = admin_state(request, WHAT)
    model = _model(request, state, "name")
    body = await _parse(request, GatewayBody)
    await _put(state, model, body.rate_limits)
    return JSONResponse(body.model_dump(exclude_none=True))


def limits_routes() -> list[BaseRoute]:
    return [
        Route("/admin/v1/rate-limits", list_limits, methods=["GET"]),
        Route("/admin/v1/rate-limits/{model:path}", put_limits, methods=["PUT"]),
        Route("/admin/v1/rate-limits/{model:path}", delete_limits, methods=["DELETE"]),
        Route("/api/2.0/serving-endpoints/{name}/ai-gateway", put_ai_gateway, methods=["PUT"]),
    ]
