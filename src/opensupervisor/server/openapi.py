"""``GET /openapi.json``: an OpenAPI 3.1 document of the HTTP API, generated from the request models.

Each route is one ``Operation`` in ``OPERATIONS``; its body schema is the pydantic model the route
validates with, so the document cannot drift from what the server accepts. A route without a model
is listed with its path and query parameters only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.admin.credentials import CredentialBody
from opensupervisor.admin.governance import GatewayBody, GrantBody, LimitsBody
from opensupervisor.admin.identity import Membership, NewPrincipal, NewToken
from opensupervisor.server.console import SignIn
from opensupervisor.server.embeddings_api import EmbeddingsRequest
from opensupervisor.server.genie_api import GenieMessage
from opensupervisor.server.state import JSONResponse
from opensupervisor.tools.connections import ConnectionEntry
from opensupervisor.tools.uc_functions import FunctionEntry
from opensupervisor.wire.conversations import CreateConversation, CreateItems, UpdateConversation
from opensupervisor.wire.request import CompactRequest, CreateResponseRequest
from opensupervisor.wire.response import ResponseStatus
from opensupervisor.wire.validation import INT32_MAX


class RegisteredFunction(FunctionEntry):
    """A function registered through the admin API: a catalog entry with its code inline."""

    source_code: str | None = None


class IngestBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    paths: list[str] | None = None


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # Starlette's (``{model:path}`` is the parameter ``model``)
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    auth: bool = True


PREFIXES = ("/v1", "/ai-gateway/mlflow/v1", "/mlflow/v1")
STRING: dict[str, Any] = {"type": "string"}
# What ``runs.idempotency`` accepts: 1 to 255 printable ASCII characters.
IDEMPOTENCY_KEY: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$",
                                   "description": "Retries with the same key and body answer with the same "
                                                  "response and never start a second run (needs store=true)."}


def _responses_operations(prefix: str) -> list[Operation]:
    base = f"{prefix}/responses"
    one = f"{base}/{{response_id}}"
    return [
        Operation("post", base, "Create a response", "responses", CreateResponseRequest,
                  headers={"Idempotency-Key": IDEMPOTENCY_KEY}),
        Operation("post", f"{base}/compact", "Compact a history into its user messages and one sealed item",
                  "responses", CompactRequest),
        Operation("get", one, "Retrieve a response (with stream=true: replay and follow its events)", "responses",
                  query={"stream": {"type": "boolean"},
                         "starting_after": {"type": "integer", "minimum": -1, "maximum": INT32_MAX}}),
        Operation("delete", one, "Delete a response", "responses"),
        Operation("post", f"{one}/cancel", "Cancel a background response", "responses"),
        Operation("get", f"{one}/input_items", "List a response's input items", "responses",
                  query={"limit": {"type": "integer", "minimum": 1, "maximum": 100},
                         "order": {"enum": ["asc", "desc"]}, "after": STRING}),
        Operation("get", base, "List the caller's stored responses (everyone's for an admin)", "responses",
                  query={"limit": {"type": "integer", "minimum": 1, "maximum": 100},
                         "order": {"enum": ["asc", "desc"]}, "after": STRING,
                         "status": {"enum": list(get_args(ResponseStatus))},
                         "model": STRING, "background": {"type": "boolean"}, "user": STRING,
                         "since": {"type": "integer", "minimum": 0, "maximum": INT32_MAX},
                         "until": {"type": "integer", "minimum": 0, "maximum": INT32_MAX}}),
        Operation("get", f"{one}/events", "Read a streamed or background response's stored event log", "responses",
                  query={"after": {"type": "integer", "minimum": -1, "maximum": INT32_MAX},
                         "limit": {"type": "integer", "minimum": 1, "maximum": 5000}}),
        Operation("get", f"{prefix}/tools", "List the hosted tools the caller may use", "tools"),
        Operation("get", f"{prefix}/approvals", "List the caller's MCP approval requests waiting for an answer",
                  "responses", query={"limit": {"type": "integer", "minimum": 1, "maximum": 100}}),
        Operation("get", f"{prefix}/models", "List the models the caller may query", "models"),
        Operation("get", f"{prefix}/models/{{model_id}}", "Retrieve a model the caller may query", "models"),
        Operation("post", f"{prefix}/embeddings", "Embed texts with the local embedding model", "embeddings",
                  EmbeddingsRequest),
    ]


def _conversation_operations(prefix: str) -> list[Operation]:
    base = f"{prefix}/conversations"
    one, items = f"{base}/{{conversation_id}}", f"{base}/{{conversation_id}}/items"
    include = {"include": {"type": "array", "items": STRING}}
    return [
        Operation("post", base, "Create a conversation", "conversations", CreateConversation),
        Operation("get", one, "Retrieve a conversation", "conversations"),
        Operation("post", one, "Update a conversation's metadata", "conversations", UpdateConversation),
        Operation("delete", one, "Delete a conversation", "conversations"),
        Operation("get", items, "List a conversation's items", "conversations",
                  query={"limit": {"type": "integer", "minimum": 1, "maximum": 100},
                         "order": {"enum": ["asc", "desc"]}, "after": STRING, **include}),
        Operation("post", items, "Add items to a conversation", "conversations", CreateItems, query=include),
        Operation("get", f"{items}/{{item_id}}", "Retrieve a conversation item", "conversations", query=include),
        Operation("delete", f"{items}/{{item_id}}", "Delete a conversation item", "conversations"),
    ]


def _genie_operations() -> list[Operation]:
    space = "/api/2.0/genie/spaces/{space_id}"
    message = f"{space}/conversations/{{conversation_id}}/messages/{{message_id}}"
    return [
        Operation("get", space, "Describe a Genie space", "genie"),
        Operation("post", f"{space}/start-conversation", "Ask a space a first question", "genie", GenieMessage),
        Operation("post", f"{space}/conversations/{{conversation_id}}/messages", "Ask a follow-up question",
                  "genie", GenieMessage),
        Operation("get", message, "Get a message", "genie"),
        Operation("get", f"{message}/query-result", "Get a message's query result", "genie"),
        Operation("get", f"{message}/query-result/{{attachment_id}}", "Get an attachment's query result", "genie"),
        Operation("get", f"{message}/attachments/{{attachment_id}}/query-result", "Get an attachment's query result",
                  "genie"),
    ]


def _admin_operations() -> list[Operation]:
    principals, functions, connections = "/admin/v1/principals", "/admin/v1/functions", "/admin/v1/connections"
    day = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
    return [
        Operation("post", principals, "Create a principal", "admin", NewPrincipal),
        Operation("get", principals, "List principals", "admin"),
        Operation("delete", f"{principals}/{{name}}", "Delete a principal", "admin"),
        Operation("post", f"{principals}/{{name}}/members", "Add a member to a group", "admin", Membership),
        Operation("delete", f"{principals}/{{name}}/members", "Remove a member from a group", "admin", Membership),
        Operation("post", f"{principals}/{{name}}/tokens", "Issue a personal access token", "admin", NewToken),
        Operation("get", "/admin/v1/tokens", "List tokens", "admin", query={"principal": STRING}),
        Operation("delete", "/admin/v1/tokens/{id}", "Revoke a token", "admin"),
        Operation("get", "/admin/v1/grants", "List grants", "admin"),
        Operation("put", "/admin/v1/grants/{object}", "Set who may use an object", "admin", GrantBody),
        Operation("delete", "/admin/v1/grants/{object}", "Remove an object's grants", "admin"),
        Operation("get", "/admin/v1/usage", "Usage totals", "admin",
                  query={"group_by": STRING, "since": day, "until": day, "principal": STRING}),
        Operation("get", functions, "List catalog functions", "admin"),
        Operation("get", f"{functions}/{{name}}", "Describe a function", "admin"),
        Operation("put", f"{functions}/{{name}}", "Register a function", "admin", RegisteredFunction),
        Operation("delete", f"{functions}/{{name}}", "Remove a registered function", "admin"),
        Operation("get", connections, "List connections", "admin"),
        Operation("get", f"{connections}/{{name}}", "Describe a connection", "admin"),
        Operation("put", f"{connections}/{{name}}", "Store a connection", "admin", ConnectionEntry),
        Operation("delete", f"{connections}/{{name}}", "Remove a stored connection", "admin"),
        Operation("get", "/admin/v1/knowledge_assistants", "List knowledge assistants", "admin"),
        Operation("post", "/admin/v1/knowledge_assistants/{id}/ingest", "Ingest a knowledge assistant's sources",
                  "admin", IngestBody),
        Operation("get", "/admin/v1/rate-limits", "List rate limits", "admin"),
        Operation("put", "/admin/v1/rate-limits/{model:path}", "Set a model's rate limits", "admin", LimitsBody),
        Operation("delete", "/admin/v1/rate-limits/{model:path}", "Remove a model's rate limits", "admin"),
        Operation("put", "/api/2.0/serving-endpoints/{name}/ai-gateway", "Set an endpoint's AI Gateway rate limits",
                  "admin", GatewayBody),
    ]


def _other_operations() -> list[Operation]:
    credential = {"principal": STRING}
    return [
        Operation("get", "/v1/connections/credentials", "List the caller's stored credentials", "credentials",
                  query=credential),
        Operation("put", "/v1/connections/{name}/credential", "Store the caller's token for a connection",
                  "credentials", CredentialBody),
        Operation("delete", "/v1/connections/{name}/credential", "Remove the caller's token for a connection",
                  "credentials", query=credential),
        Operation("put", "/v1/databricks/credential", "Store the caller's Databricks token", "credentials",
                  CredentialBody),
        Operation("delete", "/v1/databricks/credential", "Remove the caller's Databricks token", "credentials",
                  query=credential),
        Operation("post", "/console/session", "Sign in to the console: a token for a session cookie", "console",
                  SignIn, auth=False),
        Operation("get", "/console/session", "The console session's principal and CSRF token", "console"),
        Operation("delete", "/console/session", "Sign out of the console", "console", auth=False),
        Operation("get", "/healthz", "Liveness", "operations", auth=False),
        Operation("get", "/.well-known/databricks-config", "Databricks client discovery", "operations", auth=False),
        Operation("get", "/api/ai-gateway/v2/endpoints", "AI Gateway endpoints (none)", "operations", auth=False),
    ]


def operations() -> list[Operation]:
    out = [op for prefix in PREFIXES for op in _responses_operations(prefix) + _conversation_operations(prefix)]
    return out + _genie_operations() + _admin_operations() + _other_operations()


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


def _path(starlette_path: str) -> tuple[str, list[str]]:
    """The OpenAPI path and its parameter names."""
    parts, names = [], []
    for part in starlette_path.split("/"):
        if part.startswith("{"):
            name = part.strip("{}").split(":")[0]
            names.append(name)
            part = f"{{{name}}}"
        parts.append(part)
    return "/".join(parts), names


def _operation(op: Operation, schemas: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    path, names = _path(op.path)
    params = [{"name": n, "in": "path", "required": True, "schema": STRING} for n in names]
    params += [{"name": n, "in": "query", "required": False, "schema": s} for n, s in op.query.items()]
    params += [{"name": n, "in": "header", "required": False, "schema": s} for n, s in op.headers.items()]
    out: dict[str, Any] = {
        "summary": op.summary, "tags": [op.tag], "operationId": f"{op.method}_{path}",
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                      "4XX": {"description": "An OpenAI-shaped error naming the field in `param`",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
    }
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": schemas[(op.body, "validation")]}}}
    if op.auth:
        out["security"] = [{"bearer": []}, {"basic": []}]
    return out


# WebSocket mode of the create route (``server.websocket_api``), as Open Responses marks it.
WEBSOCKET: dict[str, Any] = {
    "description": "A WebSocket on the same path, authenticated as HTTP requests are. Each text message "
                   "{\"type\": \"response.create\", ...} runs one response (without stream, stream_options "
                   "or background); its streaming events come back one JSON text message each, and errors as "
                   "{\"type\": \"error\", \"status\", \"error\"}. Responses run one at a time; the "
                   "connection keeps its latest store: false response for previous_response_id, and lasts "
                   "at most an hour.",
    "clientMessage": {"allOf": [{"$ref": "#/components/schemas/CreateResponseRequest"}],
                      "properties": {"type": {"const": "response.create"}}, "required": ["type"]},
}


@cache
def document() -> dict[str, Any]:
    ops = operations()
    models = sorted({op.body for op in ops if op.body is not None}, key=lambda m: m.__name__)
    schemas, defs = models_json_schema([(m, "validation") for m in models],
                                       ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(_path(op.path)[0], {})[op.method] = _operation(op, schemas)
    for prefix in PREFIXES:
        paths[f"{prefix}/responses"]["x-openresponses-websocket"] = WEBSOCKET
    return {
        "openapi": "3.1.0",
        "info": {"title": "OpenSupervisor", "version": version("opensupervisor"),
                 "description": "OpenAI Responses API with hosted tools, the Genie API and the admin APIs."},
        "paths": paths,
        "components": {"schemas": {**defs.get("$defs", {}), "Error": ERROR_SCHEMA},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "basic": {"type": "http", "scheme": "basic",
                                                     "description": "User `token`, the token as password"}}},
    }


async def openapi_json(request: Request) -> Response:
    # Like /healthz, readable without a token: it describes the API, not anything in it.
    return JSONResponse(document())


def openapi_routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi_json, methods=["GET"])]
