"""A run's spans as MLflow's ``Trace.to_dict()``: what ``databricks_output.trace`` returns.

Ids are base64 (OTLP's JSON form) in spans and the MLflow trace id (``tr-<hex>``, or
``trace:/<catalog>.<schema>.<prefix>/<hex>`` with a destination) in the info.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from opensupervisor.tracing.spans import INPUTS, OUTPUTS, RunTrace

PREVIEW = 1000
_STATUS = {StatusCode.OK: "STATUS_CODE_OK", StatusCode.ERROR: "STATUS_CODE_ERROR",
           StatusCode.UNSET: "STATUS_CODE_UNSET"}


def trace_dict(run: RunTrace) -> dict[str, Any]:
    spans = run.spans
    root = next((s for s in spans if s.context and s.context.span_id == run.root.get_span_context().span_id),
                spans[0] if spans else None)
    start_ns = root.start_time if root and root.start_time else time.time_ns()
    end_ns = root.end_time if root and root.end_time else start_ns
    attributes = dict(root.attributes or {}) if root else {}
    error = root is not None and root.status.status_code == StatusCode.ERROR
    inputs, outputs = str(attributes.get(INPUTS, "")), str(attributes.get(OUTPUTS, ""))
    destination = run.destination
    location: dict[str, Any] = (
        {"type": "UC_TABLE_PREFIX", "uc_table_prefix": {"catalog_name": destination.catalog,
                                                        "schema_name": destination.schema,
                                                        "table_prefix": destination.prefix}}
        if destination else {"type": "TRACE_LOCATION_TYPE_UNSPECIFIED"})
    info = {
        "trace_id": run.trace_id,
        "trace_location": location,
        "request_preview": inputs[:PREVIEW],
        "response_preview": outputs[:PREVIEW],
        "request_time": datetime.fromtimestamp(start_ns / 1e9, UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "state": "ERROR" if error else "OK",
        "trace_metadata": {"mlflow.trace_schema.version": "4" if destination else "3",
                           "mlflow.traceInputs": inputs, "mlflow.traceOutputs": outputs},
        "tags": {"mlflow.traceName": root.name if root else "agent"},
        "execution_duration_ms": (end_ns - start_ns) // 1_000_000,
    }
    return {"info": info, "data": {"spans": [span_dict(s) for s in spans]}}


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    assert context is not None
    return {
        "trace_id": _b64(context.trace_id, 16),
        "span_id": _b64(context.span_id, 8),
        "parent_span_id": _b64(span.parent.span_id, 8) if span.parent else None,
        "name": span.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "events": [{"name": e.name, "time_unix_nano": e.timestamp, "attributes": dict(e.attributes or {})}
                   for e in span.events],
        "status": {"code": _STATUS[span.status.status_code], "message": span.status.description or ""},
        "attributes": dict(span.attributes or {}),
        "links": [],
    }


def _b64(value: int, size: int) -> str:
    return base64.b64encode(value.to_bytes(size, "big")).decode()
