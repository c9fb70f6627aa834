"""``genie_space`` backed by a Databricks workspace's Genie space, through the Genie conversation API.

A question starts a conversation (``start-conversation``), or continues the one this response chain
already has with the space, so follow-ups and Genie's clarifying questions keep their context. The
message is polled with backoff until Genie is done; its query result is fetched. The tool output
carries the SQL, its description, the rows as a table, the row count, Genie's text and its suggested
questions, and names the conversation (which is how a later response of the chain finds it, however
the client sends the history). Conversations at once are bounded per workspace, and Genie's 429s
are waited out as their ``Retry-After`` says.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from typing import Any

from opensupervisor import tracing
from opensupervisor.core.context import RunContext, Slot
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import InvalidRequest, ToolError
from opensupervisor.tools.databricks.client import DatabricksClient, DatabricksFailure, Identity, segment
from opensupervisor.tools.genie import QUESTION_SCHEMA, tool_name

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "QUERY_RESULT_EXPIRED")
MARKER = re.compile(r"\(Genie conversation ([A-Za-z0-9_-]+) in space ([^)\s,]+), ([0-9a-f]{16})\)")
DISPLAY_ROWS = 50
# This run's conversation with each space (space id → conversation id).
CONVERSATIONS: Slot[dict[str, str]] = Slot("databricks_genie_conversations", dict)


class RemoteGenie(Toolset):
    def __init__(self, client: DatabricksClient, space_id: str, param: str, description: str | None) -> None:
        self.client = client
        self.space_id = space_id
        self.param = param
        self.description = description
        self.base = f"/api/2.0/genie/spaces/{segment(space_id)}"

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        identity = await self.client.identity(ctx)
        try:
            space = await self.client.describe(identity, self.base)
        except DatabricksFailure as exc:
            if exc.status in (403, 404):  # neither here nor there for this caller: the request's mistake
                raise InvalidRequest(f"Genie space '{self.space_id}' does not exist in this workspace or in the "
                                     f"Databricks workspace ({exc}).", param=self.param, code="invalid_value") from exc
            raise ToolError(str(exc)) from exc
        text = self.description or space.get("description") or space.get("title") or f"Genie space {self.space_id}"
        return [ToolDef(tool_name(self.space_id), f"{text} (asks a text-to-SQL space; pass a plain question)",
                        QUESTION_SCHEMA)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        question = _verbatim(ctx) if self.client.section.genie_verbatim_question else None
        question = question or str(arguments["question"]).strip()
        identity = await self.client.identity(ctx)
        conversation = self._conversation(ctx)
        attributes = {"databricks.identity": identity.who, "genie.space_id": self.space_id}
        with tracing.span("genie", "RETRIEVER", inputs={"question": question}, attributes=attributes) as span:
            async with self.client.genie_turns:
                message = await self._ask(identity, conversation, question)
                message = await self._until_done(identity, message)
            conversation = str(message["conversation_id"])
            ctx.slot(CONVERSATIONS)[self.space_id] = conversation
            if message.get("status") != "COMPLETED":
                error = message.get("error") or {}
                raise ToolError(f"Genie could not answer ({message.get('status')}): "
                                f"{error.get('error') or error.get('message') or 'no details'}")
            answer = await self._answer(identity, message)
            span.attribute("genie.conversation_id", conversation)
            span.outputs(answer)
        tag = self.client.sign(ctx.principal.id, self.space_id, conversation)
        return _text(answer, f"(Genie conversation {conversation} in space {self.space_id}, {tag})")

    def _conversation(self, ctx: RunContext) -> str | None:
        """This chain's conversation with the space: from this run, else the latest in its history
        that this server made for this caller (the mark is signed: a client cannot claim another's)."""
        known = ctx.slot(CONVERSATIONS).get(self.space_id)
        if known is not None:
            return str(known)
        for item in reversed(ctx.history):
            if item.get("type") == "function_call_output" and isinstance(item.get("output"), str):
                for conversation, space, tag in reversed(MARKER.findall(item["output"])):
                    if space == self.space_id and hmac.compare_digest(
                            tag, self.client.sign(ctx.principal.id, space, conversation)):
                        return str(conversation)
        return None

    async def _ask(self, identity: Identity, conversation: str | None, question: str) -> dict[str, Any]:
        if conversation is not None:
            try:
                return await self.client.request(identity, "POST",
                                                 f"{self.base}/conversations/{segment(conversation)}/messages",
                                                 body={"content": question})
            except DatabricksFailure as exc:
                if exc.status != 404:  # a conversation Genie no longer has: start a new one
                    raise
        started = await self.client.request(identity, "POST", f"{self.base}/start-conversation",
                                            body={"content": question})
        message = dict(started.get("message") or {})
        message.setdefault("conversation_id", started.get("conversation_id"))
        message.setdefault("message_id", started.get("message_id"))
        return message

    async def _until_done(self, identity: Identity, message: dict[str, Any]) -> dict[str, Any]:
        """Poll the message until Genie is done with it (0.5 s, growing to 5 s between polls)."""
        wait = 0.5
        path = (f"{self.base}/conversations/{segment(str(message['conversation_id']))}/messages/"
                f"{segment(str(message.get('message_id') or message.get('id')))}")
        while message.get("status") not in TERMINAL:
            await asyncio.sleep(wait)
            wait = min(wait * 1.5, 5.0)
            polled = await self.client.request(identity, "GET", path)
            message = {**polled, "conversation_id": polled.get("conversation_id") or message["conversation_id"],
                       "message_id": polled.get("message_id") or polled.get("id") or message.get("message_id")}
        return message

    async def _answer(self, identity: Identity, message: dict[str, Any]) -> dict[str, Any]:
        attachments = message.get("attachments") or []
        query = next((a for a in reversed(attachments) if a.get("query")), None)  # Genie's last try wins
        text = "\n".join(a["text"].get("content", "") for a in attachments if a.get("text"))
        suggested = [q for a in attachments if a.get("suggested_questions")
                     for q in a["suggested_questions"].get("questions", [])]
        answer: dict[str, Any] = {"text": text, "suggested_questions": suggested}
        if query is not None:
            result = await self.client.request(
                identity, "GET", f"{self.base}/conversations/{segment(str(message['conversation_id']))}/messages/"
                f"{segment(str(message['message_id']))}/attachments/{segment(str(query['attachment_id']))}/query-result")
            statement = result.get("statement_response") or {}
            columns = [c["name"] for c in ((statement.get("manifest") or {}).get("schema") or {}).get("columns", [])]
            rows = (statement.get("result") or {}).get("data_array") or []
            answer.update(sql=query["query"].get("query", ""), description=query["query"].get("description", ""),
                          columns=columns, rows=rows, row_count=len(rows))
        return answer


def _verbatim(ctx: RunContext) -> str | None:
    """The caller's last message, as written."""
    for item in reversed(ctx.history):
        if item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            texts = [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "input_text"]
            return "\n".join(texts) or None
    return None


def _text(answer: dict[str, Any], mark: str) -> str:
    parts: list[str] = []
    if answer.get("sql"):
        parts += [f"SQL:\n{answer['sql']}", answer.get("description") or ""]
        parts.append(_table(answer["columns"], answer["rows"]))
        parts.append(f"Rows: {answer['row_count']}")
    if answer.get("text"):
        parts.append(answer["text"])
    if answer.get("suggested_questions"):
        parts.append("Suggested questions:\n" + "\n".join(f"- {q}" for q in answer["suggested_questions"]))
    parts.append(mark)
    return "\n\n".join(p for p in parts if p)


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    if not columns:
        return ""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows[:DISPLAY_ROWS]]
    if len(rows) > DISPLAY_ROWS:
        lines.append(f"({len(rows) - DISPLAY_ROWS} more rows)")
    return "\n".join(lines)
