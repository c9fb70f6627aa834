"""Trace tables: a run's spans as rows of ``<prefix>_otel_spans`` (and events of ``<prefix>_otel_logs``).

The columns follow MLflow's Unity Catalog trace tables, layout "v1"; maps, arrays and structs are
JSON text. ``trace_destination``'s catalog and schema name where the tables live:

- SQLite (the default): the file ``<trace dir>/<catalog>.<schema>.db``;
- PostgreSQL (``OPENSUPERVISOR_TRACE_DATABASE_URL``): the schema ``<catalog>__<schema>``.

Writing happens off the hot path: runs hand their spans to a queue that one task drains. A failure
is logged and counted (``opensupervisor_trace_write_failures``); the run never notices.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
)

from opensupervisor.batches import BatchWriter
from opensupervisor.metrics import REGISTRY
from opensupervisor.side_engine import CatalogTables
from opensupervisor.tracing.destinations import TraceDestinations
from opensupervisor.tracing.spans import Destination, RunTrace, SpanRecord, dumps

log = logging.getLogger(__name__)
BATCH = 200
LINGER_S = 0.2
WRITE_FAILURES = Counter("opensupervisor_trace_write_failures", "Runs whose spans could not be written",
                         registry=REGISTRY)
DROPPED = Counter("opensupervisor_trace_writes_dropped", "Runs whose spans were dropped: the queue was full",
                  registry=REGISTRY)


def spans_table(metadata: MetaData, prefix: str) -> Table:
    return Table(
        f"{prefix}_otel_spans", metadata,
        Column("trace_id", String(32)), Column("span_id", String(16)), Column("trace_state", Text),
        Column("parent_span_id", String(16)), Column("flags", Integer), Column("name", Text), Column("kind", Text),
        Column("start_time_unix_nano", BigInteger), Column("end_time_unix_nano", BigInteger),
        Column("attributes", Text), Column("dropped_attributes_count", Integer), Column("events", Text),
        Column("dropped_events_count", Integer), Column("links", Text), Column("dropped_links_count", Integer),
        Column("status", Text), Column("resource", Text), Column("resource_schema_url", Text),
        Column("instrumentation_scope", Text), Column("span_schema_url", Text),
    )


def logs_table(metadata: MetaData, prefix: str) -> Table:
    return Table(
        f"{prefix}_otel_logs", metadata,
        Column("event_name", Text), Column("trace_id", String(32)), Column("span_id", String(16)),
        Column("time_unix_nano", BigInteger), Column("observed_time_unix_nano", BigInteger),
        Column("severity_number", Integer), Column("severity_text", Text), Column("body", Text),
        Column("attributes", Text), Column("dropped_attributes_count", Integer), Column("flags", Integer),
        Column("resource", Text), Column("resource_schema_url", Text), Column("instrumentation_scope", Text),
        Column("log_schema_url", Text),
    )


def span_row(span: SpanRecord, resource: str, scope: str) -> dict[str, Any]:
    return {
        "trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x"),
        "trace_state": "", "parent_span_id": format(span.parent_id, "016x") if span.parent_id is not None else "",
        "flags": 1, "name": span.name, "kind": "SPAN_KIND_INTERNAL",
        "start_time_unix_nano": span.start_ns, "end_time_unix_nano": span.end_ns,
        "attributes": dumps(span.attributes), "dropped_attributes_count": 0, "events": "[]",
        "dropped_events_count": 0, "links": "[]", "dropped_links_count": 0,
        "status": dumps({"message": span.error or "", "code": "STATUS_CODE_ERROR" if span.error else "STATUS_CODE_OK"}),
        "resource": resource, "resource_schema_url": "", "instrumentation_scope": scope, "span_schema_url": "",
    }


def log_rows(span: SpanRecord, resource: str, scope: str) -> list[dict[str, Any]]:
    """A failed step's error as a log record (the spans carry no other events)."""
    if not span.error:
        return []
    return [{"event_name": "exception", "trace_id": format(span.trace_id, "032x"),
             "span_id": format(span.span_id, "016x"), "time_unix_nano": span.end_ns,
             "observed_time_unix_nano": span.end_ns, "severity_number": 17, "severity_text": "ERROR",
             "body": span.error, "attributes": dumps({"exception.message": span.error}),
             "dropped_attributes_count": 0, "flags": 1, "resource": resource, "resource_schema_url": "",
             "instrumentation_scope": scope, "log_schema_url": ""}]


class TraceStore:
    """Where ``trace_destination`` tables live: SQLite files in ``folder``, or PostgreSQL at ``url``."""

    def __init__(self, folder: Path, url: str | None = None, *, max_queued: int = 10_000,
                 max_destinations_per_principal: int = 10) -> None:
        self.tables = CatalogTables(folder, url)
        self.destinations = TraceDestinations(self.tables, max_destinations_per_principal)
        self._runs = BatchWriter(self._write_batch, what="traces", batch=BATCH, linger_s=LINGER_S,
                                 max_queued=max_queued, dropped=DROPPED)

    def submit(self, run: RunTrace) -> None:
        """Queue a finished run's spans for writing (never blocks, never raises)."""
        if not self._runs.put(run):
            log.warning("trace queue full: the spans of trace %s were dropped", run.trace_id)

    async def _write_batch(self, runs: list[RunTrace]) -> None:
        """One transaction per destination for all waiting runs; one that fails spares the others."""
        groups: dict[Destination, list[RunTrace]] = {}
        for run in runs:
            assert run.destination is not None
            groups.setdefault(run.destination, []).append(run)
        for destination, group in groups.items():
            try:
                await asyncio.to_thread(self.write, destination, group)
            except Exception:  # a trace store that fails must not touch the runs
                WRITE_FAILURES.inc(len(group))
                log.exception("writing the spans of %d run(s) to %s.%s failed", len(group),
                              destination.catalog, destination.schema)

    async def flush(self) -> None:
        await self._runs.flush()

    async def aclose(self) -> None:
        await self._runs.aclose()
        self.tables.dispose()

    def write(self, destination: Destination, runs: list[RunTrace]) -> None:
        engine, schema = self.tables.engine(destination.catalog, destination.schema, destination.owner)
        metadata = MetaData(schema=schema)
        spans, logs = spans_table(metadata, destination.prefix), logs_table(metadata, destination.prefix)
        with engine.begin() as conn:
            self.tables.ensure(conn, metadata, schema)
            resource = dumps({"attributes": dict(runs[0].tracing.resource.attributes), "dropped_attributes_count": 0})
            scope = dumps({"name": "opensupervisor", "version": runs[0].tracing.scope.version, "attributes": {},
                           "dropped_attributes_count": 0})
            conn.execute(insert(spans), [span_row(s, resource, scope) for run in runs for s in run.spans])
            events = [row for run in runs for s in run.spans for row in log_rows(s, resource, scope)]
            if events:
                conn.execute(insert(logs), events)

    def path_of(self, destination: Destination) -> Path:
        """The SQLite file of a destination."""
        return self.tables.path_of(destination.catalog, destination.schema, destination.owner)

