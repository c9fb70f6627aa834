"""``genie_space``: text-to-SQL spaces over real databases (SQLite, DuckDB, PostgreSQL).

A space (the workspace file's ``[genie_spaces.<id>]``) names a database, the tables it may read,
instructions, column descriptions and example question/SQL pairs. The loop's model sees one tool
per space, ``genie_<id>``, taking a question. A call writes SQL with a model (constrained to a
``{"sql", "description"}`` object), checks it (``tools.sql_guard``), runs it read-only and returns
the SQL, its description and the result as a markdown table. A refused or failing query goes back
to the model with the reason, a bounded number of times. A question close to an example question
uses that example's trusted SQL without asking the model.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from opensupervisor.core.arguments import text_property
from opensupervisor.core.bounds import cap_cell
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import Model, ModelRequest, ToolDef, Toolset
from opensupervisor.errors import ConfigError, ModelError, ToolError
from opensupervisor.identity import Principal
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.tools.registry import ToolRegistry, config_description, config_name, prefixed_tool_name
from opensupervisor.tools.sql_roles import check_roles, role_for
from opensupervisor.tracing.wrappers import traced_request
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, section_entry

# The engines (their drivers) and the SQL parser are imported where a space first opens its
# database: a process whose runs query no space never loads them.
if TYPE_CHECKING:
    from opensupervisor.tools.sql_engines import Column, Inspection, ReadOnlyDatabase, Rows

log = logging.getLogger(__name__)
# The SQL and description echoed in an answer are cut at this many characters.
SQL_SHOWN = 4096
# How close (difflib ratio of the normalized texts) a question must be to an example's to reuse its SQL.
EXAMPLE_MATCH = 0.9
SQL_FORMAT = {"type": "json_schema", "name": "sql_query", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["sql", "description"],
    "properties": {"sql": {"type": "string"}, "description": {"type": "string"}}}}
QUESTION_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["question"],
                   "properties": {"question": text_property("The question, in plain words")}}


class ExampleQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    sql: str


class GenieSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    database_url: str
    tables: list[str] = Field(min_length=1)
    title: str | None = None
    description: str | None = None
    instructions: str = ""
    # "table.column" -> what the column means
    column_descriptions: dict[str, str] = Field(default_factory=dict)
    example_queries: list[ExampleQuery] = Field(default_factory=list)
    sample_questions: list[str] = Field(default_factory=list)
    # The catalog model that writes the SQL; default: the model of the run calling the space.
    model: str | None = None
    max_rows: int = Field(default=1000, ge=1, le=100_000)
    display_rows: int = Field(default=50, ge=1, le=10_000)
    timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=10)
    # Each value of a result, and the whole tool output, cut at this many characters (default: the
    # workspace's ``[limits] max_cell_chars`` and ``max_tool_output_chars``).
    max_cell_chars: int | None = Field(default=None, ge=16, le=16 * 1024 * 1024)
    max_output_chars: int | None = Field(default=None, ge=256, le=16 * 1024 * 1024)
    # On behalf of the user (PostgreSQL): a user, group or "*" -> the database role their queries run as.
    database_roles: dict[str, str] = Field(default_factory=dict)


def tool_name(space_id: str) -> str:
    """``genie_<id>``, with characters outside ``[a-zA-Z0-9_-]`` replaced, at most 64 characters."""
    return prefixed_tool_name("genie_", space_id)


class GenieSpaces:
    """The workspace's spaces, validated at start-up; each database is opened on first use."""

    def __init__(self, workspace: Workspace, catalog: ModelCatalog) -> None:
        self.catalog = catalog
        self.base_dir = workspace.base_dir
        self.limits = workspace.limits
        self.spaces: dict[str, GenieSpace] = {}
        for space_id, raw in workspace.genie_spaces.items():
            self.spaces[space_id] = section_entry(GenieSpace, f"genie_spaces.{space_id}", raw)
            check_roles(self.spaces[space_id].database_roles, self.spaces[space_id].database_url,
                        f"genie_spaces.{space_id}")
            model = self.spaces[space_id].model
            if model is not None and model not in workspace.models:
                raise ConfigError(f"genie_spaces.{space_id}.model names unknown model '{model}'", param="model")
        self._databases: dict[str, ReadOnlyDatabase] = {}
        self._schemas: dict[str, dict[str, list[Column]]] = {}
        self._inspections: dict[str, Inspection] = {}

    def database(self, space_id: str) -> ReadOnlyDatabase:
        db = self._databases.get(space_id)
        if db is None:
            from opensupervisor.tools.sql_engines import ReadOnlyDatabase

            space = self.spaces[space_id]
            db = self._databases[space_id] = ReadOnlyDatabase(space.database_url, self.base_dir,
                                                              timeout_s=space.timeout_s, tables=space.tables)
        return db

    def caps(self, space_id: str) -> tuple[int, int]:
        """The space's cell and output caps (its own, else the workspace's)."""
        space = self.spaces[space_id]
        return (space.max_cell_chars or self.limits.max_cell_chars,
                space.max_output_chars or self.limits.max_tool_output_chars)

    async def inspection(self, space_id: str) -> Inspection:
        """What the database holds beside the space's tables, read once (at start, else at first use);
        a login that can read more than the space lists is logged as a warning (its grants are the
        real boundary)."""
        if space_id not in self._inspections:
            space = self.spaces[space_id]
            found = await self.database(space_id).inspect(sorted(set(space.database_roles.values())))
            for who, tables in found.readable.items():
                if tables:
                    log.warning("Genie space '%s': %s can read tables the space does not list: %s. Give the space "
                                "a database login that can read only its tables.", space_id,
                                f"the role {who}" if who else "its database login", ", ".join(tables[:20]))
            self._inspections[space_id] = found
        return self._inspections[space_id]

    async def inspect_all(self) -> None:
        """At start-up: inspect every space's database, so a login that can read more than its space
        lists is reported before anyone asks (a database that cannot be reached is reported too;
        its space is inspected again at first use)."""
        for space_id in self.spaces:
            try:
                await self.inspection(space_id)
            except (ConfigError, ToolError) as exc:
                log.warning("Genie space '%s': its database could not be inspected at start-up: %s", space_id, exc)

    async def checked(self, space_id: str, sql: str) -> str:
        from opensupervisor.tools.sql_guard import check_query

        space, db = self.spaces[space_id], self.database(space_id)
        found = await self.inspection(space_id)
        return check_query(sql, dialect=db.dialect, tables=set(space.tables), max_rows=space.max_rows,
                           known=found.known, catalog=found.catalog)

    async def run(self, space_id: str, sql: str, role: str | None) -> Rows:
        """A checked query's bounded result."""
        cell, output = self.caps(space_id)
        return await self.database(space_id).query(sql, self.spaces[space_id].max_rows, role, cell_chars=cell,
                                                   output_chars=output)

    async def schema(self, space_id: str) -> dict[str, list[Column]]:
        if space_id not in self._schemas:
            try:
                self._schemas[space_id] = await self.database(space_id).describe(self.spaces[space_id].tables)
            except ConfigError as exc:
                raise ToolError(f"the space's database is not usable: {exc}") from exc
        return self._schemas[space_id]

    async def ask(self, space_id: str, question: str, run_model: str | None, principal: Principal,
                  earlier: list[tuple[str, str]] | None = None) -> Answer:
        """Answer a question with one checked, read-only query, run as ``principal``'s database role.
        ``earlier``: the conversation's previous (question, SQL) pairs, for follow-ups. Raises
        ``ToolError`` when no SQL works."""
        space = self.spaces[space_id]
        role = role_for(space.database_roles, principal, f"the space '{space_id}'")
        earlier = earlier or []
        example = _matching_example(space, question) if not earlier else None
        if example is not None:
            sql = await self.checked(space_id, example.sql)
            return Answer(example.sql, f"Trusted example query for: {example.question}",
                          await self.run(space_id, sql, role))
        name = self.sql_model(space_id, run_model)
        if name is None:
            raise ToolError("no model is configured to write SQL for this space")
        items: list[dict[str, Any]] = []
        for previous, previous_sql in earlier:
            items += [_message("user", previous), _message("assistant", sql_reply(previous_sql, ""))]
        items.append(_message("user", question))
        return await _text_to_sql(self, space_id, self.catalog.get(name), items, await self.schema(space_id),
                                  role)

    def sql_model(self, space_id: str, run_model: str | None) -> str | None:
        """The catalog model that writes a space's SQL: its own, the run's, else the catalog's first."""
        return self.spaces[space_id].model or run_model or next(iter(self.catalog.names()), None)

    def own_model(self, space_id: str) -> str | None:
        """The model a space sets for itself (a caller needs CAN_QUERY on it too); None for unknown ids."""
        space = self.spaces.get(space_id)
        return space.model if space is not None else None

    def factory(self, spec: ToolSpec, workspace: Workspace) -> Toolset:
        space_id = config_name(spec, self.spaces, "Genie space")
        return SpaceTools(self, space_id, config_description(spec))

    async def aclose(self) -> None:
        for db in self._databases.values():
            await db.aclose()


class SpaceTools(Toolset):
    def __init__(self, spaces: GenieSpaces, space_id: str, description: str | None) -> None:
        self.spaces = spaces
        self.space_id = space_id
        self.space = spaces.spaces[space_id]
        self.description = description

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        text = self.description or self.space.description or f"Answers questions about {', '.join(self.space.tables)}"
        return [ToolDef(tool_name(self.space_id), f"{text} (asks a text-to-SQL space; pass a plain question)",
                        QUESTION_SCHEMA, max_output_chars=self.spaces.caps(self.space_id)[1])]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        answer = await self.spaces.ask(self.space_id, str(arguments["question"]).strip(), ctx.request.body.model,
                                       ctx.principal)
        return answer.text(self.space, self.spaces.caps(self.space_id)[1])


@dataclass(frozen=True, slots=True)
class Answer:
    sql: str
    description: str
    rows: Rows

    def text(self, space: GenieSpace, cap: int) -> str:
        """The tool output: the SQL, its description, a markdown table and the row count, within ``cap``."""
        return _answer(self.sql, self.description, self.rows, space, cap)


async def _text_to_sql(spaces: GenieSpaces, space_id: str, model: Model, items: list[dict[str, Any]],
                       schema: dict[str, list[Column]], role: str | None) -> Answer:
    space, db = spaces.spaces[space_id], spaces.database(space_id)
    problem = ""
    for _ in range(space.max_attempts):
        try:
            request = ModelRequest(instructions=_prompt(space, schema, db.dialect), items=items,
                                   text_format=SQL_FORMAT, max_output_tokens=512)
            reply = await traced_request(model, request, "text_to_sql")
        except ModelError as exc:
            raise ToolError(f"the model could not write SQL: {exc.message}") from exc
        sql, description = _parse_reply(reply.text)
        try:
            checked = await spaces.checked(space_id, sql)
            return Answer(sql, description, await spaces.run(space_id, checked, role))
        except ToolError as exc:
            problem = str(exc)
            # The feedback comes from the server, not the user: the question stays the last user turn.
            items = [*items, _message("assistant", reply.text),
                     _message("developer", f"That SQL cannot be used: {problem}. Write a corrected query.")]
    raise ToolError(f"no usable SQL after {space.max_attempts} attempts; last problem: {problem}")


def sql_reply(sql: str, description: str) -> str:
    return orjson.dumps({"sql": sql, "description": description}).decode()


def _message(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"  # user and developer turns are input
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def _normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _matching_example(space: GenieSpace, question: str) -> ExampleQuery | None:
    wanted = _normalize(question)
    best, best_ratio = None, EXAMPLE_MATCH
    for example in space.example_queries:
        matcher = difflib.SequenceMatcher(None, wanted, _normalize(example.question))
        # The quick upper bounds skip most examples without the full comparison.
        if matcher.real_quick_ratio() >= best_ratio and matcher.quick_ratio() >= best_ratio:
            ratio = matcher.ratio()
            if ratio >= best_ratio:
                best, best_ratio = example, ratio
    return best


def _prompt(space: GenieSpace, schema: dict[str, list[Column]], dialect: str) -> str:
    lines = [f"You write one read-only {dialect} SQL query that answers the user's question.",
             'Reply with a JSON object: {"sql": "<the query>", "description": "<one line: what it computes>"}.',
             "Use only these tables:"]
    for table, columns in schema.items():
        lines.append(f"- {table}(" + ", ".join(f"{c.name} {c.type}" for c in columns) + ")")
    if space.column_descriptions:
        lines.append("Column meanings:")
        lines += [f"- {column}: {text}" for column, text in space.column_descriptions.items()]
    if space.instructions:
        lines.append(f"Instructions: {space.instructions}")
    for example in space.example_queries:
        lines.append(f"Example. Question: {example.question}\nSQL: {example.sql}")
    return "\n".join(lines)


def _parse_reply(text: str) -> tuple[str, str]:
    """The SQL and description of a model's reply: the JSON object asked for, else a SQL code block."""
    try:
        data = orjson.loads(text)
        if isinstance(data, dict) and isinstance(data.get("sql"), str):
            return data["sql"], str(data.get("description") or "")
    except orjson.JSONDecodeError:
        pass
    block = re.search(r"```(?:sql)?\s*(.+?)```", text, re.S | re.I)
    return (block.group(1) if block else text).strip(), ""


def _answer(sql: str, description: str, rows: Rows, space: GenieSpace, cap: int) -> str:
    """The SQL, its description, a markdown table and the row count, with every cut named; rows are
    left out of the table until the whole fits in ``cap`` (the notes always show)."""
    shown = min(len(rows.rows), space.display_rows)
    text = _rendered(sql, description, rows, space, shown)
    while len(text) > cap and shown > 0:
        shown = min(shown - 1, shown * cap // len(text))
        text = _rendered(sql, description, rows, space, shown)
    return text


def _rendered(sql: str, description: str, rows: Rows, space: GenieSpace, shown: int) -> str:
    from tabulate import tabulate

    table = tabulate(rows.rows[:shown], headers=rows.columns, tablefmt="github") if rows.columns else "(no columns)"
    count = f"{len(rows.rows)}{'+' if rows.truncated else ''} rows"
    notes = []
    if len(rows.rows) > shown:
        notes.append(f"Showing the first {shown} of {count}.")
    if rows.output_cap is not None:
        notes.append(f"The result was cut after {len(rows.rows)} rows: it would not fit in this space's output cap "
                     f"of {rows.output_cap:,} characters (truncated). Ask for fewer rows or columns, or an aggregate.")
    elif rows.truncated:
        notes.append(f"The result was cut at {space.max_rows} rows (truncated).")
    if rows.cut_values:
        notes.append(f"{rows.cut_values} value{'s were' if rows.cut_values > 1 else ' was'} cut at "
                     f"{rows.cell_chars:,} characters.")
    shown_sql, shown_description = cap_cell(sql.strip(), SQL_SHOWN)[0], cap_cell(description, SQL_SHOWN)[0]
    parts = [f"SQL: {shown_sql}", f"Description: {shown_description or 'The query above.'}", table,
             f"Row count: {count}", *notes]
    return "\n\n".join(parts)


def register(registry: ToolRegistry, workspace: Workspace, catalog: ModelCatalog) -> GenieSpaces:
    """Add the ``genie_space`` kind; returns the spaces (the caller closes them)."""
    spaces = GenieSpaces(workspace, catalog)
    registry.register("genie_space", spaces.factory)
    # The Supervisor API's older dialect, {"type": "genie", "genie": {"name", "description", "space_id"}},
    # as apps built on its first version send it.
    registry.register("genie", spaces.factory)
    return spaces
