"""The `Response` object: every key the Open Responses contract requires, built once per request."""

from __future__ import annotations

import time
from typing import Any

from opensupervisor.vault import redact_tool
from opensupervisor.wire.request import AllowedToolsChoice, CreateResponseRequest, FunctionToolChoice, ParsedRequest

Response = dict[str, Any]
TERMINAL_STATUSES = frozenset({"completed", "failed", "incomplete", "cancelled"})


def new_response(response_id: str, parsed: ParsedRequest, *, model: str, created_at: int | None = None) -> Response:
    """A fresh response for ``parsed``; status ``queued`` for background runs, else ``in_progress``."""
    body = parsed.body
    return {
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
        # Extension: the catalog models that answered, in order (more than one when a fallback served).
        "served_by": [],
    }


def tool_choice_wire(body: CreateResponseRequest) -> Any:
    choice = body.tool_choice
    if isinstance(choice, FunctionToolChoice | AllowedToolsChoice):
        return choice.model_dump(exclude_none=True)
    return choice


def _text(body: CreateResponseRequest) -> dict[str, Any]:
    fmt = body.text.format if body.text else None
    out: dict[str, Any] = {"format": {"type": "text"}}
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


def _reasoning(body: CreateResponseRequest) -> dict[str, Any] | None:
    if body.reasoning is None:
        return None
    return {"effort": body.reasoning.effort, "summary": body.reasoning.summary or body.reasoning.generate_summary}


def usage(input_tokens: int, output_tokens: int, *, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }
