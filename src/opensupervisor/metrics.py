"""Prometheus metrics of this process, served at ``GET /metrics``.

Counted where runs end (``runs.drive``), so the loop and the tools stay free of metrics code.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RESPONSES = Counter("opensupervisor_responses", "Responses that reached a terminal status",
                    ["model", "status", "mode"], registry=REGISTRY)
DURATION = Histogram("opensupervisor_response_duration_seconds", "Time from create to terminal status",
                     ["mode"], registry=REGISTRY,
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
TOOL_CALLS = Counter("opensupervisor_hosted_tool_calls", "Hosted tool calls by outcome", ["outcome"],
                     registry=REGISTRY)
TOKENS = Counter("opensupervisor_tokens", "Model tokens reported by providers", ["model", "kind"],
                 registry=REGISTRY)
MODEL_CALLS = Counter("opensupervisor_model_calls", "Model calls by model and outcome (ok, error)",
                      ["model", "outcome"], registry=REGISTRY)
MODEL_SECONDS = Histogram("opensupervisor_model_call_duration_seconds", "Duration of model calls (streams included)",
                          ["model"], registry=REGISTRY,
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
TOOL_SECONDS = Histogram("opensupervisor_tool_call_duration_seconds", "Duration of hosted tool calls by tool type",
                         ["tool_type", "outcome"], registry=REGISTRY,
                         buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120))
AUTH_FAILURES = Counter("opensupervisor_auth_failures",
                        "Requests refused for their credentials (missing, malformed, unknown, expired, revoked), "
                        "or because their address failed too often (blocked)", ["reason"], registry=REGISTRY)
QUEUED = Gauge("opensupervisor_background_queued", "Background responses waiting for a worker (all processes)",
               registry=REGISTRY)
BACKGROUND = Gauge("opensupervisor_background_runs_in_flight", "Background runs running in this process",
                   registry=REGISTRY)


def record_response(response: dict[str, Any], mode: str, seconds: float) -> None:
    model = str(response.get("model"))
    RESPONSES.labels(model, str(response.get("status")), mode).inc()
    DURATION.labels(mode).observe(seconds)
    for item in response.get("output", []):
        if item.get("type") == "function_call_output":
            output = item.get("output")
            failed = isinstance(output, str) and output.startswith("Error:")
            TOOL_CALLS.labels("error" if failed else "ok").inc()
    usage = response.get("usage") or {}
    TOKENS.labels(model, "input").inc(usage.get("input_tokens", 0))
    TOKENS.labels(model, "output").inc(usage.get("output_tokens", 0))
