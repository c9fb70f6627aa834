"""The auth edge: ``Authorization: Bearer <token>`` or HTTP Basic with user ``token``."""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.requests import Request

from opensupervisor.errors import Unauthorized
from opensupervisor.identity import ADMIN, Principal


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer" and value.strip():
        return value.strip()
    if scheme == "basic" and value.strip():
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise Unauthorized("The Basic credentials are not valid base64.") from exc
        if user == "token" and password:
            return password
        raise Unauthorized("Basic auth needs the user name 'token' and the token as the password.")
    raise Unauthorized(
        "You didn't provide an API key. Send 'Authorization: Bearer <token>' or Basic auth with user 'token'.")


def authenticate(request: Request, admin_token: str) -> Principal:
    token = bearer_token(request)
    if hmac.compare_digest(token.encode(), admin_token.encode()):
        return ADMIN
    raise Unauthorized("Incorrect API key provided.")
