"""PostgreSQL's own enforcement for a space: the session a model's query runs in, and its grants.

The database's grants are the real boundary: give each space a login (or ``database_roles``) that
can read only the space's tables (the README has the SQL that makes one), and the server warns at
start when its login can read anything else. Each query runs in a read-only transaction with a statement,
lock and idle timeout and a search path of only the space's schemas, as the caller's role when the
space maps users to roles.
"""

from __future__ import annotations

from typing import Any

_READABLE = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p') AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT')
ORDER BY 1, 2"""
_RELATIONS = "SELECT DISTINCT relname FROM pg_catalog.pg_class WHERE relkind IN ('r', 'v', 'm', 'f', 'p')"


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def session(timeout_s: float, schemas: list[str], role: str | None) -> str:
    """The statements that open a model query's transaction (one round trip)."""
    ms = max(1, int(timeout_s * 1000))
    statements = ["SET TRANSACTION READ ONLY", f"SET LOCAL statement_timeout = {ms}",
                  f"SET LOCAL lock_timeout = {min(ms, 2000)}",
                  f"SET LOCAL idle_in_transaction_session_timeout = {ms + 5000}",
                  f"SET LOCAL search_path = {', '.join(quote(s) for s in schemas) or 'pg_catalog'}"]
    if role is not None:
        statements.append(f"SET LOCAL ROLE {quote(role)}")
    return "; ".join(statements)


def inspect(raw: Any, listed: set[tuple[str, str]], roles: list[str]) -> tuple[list[str], dict[str, list[str]], str]:
    """Every relation name of the database, the unlisted tables the login (``""``) and each role can
    read, and the database's name."""
    with raw.cursor() as cur:
        known = [str(r[0]) for r in cur.execute(_RELATIONS).fetchall()]
        database = str(cur.execute("SELECT current_database()").fetchone()[0])
        readable: dict[str, list[str]] = {}
        for role in ["", *roles]:
            try:
                if role:
                    cur.execute(f"SET LOCAL ROLE {quote(role)}")
                rows = cur.execute(_READABLE).fetchall()
            except Exception as exc:  # a role the login may not become: its queries will fail the same way
                readable[role] = [f"(cannot check: {str(exc).strip().splitlines()[0]})"]
                raw.rollback()
                continue
            readable[role] = [f"{s}.{n}" for s, n in rows if (s, n) not in listed]
            raw.rollback()
    return known, readable, database
