"""A run's spans as MLflow's ``Trace.to_dict()``: what ``databricks_output.trace`` returns.

Ids are base64 (OTLP's JSON form) in spans and the MLflow trace id (``tr-<hex>``, or
``trace:/<catalog>.<schema>.<prefix>/<hex>`` with a destination) in the info.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from opensupervisor.tracing.spans import INPUTS, OUTPUTS, RunTrace, SpanRecord

PREVIEW = 1000


def trace_dict(run: RunTrace) -> dict[str, Any]:
    root = run.root
    start_ns = root.start_ns
    end_ns = root.end_ns or start_ns
    inputs, outputs = str(root.attributes.get(INPUTS, "")), str(root.attributes.get(OUTPUTS, ""))
    destination = run.destination
    location: dict[str, Any] = (
        {"type": "UC_TABLE_PREFIX", "uc_table_prefix": {"catalog_name": destination.catalog,
                                                        "schema_name": destination.schema,
                                                        "table_prefix": destination.prefix}}
        if destination else {"type": "TRACE_LOCATION_TYPE_UNSPECIFIED"})
    millis = start_ns // 1_000_000
    info = {
        "trace_id": run.trace_id,
        "trace_location": location,
        "request_preview": inputs[:PREVIEW],
        "response_preview": outputs[:PREVIEW],
        "request_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z",
        "state": "ERROR" if root.error else "OK",
        "trace_metadata": {"mlflow.trace_schema.version": "4" if destination else "3",
                           "mlflow.traceInputs": inputs, "mlflow.traceOutputs": outputs},
        "tags": {"mlflow.traceName": root.name},
        "execution_duration_ms": (end_ns - start_ns) // 1_000_000,
    }
    trace_b64 = _b64(root.trace_id, 16)
    return {"info": info, "data": {"spans": [span_dict(s, trace_b64) for s in run.spans]}}


def span_dict(span: SpanRecord, trace_b64: str) -> dict[str, Any]:
    return {
        "trace_id": trace_b64,
        "span_id": _b64(span.span_id, 8),
        "parent_span_id": _b64(span.parent_id, 8) if span.parent_id is not None else None,
        "name": span.name,
        "start_time_unix_nano": span.start_ns,
        "end_time_unix_nano": span.end_ns,
        "events": [],
        "status": {"code": "STATUS_CODE_ERROR" if span.error else "STATUS_CODE_OK", "message": span.error or ""},
        "attributes": dict(span.attributes),
        "links": [],
    }


def _b64(value: int, size: int) -> str:
    return base64.b64encode(value.to_bytes(size, "big")).decode()
