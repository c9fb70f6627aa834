"""How ``opensupervisor serve`` runs uvicorn: its httptools protocol, bounded.

uvicorn alone lets a client hold a connection forever (headers or a body sent a byte at a time, or
nothing at all), keeps as many connections as the process can open, lets the request line and
headers grow without bound under httptools, and answers malformed HTTP in plain text. Here each
connection gets ``limits.header_timeout_s`` to send its request line and headers and
``limits.body_timeout_s`` for its body, the head may hold ``limits.max_header_bytes``, a process
keeps at most ``limits.max_connections``, and every refusal is an OpenAI-shaped JSON body.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from opensupervisor.errors import APIError, HeadTooLarge, InvalidRequest, Overloaded, RequestTimeout
from opensupervisor.settings import Settings
from opensupervisor.workspace import Limits, Workspace

APP = "opensupervisor.server.app:create_app_from_env"
# The app answers a body that stopped arriving with its own 408 first; the protocol closes only
# connections whose response is complete (a body trickling in after it) this long afterwards.
BODY_GRACE_S = 1.0


class ServerConfig(Config):
    """uvicorn's configuration plus the workspace's limits, which each connection's protocol reads
    (the configuration is what uvicorn hands to every worker process)."""

    def __init__(self, app: str, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits


def error_bytes(exc: APIError) -> bytes:
    """A complete HTTP/1.1 response for ``exc`` that closes the connection."""
    body = orjson.dumps(exc.body())
    status = exc.status_code
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close",
            *(f"{k}: {v}" for k, v in exc.headers.items() if k.lower() != "connection")]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


_REASONS = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class BoundedHttpProtocol(HttpToolsProtocol):
    """One connection: the head's size and time, the body's time, and the connection count bounded."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = config.limits if isinstance(config, ServerConfig) else Limits()
        self._in_head = True  # between requests and until a request's headers are complete
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(Overloaded(f"This server process holds {self.limits.max_connections} connections, "
                                    "its limit; retry shortly."))
            return
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._timer is None:  # the first bytes of the next request on a kept-alive connection
                self._arm(self.limits.header_timeout_s, self._head_timed_out)
        super().data_received(data)
        # Still in the head (a chunk holding a head's end and its body does not count against it).
        if self._in_head and self._head_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._refuse_head()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse_head()
            return
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s + BODY_GRACE_S, self._body_timed_out)

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection is the WebSocket protocol's from here on: no body to wait for
        super().handle_websocket_upgrade()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0
        if not self.transport.is_closing():
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            self.transport.close()  # a response is on its way: another one cannot follow it
            return
        self._refuse(InvalidRequest("The request is not valid HTTP/1.1: a malformed request line, header or "
                                    "chunk, or both Content-Length and Transfer-Encoding.",
                                    code="invalid_http_request"))

    def _refuse_head(self) -> None:
        limit = self.limits.max_header_bytes
        if len(getattr(self, "url", b"")) > limit:  # set once the parser has seen a request begin
            self._refuse(HeadTooLarge(f"The request line is longer than the limit of {limit} bytes.",
                                      request_line=True))
        else:
            self._refuse(HeadTooLarge(f"The request line and headers are larger than the limit of {limit} bytes.",
                                      request_line=False))

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(RequestTimeout(f"The request line and headers did not arrive within "
                                        f"{self.limits.header_timeout_s:g} seconds."))

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        else:  # the app is still answering: close once it has, and read nothing more meanwhile
            cycle.keep_alive = False
            self.flow.pause_reading()

    def _refuse(self, exc: APIError) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(error_bytes(exc))
            self.transport.close()

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def serve(settings: Settings, workspace: Workspace, *, workers: int, log_level: str) -> None:
    """Run the server in this process (and ``workers`` processes when more than one) until stopped."""
    config = ServerConfig(APP, limits=workspace.limits, factory=True, host=settings.host, port=settings.port,
                          workers=workers, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                          http=BoundedHttpProtocol, ws="websockets-sansio",
                          ws_max_size=workspace.limits.max_body_bytes)
    server = uvicorn.Server(config)
    try:
        if workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    if workers == 1 and not server.started:
        sys.exit(STARTUP_FAILURE)
