"""ASGI middleware bounding every request body, on every route: its size and the time it takes to arrive.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read; the bytes
actually received are counted too (chunked bodies declare nothing). A client that sends its body
too slowly gets 408 once ``limits.body_timeout_s`` has passed since its headers arrived.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opensupervisor.errors import PayloadTooLarge, RequestTimeout
from opensupervisor.server.state import JSONResponse

# Content-Length values are at most this many digits; longer ones are over any limit.
_MAX_DIGITS = 19


class BoundedBody:
    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            exc = self.too_large()
            await JSONResponse(exc.body(), status_code=exc.status_code)(scope, receive, send)
            return
        await self.app(scope, self._bounded(receive), send)

    def too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body is larger than the limit of {self.max_bytes} bytes.")

    def _bounded(self, receive: Receive) -> Receive:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received = 0
        done = False

        async def bounded_receive() -> Message:
            nonlocal received, done
            if done:  # after the body only a disconnect can come: no bound to keep
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"The request body did not arrive within {self.timeout_s:g} seconds.") from None
            if message["type"] != "http.request":
                done = True
                return message
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()
            done = not message.get("more_body", False)
            return message

        return bounded_receive


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The HTTP parser has checked it is a number; its length alone says whether it is huge.
            digits = value.strip()
            if not digits.isdigit():
                return 0
            return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS
    return 0
