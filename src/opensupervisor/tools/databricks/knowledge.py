"""Agent serving endpoints of a Databricks workspace as tools: a knowledge assistant's
(``knowledge_assistant``) and any agent's (the older dialect's ``agent_endpoint``). The endpoint
answers the question (``POST /serving-endpoints/{endpoint}/invocations``, Responses format), and
the ``url_citation`` annotations of its answer become numbered sources, which the final message's
annotations then cite exactly as a local assistant's do (``core.citations``).
"""

from __future__ import annotations

from typing import Any

from opensupervisor import tracing
from opensupervisor.core.arguments import text_property
from opensupervisor.core.citations import format_sources
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import InvalidRequest, ToolError
from opensupervisor.tools.apps import QUESTION_SCHEMA as APP_SCHEMA
from opensupervisor.tools.apps import tool_name as app_tool_name
from opensupervisor.tools.databricks.client import DatabricksClient, DatabricksFailure, segment
from opensupervisor.tools.knowledge_assistant import allocate_citations
from opensupervisor.tools.knowledge_assistant import tool_name as ka_tool_name

# A local assistant's question, without its ``source`` filter: a remote assistant searches as it sees fit.
QUESTION_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["question"],
                   "properties": {"question": text_property("The question, in full sentences")}}


class RemoteEndpoint(Toolset):
    def __init__(self, client: DatabricksClient, endpoint: str, tool: str, schema: dict[str, Any], param: str,
                 description: str | None, what: str) -> None:
        self.client = client
        self.endpoint = endpoint
        self.tool = tool
        self.schema = schema
        self.description = description
        self.param = param
        self.what = what  # "Knowledge assistant 'handbook'", for messages

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        identity = await self.client.identity(ctx)
        try:
            endpoint = await self.client.describe(identity, f"/api/2.0/serving-endpoints/{segment(self.endpoint)}")
        except DatabricksFailure as exc:
            if exc.status in (403, 404):
                raise InvalidRequest(f"{self.what} does not exist in this workspace or in the Databricks workspace "
                                     f"({exc}).", param=self.param, code="invalid_value") from exc
            raise ToolError(str(exc)) from exc
        description = self.description or endpoint.get("description") or f"Asks the {self.endpoint} agent"
        return [ToolDef(self.tool, description, self.schema)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        identity = await self.client.identity(ctx)
        question = str(arguments["question"])
        attributes = {"databricks.identity": identity.who, "databricks.endpoint": self.endpoint}
        with tracing.span("serving_endpoint", "RETRIEVER", inputs={"question": question},
                          attributes=attributes) as span:
            answer = await self.client.request(identity, "POST", f"/serving-endpoints/{segment(self.endpoint)}"
                                               "/invocations", body={"input": [{"role": "user", "content": question}]})
            text, citations = _answer(answer)
            span.outputs({"text": text, "citations": citations})
        return cite(ctx, text, citations)


def _answer(answer: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The answer text and its ``url_citation`` annotations (offsets into that text); a chat-format
    answer has none."""
    text, citations = "", []
    for item in answer.get("output") or []:
        if item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if part.get("type") == "output_text":
                for note in part.get("annotations") or []:
                    if note.get("type") == "url_citation" and note.get("url"):
                        citations.append({**note, "start_index": note.get("start_index", 0) + len(text),
                                          "end_index": note.get("end_index", 0) + len(text)})
                text += part.get("text", "")
    if not text and answer.get("choices"):
        text = str(((answer["choices"][0] or {}).get("message") or {}).get("content") or "")
    if not text:
        raise ToolError("the knowledge assistant answered with no text")
    return text, citations


def cite(ctx: RunContext, text: str, citations: list[dict[str, Any]]) -> str:
    """``text`` with ``[n]`` after each cited span and the numbered sources below it."""
    urls = list(dict.fromkeys(c["url"] for c in citations))
    if not urls:
        return text
    numbers = dict(zip(urls, allocate_citations(ctx, len(urls)), strict=True))
    titles = {c["url"]: c.get("title") or c["url"] for c in citations}
    ends: dict[int, list[int]] = {}
    for c in citations:
        end = min(max(int(c["end_index"]), 0), len(text))
        if numbers[c["url"]] not in ends.setdefault(end, []):
            ends[end].append(numbers[c["url"]])
    marked = text
    for end in sorted(ends, reverse=True):
        marked = marked[:end] + "".join(f"[{n}]" for n in ends[end]) + marked[end:]
    return f"{marked}\n\n{format_sources([(numbers[u], titles[u], u) for u in urls])}"


def knowledge_assistant(client: DatabricksClient, ka: str, param: str, description: str | None) -> Toolset:
    endpoint = client.section.knowledge_assistant_endpoints.get(ka, ka)
    return RemoteEndpoint(client, endpoint, ka_tool_name(ka), QUESTION_SCHEMA, param, description,
                          f"Knowledge assistant '{ka}'")


def agent_endpoint(client: DatabricksClient, endpoint: str, param: str, description: str | None) -> Toolset:
    # The question an app is asked: locally, an app answers this dialect.
    return RemoteEndpoint(client, endpoint, app_tool_name(endpoint), APP_SCHEMA, param, description,
                          f"Agent endpoint '{endpoint}'")
