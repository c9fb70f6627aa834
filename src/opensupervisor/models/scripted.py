"""A deterministic model that follows a script: the one fake language model of the test suite.

A script is a list of rules. The first rule whose ``when`` text occurs in the last user message
(case-insensitive; no ``when`` matches everything) gives the turns: the n-th model call after that
user message plays turn n. Because the turn is read off the history, a script needs no state and
works across processes, ``previous_response_id`` chains and client round trips.

With no matching turn the model improvises deterministically: it calls the tool that ``tool_choice``
demands (arguments made from the tool's schema), returns JSON that fits ``text.format``, or answers
in plain text.

It keeps the requests it received (``requests``, the latest ``REQUESTS_KEPT``), so that a test can
see what the loop sent it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from opensupervisor.core.contracts import (
    Finish,
    FinishReason,
    Model,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from opensupervisor.core.truncation import estimate_tokens
from opensupervisor.errors import ConfigError, ModelError
from opensupervisor.wire.ids import new_id
from opensupervisor.wire.items import Item, item_text
from opensupervisor.wire.validation import param_path


class ScriptedCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptedTurn(BaseModel):
    """One model call: text and/or tool calls, or a failure; ``delay_s`` simulates a slow model."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    tool_calls: list[ScriptedCall] = Field(default_factory=list)
    finish: FinishReason | None = None
    error: str | None = None
    # The error's code; rate_limit_exceeded and server_unavailable are retryable (fallbacks apply).
    error_code: str = "server_error"
    delay_s: float = Field(default=0.0, ge=0, le=3600)


class ScriptRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    when: str | None = None
    turns: list[ScriptedTurn]
    repeat_last: bool = False


_SCRIPT = TypeAdapter(list[ScriptRule])


def parse_script(name: str, rules: list[dict[str, Any]]) -> list[ScriptRule]:
    """Validate a workspace file's ``script`` tables for model ``name``."""
    try:
        return _SCRIPT.validate_python(rules)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ConfigError(f"models.{name}.script{param_path(tuple(err['loc']))}: {err['msg']}") from exc


class ScriptedModel(Model):
    # One instance serves a whole server's life, and a script may loop until the turn limit.
    REQUESTS_KEPT = 256

    def __init__(self, name: str, rules: list[ScriptRule] | None = None, *, chunk_words: int = 1) -> None:
        self.name = name
        self.rules = rules or []
        self.chunk_words = chunk_words
        self.requests: deque[ModelRequest] = deque(maxlen=self.REQUESTS_KEPT)

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        # The items list may be the run's own history, which grows after this call.
        self.requests.append(dataclasses.replace(request, items=list(request.items)))
        turn = self._turn(request)
        if turn.delay_s:
            await asyncio.sleep(turn.delay_s)
        if turn.error is not None:
            raise ModelError(turn.error, code=turn.error_code,
                             retryable=turn.error_code in ("rate_limit_exceeded", "server_unavailable"))
        text = turn.text or ""
        for chunk in _chunks(text, self.chunk_words):
            yield TextDelta(chunk)
        for call in turn.tool_calls:
            yield ToolCallStart(new_id("call"), call.name)
            yield ToolCallDelta(orjson.dumps(call.arguments).decode())
        out_chars = len(text) + sum(len(c.name) + 20 for c in turn.tool_calls)
        yield Usage(input_tokens=estimate_tokens(request.instructions, request.items),
                    output_tokens=max(1, out_chars // 4))
        yield Finish(turn.finish or ("tool_calls" if turn.tool_calls else "stop"))

    def _turn(self, request: ModelRequest) -> ScriptedTurn:
        last_user, index = _position(request.items)
        for rule in self.rules:
            if rule.when is None or rule.when.lower() in last_user.lower():
                turn = rule.turns[min(index, len(rule.turns) - 1)] if rule.turns else None
                if turn is None or (index >= len(rule.turns) and not rule.repeat_last):
                    break
                # Like a constrained real model, it cannot call tools when none are allowed.
                if turn.tool_calls and request.tool_choice == "none":
                    break
                return turn
        return self._improvise(request, last_user)

    def _improvise(self, request: ModelRequest, last_user: str) -> ScriptedTurn:
        tools = {t.name: t for t in request.tools}
        if request.tool_choice not in ("auto", "none") and tools:
            tool = tools.get(request.tool_choice) or next(iter(tools.values()))
            return ScriptedTurn(tool_calls=[ScriptedCall(name=tool.name, arguments=_example(tool.parameters))])
        fmt = request.text_format or {}
        if fmt.get("type") == "json_schema":
            return ScriptedTurn(text=orjson.dumps(_example(fmt.get("schema") or {})).decode())
        if fmt.get("type") == "json_object":
            return ScriptedTurn(text=orjson.dumps({"answer": last_user}).decode())
        return ScriptedTurn(text=f"{self.name} (scripted) received: {last_user}" if last_user else "Hello!")


def _position(items: list[Item]) -> tuple[str, int]:
    """The last user message's text, and how many model turns have happened since it."""
    last = -1
    for i, item in enumerate(items):
        if item.get("type") == "message" and item.get("role") == "user":
            last = i
    turns = 0
    in_group = False
    for item in items[last + 1:]:
        produced = item.get("type") == "function_call" or (
            item.get("type") == "message" and item.get("role") == "assistant")
        if produced and not in_group:
            turns += 1
        in_group = produced
    return (item_text(items[last]) if last >= 0 else ""), turns


def _chunks(text: str, words: int) -> list[str]:
    parts = text.split(" ")
    return [" ".join(parts[i:i + words]) + (" " if i + words < len(parts) else "")
            for i in range(0, len(parts), words)] if text else []


def _example(schema: dict[str, Any]) -> Any:
    """A small instance of a JSON Schema: required properties only, first enum value, zero values."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key) and isinstance(schema[key][0], dict):
            return _example(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _example(props.get(k, {})) for k in schema.get("required", [])}
    return {"string": "example", "integer": 0, "number": 0, "boolean": False, "array": [], "null": None}.get(kind)

