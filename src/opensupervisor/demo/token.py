"""The demo MCP servers' token: what they require, and what the demo workspace's connection and app
send (both read ``OPENSUPERVISOR_DEMO_TOKEN``).

An operator may set the variable. Otherwise the server sets it at start-up to a key kept in the
store, so that every process sharing the store (``--workers``, ``opensupervisor worker``) agrees.
A command that only reads the workspace file (``opensupervisor connections list``) gets a
placeholder, which the demo servers never accept.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

DEMO_TOKEN_ENV = "OPENSUPERVISOR_DEMO_TOKEN"
_PENDING = "set-when-the-server-starts"


class Workspace(Protocol):
    """What the token needs of a workspace; the workspace module imports this one, not the reverse."""

    @property
    def demo_servers(self) -> bool: ...
    @property
    def connections(self) -> Mapping[str, Any]: ...
    @property
    def apps(self) -> Mapping[str, Any]: ...


def needs_demo_token(ws: Workspace) -> bool:
    """Whether ``ws`` serves the demo servers or has an entry that sends the demo token."""
    entries = [*ws.connections.values(), *ws.apps.values()]
    return ws.demo_servers or any(DEMO_TOKEN_ENV in (e.get("bearer_token_env"), e.get("api_key_env"))
                                  for e in entries if isinstance(e, dict))


def reserve(ws: Workspace) -> None:
    """A placeholder, so that reading the workspace's connections does not fail for the variable."""
    if needs_demo_token(ws) and not os.environ.get(DEMO_TOKEN_ENV):
        os.environ[DEMO_TOKEN_ENV] = _PENDING


async def settle(ws: Workspace, key: Callable[[], Awaitable[bytes]]) -> None:
    """Put the real token in place (unless the operator set one) before anything reads it."""
    if needs_demo_token(ws) and os.environ.get(DEMO_TOKEN_ENV, _PENDING) in ("", _PENDING):
        os.environ[DEMO_TOKEN_ENV] = (await key()).hex()


def current() -> str:
    """The token the demo servers accept; empty (nothing is accepted) until it is settled."""
    value = os.environ.get(DEMO_TOKEN_ENV, "")
    return "" if value == _PENDING else value
