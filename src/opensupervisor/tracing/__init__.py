"""Tracing: MLflow-compatible spans of the agent loop (``spans``), trace dicts, trace tables."""

from opensupervisor.tracing.spans import span

__all__ = ["span"]
