"""The JSON response class the routes share (their state is the ``Runtime``, ``request.app.state.os``)."""

from __future__ import annotations

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)
