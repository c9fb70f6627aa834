"""``GET /docs``: the OpenAPI document (``/openapi.json``) in Swagger UI, served from the installed
``swagger-ui-py`` package: no CDN, nothing fetched from elsewhere. Only the page, its start-up
script and the two files of the bundle it needs are served; the page's policy lets it load
nothing but this server's own files."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import NotFound

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OpenSupervisor API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<main id="docs"></main>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/start.js"></script>
</body>
</html>
"""
# Try-it-out requests carry the token the reader enters under "Authorize".
START = b"""window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs", deepLinking: true,
  persistAuthorization: false, tryItOutEnabled: false});
"""
ASSETS = {"swagger-ui.css": "text/css; charset=utf-8", "swagger-ui-bundle.js": "text/javascript; charset=utf-8"}
# Swagger UI styles elements inline and shows images as data URLs; everything else is this server's.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
          "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@cache
def _static() -> Path:
    # Found without importing the package, whose import pulls in its template engine.
    spec = importlib.util.find_spec("swagger_ui")
    assert spec is not None and spec.submodule_search_locations is not None, "swagger-ui-py is a dependency"
    return Path(next(iter(spec.submodule_search_locations))) / "static"


async def docs(request: Request) -> Response:
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)


async def start(request: Request) -> Response:
    return Response(START, media_type="text/javascript; charset=utf-8", headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:  # a fixed list: no path from the URL reaches the file system
        raise NotFound(f"No documentation asset '{name}'.", param="name", code="not_found")
    return FileResponse(_static() / name, media_type=ASSETS[name],
                        headers={**HEADERS, "Cache-Control": "public, max-age=86400"})


def docs_routes() -> list[BaseRoute]:
    return [Route("/docs", docs, methods=["GET"]), Route("/docs/start.js", start, methods=["GET"]),
            Route("/docs/assets/{name}", asset, methods=["GET"])]
