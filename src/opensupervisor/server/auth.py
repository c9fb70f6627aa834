"""The auth edge: ``Authorization: Bearer <token>`` or HTTP Basic with user ``token``, else the
web console's session cookie (``server.console``), which holds a token too.

A token is the bootstrap admin token or a personal access token (``osp_…``) of a principal.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from opensupervisor.errors import APIError, Unauthorized
from opensupervisor.identity import ADMIN, Principal
from opensupervisor.identity.auth_failures import AuthFailure
from opensupervisor.server.console import cookie_refusal, session_of
from opensupervisor.store.principals import TOKEN_PREFIX

if TYPE_CHECKING:
    from opensupervisor.runtime import Runtime


def bearer_token(request: HTTPConnection) -> str:
    """The token a request presents; an ``AuthFailure`` says why there is none."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value.strip():
        return value.strip()
    if scheme == "basic" and value.strip():
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise _failed("The Basic credentials are not valid base64.", "malformed") from exc
        if user == "token" and password:
            return password
        raise _failed("Basic auth needs the user name 'token' and the token as the password.", "malformed")
    raise _failed("You didn't provide an API key. Send 'Authorization: Bearer <token>' or Basic auth with user "
                  "'token'.", "missing" if not header.strip() else "malformed")


class _NoToken(Exception):
    def __init__(self, failure: AuthFailure) -> None:
        self.failure = failure


def _failed(message: str, reason: str) -> _NoToken:
    return _NoToken(AuthFailure(Unauthorized(message), reason))


AUTH_KEY = "opensupervisor.auth"


def authenticate(request: HTTPConnection, admin_token: str = "") -> Principal:
    """The caller, as ``ResolveCaller`` found it; 401 when the request (or WebSocket handshake) has
    no valid token (429 when its address has failed too often, see ``auth_failures``)."""
    found = request.scope.get("state", {}).get(AUTH_KEY)
    if isinstance(found, Principal):
        return found
    if isinstance(found, APIError):  # the store was down: nothing is known of the token
        raise found
    failure = found if isinstance(found, AuthFailure) else AuthFailure(
        Unauthorized("You didn't provide an API key."), "missing")
    state = getattr(request.app.state, "os", None)
    if state is None:
        raise failure.error
    address = request.client.host if request.client is not None else "unknown"
    raise state.auth_failures.refuse(address, failure)


class ResolveCaller:
    """ASGI middleware: find the caller of each request once (the bootstrap admin token, or a personal
    access token from the store, checked at most every few seconds), for routes that ask for it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            state = getattr(scope["app"].state, "os", None)
            if state is not None:
                try:
                    found = await resolve_caller(HTTPConnection(scope), state)
                except APIError as exc:  # raised to routes that authenticate: a route without auth still answers
                    found = exc
                scope.setdefault("state", {})[AUTH_KEY] = found
        await self.app(scope, receive, send)


async def resolve_caller(request: HTTPConnection, state: Runtime) -> Principal | AuthFailure | APIError:
    """Who presents the request's token now, or why nobody does (a long-lived WebSocket asks again
    at each response: a token revoked meanwhile stops it). Without a token, the console's session
    cookie stands for one, on HTTP requests only, and a change needs its CSRF token too."""
    try:
        token = bearer_token(request)
    except _NoToken as exc:
        session = session_of(request, state) if request.scope["type"] == "http" else None
        if session is None:
            return exc.failure
        refusal = cookie_refusal(request, session)
        if refusal is not None:
            return refusal
        token = session.token
    return await _check(token, state)


async def principal_for_token(request: HTTPConnection, state: Runtime, token: str) -> Principal:
    """The principal ``token`` belongs to; 401 (counted as a failed sign-in of the address) if none."""
    found = await _check(token, state)
    if isinstance(found, Principal):
        return found
    address = request.client.host if request.client is not None else "unknown"
    raise state.auth_failures.refuse(address, found)


async def _check(token: str, state: Runtime) -> Principal | AuthFailure:
    if hmac.compare_digest(token.encode(), state.admin_token.encode()):
        return ADMIN
    if not token.startswith(TOKEN_PREFIX):
        return AuthFailure(Unauthorized("Incorrect API key provided."), "unknown")
    check = await state.principals.cached_check(token)
    if check.principal is not None:
        return check.principal
    if check.problem:
        return AuthFailure(Unauthorized(f"The API key provided has {check.problem}."),
                           "revoked" if "revoked" in check.problem else "expired")
    return AuthFailure(Unauthorized("Incorrect API key provided."), "unknown")
