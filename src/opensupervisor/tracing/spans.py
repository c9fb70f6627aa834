"""Spans of the agent loop: OpenTelemetry spans carrying MLflow's attributes, so they form an MLflow trace.

A run that has somewhere to send its trace (``trace_destination``, ``return_trace``, or an
exporter) gets a ``RunTrace``: a root ``AGENT`` span, a ``CHAT_MODEL`` span per model call, a
``TOOL`` span per tool call, and spans that tools open inside their calls (``RETRIEVER``, SQL).
Everything else is a no-op. MLflow's conventions: ``mlflow.spanType``, ``mlflow.spanInputs`` and
``mlflow.spanOutputs`` hold JSON, ``mlflow.traceRequestId`` names the trace.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SPAN_TYPE = "mlflow.spanType"
INPUTS = "mlflow.spanInputs"
OUTPUTS = "mlflow.spanOutputs"
REQUEST_ID = "mlflow.traceRequestId"
TOKEN_USAGE = "mlflow.chat.tokenUsage"
DEFAULT_PREFIX = "mlflow_experiment_trace"

_current: ContextVar[RunTrace | None] = ContextVar("opensupervisor_run_trace", default=None)


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a run's spans are written: ``trace_destination`` as the client sent it."""

    catalog: str
    schema: str
    prefix: str = DEFAULT_PREFIX

    def trace_id(self, hex_id: str) -> str:
        return f"trace:/{self.catalog}.{self.schema}.{self.prefix}/{hex_id}"


@dataclass(frozen=True, slots=True)
class Recording:
    """What spans may hold (redaction): inputs and outputs can be left out."""

    inputs: bool = True
    outputs: bool = True


class _Collector(SpanProcessor):
    """Keeps the finished spans of the traces somebody is waiting for."""

    def __init__(self) -> None:
        self._spans: dict[int, list[ReadableSpan]] = {}
        self._lock = threading.Lock()

    def watch(self, trace_id: int) -> None:
        with self._lock:
            self._spans.setdefault(trace_id, [])

    def take(self, trace_id: int) -> list[ReadableSpan]:
        with self._lock:
            return self._spans.pop(trace_id, [])

    def on_end(self, span: ReadableSpan) -> None:
        trace_id = span.context.trace_id if span.context else 0
        with self._lock:
            spans = self._spans.get(trace_id)
            if spans is not None:
                spans.append(span)


class Tracing:
    """The process's tracer; ``exporters`` are OpenTelemetry span processors (OTLP, MLflow)."""

    def __init__(self, *, recording: Recording | None = None, processors: list[SpanProcessor] | None = None,
                 version: str = "0") -> None:
        self.recording = recording or Recording()
        self.provider = TracerProvider(resource=Resource.create({"service.name": "opensupervisor",
                                                                 "service.version": version}))
        self.collector = _Collector()
        self.provider.add_span_processor(self.collector)
        self.exporting = bool(processors)
        for processor in processors or []:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("opensupervisor", version)

    def start(self, name: str, *, inputs: Any, traceparent: str | None, destination: Destination | None,
              keep: bool) -> RunTrace | None:
        """The trace of one run, or ``None`` when nothing would read it."""
        if not (keep or destination is not None or self.exporting):
            return None
        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None
        root = self.tracer.start_span(name, context=parent)
        hex_id = format(root.get_span_context().trace_id, "032x")
        run = RunTrace(self, root, destination.trace_id(hex_id) if destination else f"tr-{hex_id}", destination,
                       keep or destination is not None)
        if run.collect:
            self.collector.watch(root.get_span_context().trace_id)
        run.annotate(root, "AGENT", inputs=inputs)
        return run

    def shutdown(self) -> None:
        self.provider.shutdown()


@dataclass(slots=True)
class RunTrace:
    tracing: Tracing
    root: Span
    trace_id: str
    destination: Destination | None
    collect: bool
    spans: list[ReadableSpan] = field(default_factory=list)

    def annotate(self, span: Span, span_type: str, *, inputs: Any = None, outputs: Any = None,
                 attributes: dict[str, Any] | None = None) -> None:
        span.set_attribute(REQUEST_ID, dumps(self.trace_id))
        span.set_attribute(SPAN_TYPE, dumps(span_type))
        if inputs is not None and self.tracing.recording.inputs:
            span.set_attribute(INPUTS, dumps(inputs))
        if outputs is not None:
            self.set_outputs(span, outputs)
        for key, value in (attributes or {}).items():
            span.set_attribute(key, value if isinstance(value, str | int | float | bool) else dumps(value))

    def set_outputs(self, span: Span, outputs: Any) -> None:
        if self.tracing.recording.outputs:
            span.set_attribute(OUTPUTS, dumps(outputs))

    def child(self, name: str, span_type: str, *, inputs: Any = None, parent: Span | None = None,
              attributes: dict[str, Any] | None = None) -> Span:
        """A span under ``parent`` (default: the span current in this task, else the root)."""
        context = otel_trace.set_span_in_context(parent) if parent is not None else None
        if context is None and _current.get() is not self:
            context = otel_trace.set_span_in_context(self.root)
        span = self.tracing.tracer.start_span(name, context=context)
        self.annotate(span, span_type, inputs=inputs, attributes=attributes)
        return span

    @contextlib.contextmanager
    def active(self, span: Span) -> Iterator[None]:
        """Make ``span`` the parent of spans opened in this task (tools' inner steps)."""
        token = otel_context.attach(otel_trace.set_span_in_context(span))
        marker = _current.set(self)
        try:
            yield
        finally:
            _current.reset(marker)
            otel_context.detach(token)

    def finish(self, *, outputs: Any, error: str | None) -> list[ReadableSpan]:
        """End the root span; the run's spans (oldest first) when they were collected."""
        self.set_outputs(self.root, outputs)
        end_span(self.root, error)
        if self.collect:
            trace_int = self.root.get_span_context().trace_id
            self.spans = sorted(self.tracing.collector.take(trace_int), key=lambda s: s.start_time or 0)
        return self.spans


def end_span(span: Span, error: str | None = None) -> None:
    span.set_status(Status(StatusCode.ERROR, error) if error else Status(StatusCode.OK))
    span.end()


@contextlib.contextmanager
def span(name: str, span_type: str, *, inputs: Any = None, attributes: dict[str, Any] | None = None
         ) -> Iterator[SpanHandle]:
    """A span inside whatever tool call is running (``RETRIEVER``, SQL …); nothing without a trace."""
    run = _current.get()
    if run is None:
        yield SpanHandle(None, None)
        return
    opened = run.child(name, span_type, inputs=inputs, attributes=attributes)
    handle = SpanHandle(run, opened)
    try:
        with run.active(opened):
            yield handle
    except BaseException as exc:
        end_span(opened, f"{type(exc).__name__}: {exc}")
        raise
    end_span(opened, handle.error)


@dataclass(slots=True)
class SpanHandle:
    run: RunTrace | None
    span: Span | None
    error: str | None = None

    def outputs(self, value: Any) -> None:
        if self.run is not None and self.span is not None:
            self.run.set_outputs(self.span, value)

    def attribute(self, key: str, value: Any) -> None:
        if self.span is not None:
            self.span.set_attribute(key, value if isinstance(value, str | int | float | bool) else dumps(value))

