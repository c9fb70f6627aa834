"""Spans of the agent loop, with MLflow's attributes, so that together they form an MLflow trace.

A run that has somewhere to send its trace (``trace_destination``, ``return_trace``, or an
exporter) gets a ``RunTrace``: a root ``AGENT`` span, a ``CHAT_MODEL`` span per model call, a
``TOOL`` span per tool call, and spans that tools open inside their calls (``RETRIEVER``, SQL).
Everything else is a no-op. MLflow's conventions: ``mlflow.spanType``, ``mlflow.spanInputs`` and
``mlflow.spanOutputs`` hold JSON, ``mlflow.traceRequestId`` names the trace.

Spans are plain records while the run goes (a few microseconds each); they become OpenTelemetry
spans only for exporters, after the run, on the exporters' own thread.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

SPAN_TYPE = "mlflow.spanType"
INPUTS = "mlflow.spanInputs"
OUTPUTS = "mlflow.spanOutputs"
REQUEST_ID = "mlflow.traceRequestId"
TOKEN_USAGE = "mlflow.chat.tokenUsage"
DEFAULT_PREFIX = "mlflow_experiment_trace"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_random = random.SystemRandom()

_current: ContextVar[tuple[RunTrace, SpanRecord] | None] = ContextVar("opensupervisor_span", default=None)


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a run's spans are written: ``trace_destination`` as the client sent it, in the namespace
    of ``owner`` (a principal id; None: the shared one, where admins write)."""

    catalog: str
    schema: str
    prefix: str = DEFAULT_PREFIX
    owner: str | None = None

    def trace_id(self, hex_id: str) -> str:
        return f"trace:/{self.catalog}.{self.schema}.{self.prefix}/{hex_id}"


@dataclass(frozen=True, slots=True)
class Recording:
    """What spans may hold (redaction): inputs and outputs can be left out."""

    inputs: bool = True
    outputs: bool = True


@dataclass(slots=True)
class SpanRecord:
    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value if isinstance(value, str | int | float | bool) else dumps(value)

    @property
    def ended(self) -> bool:
        return self.end_ns != 0


class Tracing:
    """The process's tracing: what spans record, and the exporters (OpenTelemetry span processors)."""

    def __init__(self, *, recording: Recording | None = None, processors: list[SpanProcessor] | None = None,
                 version: str = "0") -> None:
        self.recording = recording or Recording()
        self.processors = list(processors or [])
        self.resource = Resource.create({"service.name": "opensupervisor", "service.version": version})
        self.scope = InstrumentationScope("opensupervisor", version)

    @property
    def exporting(self) -> bool:
        return bool(self.processors)

    def start(self, name: str, *, inputs: Any, traceparent: str | None, destination: Destination | None,
              keep: bool) -> RunTrace | None:
        """The trace of one run, or ``None`` when nothing would read it."""
        if not (keep or destination is not None or self.exporting):
            return None
        parent = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
        trace_int = int(parent.group(1), 16) if parent else _random.getrandbits(128)
        root = SpanRecord(trace_int, _random.getrandbits(64), int(parent.group(2), 16) if parent else None, name,
                          time.time_ns())
        hex_id = format(trace_int, "032x")
        run = RunTrace(self, root, destination.trace_id(hex_id) if destination else f"tr-{hex_id}", destination,
                       [root])
        run.annotate(root, "AGENT", inputs=inputs)
        return run

    def export(self, spans: list[SpanRecord]) -> None:
        """Hand finished spans to the exporters (they batch and send on their own thread)."""
        for record in spans:
            readable = self.readable(record)
            for processor in self.processors:
                processor.on_end(readable)

    def readable(self, record: SpanRecord) -> ReadableSpan:
        flags = TraceFlags(TraceFlags.SAMPLED)
        context = SpanContext(record.trace_id, record.span_id, is_remote=False, trace_flags=flags)
        parent = None if record.parent_id is None else SpanContext(record.trace_id, record.parent_id,
                                                                   is_remote=False, trace_flags=flags)
        status = Status(StatusCode.ERROR, record.error) if record.error else Status(StatusCode.OK)
        return ReadableSpan(name=record.name, context=context, parent=parent, resource=self.resource,
                            attributes=record.attributes, events=(), links=(), kind=SpanKind.INTERNAL,
                            status=status, start_time=record.start_ns, end_time=record.end_ns,
                            instrumentation_scope=self.scope)

    def shutdown(self) -> None:
        for processor in self.processors:
            processor.shutdown()


@dataclass(slots=True)
class RunTrace:
    tracing: Tracing
    root: SpanRecord
    trace_id: str
    destination: Destination | None
    spans: list[SpanRecord]

    def annotate(self, span: SpanRecord, span_type: str, *, inputs: Any = None, outputs: Any = None,
                 attributes: dict[str, Any] | None = None) -> None:
        span.attributes[REQUEST_ID] = f'"{self.trace_id}"'
        span.attributes[SPAN_TYPE] = f'"{span_type}"'
        if inputs is not None and self.tracing.recording.inputs:
            span.attributes[INPUTS] = dumps(inputs)
        if outputs is not None:
            self.set_outputs(span, outputs)
        for key, value in (attributes or {}).items():
            span.set_attribute(key, value)

    def set_outputs(self, span: SpanRecord, outputs: Any) -> None:
        if self.tracing.recording.outputs:
            span.attributes[OUTPUTS] = dumps(outputs)

    def child(self, name: str, span_type: str, *, inputs: Any = None, parent: SpanRecord | None = None,
              attributes: dict[str, Any] | None = None) -> SpanRecord:
        """A span under ``parent`` (default: the span current in this task, else the root)."""
        if parent is None:
            current = _current.get()
            parent = current[1] if current is not None and current[0] is self else self.root
        span = SpanRecord(self.root.trace_id, _random.getrandbits(64), parent.span_id, name, time.time_ns())
        self.spans.append(span)
        self.annotate(span, span_type, inputs=inputs, attributes=attributes)
        return span

    @contextlib.contextmanager
    def active(self, span: SpanRecord) -> Iterator[None]:
        """Make ``span`` the parent of spans opened in this task (tools' inner steps)."""
        marker = _current.set((self, span))
        try:
            yield
        finally:
            _current.reset(marker)

    def finish(self, *, outputs: Any, error: str | None) -> list[SpanRecord]:
        """End the root span (and any left open); the run's spans, oldest first."""
        self.set_outputs(self.root, outputs)
        end_span(self.root, error)
        for span in self.spans:
            if not span.ended:
                end_span(span, "the response ended before this step did")
        if self.tracing.exporting:
            self.tracing.export(self.spans)
        return self.spans


def end_span(span: SpanRecord, error: str | None = None) -> None:
    span.error = error
    span.end_ns = time.time_ns()


@contextlib.contextmanager
def span(name: str, span_type: str, *, inputs: Any = None, attributes: dict[str, Any] | None = None
         ) -> Iterator[SpanHandle]:
    """A span inside whatever tool call is running (``RETRIEVER``, SQL …); nothing without a trace."""
    current = _current.get()
    if current is None:
        yield SpanHandle(None, None)
        return
    run = current[0]
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
    span: SpanRecord | None
    error: str | None = None

    def outputs(self, value: Any) -> None:
        if self.run is not None and self.span is not None:
            self.run.set_outputs(self.span, value)

    def attribute(self, key: str, value: Any) -> None:
        if self.span is not None:
            self.span.set_attribute(key, value)
