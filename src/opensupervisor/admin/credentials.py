"""Each user's own credentials, for tools that run on behalf of their caller: a token per
``per_user`` connection, and the caller's Databricks token. Sealed at rest, never returned.

A caller manages their own; an admin may manage anyone's (``principal``).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from opensupervisor.admin.common import log, parse
from opensupervisor.errors import Forbidden, InvalidRequest, NotFound
from opensupervisor.identity import Principal
from opensupervisor.store.credentials import UserCredentials
from opensupervisor.store.principals import Principals
from opensupervisor.tools.connections import Connections
from opensupervisor.tools.databricks.client import USER_CREDENTIAL


class CredentialBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    bearer_token: str = Field(min_length=1, max_length=16384)
    principal: str | None = None


class CredentialAdmin:
    """``databricks``: whether the workspace has a Databricks workspace to hold tokens for."""

    def __init__(self, connections: Connections, credentials: UserCredentials, principals: Principals, *,
                 databricks: bool) -> None:
        self.connections = connections
        self.credentials = credentials
        self.principals = principals
        self.databricks = databricks

    async def put(self, caller: Principal, connection: str | None, fields: Mapping[str, object]
                  ) -> dict[str, object]:
        """Store a token for ``connection`` (None: Databricks) for the caller or, by an admin, for
        ``fields["principal"]``."""
        name = self._connection(connection)
        body = parse(CredentialBody, fields)
        subject = await self._subject(caller, body.principal)
        await self.credentials.put(name, subject.id, body.bearer_token)
        log.info("credential of %s for %s stored", subject.name, _label(name))
        return {"connection": _label(name), "principal": subject.name, "stored": True}

    async def remove(self, caller: Principal, connection: str | None, principal: str | None) -> dict[str, object]:
        name = self._connection(connection)
        subject = await self._subject(caller, principal)
        if not await self.credentials.remove(name, subject.id):
            raise NotFound(f"There is no credential of '{subject.name}' for connection '{name}'.", param="name")
        log.info("credential of %s for %s removed", subject.name, _label(name))
        return {"connection": _label(name), "principal": subject.name, "deleted": True}

    async def listing(self, caller: Principal, principal: str | None) -> dict[str, object]:
        """The connections the subject has a credential for (never the tokens)."""
        subject = await self._subject(caller, principal)
        rows = await self.credentials.connections_of(subject.id)
        return {"principal": subject.name, "data": [{"connection": _label(c), "updated_at": u} for c, u in rows]}

    def _connection(self, name: str | None) -> str:
        if name is None:
            if not self.databricks:
                raise NotFound("This workspace has no Databricks workspace configured.", param="databricks")
            return USER_CREDENTIAL
        entry = self.connections.entries.get(name)
        if entry is None:
            raise NotFound(f"Connection '{name}' not found.", param="name")
        if not entry.per_user:
            raise InvalidRequest(f"The connection '{name}' uses its own credentials, not each user's.",
                                 param="name", code="invalid_value")
        return name

    async def _subject(self, caller: Principal, name: str | None) -> Principal:
        """The principal whose credential is meant: the caller, or (for admins) the one named."""
        if name is None or name == caller.name:
            return caller
        if not caller.is_admin:
            raise Forbidden("Only an admin may manage another principal's credentials.", param="principal")
        found = await self.principals.by_name(name)
        if found is None:
            raise NotFound(f"No principal named '{name}'.", param="principal")
        return Principal(id=found.id, name=found.name)


def _label(name: str) -> str:
    return "databricks" if name == USER_CREDENTIAL else name
