"""The JSON response class the routes share (their state is the ``Runtime``, ``request.app.state.os``)."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from opensupervisor.errors import APIError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def error_response(exc: APIError) -> JSONResponse:
    """``exc`` as an HTTP answer: its status, headers and OpenAI-shaped body."""
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers or None)
