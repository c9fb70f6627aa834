"""The caller of a request, carried through the run context from the HTTP edge to every tool call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# What a principal of the store is (a group holds members; only users and service principals call).
Kind = Literal["user", "service_principal", "group"]
# Ten years: a longer token lifetime is a mistake, and far past it the expiry overflows a date.
MAX_TOKEN_LIFETIME_S = 10 * 366 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Principal:
    """A user, group member or service principal; ``id`` owns the responses it creates."""

    id: str
    name: str
    kind: Literal["user", "service_principal"] = "user"
    is_admin: bool = False
    groups: frozenset[str] = field(default_factory=frozenset)


ADMIN = Principal(id="admin", name="admin", kind="service_principal", is_admin=True)
