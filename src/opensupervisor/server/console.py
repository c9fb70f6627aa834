"""``/console``: the web console, served from the installed package, and its sign-in session.

The page and its scripts are files of the package (``opensupervisor/console``): no CDN, no
build step, nothing fetched from elsewhere (the page's policy lets it load only this server's own
files). The page names its files under a digest of them all (``/console/assets/<digest>/app.js``),
so a browser keeps them until the package changes instead of asking again at every load. The
console reads and writes only through the public and admin HTTP APIs.

Signing in trades a token for a session cookie: ``POST /console/session`` with ``{"token"}``
checks the token as any request's, then sets ``os_console`` (HttpOnly, SameSite=Strict, Secure
over HTTPS), which holds the token and a CSRF token sealed with the server's key. A request with
no ``Authorization`` header is then authenticated by that cookie, the token inside it checked
again each time (a revoked or expired token ends the session at once), and a request that could
change something (any method but GET and HEAD) also needs ``X-CSRF-Token``, which the page reads
from ``GET /console/session``; a WebSocket handshake never counts the cookie. Signing out
(``DELETE /console/session``) clears it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import APIError, Forbidden, InvalidRequest, NotFound
from opensupervisor.server.state import JSONResponse
from opensupervisor.wire.request import parse_json_body
from opensupervisor.wire.validation import validated

if TYPE_CHECKING:
    from opensupervisor.identity import Principal
    from opensupervisor.runtime import Runtime

COOKIE = "os_console"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
ASSET_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {"content-security-policy": POLICY, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "cache-control": "no-cache"}
KEPT = {**HEADERS, "cache-control": "public, max-age=31536000, immutable"}


class SignIn(BaseModel):
    """``POST /console/session``: the token the session stands for."""

    model_config = ConfigDict(extra="forbid", strict=True)
    token: str = Field(min_length=1, max_length=4096)


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    csrf: str


def session_of(request: HTTPConnection, state: Runtime) -> Session | None:
    """The console session a request's cookie holds; None without one, or with one this server
    did not seal (another key, changed)."""
    sealed = request.cookies.get(COOKIE)
    if not sealed:
        return None
    opened = state.vault.open_or_none(sealed)
    if opened is None:
        return None
    try:
        value = orjson.loads(opened)
        return Session(str(value["t"]), str(value["c"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def cookie_refusal(request: HTTPConnection, session: Session) -> APIError | None:
    """Why a request authenticated by the console's cookie is refused: a change without the CSRF
    token the session was given, or from a page of another origin."""
    if request.scope["type"] != "http" or request.scope["method"] in SAFE_METHODS:
        return None
    origin = request.headers.get("origin")
    if origin is not None and origin != _own_origin(request):
        return Forbidden("A signed-in console request must come from the console's own origin.", code="csrf_failed")
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode(), session.csrf.encode()):
        return Forbidden(f"A signed-in console request that changes something needs the '{CSRF_HEADER}' header "
                         "that GET /console/session gives.", code="csrf_failed")
    return None


def _own_origin(request: HTTPConnection) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def console_routes() -> list[BaseRoute]:
    return [
        Route("/console", page, methods=["GET"]),
        Route("/console/", page, methods=["GET"]),
        Route("/console/assets/{name:path}", asset, methods=["GET"]),
        Route("/console/session", sign_in, methods=["POST"]),
        Route("/console/session", current, methods=["GET"]),
        Route("/console/session", sign_out, methods=["DELETE"]),
    ]


async def page(request: Request) -> Response:
    return Response(_page(), media_type="text/html; charset=utf-8", headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    versioned = name.startswith(f"{_digest()}/")
    name = name.removeprefix(f"{_digest()}/")
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in ASSET_TYPES or name not in _assets():
        raise NotFound(f"No console file '{name}'.", param="name")
    return Response(_file(name), media_type=ASSET_TYPES[suffix], headers=KEPT if versioned else HEADERS)


async def sign_in(request: Request) -> Response:
    from opensupervisor.server.auth import principal_for_token  # the auth edge builds on this module

    state: Runtime = request.app.state.os
    token = validated(SignIn, parse_json_body(await request.body())).token.strip()
    if not token:
        raise InvalidRequest("Invalid value for 'token': it is empty.", param="token", code="invalid_value")
    principal = await principal_for_token(request, state, token)
    csrf = secrets.token_urlsafe(32)
    response = JSONResponse(_who(principal, csrf))
    response.set_cookie(COOKIE, state.vault.seal(orjson.dumps({"t": token, "c": csrf}).decode()),
                        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


async def current(request: Request) -> Response:
    from opensupervisor.server.auth import authenticate

    state: Runtime = request.app.state.os
    principal = authenticate(request)
    session = session_of(request, state)
    return JSONResponse(_who(principal, session.csrf if session is not None else None))


async def sign_out(request: Request) -> Response:
    response = JSONResponse({"signed_out": True})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


def _who(principal: Principal, csrf: str | None) -> dict[str, Any]:
    return {"object": "console.session", "name": principal.name, "id": principal.id, "kind": principal.kind,
            "admin": principal.is_admin, "groups": sorted(principal.groups), "csrf_token": csrf}


@cache
def _assets() -> frozenset[str]:
    root = files("opensupervisor") / "console"
    found: set[str] = set()

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            else:
                found.add(prefix + entry.name)

    walk(root, "")
    return frozenset(found)


@cache
def _digest() -> str:
    """Of every file of the console: a new package's files have new names."""
    hashed = hashlib.sha256()
    for name in sorted(_assets()):
        hashed.update(name.encode() + b"\0" + _file(name))
    return hashed.hexdigest()[:16]


@cache
def _page() -> bytes:
    return _file("index.html").replace(b"{{version}}", _digest().encode())


@cache
def _file(name: str) -> bytes:
    return (files("opensupervisor") / "console" / name).read_bytes()
