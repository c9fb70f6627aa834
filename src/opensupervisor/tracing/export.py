"""Where spans go besides trace tables: any OTLP endpoint, and an MLflow tracking server.

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, and the other
  standard ``OTEL_EXPORTER_OTLP_*`` variables): OTLP over HTTP/protobuf.
- ``MLFLOW_TRACKING_URI`` (an http(s) URL): the MLflow server's OTLP endpoint, ``/v1/traces``,
  into the experiment ``MLFLOW_EXPERIMENT_ID`` (default ``0``), so traces show in the MLflow UI.

Spans are batched and sent by a background thread; the runs never wait for them.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def exporters_from_env(env: dict[str, str] | None = None) -> list[SpanProcessor]:
    values = dict(os.environ if env is None else env)
    otlp = bool(values.get("OTEL_EXPORTER_OTLP_ENDPOINT") or values.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    tracking = values.get("MLFLOW_TRACKING_URI", "")
    mlflow = tracking.startswith(("http://", "https://"))
    if not otlp and not mlflow:
        return []  # nowhere to send spans: the exporter (and its protobuf encoding) is never loaded
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    processors: list[SpanProcessor] = []
    if otlp:
        processors.append(BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500))
    if mlflow:
        exporter = OTLPSpanExporter(endpoint=tracking.rstrip("/") + "/v1/traces",
                                    headers={"x-mlflow-experiment-id": values.get("MLFLOW_EXPERIMENT_ID", "0")})
        processors.append(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return processors
