"""Inference tables: every request and its response as a row of ``<prefix>_payload``, with the AI
Gateway's columns (the workspace file's ``[inference_table]``).

The table lives where trace tables do (``side_engine.CatalogTables``): the SQLite file
``<data dir>/tables/<catalog>.<schema>.db``, or the schema ``<catalog>__<schema>`` of the trace
database on PostgreSQL. A streamed response is stored as its final response object (the aggregate
of its events); a background one when its run ends; a refused request (4xx, 429) with its error
body. A payload over the cap (10 MiB) is not stored and gets ``MAX_REQUEST_SIZE_EXCEEDED`` or
``MAX_RESPONSE_SIZE_EXCEEDED`` in ``logging_error_codes``. Rows are written in batches off the
hot path; a failure is logged and counted, and the requests never notice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter
from sqlalchemy import BigInteger, Column, Date, DateTime, Float, Integer, MetaData, String, Table, Text, insert

from opensupervisor.batches import BatchWriter
from opensupervisor.metrics import REGISTRY
from opensupervisor.side_engine import CatalogTables

BATCH = 500
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
MAX_QUEUED = 10_000
WRITE_FAILURES = Counter("opensupervisor_inference_table_write_failures",
                         "Requests whose inference table rows could not be written", registry=REGISTRY)
DROPPED = Counter("opensupervisor_inference_table_rows_dropped",
                  "Requests whose inference table rows were dropped: the queue was full", registry=REGISTRY)


def payload_table(metadata: MetaData, prefix: str) -> Table:
    return Table(
        f"{prefix}_payload", metadata,
        Column("databricks_request_id", String(64)), Column("request_date", Date),
        Column("client_request_id", Text), Column("request_time", DateTime(timezone=True)),
        Column("status_code", Integer), Column("sampling_fraction", Float),
        Column("execution_duration_ms", BigInteger), Column("request", Text), Column("response", Text),
        Column("logging_error_codes", Text), Column("served_entity_id", Text), Column("requester", Text),
    )


@dataclass(frozen=True, slots=True)
class TableConfig:
    catalog_name: str
    schema_name: str
    table_name_prefix: str
    max_payload_bytes: int = MAX_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and what it was answered."""

    request_id: str
    started: float  # epoch seconds
    seconds: float
    status_code: int
    request: dict[str, Any] | None  # None: the body was not a JSON object (it is not kept: it may hold secrets)
    response: dict[str, Any]
    requester: str
    model: str | None


class InferenceTables:
    def __init__(self, config: TableConfig, folder: Path, url: str | None = None) -> None:
        self.config = config
        self.tables = CatalogTables(folder, url)
        self._rows = BatchWriter(self._write, what="inference table row(s)", batch=BATCH, max_queued=MAX_QUEUED,
                                 failed=WRITE_FAILURES, dropped=DROPPED)

    def record(self, exchange: Exchange) -> None:
        """Queue a row (never blocks, never raises; dropped and counted when the queue is full)."""
        self._rows.put(exchange)

    async def _write(self, batch: list[Exchange]) -> None:
        await asyncio.to_thread(self._insert, batch)

    def row(self, exchange: Exchange) -> dict[str, Any]:
        codes: list[str] = []
        cap = self.config.max_payload_bytes
        request = orjson.dumps(exchange.request) if exchange.request is not None else None
        response: bytes | None = orjson.dumps(exchange.response)
        if request is None:
            codes.append("REQUEST_NOT_JSON")
        elif len(request) > cap:
            codes.append("MAX_REQUEST_SIZE_EXCEEDED")
            request = None
        if response is not None and len(response) > cap:
            codes.append("MAX_RESPONSE_SIZE_EXCEEDED")
            response = None
        started = dt.datetime.fromtimestamp(exchange.started, dt.UTC)
        client_id = (exchange.request or {}).get("client_request_id")
        return {
            "databricks_request_id": exchange.request_id, "request_date": started.date(),
            "client_request_id": client_id if isinstance(client_id, str) else None, "request_time": started,
            "status_code": exchange.status_code, "sampling_fraction": 1.0,
            "execution_duration_ms": int(exchange.seconds * 1000),
            "request": request.decode() if request is not None else None,
            "response": response.decode() if response is not None else None,
            "logging_error_codes": orjson.dumps(codes).decode(), "served_entity_id": exchange.model,
            "requester": exchange.requester,
        }

    def _insert(self, batch: list[Exchange]) -> None:
        rows = [self.row(exchange) for exchange in batch]  # serializing payloads is work: off the event loop
        engine, schema = self.tables.engine(self.config.catalog_name, self.config.schema_name)
        metadata = MetaData(schema=schema)
        table = payload_table(metadata, self.config.table_name_prefix)
        with engine.begin() as conn:
            self.tables.ensure(conn, metadata, schema)
            conn.execute(insert(table), rows)

    async def flush(self) -> None:
        await self._rows.flush()

    async def aclose(self) -> None:
        await self._rows.aclose()
        self.tables.dispose()
