"""Checking model-written SQL before it runs: one read-only query over the space's tables, capped.

The parser is the first line of defence (the database connection is read-only as well, see
``tools.sql_engines``): exactly one statement, a ``SELECT`` (or a set operation of them, with CTEs),
no statement or function that writes, reads files or reaches outside, and only allowed tables.
"""

from __future__ import annotations

import functools

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from opensupervisor.errors import ToolError

# Nodes that write, change the session or reach outside the database.
_FORBIDDEN = tuple(getattr(exp, name) for name in (
    "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Command", "Pragma", "Attach",
    "Detach", "Copy", "Set", "Use", "Transaction", "Commit", "Rollback", "Into", "LoadData", "Grant",
    "Revoke", "Analyze", "Install", "Export", "Refresh", "Summarize", "Describe", "Show",
) if hasattr(exp, name))
# Functions that read files, run programs or reach other databases (DuckDB, PostgreSQL, SQLite).
_FORBIDDEN_FUNCTIONS = frozenset({
    "read_csv", "read_csv_auto", "read_json", "read_json_auto", "read_json_objects", "read_ndjson",
    "read_parquet", "parquet_scan", "read_text", "read_blob", "glob", "sniff_csv", "read_xlsx", "query",
    "query_table", "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
    "lo_export", "dblink", "dblink_exec", "pg_sleep", "load_extension", "readfile", "writefile", "edit",
    "fts_main", "sqlite_dbpage", "getenv", "current_setting", "set_config", "pg_terminate_backend",
    "pg_cancel_backend", "pg_reload_conf", "system",
})
_DEFAULT_SCHEMAS = frozenset({"", "main", "public"})


class UnsafeSQL(ToolError):
    """The SQL is not one read-only query over the allowed tables; the message says why."""


def check_query(sql: str, *, dialect: str, tables: set[str], max_rows: int) -> str:
    """The query, checked and with a row limit (``max_rows + 1``, to tell a truncated result)."""
    return _checked(sql, dialect, frozenset(tables), max_rows)


@functools.lru_cache(maxsize=1024)
def _checked(sql: str, dialect: str, tables: frozenset[str], max_rows: int) -> str:
    """Cached: a space's example queries are checked once, not at every call."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as exc:
        raise UnsafeSQL(f"the SQL does not parse: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise UnsafeSQL(f"exactly one statement is allowed, not {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, (exp.Select, exp.SetOperation)):
        raise UnsafeSQL(f"only SELECT queries are allowed, not {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN):
            raise UnsafeSQL(f"{node.key.upper()} is not allowed: the space is read-only")
        if isinstance(node, exp.Func) and _function_name(node) in _FORBIDDEN_FUNCTIONS:
            raise UnsafeSQL(f"the function {_function_name(node)}() is not allowed")
    _check_tables(tree, {t.lower() for t in tables})  # (an UnsafeSQL raised here is not cached)
    return _limited(tree, max_rows + 1).sql(dialect=dialect)


def _function_name(node: exp.Func) -> str:
    name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
    return str(name).lower()


def _check_tables(tree: exp.Expression, allowed: set[str]) -> None:
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise UnsafeSQL("only the space's tables may be read, not table functions")
        name = table.name.lower()
        qualified = ".".join(p.lower() for p in (table.catalog, table.db, table.name) if p)
        if (not table.db and name in ctes) or qualified in allowed:
            continue
        if name in allowed and table.db.lower() in _DEFAULT_SCHEMAS and not table.catalog:
            continue
        raise UnsafeSQL(f"the table {qualified} is not one of this space's tables ({', '.join(sorted(allowed))})")


def _limited(tree: exp.Expression, limit: int) -> exp.Expression:
    if isinstance(tree, exp.Select):
        current = tree.args.get("limit")
        expression = current.expression if isinstance(current, exp.Limit) else None
        if isinstance(expression, exp.Literal) and expression.is_int and int(expression.this) <= limit:
            return tree
        return tree.limit(limit)
    assert isinstance(tree, exp.SetOperation)
    return exp.select("*").from_(tree.subquery("q")).limit(limit)
