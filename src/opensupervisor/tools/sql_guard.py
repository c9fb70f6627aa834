"""Checking model-written SQL before it runs: one read-only query over the space's tables, capped.

The parser is the second line of defence; the engine is the first (``tools.sql_engines``: SQLite's
authorizer, PostgreSQL's grants and read-only transactions, DuckDB's locked configuration). What
passes here: exactly one statement, a ``SELECT`` (or a set operation of them, with CTEs), that
calls only allow-listed functions (``tools.sql_functions``) and reads only the space's tables.

Every table reference is resolved in its own scope, the way the engine resolves it: a name is a
CTE only inside the query that defines it (a CTE's body sees the CTEs before it; all of them, with
``RECURSIVE``), and anything else is a real table that must be one of the space's. A CTE may not
take the name of a real table (the space's, or any the database has), so the two can never be
confused. Unqualified references are rewritten to the schema of the space's table they name, so
the engine's search path cannot pick another one.

The engine runs the SQL sqlglot writes back from the checked tree, not the model's text, and
sqlglot's writer is not a faithful printer: some nodes are written out as bare text (an operator,
a date part, a collation) and some dialects' transpilation turns a string into such text (DuckDB's
``COLLATE 'x'``, ``date_add(d, 1, 'x')``). So that text must be a plain word, and the SQL as
written out is parsed and checked again until it writes back to itself: what is checked is what runs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from opensupervisor.errors import ToolError
from opensupervisor.tools.sql_functions import ALLOWED_CAST_TYPES, ALLOWED_CLASSES, ALLOWED_NAMES

MAX_SQL_CHARS = 100_000
# Nodes that write, lock, change the session or reach outside the database.
_FORBIDDEN = tuple(getattr(exp, name) for name in (
    "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "Command", "Pragma", "Attach",
    "Detach", "Copy", "Set", "Use", "Transaction", "Commit", "Rollback", "Into", "LoadData", "Grant",
    "Revoke", "Analyze", "Install", "Export", "Refresh", "Summarize", "Describe", "Show", "Lock",
) if hasattr(exp, name))
DEFAULT_SCHEMA = {"postgres": "public", "duckdb": "main", "sqlite": "main"}
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast", "temp", "pg_temp", "system"})
_SYSTEM_PREFIXES = ("pg_", "sqlite_", "duckdb_")
# What the writer prints as bare text: a word (a date part, a keyword), a collation name and an
# operator (PostgreSQL's ``OPERATOR(schema.op)``), nothing that could hold a space, quote or paren.
_WORD = re.compile(r"[A-Za-z0-9_]+")
_COLLATION = re.compile(r"[A-Za-z0-9_]+(?:[.-][A-Za-z0-9_]+)*")
_OPERATOR = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*\.)?[-+*/<>=~!@#%^&|`?]+")


class UnsafeSQL(ToolError):
    """The SQL is not one read-only query over the allowed tables; the message says why."""


def check_query(sql: str, *, dialect: str, tables: set[str], max_rows: int, known: frozenset[str] = frozenset(),
                catalog: str | None = None) -> str:
    """The query, checked, with a row limit (``max_rows + 1``, to tell a truncated result) and its
    table references qualified. ``known``: every relation name the database has (no CTE may take
    one); ``catalog``: the database's own name, the only one a three-part name may use."""
    return _checked(sql, dialect, frozenset(tables), max_rows, known, catalog)


@functools.lru_cache(maxsize=1024)
def _checked(sql: str, dialect: str, tables: frozenset[str], max_rows: int, known: frozenset[str],
             catalog: str | None) -> str:
    """Cached: a space's example queries are checked once, not at every call."""
    if len(sql) > MAX_SQL_CHARS:
        raise UnsafeSQL(f"the SQL is {len(sql):,} characters long; at most {MAX_SQL_CHARS:,} are allowed")
    tree = _one_select(sql, dialect)
    _check_tree(tree, dialect, tables, known, catalog)
    return _settled(_written(_limited(tree, max_rows + 1), dialect), dialect, tables, known, catalog)


def _one_select(sql: str, dialect: str) -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as exc:
        raise UnsafeSQL(f"the SQL does not parse: {str(exc).splitlines()[0]}") from exc
    except (SqlglotError, RecursionError) as exc:
        raise UnsafeSQL("the SQL does not parse: it is nested too deeply") from exc
    if len(statements) != 1:
        raise UnsafeSQL(f"exactly one statement is allowed, not {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, (exp.Select, exp.SetOperation)):
        raise UnsafeSQL(f"only SELECT queries are allowed, not {tree.key.upper()}")
    return tree


def _check_tree(tree: exp.Expression, dialect: str, tables: frozenset[str], known: frozenset[str],
                catalog: str | None) -> None:
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN):
            raise UnsafeSQL(f"{node.key.upper()} is not allowed: the space is read-only")
        _check_node(node, dialect)
        _check_shape(node, dialect)
    _Tables(dialect, tables, known, catalog).check(tree)


def _written(tree: exp.Expression, dialect: str) -> str:
    try:
        return tree.sql(dialect=dialect)
    except RecursionError as exc:
        raise UnsafeSQL("the SQL is nested too deeply") from exc


def _settled(out: str, dialect: str, tables: frozenset[str], known: frozenset[str], catalog: str | None) -> str:
    """The SQL as written out for the engine, parsed and checked again until it writes back to
    itself: the writer may print text the tree held as data (a string turned into bare words), or
    print two nodes as one (a table name run into the keyword after it), and the engine reads what is
    written. A second round is allowed for the writer's own normalizing (``INTERVAL 1 DAY`` is
    written back as ``INTERVAL '1' DAY``); what is returned was checked and reads back unchanged."""
    for _ in range(2):
        try:
            tree = _one_select(out, dialect)
            _check_tree(tree, dialect, tables, known, catalog)
            again = _written(tree, dialect)
        except UnsafeSQL as exc:
            raise UnsafeSQL(f"the SQL reads differently once written out for the database ({exc}); "
                            "write it more plainly") from exc
        if again == out:
            return out
        out = again
    raise UnsafeSQL("the SQL reads differently once written out for the database; write it more plainly")


@functools.lru_cache(maxsize=1024)
def cte_names(sql: str, dialect: str) -> frozenset[str]:
    """The CTE names of a checked query (SQLite's authorizer sees a CTE read without columns, as in
    ``count(*)``, as a read of a table by that name)."""
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except (SqlglotError, RecursionError):  # not from the guard: the engine refuses it on its own
        return frozenset()
    return frozenset(normalized(cte.args["alias"].this, dialect) for cte in tree.find_all(exp.CTE)
                     if cte.args.get("alias") is not None)


def _check_node(node: exp.Expr, dialect: str) -> None:
    """Functions from the allow-list only, unqualified; casts to data types only."""
    if isinstance(node, exp.Func):
        name = function_name(node)
        if isinstance(node.parent, exp.Dot) and node is node.parent.expression:
            raise UnsafeSQL(f"the function {node.parent.this.sql(dialect)}.{name}() is not allowed: call "
                            "functions by their plain name")
        known = name in ALLOWED_NAMES[dialect] if _anonymous(node) else type(node) in ALLOWED_CLASSES
        if not known:
            name = name if _anonymous(node) else _written_name(node, dialect)
            raise UnsafeSQL(f"the function {name}() is not allowed in a space's queries (only aggregate, window, "
                            "math, string, date/time, JSON, array, conditional functions and casts are)")
    elif isinstance(node, exp.Cast) and not isinstance(node.args.get("to"), exp.DataType):
        raise UnsafeSQL(f"casting to {node.args['to'].sql(dialect)} is not allowed (only to data types)")
    elif isinstance(node, exp.DataType) and node.this not in ALLOWED_CAST_TYPES:
        raise UnsafeSQL(f"the type {node.sql(dialect)} is not allowed in a space's queries")


def _check_shape(node: exp.Expr, dialect: str) -> None:
    """Text the writer prints bare must be a word, and two readings sqlglot gets wrong are refused:
    ``x IN name`` (SQLite reads the name as a table; sqlglot as a column) and ``t AT x`` (sqlglot
    turns the table into a column, which no table check would then see)."""
    if isinstance(node, exp.Var) and not _WORD.fullmatch(node.name):
        raise UnsafeSQL(f"{node.name!r} is not a date part or keyword; write units and keywords as plain words")
    elif isinstance(node, exp.Operator) and not _OPERATOR.fullmatch(str(node.args.get("operator") or "")):
        raise UnsafeSQL(f"OPERATOR({node.args.get('operator')}) does not name an operator")
    elif isinstance(node, exp.Collate) and node.expression.is_string and not _COLLATION.fullmatch(node.expression.name):
        raise UnsafeSQL(f"{node.expression.sql(dialect)} is not a collation name; write it as a name, e.g. "
                        "COLLATE nocase")
    elif isinstance(node, exp.In) and node.args.get("field") is not None and not isinstance(
            node.args["field"], exp.Unnest):
        raise UnsafeSQL("IN takes a list or a subquery in parentheses, e.g. x IN (1, 2) or x IN (SELECT ...)")
    elif isinstance(node, exp.AtIndex):
        raise UnsafeSQL(f"{node.sql(dialect)} is not allowed: only the space's tables may be read")


def _anonymous(node: exp.Func) -> bool:
    return isinstance(node, (exp.Anonymous, exp.AnonymousAggFunc, exp.CombinedAggFunc, exp.ParameterizedAgg))


def _written_name(node: exp.Func, dialect: str) -> str:
    """A typed function's name in the dialect (sqlglot's class names are its own)."""
    try:
        return node.sql(dialect).split("(", 1)[0].strip().lower() or function_name(node)
    except (SqlglotError, RecursionError):
        return function_name(node)


def function_name(node: exp.Func) -> str:
    """The name as the engine will see it: lower case, except a quoted name, kept exactly."""
    if not _anonymous(node):
        return str(node.sql_name()).lower()
    this = node.this
    if isinstance(this, exp.Identifier):
        return str(this.this) if this.quoted else str(this.this).lower()
    return str(this).lower()


def normalized(part: exp.Expression | str | None, dialect: str) -> str:
    """A name part as the engine compares it: PostgreSQL folds unquoted names to lower case and
    keeps quoted ones; SQLite and DuckDB compare without case."""
    if part is None:
        return ""
    if isinstance(part, str):
        return part if dialect == "postgres" else part.lower()
    text = str(part.this) if isinstance(part, exp.Identifier) else part.name
    quoted = isinstance(part, exp.Identifier) and part.quoted
    return text if quoted and dialect == "postgres" else text.lower()


def listed_tables(tables: frozenset[str] | set[str] | list[str], dialect: str) -> set[tuple[str, str]]:
    """The space's tables as (schema, name) the way the engine names them; an unqualified one is in
    the default schema (``public``, ``main``)."""
    out: set[tuple[str, str]] = set()
    for listed in tables:
        table = exp.to_table(listed, dialect=dialect)
        out.add((normalized(table.args.get("db"), dialect) or DEFAULT_SCHEMA[dialect],
                 normalized(table.this, dialect)))
    return out


class _Tables:
    """Resolves each table reference in its scope against the space's tables."""

    def __init__(self, dialect: str, tables: frozenset[str], known: frozenset[str], catalog: str | None) -> None:
        self.dialect = dialect
        self.catalog = self.norm(catalog) if catalog else None
        self.allowed = listed_tables(tables, dialect)
        self.reserved = {name for _, name in self.allowed} | {k.lower() for k in known} | set(known)
        self.listing = ", ".join(sorted(f"{s}.{n}" if s != DEFAULT_SCHEMA[dialect] else n for s, n in self.allowed))

    def norm(self, part: exp.Expression | str | None) -> str:
        return normalized(part, self.dialect)

    def check(self, tree: exp.Expression) -> None:
        for cte in tree.find_all(exp.CTE):
            name = self.norm(cte.args["alias"].this) if cte.args.get("alias") else ""
            if name in self.reserved or name.lower() in self.reserved:
                raise UnsafeSQL(f"the CTE name {name} is the name of a table; give the CTE another name")
        for table in list(tree.find_all(exp.Table)):
            self.resolve(table)

    def resolve(self, table: exp.Table) -> None:
        if not isinstance(table.this, exp.Identifier):
            raise UnsafeSQL("only the space's tables may be read, not table functions or files")
        name, schema = self.norm(table.this), self.norm(table.args.get("db"))
        catalog = self.norm(table.args.get("catalog"))
        if not schema and not catalog and _cte_visible(table, name, self.norm):
            return
        shown = ".".join(p for p in (catalog, schema, name) if p)
        if schema in _SYSTEM_SCHEMAS:
            raise UnsafeSQL(f"the schema {schema} ({shown}) is not readable from a space; it reads only {self.listing}")
        if name.startswith(_SYSTEM_PREFIXES) and not self._listed(schema, name):
            raise UnsafeSQL(f"the system catalog {shown} is not readable from a space; it reads only {self.listing}")
        if catalog and catalog != self.catalog:
            raise UnsafeSQL(f"the table {shown} is in another database; this space reads only {self.listing}")
        if not self._listed(schema, name):
            raise UnsafeSQL(f"the table {shown} is not one of this space's tables ({self.listing})")
        if not schema:
            [owner] = [s for s, n in self.allowed if n == name]
            table.set("db", exp.Identifier(this=owner, quoted=True))

    def _listed(self, schema: str, name: str) -> bool:
        if schema:
            return (schema, name) in self.allowed
        owners = [s for s, n in self.allowed if n == name]
        if len(owners) > 1:
            raise UnsafeSQL(f"the table name {name} is in several schemas ({', '.join(sorted(owners))}); "
                            "write it with its schema")
        return bool(owners)


def _cte_visible(table: exp.Table, name: str, norm: Callable[[exp.Expression | str | None], str]) -> bool:
    """Whether ``name`` at ``table`` is a CTE: one of a ``WITH`` of an enclosing query, seen from the
    query's body, or an earlier one of the same ``WITH`` (any of it, when ``RECURSIVE``) seen from a
    CTE's body. Nothing else is: a name that is not a CTE here is a real table."""
    child: exp.Expr = table
    inside: exp.CTE | None = None
    node = table.parent
    while node is not None:
        if isinstance(child, exp.CTE):
            inside = child
        with_ = node.args.get("with_") if not isinstance(node, exp.With) else None
        if isinstance(with_, exp.With):
            ctes: list[exp.CTE] = list(with_.expressions)
            if child is with_ and inside is not None and not with_.args.get("recursive"):
                ctes = ctes[:next((i for i, c in enumerate(ctes) if c is inside), 0)]
            if any(cte.args.get("alias") is not None and norm(cte.args["alias"].this) == name for cte in ctes):
                return True
        child, node = node, node.parent
    return False


def _limited(tree: exp.Expression, limit: int) -> exp.Expression:
    if isinstance(tree, exp.Select):
        current = tree.args.get("limit")
        expression = current.expression if isinstance(current, exp.Limit) else None
        if isinstance(expression, exp.Literal) and expression.is_int and int(expression.this) <= limit:
            return tree
        return tree.limit(limit)
    assert isinstance(tree, exp.SetOperation)
    return exp.select("*").from_(tree.subquery("q")).limit(limit)
