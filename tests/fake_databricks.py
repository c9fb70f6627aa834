"""A Databricks workspace on loopback, speaking the real REST shapes of what remote tools call: the
Genie conversation API, Unity Catalog functions with the statement execution API, and the MCP
proxy of external connections. It records who called what, so tests see which token was used."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mcp.server.fastmcp import FastMCP
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SERVICE_TOKEN = "dapi-service-principal"
M2M_TOKEN = "dapi-from-client-credentials"
USER_TOKENS = {"dapi-ann": "ann@example.com", SERVICE_TOKEN: "service-principal", M2M_TOKEN: "m2m-robot"}
CLIENT_ID, CLIENT_SECRET = "robot", "robot-secret"
ANSWER = "Employees get 25 vacation days. Parental leave is 16 weeks."
SPACES = {"sales": "Sales figures by region", "busy": "A popular space", "locked": "Finance", "broken": "Flaky",
          "slow": "Never finishes"}


@dataclass
class Workspace:
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (who, method, path)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    busy_refusals: int = 0
    statements: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    tokens_issued: int = 0


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error_code": code, "message": message}, status_code=status, headers=headers)


class FakeWorkspace:
    def __init__(self, state: Workspace) -> None:
        self.state = state

    def caller(self, request: Request) -> str | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        who = USER_TOKENS.get(token)
        if who is not None:
            self.state.calls.append((who, request.method, request.url.path))
        return who

    async def guarded(self, request: Request) -> Response | None:
        if self.caller(request) is None:
            return error(401, "UNAUTHENTICATED", "Invalid access token.")
        return None

    async def get_space(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        space_id = request.path_params["space_id"]
        if space_id not in SPACES:
            return error(404, "RESOURCE_DOES_NOT_EXIST", f"Space {space_id} does not exist.")
        return JSONResponse({"space_id": space_id, "title": space_id.title(), "description": SPACES[space_id]})

    async def ask(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        space_id = request.path_params["space_id"]
        if space_id == "locked":
            return error(403, "PERMISSION_DENIED", "You do not have CAN_RUN on this space.")
        if space_id == "broken":
            return error(500, "INTERNAL_ERROR", "Something went wrong.")
        if space_id == "busy" and self.state.busy_refusals < 1:
            self.state.busy_refusals += 1
            return error(429, "RESOURCE_EXHAUSTED", "Too many requests.", {"Retry-After": "1"})
        content = (await request.json())["content"]
        conversation_id = request.path_params.get("conversation_id") or uuid.uuid4().hex
        message_id = uuid.uuid4().hex
        message = {"id": message_id, "message_id": message_id, "conversation_id": conversation_id,
                   "space_id": space_id, "content": content, "status": "SUBMITTED", "attachments": []}
        self.state.messages[message_id] = message
        if "conversation_id" in request.path_params:
            return JSONResponse(message)
        return JSONResponse({"conversation_id": conversation_id, "message_id": message_id,
                             "conversation": {"id": conversation_id, "space_id": space_id}, "message": message})

    def answer(self, message: dict[str, Any]) -> None:
        """Genie's answer: a clarifying question when the region is missing, else SQL and rows."""
        content = message["content"].lower()
        history = [m for m in self.state.messages.values() if m["conversation_id"] == message["conversation_id"]]
        asked_before = len(history) > 1
        region = next((r for r in ("north", "south") if r in content), None)
        if region is None and not asked_before:
            message["attachments"] = [
                {"attachment_id": uuid.uuid4().hex, "text": {"content": "Which region do you mean?"}},
                {"attachment_id": uuid.uuid4().hex, "suggested_questions": {"questions": ["Revenue in north",
                                                                                         "Revenue in south"]}}]
        else:
            region = region or "north"
            message["attachments"] = [
                {"attachment_id": "q1", "query": {"query": "SELECT bad", "description": "first try"}},
                {"attachment_id": "q2", "query": {
                    "query": f"SELECT sum(amount) AS revenue FROM sales WHERE region = '{region}'",
                    "description": f"Total revenue in the {region} region",
                    "query_result_metadata": {"row_count": 1}}},
                {"attachment_id": uuid.uuid4().hex, "text": {"content": f"Revenue in {region} is 42."}}]
        message["status"] = "COMPLETED"

    async def get_message(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        message = self.state.messages.get(request.path_params["message_id"])
        if message is None:
            return error(404, "RESOURCE_DOES_NOT_EXIST", "No such message.")
        polls = self.state.polls[message["id"]] = self.state.polls.get(message["id"], 0) + 1
        if message["space_id"] != "slow":
            if polls == 1:
                message["status"] = "EXECUTING_QUERY"
            else:
                self.answer(message)
        return JSONResponse(message)

    async def query_result(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        if request.path_params["attachment_id"] != "q2":
            return error(404, "RESOURCE_DOES_NOT_EXIST", "No result for this attachment.")
        columns = [{"name": "revenue", "type_name": "LONG", "position": 0}]
        return JSONResponse({"statement_response": {
            "statement_id": "s1", "status": {"state": "SUCCEEDED"},
            "manifest": {"format": "JSON_ARRAY", "schema": {"column_count": 1, "columns": columns}},
            "result": {"row_count": 1, "data_array": [["42"]]}}})

    async def get_function(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        name = request.path_params["name"]
        if name != "main.tools.lookup_customer":
            return error(404, "NOT_FOUND", f"Routine or Model '{name}' does not exist.")
        return JSONResponse({
            "name": "lookup_customer", "catalog_name": "main", "schema_name": "tools", "full_name": name,
            "comment": "Look up a customer by id", "data_type": "STRING", "full_data_type": "STRING",
            "routine_body": "SQL", "input_params": {"parameters": [
                {"name": "customer_id", "type_name": "STRING", "type_text": "string", "position": 0,
                 "comment": "Customer identifier"},
                {"name": "limit", "type_name": "INT", "type_text": "int", "position": 1, "parameter_default": "10"}]}})

    async def execute(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        body = await request.json()
        if body.get("warehouse_id") != "wh-1":
            return error(400, "INVALID_PARAMETER_VALUE", "Unknown warehouse.")
        values = {p["name"]: p.get("value") for p in body.get("parameters", [])}
        statement_id = uuid.uuid4().hex
        self.state.statements[statement_id] = {"statement": body["statement"], "values": values, "polls": 0}
        return JSONResponse({"statement_id": statement_id, "status": {"state": "PENDING"}})

    async def get_statement(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        statement_id = request.path_params["statement_id"]
        found = self.state.statements[statement_id]
        found["polls"] += 1
        if found["values"].get("customer_id") == "hang" or found["polls"] < 2:
            return JSONResponse({"statement_id": statement_id, "status": {"state": "RUNNING"}})
        if found["values"].get("customer_id") == "nobody":
            return JSONResponse({"statement_id": statement_id, "status": {
                "state": "FAILED",
                "error": {"error_code": "BAD_REQUEST", "message": "[USER_RAISED_EXCEPTION] no such customer"}}})
        values = found["values"]
        value = f"Customer {values.get('customer_id')}: gold tier (limit {values.get('limit', '10')})"
        return JSONResponse({"statement_id": statement_id, "status": {"state": "SUCCEEDED"},
                             "manifest": {"schema": {"columns": [{"name": "result", "type_name": "STRING"}]}},
                             "result": {"data_array": [[value]]}})

    async def get_endpoint(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        if request.path_params["name"] != "ka-handbook":
            return error(404, "RESOURCE_DOES_NOT_EXIST", "Serving endpoint not found.")
        return JSONResponse({"name": "ka-handbook", "description": "Answers from the HR handbook",
                             "state": {"ready": "READY"}})

    async def invoke(self, request: Request) -> Response:
        """A knowledge assistant's answer, in the Responses shape, with url_citation annotations."""
        if (refused := await self.guarded(request)) is not None:
            return refused
        body = await request.json()
        assert body["input"][-1]["role"] == "user"
        notes = [{"type": "url_citation", "start_index": 0, "end_index": 31, "title": "Leave policy",
                  "url": "https://intranet.example.com/leave#vacation"},
                 {"type": "url_citation", "start_index": 32, "end_index": len(ANSWER), "title": "Parental leave",
                  "url": "https://intranet.example.com/leave#parental"}]
        return JSONResponse({"id": "resp_ka", "object": "response", "status": "completed", "output": [
            {"type": "message", "id": "msg_ka", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": ANSWER, "annotations": notes}]}]})

    async def get_app(self, request: Request) -> Response:
        if (refused := await self.guarded(request)) is not None:
            return refused
        name = request.path_params["name"]
        if name != "mcp-tickets":
            return error(404, "RESOURCE_DOES_NOT_EXIST", f"App {name} does not exist.")
        return JSONResponse({"name": name, "url": f"{str(request.base_url).rstrip('/')}/apps/{name}",
                             "compute_status": {"state": "ACTIVE"}})

    async def oidc(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"issuer": f"{base}/oidc", "authorization_endpoint": f"{base}/oidc/v1/authorize",
                             "token_endpoint": f"{base}/oidc/v1/token"})

    async def token(self, request: Request) -> Response:
        """OAuth client credentials: the client authenticates with HTTP Basic."""
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        form = await request.form()
        if request.headers.get("authorization") != expected or form.get("grant_type") != "client_credentials":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        self.state.tokens_issued += 1
        return JSONResponse({"access_token": M2M_TOKEN, "token_type": "Bearer", "expires_in": 3600})

    async def cancel_statement(self, request: Request) -> Response:
        self.state.cancelled.append(request.path_params["statement_id"])
        return JSONResponse({})


class Proxy:
    """An MCP server behind the workspace's tokens: the CRM behind the MCP proxy of its connection,
    or an app's own server."""

    def __init__(self, fake: FakeWorkspace, path: str, tool: Any) -> None:
        self.fake = fake
        self.mcp = FastMCP("server", stateless_http=True, log_level="WARNING", streamable_http_path=path)
        self.mcp.add_tool(tool)
        self.app = self.mcp.streamable_http_app()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.fake.caller(Request(scope)) is None:
            await error(401, "UNAUTHENTICATED", "Invalid access token.")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def fake_workspace() -> tuple[Starlette, Workspace]:
    fake = FakeWorkspace(Workspace())

    def find_account(name: str) -> str:
        """Finds an account in the CRM."""
        return f"account {name}: 3 open deals"

    def open_ticket(title: str) -> str:
        """Opens a support ticket."""
        return f"ticket T-1 opened: {title}"

    crm = Proxy(fake, "/api/2.0/mcp/external/crm", find_account)
    tickets = Proxy(fake, "/apps/mcp-tickets/mcp", open_ticket)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with crm.mcp.session_manager.run(), tickets.mcp.session_manager.run():
            yield

    genie = "/api/2.0/genie/spaces/{space_id}"
    message = genie + "/conversations/{conversation_id}/messages/{message_id}"
    app = Starlette(routes=[
        Route("/.well-known/databricks-config", lambda r: JSONResponse({}), methods=["GET"]),
        Route("/oidc/.well-known/oauth-authorization-server", fake.oidc, methods=["GET"]),
        Route("/oidc/v1/token", fake.token, methods=["POST"]),
        Route("/api/2.0/serving-endpoints/{name}", fake.get_endpoint, methods=["GET"]),
        Route("/serving-endpoints/{name}/invocations", fake.invoke, methods=["POST"]),
        Route("/api/2.0/apps/{name}", fake.get_app, methods=["GET"]),
        Route("/apps/mcp-tickets/mcp", tickets),
        Route(genie, fake.get_space, methods=["GET"]),
        Route(genie + "/start-conversation", fake.ask, methods=["POST"]),
        Route(genie + "/conversations/{conversation_id}/messages", fake.ask, methods=["POST"]),
        Route(message, fake.get_message, methods=["GET"]),
        Route(message + "/attachments/{attachment_id}/query-result", fake.query_result, methods=["GET"]),
        Route("/api/2.1/unity-catalog/functions/{name}", fake.get_function, methods=["GET"]),
        Route("/api/2.0/sql/statements", fake.execute, methods=["POST"]),
        Route("/api/2.0/sql/statements/{statement_id}", fake.get_statement, methods=["GET"]),
        Route("/api/2.0/sql/statements/{statement_id}/cancel", fake.cancel_statement, methods=["POST"]),
        Route("/api/2.0/mcp/external/crm", crm),
    ], lifespan=lifespan)
    return app, fake.state
