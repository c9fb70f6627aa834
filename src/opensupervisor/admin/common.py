"""What the admin services share: who may use them, parsing input into a model, and the audit log."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel

from opensupervisor.errors import Forbidden
from opensupervisor.identity import Principal
from opensupervisor.wire.validation import validated

# One line per change, never a secret: who can tell what changed, whichever surface changed it.
log = logging.getLogger("opensupervisor.admin")
M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], fields: Mapping[str, object]) -> M:
    """``fields`` (a JSON body, or the CLI's flags under the same names) as ``model``; the first
    problem is an ``InvalidRequest`` naming its field."""
    return validated(model, dict(fields))


def require_admin(caller: Principal, what: str) -> None:
    """Only admins manage ``what`` (the command line is the operator's: it has the database)."""
    if not caller.is_admin:
        raise Forbidden(f"Only an admin may manage {what}.")
