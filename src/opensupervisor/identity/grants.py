"""Who may use what: grants of a privilege on a workspace object to users, service principals or groups.

Objects and their privileges, as the Supervisor API's tools need them:

=====================  ====================================  ================
object                 named in a request as                 privilege
=====================  ====================================  ================
``model:<name>``       ``model``                             ``CAN_QUERY``
``genie_space:<id>``   ``genie_space.id``                    ``CAN_RUN``
``function:<name>``    ``uc_function.name``                  ``EXECUTE``
``knowledge_assistant:<id>``  ``knowledge_assistant_id``     ``CAN_QUERY``
``connection:<name>``  ``uc_connection.name``, ``mcp.connection_name``  ``USE_CONNECTION``
``app:<name>``         ``app.name``, ``agent_endpoint.endpoint_name``  ``CAN_USE``
=====================  ====================================  ================

An object with no grant at all follows the workspace's ``[access] default`` (``allow``: every
caller may use it; ``deny``: only admins). An object with grants may be used by admins and by the
grantees, directly or through a group. A request that names anything its caller may not use is
refused before the loop starts: ``403`` with ``param`` at the model or the tool. What a tool entry
names is resolved once (``tools.targets``), for this check and for the tool alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from opensupervisor.errors import Forbidden
from opensupervisor.identity.principal import Principal

PRIVILEGES = {"model": "CAN_QUERY", "genie_space": "CAN_RUN", "function": "EXECUTE",
              "knowledge_assistant": "CAN_QUERY", "connection": "USE_CONNECTION", "app": "CAN_USE"}
Default = Literal["allow", "deny"]


@dataclass(frozen=True, slots=True)
class Grant:
    object: str  # "genie_space:reviews"
    principal: str  # a user, service principal or group name
    privilege: str


def check_object(value: str) -> tuple[str, str]:
    """``kind:name`` with a known kind; raises ``ValueError`` naming the problem."""
    kind, _, name = value.partition(":")
    if kind not in PRIVILEGES or not name:
        raise ValueError(f"'{value}' is not <kind>:<name> with kind one of {', '.join(sorted(PRIVILEGES))}")
    return kind, name


class Grants:
    def __init__(self, grants: Iterable[Grant], default: Default = "allow") -> None:
        self.default = default
        self._by_object: dict[str, set[str]] = {}
        for grant in grants:
            self._by_object.setdefault(grant.object, set()).add(grant.principal)

    def may(self, principal: Principal, obj: str) -> bool:
        if principal.is_admin:
            return True
        grantees = self._by_object.get(obj)
        if grantees is None:
            return self.default == "allow"
        return principal.name in grantees or bool(grantees & principal.groups)

    def check_request(self, principal: Principal, model: str, tools: Iterable[tuple[str, str, str]]) -> None:
        """Refuse the first model or tool ``principal`` may not use; ``tools`` are (param, kind, name) of
        each object a tool entry names, as the tool's factory will resolve it."""
        if not self.may(principal, f"model:{model}"):
            raise Forbidden(f"You do not have CAN_QUERY on model '{model}'.", param="model")
        for param, kind, name in tools:
            if not self.may(principal, f"{kind}:{name}"):
                raise Forbidden(f"You do not have {PRIVILEGES[kind]} on {kind.replace('_', ' ')} '{name}'.",
                                param=param)


class Access:
    """The grants in force: the workspace file's, plus the ones stored through the admin API (which
    may not change a workspace object's). ``load`` takes the stored ones as they are now."""

    def __init__(self, declared: dict[str, list[str]], default: Default = "allow") -> None:
        self.declared = {obj: list(names) for obj, names in declared.items()}
        self.default = default
        self.stored: dict[str, list[str]] = {}
        self.grants = self._build()

    def load(self, stored: dict[str, list[str]]) -> None:
        self.stored = {obj: names for obj, names in stored.items() if obj not in self.declared}
        self.grants = self._build()

    def _build(self) -> Grants:
        entries = {**self.stored, **self.declared}
        return Grants((Grant(obj, name, PRIVILEGES[obj.partition(":")[0]]) for obj, names in entries.items()
                       for name in names), self.default)

    def listing(self) -> list[dict[str, object]]:
        entries = [(obj, names, "workspace") for obj, names in self.declared.items()]
        entries += [(obj, names, "stored") for obj, names in self.stored.items()]
        return [{"object": obj, "privilege": PRIVILEGES[obj.partition(":")[0]], "principals": sorted(names),
                 "origin": origin} for obj, names, origin in sorted(entries)]
