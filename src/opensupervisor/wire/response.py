"""The `Response` object: every key the Open Responses contract requires, built once per request."""

from __future__ import annotations

import time
from typing import Any, Literal, NotRequired, TypedDict

from opensupervisor.vault import redact_tool
from opensupervisor.wire.items import Item
from opensupervisor.wire.request import AllowedToolsChoice, CreateResponseRequest, FunctionToolChoice, ParsedRequest

# A response as the run, the store and the routes hold it; ``ResponseObject`` is its typed shape,
# which is what builds one.
Response = dict[str, Any]
ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "incomplete", "cancelled"]
TERMINAL_STATUSES = frozenset({"completed", "failed", "incomplete", "cancelled"})


class InputTokensDetails(TypedDict):
    cached_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(TypedDict):
    code: str
    message: str


class IncompleteDetails(TypedDict):
    reason: str


class ReasoningSettings(TypedDict):
    effort: str | None
    summary: str | None


class TextSettings(TypedDict):
    # {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "name", "description", "schema", "strict"}.
    format: dict[str, Any]
    verbosity: NotRequired[str]


class ResponseObject(TypedDict):
    """Every key the Open Responses contract requires of a response, and this server's extensions."""

    id: str
    object: Literal["response"]
    created_at: int
    status: ResponseStatus
    background: bool
    completed_at: int | None
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    model: str
    output: list[Item]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningSettings | None
    safety_identifier: str | None
    prompt_cache_key: str | None
    service_tier: str
    store: bool
    temperature: float
    text: TextSettings
    tool_choice: Any
    tools: list[dict[str, Any]]
    top_logprobs: int
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None
    user: str | None
    metadata: dict[str, str]
    # Extension: the catalog models that answered, in order (more than one when a fallback served).
    served_by: list[str]
    # Extension (Databricks): the run's trace, when the request asked for it.
    databricks_output: NotRequired[dict[str, Any]]
    # The conversation the response was run in (``conversation`` of the request), when it was.
    conversation: NotRequired[dict[str, str]]


def new_response(response_id: str, parsed: ParsedRequest, *, model: str,
                 created_at: int | None = None) -> ResponseObject:
    """A fresh response for ``parsed``; status ``queued`` for background runs, else ``in_progress``."""
    body = parsed.body
    response: ResponseObject = {
        "id": response_id,
        "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": "queued" if body.background else "in_progress",
        "background": body.background,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "model": model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "reasoning": _reasoning(body),
        "safety_identifier": body.safety_identifier,
        "prompt_cache_key": body.prompt_cache_key,
        "service_tier": body.service_tier or "default",
        "store": body.store,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "text": _text(body),
        "tool_choice": tool_choice_wire(body),
        "tools": [t.config if t.type == "function" else redact_tool(t.raw) for t in parsed.tools],
        "top_logprobs": body.top_logprobs or 0,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "presence_penalty": body.presence_penalty or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
        "truncation": body.truncation,
        "usage": None,
        "user": body.user,
        "metadata": body.metadata or {},
        "served_by": [],
    }
    if body.conversation_id is not None:
        response["conversation"] = {"id": body.conversation_id}
    return response


def tool_choice_wire(body: CreateResponseRequest) -> Any:
    choice = body.tool_choice
    if isinstance(choice, FunctionToolChoice | AllowedToolsChoice):
        return choice.model_dump(exclude_none=True)
    return choice


def _text(body: CreateResponseRequest) -> TextSettings:
    fmt = body.text.format if body.text else None
    out: TextSettings = {"format": {"type": "text"}}
    if fmt is not None and fmt.type == "json_schema":
        out["format"] = {
            "type": "json_schema",
            "name": fmt.name,
            "description": fmt.description,
            "schema": fmt.schema_,
            "strict": bool(fmt.strict),
        }
    elif fmt is not None:
        out["format"] = {"type": fmt.type}
    if body.text and body.text.verbosity:
        out["verbosity"] = body.text.verbosity
    return out


def _reasoning(body: CreateResponseRequest) -> ReasoningSettings | None:
    if body.reasoning is None:
        return None
    return {"effort": body.reasoning.effort, "summary": body.reasoning.summary or body.reasoning.generate_summary}


def usage(input_tokens: int, output_tokens: int, *, cached: int = 0, reasoning: int = 0) -> ResponseUsage:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }
