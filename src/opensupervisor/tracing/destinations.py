"""Whose ``trace_destination`` is where, and how many each principal may have.

An admin's destination is the shared ``catalog.schema`` (the file ``<catalog>.<schema>.db``, or
the PostgreSQL schema ``<catalog>__<schema>``). Everyone else's is namespaced under their
principal id (``<id>/<catalog>.<schema>.db``, or the schema ``<id>$<catalog>__<schema>``), so a
caller can neither read into nor write into another's tables, and each may have at most
``[tracing] max_destinations_per_principal`` of them (a destination is a catalog, schema and
table prefix). The bound counts what exists already (after a restart too) and is kept per
process: processes writing at once may pass it by one each.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from sqlalchemy import text

from opensupervisor.errors import InvalidRequest
from opensupervisor.identity import Principal
from opensupervisor.side_engine import CatalogTables
from opensupervisor.tracing.spans import DEFAULT_PREFIX, Destination

SPANS_SUFFIX = "_otel_spans"
PG_NAME_BYTES = 63
FILE_NAME_BYTES = 255
Key = tuple[str, str]  # (file or schema, table prefix)


class TraceDestinations:
    def __init__(self, tables: CatalogTables, max_per_principal: int) -> None:
        self.tables = tables
        self.max_per_principal = max_per_principal
        self._known: dict[str, set[Key]] = {}
        self._lock = asyncio.Lock()

    async def admit(self, principal: Principal, catalog: str, schema: str, prefix: str | None) -> Destination:
        """The destination ``principal`` writes to; 400 naming ``trace_destination`` when it cannot be."""
        destination = Destination(catalog, schema, prefix or DEFAULT_PREFIX,
                                  None if principal.is_admin else principal.id)
        key = self._key(destination)
        owner = destination.owner
        if owner is None:
            return destination
        async with self._lock:
            known = self._known.get(owner)
            if known is None:
                known = self._known[owner] = await asyncio.to_thread(self._existing, owner)
            if key not in known:
                if len(known) >= self.max_per_principal:
                    raise InvalidRequest(
                        f"You have {len(known)} trace destinations, the most a caller may have "
                        f"({self.max_per_principal}); write to one of them.", param="trace_destination",
                        code="too_many_trace_destinations")
                known.add(key)
        return destination

    def _key(self, d: Destination) -> Key:
        """Where ``d`` lives, refused when the database could not name it as asked."""
        if self.tables.url is not None:
            container = self.tables.schema_of(d.catalog, d.schema, d.owner)
            _fits(container, PG_NAME_BYTES, "trace_destination", "the catalog and schema names")
            _fits(d.prefix + SPANS_SUFFIX, PG_NAME_BYTES, "trace_destination.table_prefix", "the table prefix")
        else:
            container = self.tables.path_of(d.catalog, d.schema, d.owner).name
            _fits(container, FILE_NAME_BYTES, "trace_destination", "the catalog and schema names")
        return container, d.prefix

    def _existing(self, owner: str) -> set[Key]:
        """The destinations ``owner`` has from before (this process's start, or another process)."""
        if self.tables.url is not None:
            return self._existing_pg(owner)
        found: set[Key] = set()
        folder = self.tables.folder / owner
        for path in sorted(folder.glob("*.db")) if folder.is_dir() else []:
            found |= {(path.name, p) for p in _sqlite_prefixes(path)}
        return found

    def _existing_pg(self, owner: str) -> set[Key]:
        engine, _ = self.tables.engine("x", "x", owner)
        start = f"{owner}$"
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE left(table_schema, length(:start)) = :start AND right(table_name, :n) = :suffix"),
                {"start": start, "n": len(SPANS_SUFFIX), "suffix": SPANS_SUFFIX}).all()
        return {(r.table_schema, r.table_name[:-len(SPANS_SUFFIX)]) for r in rows}


def _sqlite_prefixes(path: Path) -> list[str]:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [n[:-len(SPANS_SUFFIX)] for n in names if n.endswith(SPANS_SUFFIX)]


def _fits(name: str, limit: int, param: str, what: str) -> None:
    if len(name.encode()) > limit:
        raise InvalidRequest(f"'{param}' is too long: {what} make a name longer than the trace store's limit "
                             f"of {limit} bytes.", param=param, code="invalid_value")
