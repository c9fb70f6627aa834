"""WebSocket mode of ``/v1/responses`` (Open Responses): one connection, many responses in turn.

The handshake authenticates as an HTTP request does (Bearer or Basic). Each text message
``{"type": "response.create", ...create body...}`` then runs one response, streamed: the same
preparation, loop, recorder, tracing and approvals as ``POST /v1/responses``, each event sent back
as one text message (no ``[DONE]``). Responses run one at a time: messages that arrive while one
runs wait for it (up to ``PENDING``; the socket is read all along, so a client that leaves stops
its response at once). ``stream``, ``stream_options`` and ``background`` are refused (the socket
is the stream; a background run is followed over HTTP).

The connection keeps its latest finished ``store: false`` response in memory, since continuing it
(``previous_response_id``) has nothing else to read; a stored response continues from the store,
which knows of deletions and owners. A continuation that fails evicts what it continued. Errors
are messages ``{"type": "error", "status": N, "error": {type, code, message, param}}``; the
connection stays open after one. The caller's token is checked again at each response (a revoked
token ends the connection), and a connection ends after ``limits.websocket_max_s`` (one hour),
once the response in flight has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from opensupervisor.core.events import TERMINAL_EVENTS
from opensupervisor.errors import APIError, InvalidRequest, ServerError
from opensupervisor.identity import Principal
from opensupervisor.server.auth import authenticate, resolve_caller
from opensupervisor.server.state import error_response
from opensupervisor.wire.items import Item
from opensupervisor.wire.request import parse_create_request, parse_json_body

if TYPE_CHECKING:
    from opensupervisor.runtime import Runtime

log = logging.getLogger(__name__)
CREATE = "response.create"
# Create fields that make no sense on a socket (Open Responses: the client MUST NOT send them).
REFUSED = ("stream", "stream_options", "background")
# Messages that may wait while a response runs (each up to ``limits.max_body_bytes``); one more is
# answered with an error and dropped. The socket is read all along: a client that leaves is seen at once.
PENDING = 4
# Close codes: 1000 a normal end (the hour is up), 1008 a policy violation (the token stopped working).
NORMAL, POLICY = 1000, 1008


@dataclass(slots=True)
class Latest:
    """The connection's latest finished ``store: false`` response: everything a continuation of it sees."""

    response_id: str
    history: list[Item]


class _Gone(Exception):
    """The client can no longer be sent to (it left, or the connection was closed under the send)."""


class Session:
    """One accepted connection of one caller."""

    def __init__(self, websocket: WebSocket, state: Runtime, principal: Principal) -> None:
        self.ws = websocket
        self.state = state
        self.principal = principal
        self.latest: Latest | None = None
        # Bounded by the reader (``PENDING``); None once the client is gone.
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()

    async def serve(self) -> None:
        reader = asyncio.create_task(self._read())
        deadline = asyncio.get_running_loop().time() + self.state.workspace.limits.websocket_max_s
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await self.inbox.get()
                except TimeoutError:
                    await self._end_of_time()
                    return
                if message is None:
                    return  # the client left
                if not await self._turn_or_leave(message, reader):
                    return
                if asyncio.get_running_loop().time() >= deadline:
                    await self._end_of_time()
                    return
        except _Gone:
            return
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self) -> None:
        """Every message of the client as it comes (so that a client leaving is seen at once, and the
        protocol's pongs are read while a response runs) into the inbox, then None once it is gone.
        One past ``PENDING`` waiting messages is answered with an error and dropped."""
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    await self._send_error(InvalidRequest("Messages must be text frames of JSON.",
                                                          code="invalid_value"))
                elif self.inbox.qsize() >= PENDING:
                    await self._send_error(InvalidRequest(
                        f"{PENDING} messages already wait for the response in flight; this one was dropped.",
                        code="too_many_pending_messages"))
                else:
                    self.inbox.put_nowait(text)
        except _Gone:
            return
        finally:
            self.inbox.put_nowait(None)

    async def _turn_or_leave(self, message: str, reader: asyncio.Task[None]) -> bool:
        """Run one message's response; False when the connection is over (the client left meanwhile,
        which stops the response as a closed SSE stream does, or the token no longer works)."""
        turn = asyncio.create_task(self._turn(message))
        try:
            await asyncio.wait([turn, reader], return_when=asyncio.FIRST_COMPLETED)
        finally:  # the client left, or this connection is being cancelled (a shutdown): the run stops
            if not turn.done():
                turn.cancel()
                await asyncio.gather(turn, return_exceptions=True)
        try:
            return turn.result()
        except (asyncio.CancelledError, _Gone):
            return False
        except Exception:
            log.exception("a WebSocket response failed")
            await self._send_error(ServerError())
            return True

    async def _turn(self, message: str) -> bool:
        started, raw, previous = time.time(), None, None
        service = self.state.service
        try:
            body = parse_json_body(message.encode())
            previous = _previous_of(body)
            raw = {**_checked(body), "stream": True}  # what runs, as its stored request says
            found = await resolve_caller(self.ws, self.state)
            if not isinstance(found, Principal):
                await self._send_error(found if isinstance(found, APIError) else found.error)
                await self.ws.close(POLICY, "the token no longer works")
                return False
            self.principal = found
            parsed = parse_create_request(raw)
            prepared = await service.prepare(parsed, self.principal, raw, history=self._history_of(previous))
        except APIError as exc:
            self._evict(previous)
            service.accounting.refused(self.principal, raw, exc, started)
            await self._send_error(exc)
            return True
        seen = list(prepared.run.history)  # the prior history and the input, before the run adds to it
        final: dict[str, Any] | None = None
        async with contextlib.aclosing(service.events(prepared)) as events:
            async for event in events:
                await self._send(event.json.decode())
                if event.type in TERMINAL_EVENTS:
                    final = event.data["response"]
        self.latest = self._kept(final, seen, parsed.body.store)  # only the latest is kept
        return True

    def _kept(self, final: dict[str, Any] | None, seen: list[Item], stored: bool) -> Latest | None:
        """What a continuation of a finished ``store: false`` response needs (a stored one continues
        from the store, which knows of deletions), unless its history is past what a request may send."""
        if stored or final is None or final["status"] not in ("completed", "incomplete"):
            return None
        history = seen + list(final["output"])
        if sum(len(orjson.dumps(item)) for item in history) > self.state.workspace.limits.max_body_bytes:
            return None
        return Latest(final["id"], history)

    def _history_of(self, previous: str | None) -> list[Item] | None:
        if previous is None:
            return []
        if self.latest is not None and self.latest.response_id == previous:
            return list(self.latest.history)
        return None  # the store's, or previous_response_not_found

    def _evict(self, previous: str | None) -> None:
        if previous is not None and self.latest is not None and self.latest.response_id == previous:
            self.latest = None

    async def _send(self, text: str) -> None:
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:  # closed: by the client, or under the send
            raise _Gone() from exc

    async def _send_error(self, exc: APIError) -> None:
        await self._send(orjson.dumps(error_message(exc)).decode())

    async def _end_of_time(self) -> None:
        limit = self.state.workspace.limits.websocket_max_s
        exc = InvalidRequest(f"This connection reached its limit of {limit:g} seconds; open a new one to go on.",
                             code="websocket_connection_limit_reached")
        await self._send_error(exc)
        await self.ws.close(NORMAL, "connection limit reached")


def error_message(exc: APIError) -> dict[str, Any]:
    return {"type": "error", "status": exc.status_code, **exc.body()}


def _checked(body: dict[str, Any]) -> dict[str, Any]:
    """The create body of a ``response.create`` message."""
    body = dict(body)
    kind = body.pop("type", None)
    if kind != CREATE:
        raise InvalidRequest(f"Unsupported message type {kind!r}: this socket takes '{CREATE}' messages.",
                             param="type", code="invalid_value" if kind is not None else "missing_required_parameter")
    for name in REFUSED:
        if name in body:
            raise InvalidRequest(f"'{name}' is not supported in WebSocket mode: every response on the socket streams "
                                 "its events, and a background response is followed over HTTP.",
                                 param=name, code="unsupported_parameter")
    return body


def _previous_of(body: dict[str, Any]) -> str | None:
    value = body.get("previous_response_id")
    return value if isinstance(value, str) else None


async def responses_socket(websocket: WebSocket) -> None:
    state: Runtime = websocket.app.state.os
    try:
        principal = authenticate(websocket, state.admin_token)
    except APIError as exc:  # refused in the handshake, as an HTTP error with its OpenAI-shaped body
        await websocket.send_denial_response(error_response(exc))
        return
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):  # gone while something was being sent
        await Session(websocket, state, principal).serve()


def websocket_routes(prefixes: tuple[str, ...]) -> list[BaseRoute]:
    return [WebSocketRoute(f"{prefix}/responses", responses_socket) for prefix in prefixes]
