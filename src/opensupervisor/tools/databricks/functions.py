"""``uc_function`` backed by a Unity Catalog function of a Databricks workspace.

The function's definition comes from Unity Catalog (``GET /api/2.1/unity-catalog/functions/{name}``):
its comment is the description and its parameters (types, comments, defaults) become the same JSON
Schema as a local function's. A call runs on the configured SQL warehouse through the statement
execution API, with the arguments bound as named parameters (never written into the SQL): a scalar
function's value is the output, a table function's rows are ``{"columns", "rows"}`` JSON. A call
whose run is cancelled cancels its statement.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from opensupervisor import tracing
from opensupervisor.core.arguments import bounded
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import InvalidRequest, ToolError
from opensupervisor.tools.databricks.client import DatabricksClient, DatabricksFailure, Identity, segment
from opensupervisor.tools.uc_functions import ALIAS, tool_name

JSON_TYPES = {"STRING": "string", "CHAR": "string", "DATE": "string", "TIMESTAMP": "string",
              "TIMESTAMP_NTZ": "string", "BINARY": "string", "INTERVAL": "string", "BYTE": "integer",
              "SHORT": "integer", "INT": "integer", "LONG": "integer", "FLOAT": "number", "DOUBLE": "number",
              "DECIMAL": "number", "BOOLEAN": "boolean", "ARRAY": "array", "MAP": "object", "STRUCT": "object"}
RUNNING = ("PENDING", "RUNNING")
MAX_ROWS = 1000


class RemoteFunction(Toolset):
    def __init__(self, client: DatabricksClient, full_name: str, param: str, description: str | None,
                 alias: object = None) -> None:
        if alias is not None and (not isinstance(alias, str) or not ALIAS.match(alias)):
            raise InvalidRequest(f"Invalid value for '{param}_alias': a tool name of 1 to 64 letters, digits, '_' "
                                 "or '-'.", param=f"{param}_alias", code="invalid_value")
        self.client = client
        self.full_name = full_name
        self.param = param
        self.description = description
        self.alias = alias if isinstance(alias, str) else None
        self.info: dict[str, Any] = {}

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        identity = await self.client.identity(ctx)
        try:
            path = f"/api/2.1/unity-catalog/functions/{segment(self.full_name)}"
            self.info = await self.client.describe(identity, path)
        except DatabricksFailure as exc:
            if exc.status in (400, 403, 404):
                raise InvalidRequest(f"Function '{self.full_name}' does not exist in this workspace or in the "
                                     f"Databricks workspace ({exc}).", param=self.param, code="invalid_value") from exc
            raise ToolError(str(exc)) from exc
        description = self.description or self.info.get("comment") or self.full_name
        return [ToolDef(self.alias or tool_name(self.full_name), description, schema(self._parameters()))]

    def _parameters(self) -> list[dict[str, Any]]:
        params = (self.info.get("input_params") or {}).get("parameters") or []
        return sorted(params, key=lambda p: p.get("position", 0))

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        warehouse = self.client.section.warehouse_id
        if warehouse is None:
            raise ToolError("no SQL warehouse is configured to run Unity Catalog functions (databricks.warehouse_id)")
        identity = await self.client.identity(ctx)
        params = self._parameters()
        names = [p["name"] for p in params if p["name"] in arguments]
        call = f"{_quoted(self.full_name)}({', '.join(f'{n} => :{n}' for n in names)})"
        table = self.info.get("data_type") == "TABLE_TYPE"
        statement = f"SELECT * FROM {call}" if table else f"SELECT {call} AS result"
        bound = [_parameter(p, arguments[p["name"]]) for p in params if p["name"] in arguments]
        attributes = {"databricks.identity": identity.who, "db.system": "databricks"}
        with tracing.span("statement", "RETRIEVER", inputs={"sql": statement}, attributes=attributes) as span:
            result = await self._execute(identity, warehouse, statement, bound)
            columns = [c["name"] for c in ((result.get("manifest") or {}).get("schema") or {}).get("columns", [])]
            rows = (result.get("result") or {}).get("data_array") or []
            span.outputs({"columns": columns, "row_count": len(rows)})
        if table:
            return orjson.dumps({"columns": columns, "rows": rows[:MAX_ROWS]}).decode()
        value = rows[0][0] if rows and rows[0] else None
        return "null" if value is None else str(value)

    async def _execute(self, identity: Identity, warehouse: str, statement: str,
                       parameters: list[dict[str, Any]]) -> dict[str, Any]:
        result = await self.client.request(identity, "POST", "/api/2.0/sql/statements", body={
            "statement": statement, "warehouse_id": warehouse, "parameters": parameters, "format": "JSON_ARRAY",
            "disposition": "INLINE", "wait_timeout": "0s", "row_limit": MAX_ROWS})
        location = f"/api/2.0/sql/statements/{segment(str(result.get('statement_id')))}"
        wait = 0.5
        try:
            while (result.get("status") or {}).get("state") in RUNNING:
                await asyncio.sleep(wait)
                wait = min(wait * 1.5, 5.0)
                result = await self.client.request(identity, "GET", location)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(identity, location))
            raise
        status = result.get("status") or {}
        if status.get("state") != "SUCCEEDED":
            error = status.get("error") or {}
            raise ToolError(f"the function failed ({status.get('state')}): {error.get('message') or 'no details'}")
        return result

    async def _cancel(self, identity: Identity, location: str) -> None:
        with contextlib.suppress(ToolError):  # else it ends on its own; the run is cancelled either way
            await self.client.request(identity, "POST", f"{location}/cancel")


def schema(params: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of a function's parameters: types, comments, defaults (as local functions)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in params:
        prop: dict[str, Any] = {"type": JSON_TYPES.get(str(p.get("type_name", "STRING")).upper(), "string")}
        if p.get("comment"):
            prop["description"] = p["comment"]
        if p.get("parameter_default") is not None:
            prop["default"] = _default(str(p["parameter_default"]))
        else:
            required.append(p["name"])
        properties[p["name"]] = bounded(prop)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _default(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip("'")


def _parameter(param: dict[str, Any], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": param["name"], "type": str(param.get("type_name", "STRING")).upper()}
    if value is not None:
        out["value"] = value if isinstance(value, str) else orjson.dumps(value).decode()
    return out


def _quoted(full_name: str) -> str:
    return ".".join(f"`{part.replace('`', '``')}`" for part in full_name.split("."))
