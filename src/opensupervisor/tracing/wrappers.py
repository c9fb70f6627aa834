"""Spans around the two contracts: a ``CHAT_MODEL`` span per model call, a ``TOOL`` span per tool call.

Without a trace they only count and time the calls (``/metrics``). Either way, each model call's
tokens are counted for usage (``RunSpans``): the loop's in ``model_calls``, and those of the model
calls tools make themselves (text to SQL, grounded answers) in ``tool_model_calls``.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from opensupervisor import metrics
from opensupervisor.core.contracts import (
    Model,
    ModelEvent,
    ModelRequest,
    ModelResponse,
    Served,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Toolset,
    Usage,
    WrapperModel,
    WrapperToolset,
)
from opensupervisor.tracing.spans import TOKEN_USAGE, RunTrace, SpanRecord, end_span, span

if TYPE_CHECKING:
    from opensupervisor.core.context import RunContext


class ModelCall(TypedDict):
    """One model call's tokens, as a usage row's ``calls`` lists them."""

    model: str
    input_tokens: int
    output_tokens: int
    # What a tool asked its own model for (``genie_sql``, ``knowledge_answer`` …).
    purpose: NotRequired[str]


@dataclass(slots=True)
class RunSpans:
    """What the tracing wrappers of one run share: its trace, while it runs, and the calls counted."""

    trace: RunTrace | None = None
    model_calls: list[ModelCall] = field(default_factory=list)
    tool_model_calls: list[ModelCall] = field(default_factory=list)


# Where the model calls of the tool call running in this task are counted (a run's list).
_tool_model_calls: contextvars.ContextVar[list[ModelCall] | None] = contextvars.ContextVar(
    "tool_model_calls", default=None)


class TracedModel(WrapperModel):
    def __init__(self, inner: Model, spans: RunSpans) -> None:
        super().__init__(inner)
        self.spans = spans

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        run = self.spans.trace
        started = time.perf_counter()
        span = None if run is None else run.child(
            self.inner.name, "CHAT_MODEL", inputs=_inputs(request),
            attributes={"opensupervisor.model": self.inner.name, "opensupervisor.provider": self.provider})
        text: list[str] = []
        calls: list[dict[str, str]] = []
        error: str | None = "the model call was abandoned"
        try:
            # aclosing: a run that stops reading closes the model's connection now, not when collected.
            async with aclosing(self.inner.request_stream(request)) as stream:
                async for event in stream:
                    if isinstance(event, Usage):
                        self.spans.model_calls.append({"model": self.name, "input_tokens": event.input_tokens,
                                                       "output_tokens": event.output_tokens})
                    if span is not None:
                        _observe(span, event, text, calls)
                    yield event
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if run is not None and span is not None:
                run.set_outputs(span, {"role": "assistant", "content": "".join(text), "tool_calls": calls})
                end_span(span, error)
            metrics.MODEL_CALLS.labels(self.name, "error" if error else "ok").inc()
            metrics.MODEL_SECONDS.labels(self.name).observe(time.perf_counter() - started)


class TracedToolset(WrapperToolset):
    """Each call inside its ``TOOL`` span (spans the tool opens nest under it); the model calls it
    makes are counted in the run's ``tool_model_calls``."""

    def __init__(self, inner: Toolset, spans: RunSpans, tool_type: str) -> None:
        super().__init__(inner)
        self.spans = spans
        self.tool_type = tool_type

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        token = _tool_model_calls.set(self.spans.tool_model_calls)
        try:
            return await _tool_call(self.spans.trace, name, self.tool_type, arguments,
                                    lambda: self.inner.call_tool(ctx, name, arguments))
        finally:
            _tool_model_calls.reset(token)


def _observe(span: SpanRecord, event: ModelEvent, text: list[str], calls: list[dict[str, str]]) -> None:
    """What a model call's span keeps of one of its events."""
    if isinstance(event, TextDelta):
        text.append(event.text)
    elif isinstance(event, ToolCallStart):
        calls.append({"id": event.call_id, "name": event.name, "arguments": ""})
    elif isinstance(event, ToolCallDelta) and calls:
        calls[-1]["arguments"] += event.arguments
    elif isinstance(event, Usage):
        span.set_attribute(TOKEN_USAGE, {"input_tokens": event.input_tokens, "output_tokens": event.output_tokens,
                                         "total_tokens": event.input_tokens + event.output_tokens})
    elif isinstance(event, Served):
        span.set_attribute("opensupervisor.served_by", event.model)


def _inputs(request: ModelRequest) -> dict[str, Any]:
    return {"instructions": request.instructions, "messages": request.items,
            "tools": [t.name for t in request.tools], "tool_choice": request.tool_choice}


@contextlib.contextmanager
def counting_model_calls() -> Iterator[list[ModelCall]]:
    """The model calls tools make inside this block, outside any run (the Genie conversation API)."""
    calls: list[ModelCall] = []
    token = _tool_model_calls.set(calls)
    try:
        yield calls
    finally:
        _tool_model_calls.reset(token)


async def _tool_call(run: RunTrace | None, name: str, tool_type: str, arguments: dict[str, Any],
                     call: Callable[[], Awaitable[str]]) -> str:
    started = time.perf_counter()
    if run is None:
        output = await call()
        metrics.TOOL_SECONDS.labels(tool_type, "error" if output.startswith("Error: ") else "ok").observe(
            time.perf_counter() - started)
        return output
    span = run.child(name, "TOOL", inputs=arguments, attributes={"opensupervisor.tool_type": tool_type})
    error: str | None = "the tool call was abandoned"
    try:
        with run.active(span):
            output = await call()
        error = output.removeprefix("Error: ") if output.startswith("Error: ") else None
        run.set_outputs(span, output)
        return output
    finally:
        end_span(span, error)
        metrics.TOOL_SECONDS.labels(tool_type, "error" if error else "ok").observe(time.perf_counter() - started)


async def traced_request(model: Model, request: ModelRequest, name: str) -> ModelResponse:
    """A tool's own model call (text to SQL, a grounded answer) as a ``CHAT_MODEL`` span in its trace."""
    attributes = {"opensupervisor.model": model.name, "opensupervisor.provider": model.provider}
    with span(name, "CHAT_MODEL", inputs=_inputs(request), attributes=attributes) as opened:
        reply = await model.request(request)
        counted = _tool_model_calls.get()
        if counted is not None and reply.usage is not None:
            counted.append({"model": model.name, "input_tokens": reply.usage.input_tokens,
                            "output_tokens": reply.usage.output_tokens, "purpose": name})
        opened.outputs({"role": "assistant", "content": reply.text,
                        "tool_calls": [{"id": c.call_id, "name": c.name, "arguments": c.arguments}
                                       for c in reply.tool_calls]})
        if reply.usage is not None:
            opened.attribute(TOKEN_USAGE, {"input_tokens": reply.usage.input_tokens,
                                           "output_tokens": reply.usage.output_tokens,
                                           "total_tokens": reply.usage.input_tokens + reply.usage.output_tokens})
        return reply
