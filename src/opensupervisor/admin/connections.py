"""Connections to MCP servers stored at run time, beside the workspace file's.

A stored connection's secrets (``bearer_token``, ``oauth.client_secret``, ``headers``) are sealed
with the server's key and never returned: descriptions show the kind of auth and the header names.
Removing one removes every user's credential for it, so a later connection of the same name (which
may point elsewhere) never receives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opensupervisor.admin.common import log, parse
from opensupervisor.errors import ConfigError, InvalidRequest, NotFound
from opensupervisor.store.connections import Row, StoredConnections
from opensupervisor.store.credentials import UserCredentials
from opensupervisor.tools.connections import NAME, ConnectionEntry, Connections, with_secrets
from opensupervisor.wire.validation import check_timeout


class ConnectionAdmin:
    def __init__(self, connections: Connections, stored: StoredConnections, credentials: UserCredentials) -> None:
        self.connections = connections
        self.stored = stored
        self.credentials = credentials

    def listing(self) -> list[dict[str, Any]]:
        return [self._describe(n) for n in sorted(self.connections.entries)]

    def get(self, name: str) -> dict[str, Any]:
        if name not in self.connections.entries:
            raise NotFound(f"Connection '{name}' does not exist.", param="name")
        return self._describe(name)

    async def put(self, name: str, fields: Mapping[str, object]) -> dict[str, Any]:
        """Store (or replace) ``name``: its description, without secrets."""
        if not NAME.match(name):
            raise InvalidRequest("A connection name may hold letters, digits, '_', '.' and '-'.", param="name",
                                 code="invalid_value")
        if name in self.connections.in_file:
            raise InvalidRequest(f"Connection '{name}' is declared in the workspace file; change it there.",
                                 param="name", code="invalid_value")
        entry = parse(ConnectionEntry, fields)
        check_timeout(entry.timeout_s)
        try:
            self.connections.build(name, entry)  # every credential it names at hand, its URLs and headers allowed
        except ConfigError as exc:
            message = str(exc).removeprefix(f"connections.{name}: ").removeprefix(f"connections.{name}.")
            raise InvalidRequest(message, param=exc.param, code=exc.code or "invalid_value") from exc
        if name not in self.connections.entries:
            # A new name may still hold credentials of a connection the workspace file no longer declares.
            await self.credentials.remove_connection(name)
        await self.stored.put(name, entry.without_secrets(), entry.secrets())
        await self.reload()
        log.info("connection %s stored (%s)", name, entry.public()["auth"])
        return self._describe(name)

    async def remove(self, name: str) -> None:
        """Remove stored connection ``name`` and every user's credential for it."""
        if name in self.connections.in_file:
            raise InvalidRequest(f"Connection '{name}' is declared in the workspace file; remove it there.",
                                 param="name", code="invalid_value")
        if not await self.stored.remove(name):  # its users' credentials go in the same transaction
            raise NotFound(f"Connection '{name}' does not exist.", param="name")
        self.credentials.forget(name)
        await self.reload()
        log.info("connection %s removed, with its users' credentials", name)

    async def reload(self) -> None:
        self.connections.load(connection_rows(await self.stored.all()))

    def _describe(self, name: str) -> dict[str, Any]:
        entry = self.connections.entries[name]
        origin = "workspace" if name in self.connections.in_file else "stored"
        return {"name": name, "origin": origin, **entry.public()}


def connection_rows(rows: list[Row]) -> list[tuple[str, ConnectionEntry, int]]:
    """Stored rows as ``Connections.load`` takes them: each entry with its secrets unsealed."""
    return [(name, with_secrets(entry, secrets), updated) for name, entry, secrets, updated in rows]
