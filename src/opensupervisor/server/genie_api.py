"""The Databricks Genie conversation API over the workspace's spaces (``databricks-sdk`` ``w.genie``).

``start-conversation`` and follow-up messages answer before they return: the stored message is
already ``COMPLETED`` (or ``FAILED``) when a client polls it. A message's attachments are the query
(``query``, ``description``) and a text summary; its result is a statement response with the
columns and the rows as strings, as Databricks SQL returns them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from opensupervisor.errors import InvalidRequest, NotFound, ToolError
from opensupervisor.identity import Principal
from opensupervisor.runtime import Runtime
from opensupervisor.server.auth import authenticate
from opensupervisor.server.state import JSONResponse
from opensupervisor.store.genie import GenieMessages, StoredMessage
from opensupervisor.tools.genie import Answer, GenieSpaces
from opensupervisor.wire.request import parse_json_body
from opensupervisor.wire.validation import validated

BASE = "/api/2.0/genie/spaces"
TYPE_NAMES = {bool: "BOOLEAN", int: "LONG", float: "DOUBLE", str: "STRING"}


def _state(request: Request) -> tuple[Runtime, Principal, GenieSpaces]:
    state: Runtime = request.app.state.os
    principal = authenticate(request, state.admin_token)
    return state, principal, state.spaces


def _space_id(request: Request, state: Runtime, principal: Principal) -> str:
    """The path's space; one the caller may not run is as absent as one that does not exist."""
    space_id = str(request.path_params["space_id"])
    if space_id not in state.spaces.spaces:
        raise NotFound(f"Genie space '{space_id}' does not exist.", param="space_id")
    state.service.gate.check_space(principal, space_id, None)
    return space_id


class GenieMessage(BaseModel):
    """A question to a space; the SDK's other fields (attachments, …) are accepted and ignored."""

    model_config = ConfigDict(strict=True)
    content: str


async def _content(request: Request) -> str:
    content = validated(GenieMessage, parse_json_body(await request.body())).content
    if not content.strip():
        raise InvalidRequest("Missing required parameter: 'content'.", param="content",
                             code="missing_required_parameter")
    return content.strip()


async def get_space(request: Request) -> Response:
    state, principal, spaces = _state(request)
    space_id = _space_id(request, state, principal)
    space = spaces.spaces[space_id]
    return JSONResponse({"space_id": space_id, "title": space.title or space_id,
                         "description": space.description or "", "warehouse_id": ""})


async def start_conversation(request: Request) -> Response:
    state, principal, _ = _state(request)
    space_id = _space_id(request, state, principal)
    content = await _content(request)
    conversation_id = uuid.uuid4().hex
    message = await _answer(state, principal, space_id, conversation_id, content, [])
    now = message["created_timestamp"]
    conversation = {"id": conversation_id, "conversation_id": conversation_id, "space_id": space_id,
                    "title": content[:100], "created_timestamp": now, "last_updated_timestamp": now}
    return JSONResponse({"conversation_id": conversation_id, "message_id": message["message_id"],
                         "conversation": conversation, "message": message})


async def create_message(request: Request) -> Response:
    state, principal, _ = _state(request)
    space_id = _space_id(request, state, principal)
    content = await _content(request)
    earlier = await _conversation(state, principal, space_id, request.path_params["conversation_id"])
    pairs = [(m.message["content"], _query(m.message)) for m in earlier if _query(m.message)]
    return JSONResponse(await _answer(state, principal, space_id, request.path_params["conversation_id"],
                                      content, pairs))


async def get_message(request: Request) -> Response:
    return JSONResponse((await _message(request)).message)


async def get_query_result(request: Request) -> Response:
    stored = await _message(request)
    attachment = request.path_params.get("attachment_id")
    query = next((a for a in stored.message.get("attachments", []) if "query" in a), None)
    if stored.result is None or query is None or attachment not in (None, query["attachment_id"]):
        raise NotFound("This message has no query result.", param="attachment_id")
    return JSONResponse({"statement_response": stored.result})


async def _message(request: Request) -> StoredMessage:
    state, principal, _ = _state(request)
    space_id = _space_id(request, state, principal)
    messages = await _conversation(state, principal, space_id, request.path_params["conversation_id"])
    found = next((m for m in messages if m.message["message_id"] == request.path_params["message_id"]), None)
    if found is None:
        raise NotFound(f"Message '{request.path_params['message_id']}' does not exist.", param="message_id")
    return found


async def _conversation(state: Runtime, principal: Principal, space_id: str,
                        conversation_id: str) -> list[StoredMessage]:
    owner = None if principal.is_admin else principal.id
    messages = await GenieMessages(state.service.store).conversation(space_id, conversation_id, owner)
    if not messages:
        raise NotFound(f"Conversation '{conversation_id}' does not exist.", param="conversation_id")
    return messages


async def _answer(state: Runtime, principal: Principal, space_id: str, conversation_id: str, content: str,
                  earlier: list[tuple[str, str]]) -> dict[str, Any]:
    message_id = uuid.uuid4().hex
    now = int(time.time() * 1000)
    message: dict[str, Any] = {"id": message_id, "message_id": message_id, "conversation_id": conversation_id,
                               "space_id": space_id, "content": content, "created_timestamp": now,
                               "last_updated_timestamp": now, "attachments": []}
    result: dict[str, Any] | None = None
    model = state.spaces.sql_model(space_id, None)
    if model is None:
        raise NotFound(f"Genie space '{space_id}' has no model to write its SQL.", param="space_id")
    gate = state.service.gate
    gate.check_space(principal, space_id, model)
    answer: Answer | None = None
    async with gate.direct(principal, model, "genie") as use:
        try:
            answer = await state.spaces.ask(space_id, content, None, principal, earlier)
        except ToolError as exc:
            use.status = "failed"
            message.update(status="FAILED", error={"error": str(exc), "type": "GENERIC_CHAT_COMPLETION_EXCEPTION"})
    if answer is not None:
        attachment_id = uuid.uuid4().hex
        result = _statement(attachment_id, answer)
        summary = f"{answer.description or 'The query'} returned {len(answer.rows.rows)} rows."
        message.update(status="COMPLETED", query_result={"statement_id": attachment_id,
                                                         "row_count": len(answer.rows.rows)},
                       attachments=[
                           {"attachment_id": attachment_id, "query": {
                               "id": attachment_id, "query": answer.sql, "description": answer.description,
                               "title": content[:100], "statement_id": attachment_id,
                               "query_result_metadata": {"row_count": len(answer.rows.rows)}}},
                           {"attachment_id": uuid.uuid4().hex, "text": {"content": summary}}])
    message["last_updated_timestamp"] = int(time.time() * 1000)
    await GenieMessages(state.service.store).add(message, result, owner=principal.id)
    return message


def _query(message: dict[str, Any]) -> str:
    return next((a["query"]["query"] for a in message.get("attachments", []) if "query" in a), "")


def _statement(statement_id: str, answer: Answer) -> dict[str, Any]:
    rows = answer.rows
    types = [next((TYPE_NAMES.get(type(r[i]), "STRING") for r in rows.rows if r[i] is not None), "STRING")
             for i in range(len(rows.columns))]
    columns = [{"name": name, "type_name": t, "type_text": t, "position": i}
               for i, (name, t) in enumerate(zip(rows.columns, types, strict=True))]
    data = [[None if v is None else str(v) for v in row] for row in rows.rows]
    return {"statement_id": statement_id, "status": {"state": "SUCCEEDED"},
            "manifest": {"format": "JSON_ARRAY", "schema": {"column_count": len(columns), "columns": columns},
                         "total_row_count": len(data), "truncated": rows.truncated},
            "result": {"chunk_index": 0, "row_offset": 0, "row_count": len(data), "data_array": data}}


def genie_routes() -> list[BaseRoute]:
    message = f"{BASE}/{{space_id}}/conversations/{{conversation_id}}/messages/{{message_id}}"
    return [
        Route(f"{BASE}/{{space_id}}", get_space, methods=["GET"]),
        Route(f"{BASE}/{{space_id}}/start-conversation", start_conversation, methods=["POST"]),
        Route(f"{BASE}/{{space_id}}/conversations/{{conversation_id}}/messages", create_message, methods=["POST"]),
        Route(message, get_message, methods=["GET"]),
        Route(f"{message}/query-result", get_query_result, methods=["GET"]),
        Route(f"{message}/query-result/{{attachment_id}}", get_query_result, methods=["GET"]),
        Route(f"{message}/attachments/{{attachment_id}}/query-result", get_query_result, methods=["GET"]),
    ]
