"""``uc_function``: a catalog of governed functions, ``catalog.schema.function``, as hosted tools.

Functions are declared in the workspace file's ``[functions."<catalog>.<schema>.<name>"]``:

- Python: a source file defining a function of that name. Its tool schema is read from the source
  with ``ast`` (type hints, defaults, the docstring's summary and ``Args:``), never by importing it
  here; calls run in sandbox workers (``tools.sandbox``), a pool per function, and a workspace with
  Python functions starts only where the sandbox's boundary holds (``[sandbox]``).
- SQL: a SQL body with ``:named`` parameters, run with bound values on a named database.

The tool name follows unitycatalog-ai: dots become ``__`` and the last 64 characters are kept.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import itertools
import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from opensupervisor.core.arguments import bounded
from opensupervisor.core.bounds import cap_cell
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import ConfigError, InvalidRequest, ToolError
from opensupervisor.tools.registry import ToolRegistry, config_description, config_name
from opensupervisor.tools.sandbox import Sandbox
from opensupervisor.tools.sql_roles import check_roles, database_error, role_for, set_role
from opensupervisor.tools.sql_watchdog import WATCHDOG
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, section_entry

log = logging.getLogger(__name__)
JSON_TYPES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "list": "array",
              "dict": "object", "string": "string", "integer": "integer", "number": "number",
              "boolean": "boolean", "array": "array", "object": "object"}


class SqlParameter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    type: Literal["string", "integer", "number", "boolean"] = "string"
    description: str | None = None
    default: Any = None


class FunctionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Literal["python", "sql"]
    description: str | None = None
    source: str | None = None  # python
    database_url: str | None = None  # sql
    sql: str | None = None
    parameters: list[SqlParameter] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0)
    # The tool output's cap in characters (default: the workspace's ``[limits] max_tool_output_chars``).
    max_output_chars: int | None = Field(default=None, ge=256, le=16 * 1024 * 1024)
    # python: the function may open network sockets (its sandbox shares the host's network).
    network: bool = False
    # sql on PostgreSQL, on behalf of the user: a user, group or "*" -> the database role it runs as.
    database_roles: dict[str, str] = Field(default_factory=dict)


SQL_FUNCTION_ROWS = 1000
ALIAS = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def tool_name(full_name: str) -> str:
    return full_name.replace(".", "__")[-64:]


def check_name(full_name: str) -> None:
    parts = full_name.split(".")
    if len(parts) != 3 or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"functions.{full_name}: the name must be catalog.schema.function", param="name")


class Function:
    """One catalog function: its tool definition and how to run it."""

    def __init__(self, full_name: str, entry: FunctionEntry, base_dir: Path, source_code: str | None = None) -> None:
        """``source_code``: a Python function registered at run time, kept as a file under ``base_dir``."""
        self.full_name = full_name
        self.entry = entry
        check_name(full_name)
        self.name = full_name.split(".")[-1]
        if entry.language == "python":
            if source_code is not None:
                digest = hashlib.sha256(source_code.encode()).hexdigest()[:32]
                self.file = base_dir / f"{digest}.py"
                if not self.file.exists():
                    base_dir.mkdir(parents=True, exist_ok=True)
                    self.file.write_text(source_code, encoding="utf-8")
            elif entry.source:
                self.file = (base_dir / entry.source).resolve()
            else:
                raise ConfigError(f"functions.{full_name}: a python function needs source", param="source")
            field = "source" if source_code is None else "source_code"
            description, parameters = _python_signature(self.file, self.name, full_name, field)
        else:
            if not entry.sql or not entry.database_url:
                raise ConfigError(f"functions.{full_name}: a sql function needs database_url and sql",
                                  param="database_url" if entry.sql else "sql")
            description, parameters = None, _sql_schema(entry.parameters)
            try:
                url = sa.make_url(entry.database_url)
            except ArgumentError as exc:  # never the URL itself: it may hold a password
                raise ConfigError(f"functions.{full_name}: database_url is not a database URL",
                                  param="database_url") from exc
            check_roles(entry.database_roles, entry.database_url, f"functions.{full_name}")
            if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_absolute():
                url = url.set(database=str(base_dir / url.database))
            self.engine = sa.create_engine(url, poolclass=sa.NullPool) if url.get_backend_name() == "sqlite" \
                else sa.create_engine(url.set(drivername="postgresql+psycopg"), pool_size=2, max_overflow=2)
        self.tool = ToolDef(tool_name(full_name), entry.description or description or full_name, parameters,
                            max_output_chars=entry.max_output_chars)


class FunctionCatalog:
    """The workspace file's functions, and those registered at run time (stored, shared by every
    process, which reloads them every few seconds and at once after its own changes)."""

    def __init__(self, workspace: Workspace, sandbox: Sandbox, registered_dir: Path | None = None) -> None:
        self.sandbox = sandbox
        self.registered_dir = registered_dir or Path(".opensupervisor") / "functions"
        self.registered: dict[str, Function] = {}
        self._versions: dict[str, int] = {}
        self.functions: dict[str, Function] = {}
        self.cell_chars = workspace.limits.max_cell_chars
        self.max_output_chars = workspace.limits.max_tool_output_chars
        for full_name, raw in workspace.functions.items():
            entry = section_entry(FunctionEntry, f"functions.{full_name}", raw)
            if entry.language == "python":
                self._require_sandbox(full_name)
            self.functions[full_name] = Function(full_name, entry, workspace.base_dir)

    def _require_sandbox(self, full_name: str) -> None:
        """Python functions only where their sandbox's boundary holds (or the weaker mode was chosen)."""
        try:
            self.sandbox.require()
        except ConfigError as exc:
            raise ConfigError(f"functions.{full_name}: {exc}", param="source_code") from exc

    def factory(self, spec: ToolSpec, workspace: Workspace) -> Toolset:
        name = config_name(spec, self.functions.keys() | self.registered.keys(), "Function")
        function = self.lookup(name)
        assert function is not None
        alias = spec.config.get("name_alias")
        if alias is not None and (not isinstance(alias, str) or not ALIAS.match(alias)):
            param = f"{spec.param}.uc_function.name_alias"
            raise InvalidRequest(f"Invalid value for '{param}': a tool name of 1 to 64 letters, digits, '_' or '-'.",
                                 param=param, code="invalid_value")
        return FunctionTool(self, function, config_description(spec), alias)

    def lookup(self, name: str) -> Function | None:
        return self.functions.get(name) or self.registered.get(name)

    def build(self, name: str, entry: FunctionEntry, source_code: str | None) -> Function:
        """A function to register: checked like the workspace file's (``ConfigError`` says what is wrong)."""
        if name in self.functions:
            raise ConfigError(f"functions.{name} is declared in the workspace file; change it there", param="name")
        if entry.language == "python" and source_code is None:
            raise ConfigError(f"functions.{name}: a python function needs source_code", param="source_code")
        if entry.language == "python":
            self._require_sandbox(name)
        return Function(name, entry, self.registered_dir, source_code)

    def load(self, rows: list[tuple[str, dict[str, Any], str | None, int]]) -> None:
        """Replace the registered functions with ``rows`` (name, entry, source code, version)."""
        current: dict[str, Function] = {}
        for name, raw, source_code, version in rows:
            known = self.registered.get(name)
            if known is not None and self._versions.get(name) == version:
                current[name] = known
                continue
            try:
                current[name] = self.build(name, FunctionEntry.model_validate(raw), source_code)
                self._versions[name] = version
            except (ConfigError, ValidationError) as exc:  # a stored function that no longer loads
                log.warning("registered function %s is skipped: %s", name, exc)
        self.registered = current

    async def aclose(self) -> None:
        await self.sandbox.aclose()
        for function in [*self.functions.values(), *self.registered.values()]:
            if function.entry.language == "sql":
                function.engine.dispose()


class FunctionTool(Toolset):
    def __init__(self, catalog: FunctionCatalog, function: Function, description: str | None,
                 alias: str | None = None) -> None:
        self.catalog = catalog
        self.function = function
        self.description = description
        # ``name_alias`` (the Supervisor API's older dialect): the name the model sees instead.
        self.alias = alias

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        tool = self.function.tool
        return [ToolDef(self.alias or tool.name, self.description or tool.description, tool.parameters,
                        max_output_chars=tool.max_output_chars)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        function = self.function
        if function.entry.language == "python":
            entry = function.entry
            return await self.catalog.sandbox.call(
                function.file, function.name, arguments, timeout_s=entry.timeout_s, principal=ctx.principal.id,
                network=entry.network, max_output_chars=entry.max_output_chars or self.catalog.max_output_chars)
        values = {p.name: arguments.get(p.name, p.default) for p in function.entry.parameters}
        role = role_for(function.entry.database_roles, ctx.principal, f"the function '{function.full_name}'")
        return await asyncio.to_thread(_run_sql, function, values, role, self.catalog.cell_chars)


def _run_sql(function: Function, values: dict[str, Any], role: str | None, cell_chars: int) -> str:
    """Run the body with bound parameters (never interpolated), as ``role``, stopped at the
    function's deadline by the database (PostgreSQL's ``statement_timeout``) and from outside (the
    watchdog interrupts the connection, so this thread really returns): rows as JSON (each value cut
    at ``cell_chars`` as it is fetched), or the rows affected."""
    assert function.entry.sql is not None
    timeout_s = function.entry.timeout_s
    deadline = time.monotonic() + timeout_s
    try:
        with function.engine.begin() as conn:
            raw: Any = conn.connection.driver_connection
            postgres = function.engine.dialect.name == "postgresql"
            if postgres:
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(int(timeout_s * 1000), 1)}")
            token = WATCHDOG.arm(deadline, (lambda: raw.cancel_safe(timeout=2)) if postgres else raw.interrupt)
            try:
                set_role(conn, role)
                result = conn.execute(sa.text(function.entry.sql), values)
                if not result.returns_rows:
                    return orjson.dumps({"rows_affected": result.rowcount}).decode()
                columns = list(result.keys())
                rows = [[_cell(v, cell_chars) for v in row] for row in itertools.islice(result, SQL_FUNCTION_ROWS)]
                return orjson.dumps({"columns": columns, "rows": rows}, default=str).decode()
            finally:
                WATCHDOG.disarm(token)
    except SQLAlchemyError as exc:
        if time.monotonic() >= deadline:
            raise ToolError(f"the function did not finish within {timeout_s:g} seconds") from exc
        raise ToolError(f"the database refused the call: {database_error(exc)}") from exc


def _cell(value: Any, limit: int) -> Any:
    """A value as JSON shows it, a long text or bytes value cut at ``limit`` characters."""
    if isinstance(value, bytes | bytearray | memoryview):
        value = str(bytes(value))
    return cap_cell(value, limit)[0] if isinstance(value, str) else value


def _sql_schema(parameters: list[SqlParameter]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for p in parameters:
        prop: dict[str, Any] = {"type": p.type}
        if p.description:
            prop["description"] = p.description
        if p.default is not None:
            prop["default"] = p.default
        properties[p.name] = bounded(prop)
    return {"type": "object", "properties": properties,
            "required": [p.name for p in parameters if p.default is None], "additionalProperties": False}


def _python_signature(file: Path, name: str, full_name: str, field: str) -> tuple[str | None, dict[str, Any]]:
    """The description and JSON Schema of ``name`` in ``file``, read from its source; ``field``
    names where the source came from (``source`` or ``source_code``) in errors."""
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"functions.{full_name}: cannot read {file.name}: {exc}", param=field) from exc
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        raise ConfigError(f"functions.{full_name}: {file} defines no function {name}()", param=field)
    summary, arg_docs = _docstring(ast.get_docstring(node) or "")
    args = node.args.args
    defaults = dict(zip([a.arg for a in args[len(args) - len(node.args.defaults):]], node.args.defaults, strict=True))
    properties: dict[str, Any] = {}
    for arg in args:
        prop = _json_type(arg.annotation, full_name, arg.arg, field)
        if arg.arg in arg_docs:
            prop["description"] = arg_docs[arg.arg]
        if arg.arg in defaults:
            with contextlib.suppress(ValueError):  # a default that is not a literal is simply not shown
                prop["default"] = ast.literal_eval(defaults[arg.arg])
        properties[arg.arg] = bounded(prop)
    required = [a.arg for a in args if a.arg not in defaults]
    return summary, {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _json_type(annotation: ast.expr | None, full_name: str, arg: str, field: str) -> dict[str, Any]:
    if annotation is None:
        raise ConfigError(f"functions.{full_name}: parameter {arg} needs a type hint", param=field)
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):  # X | None
        side = annotation.right if _is_none(annotation.left) else annotation.left
        return _json_type(side, full_name, arg, field)
    if isinstance(annotation, ast.Subscript) and isinstance(annotation.value, ast.Name):
        outer = annotation.value.id.lower()
        if outer == "optional":
            return _json_type(annotation.slice, full_name, arg, field)
        if outer == "list":
            return {"type": "array", "items": _json_type(annotation.slice, full_name, arg, field)}
        if outer == "dict":
            return {"type": "object"}
    if isinstance(annotation, ast.Name) and annotation.id in JSON_TYPES:
        return {"type": JSON_TYPES[annotation.id]}
    raise ConfigError(f"functions.{full_name}: parameter {arg} has an unsupported type {ast.unparse(annotation)} "
                      "(use str, int, float, bool, list[...] or dict)", param=field)


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _docstring(text: str) -> tuple[str | None, dict[str, str]]:
    """The summary paragraph and the ``Args:`` entries of a Google-style docstring."""
    summary = text.split("\n\n", 1)[0].strip() or None
    args: dict[str, str] = {}
    in_args = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args:
            match = re.match(r"(\w+)(?:\s*\([^)]*\))?\s*:\s*(.+)", stripped)
            if match:
                args[match.group(1)] = match.group(2)
            elif not stripped or stripped.endswith(":"):  # the section ends
                in_args = False
    return summary, args


def register(registry: ToolRegistry, workspace: Workspace, registered_dir: Path | None = None) -> FunctionCatalog:
    """Add the ``uc_function`` kind; returns the catalog (the caller closes it)."""
    catalog = FunctionCatalog(workspace, Sandbox.from_section(workspace.sandbox), registered_dir)
    registry.register("uc_function", catalog.factory)
    return catalog
