"""Database roles of the tools that query an operator's database (Genie spaces, SQL functions): the
role a caller's queries run as, on behalf of the user, and the first line of a database's error.

Apart from the engines (``tools.sql_engines``) so that a workspace is checked, and a function's
call made, without loading every engine's driver and the SQL parser.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from opensupervisor.errors import ConfigError, ToolError
from opensupervisor.identity import Principal

ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def check_roles(roles: dict[str, str], url: str, where: str) -> None:
    """``database_roles``: PostgreSQL only, each role a plain identifier; raises ``ConfigError``."""
    if not roles:
        return
    if make_url(url).get_backend_name() != "postgresql":
        raise ConfigError(f"{where}.database_roles: database roles need a postgresql:// database",
                          param="database_roles")
    for who, role in roles.items():
        if not ROLE.match(role):
            raise ConfigError(f"{where}.database_roles.{who}: {role!r} is not a database role name",
                              param=f"database_roles.{who}")


def role_for(roles: dict[str, str], principal: Principal, what: str) -> str | None:
    """The database role ``principal``'s queries run as (on behalf of the user): their own mapping,
    else their first group's (by name), else ``"*"``'s. None: the database's own user, when there
    are no roles or for an admin without a mapping. A caller with none may not query."""
    if not roles:
        return None
    for key in (principal.name, *sorted(principal.groups), "*"):
        if key in roles:
            return roles[key]
    if principal.is_admin:
        return None
    raise ToolError(f"{what} runs queries as each user's database role, and '{principal.name}' has none")


def set_role(conn: sa.Connection, role: str | None) -> None:
    """Run the rest of this transaction as ``role`` (the database then decides what it may read)."""
    if role is not None:
        conn.exec_driver_sql(f'SET LOCAL ROLE "{role}"')


def database_error(exc: BaseException) -> str:
    """The first line of what the database said (not SQLAlchemy's wrapping)."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
