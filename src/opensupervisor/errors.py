"""The one error hierarchy of OpenSupervisor.

    OpenSupervisorError
    ├── ConfigError                 the workspace file or the environment is wrong (operator mistake)
    ├── APIError                    something a client sent or asked for; becomes an HTTP error body
    │   ├── InvalidRequest          400 invalid_request_error
    │   ├── Unauthorized            401
    │   ├── NotFound                404
    │   ├── Forbidden               403
    │   ├── Conflict                409 (an Idempotency-Key in use, or used with another body)
    │   ├── RequestTimeout          408 (headers or body not received in time)
    │   ├── PayloadTooLarge         413
    │   ├── HeadTooLarge            414 / 431 (request line / headers past the bound)
    │   ├── QueueFull, RateLimited  429 with Retry-After
    │   ├── Overloaded              503 with Retry-After (every connection slot is taken)
    │   ├── StoreUnavailable        503 with Retry-After (the database cannot be reached)
    │   └── ServerError             500 (a failure of the server's own; a WebSocket reports it as a message)
    ├── ModelError                  a model or its upstream failed; the response fails with it
    │   └── ModelTimeout
    ├── ToolError                   a hosted tool failed; the model reads the message as the tool output
    └── RunCancelled                the stored response was cancelled (maybe by another process)

Library errors are translated into these at the edge where they happen (provider adapters,
toolsets, the store), always with ``raise ... from exc``.
"""

from __future__ import annotations

import math
from typing import Any


class OpenSupervisorError(Exception):
    """Base of every error the package raises on purpose."""


class ConfigError(OpenSupervisorError):
    """The workspace file, an environment variable or a CLI flag is wrong. ``param`` and ``code``
    name the field and the kind of mistake, for an admin API that was sent the same entry."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class APIError(OpenSupervisorError):
    """An error that reaches the client as an OpenAI-shaped body."""

    status_code = 400
    error_type = "invalid_request_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status_code = 400


class Unauthorized(APIError):
    status_code = 401

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "invalid_api_key") -> None:
        super().__init__(message, param=param, code=code)


class Forbidden(APIError):
    status_code = 403

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "permission_denied") -> None:
        super().__init__(message, param=param, code=code)


class NotFound(APIError):
    status_code = 404

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "not_found") -> None:
        super().__init__(message, param=param, code=code)


class Conflict(APIError):
    """The request collides with another one. ``retry``: the same request may succeed later (the
    OpenAI SDKs retry a 409 by default; ``x-should-retry`` tells them whether it is worth it)."""

    status_code = 409

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "conflict",
                 retry: bool = False) -> None:
        super().__init__(message, param=param, code=code)
        self.headers = {"Retry-After": "1", "x-should-retry": "true"} if retry else {"x-should-retry": "false"}


class PayloadTooLarge(APIError):
    status_code = 413

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "request_too_large") -> None:
        super().__init__(message, param=param, code=code)


class RequestTimeout(APIError):
    """The client did not send the request's headers or body within the bound."""

    status_code = 408
    headers = {"Connection": "close"}  # what is left of the request is not worth reading

    def __init__(self, message: str) -> None:
        super().__init__(message, param=None, code="request_timeout")


class HeadTooLarge(APIError):
    """The request line (414) or the request line and headers together (431) are past the bound."""

    def __init__(self, message: str, *, request_line: bool) -> None:
        super().__init__(message, param=None, code="uri_too_long" if request_line else "request_headers_too_large")
        self.status_code = 414 if request_line else 431


class QueueFull(APIError):
    """The bounded queue of background responses is full; the client should retry later."""

    status_code = 429
    error_type = "rate_limit_error"
    headers = {"Retry-After": "1"}

    def __init__(self, message: str) -> None:
        super().__init__(message, param=None, code="queue_full")


class RateLimited(APIError):
    """A rate limit refused the request; ``Retry-After`` says when it would be admitted."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float, code: str = "rate_limit_exceeded") -> None:
        super().__init__(message, param=None, code=code)
        self.headers = {"Retry-After": str(max(1, math.ceil(min(retry_after_s, 86400.0))))}


class Overloaded(APIError):
    """This process holds as many connections as it may; the client should retry (maybe elsewhere)."""

    status_code = 503
    error_type = "server_error"
    headers = {"Retry-After": "1"}

    def __init__(self, message: str) -> None:
        super().__init__(message, param=None, code="server_overloaded")


class StoreUnavailable(APIError):
    """The database cannot be reached (after the store's retries, for writes). Nothing the client
    sent is wrong, and the same request may well succeed once the database is back."""

    status_code = 503
    error_type = "server_error"
    headers = {"Retry-After": "1"}

    def __init__(self, message: str = "The server's database cannot be reached right now; retry later.") -> None:
        super().__init__(message, param=None, code="store_unavailable")


class ServerError(APIError):
    """Something failed that the client could not have caused (logged where it happened)."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str = "The server had an error while processing your request.") -> None:
        super().__init__(message, param=None, code="server_error")


class UpstreamUnavailable(APIError):
    """A hosted tool's server (an MCP server) cannot be reached to prepare the run."""

    status_code = 502
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = "tool_server_unavailable"
                 ) -> None:
        super().__init__(message, param=param, code=code)


class ModelError(OpenSupervisorError):
    """A model call failed. ``code`` follows OpenAI's ResponseErrorCode where one fits."""

    def __init__(self, message: str, *, code: str = "server_error", retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable


class ModelTimeout(ModelError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="model_timeout", retryable=True)


class ToolError(OpenSupervisorError):
    """A hosted tool failed in a way its caller should read (the text becomes the tool output)."""


class RunCancelled(OpenSupervisorError):
    """A run found its response cancelled in the store at a step boundary and must stop.

    ``rewind_to`` is the sequence number of a terminal event that was not written because of it.
    """

    def __init__(self, rewind_to: int | None) -> None:
        super().__init__("the response was cancelled")
        self.rewind_to = rewind_to


class RunSuperseded(BaseException):
    """Another process took over this background run (this one was taken for dead): the run must
    stop here without recording anything more, since its new owner records it.

    A ``BaseException``, as DBOS's own lost-ownership error is: no boundary that turns an
    ``Exception`` into a recorded outcome (the loop's ``failed``, a step's recorded error) may catch it."""

    def __init__(self, response_id: str) -> None:
        super().__init__(f"the run of response {response_id} is owned by another process now")
        self.response_id = response_id
