"""Bounded SQL results: each value cut by the database, rows fetched a few at a time.

A model's query runs wrapped, so that the database cuts every value before it reaches the server
(one 20-million-character value never travels, nor is held whole in Python): the wrapper reads the
query's result behind an optimization fence (``OFFSET 0``: each value is computed once) and returns,
per column, the value when it is short, else its first ``N`` characters and its full length. Rows
are fetched in small batches and fetching stops at the row cap, or as soon as the text so far is
past the output cap (the rest could not be shown anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opensupervisor.core.bounds import cap_cell, cut_value

# Bytes of cut values one fetch may bring in, whatever the number of columns.
FETCH_BYTES = 2_000_000


@dataclass(frozen=True, slots=True)
class Bounds:
    max_rows: int
    cell_chars: int
    output_chars: int


@dataclass(frozen=True, slots=True)
class Rows:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    # How many values were cut at ``cell_chars``; whether fetching stopped at the output cap.
    cut_values: int = 0
    cell_chars: int = 0
    output_cap: int | None = None


def probe(sql: str) -> str:
    """The query's columns without running it (``LIMIT 0`` reads no row)."""
    return f"SELECT * FROM ({sql}) AS q LIMIT 0"


def wrapped(backend: str, sql: str, width: int, cell: int) -> str:
    """``sql`` with each of its ``width`` columns cut at ``cell`` characters by the database."""
    names = ", ".join(f"c{i}" for i in range(width))
    if backend == "sqlite":  # dynamic types: one column holds the value or its cut prefix
        inner = f"SELECT * FROM ({sql}) AS q LIMIT -1 OFFSET 0"
        parts = [f"CASE WHEN length(c{i}) > {cell} THEN substr(c{i}, 1, {cell}) ELSE c{i} END, "
                 f"CASE WHEN length(c{i}) > {cell} THEN length(c{i}) END" for i in range(width)]
    else:
        text = "TEXT" if backend == "postgresql" else "VARCHAR"
        inner = f"SELECT * FROM ({sql}) AS q OFFSET 0"
        parts = []
        for i in range(width):
            long = f"length(CAST(c{i} AS {text})) > {cell}"
            parts.append(f"CASE WHEN {long} THEN NULL ELSE c{i} END, "
                         f"CASE WHEN {long} THEN left(CAST(c{i} AS {text}), {cell}) END, "
                         f"CASE WHEN {long} THEN length(CAST(c{i} AS {text})) END")
    return f"WITH w({names}) AS ({inner}) SELECT {', '.join(parts)} FROM w"


def batch_size(width: int, cell: int) -> int:
    return max(1, min(200, FETCH_BYTES // max(1, width * (cell + 16))))


def fetch(fetchmany: Callable[[int], Sequence[Sequence[Any]]], backend: str, columns: list[str],
          bounds: Bounds) -> Rows:
    """Read the wrapped query's rows: at most ``max_rows`` (one more tells a truncated result), and
    none once the text is past ``output_chars``."""
    width, cell = len(columns), bounds.cell_chars
    stride = 2 if backend == "sqlite" else 3
    rows: list[tuple[Any, ...]] = []
    cut = chars = 0
    truncated = at_output_cap = False
    size = batch_size(width, cell)
    while not truncated:
        batch = fetchmany(size)
        if not batch:
            break
        for raw in batch:
            if len(rows) == bounds.max_rows:
                truncated = True
                break
            row = []
            for i in range(width):
                value, n = _cell(raw[i * stride:(i + 1) * stride], cell)
                cut += n
                chars += len(str(value)) + 3
                row.append(value)
            rows.append(tuple(row))
            if chars > bounds.output_chars:
                truncated = at_output_cap = True
                break
        if len(batch) < size:  # the last batch: no round trip to learn that
            break
    return Rows(columns, rows, truncated, cut, cell, bounds.output_chars if at_output_cap else None)


def _cell(parts: Sequence[Any], cell: int) -> tuple[Any, int]:
    """A value and whether it was cut (1) or not (0)."""
    if len(parts) == 2:
        value, total = parts
        prefix = value
    else:
        value, prefix, total = parts
    if total is not None:
        shown = prefix.decode("utf-8", "replace") if isinstance(prefix, bytes) else str(prefix)
        return cut_value(shown, int(total), cell), 1
    if isinstance(value, bytes) and len(value) > cell:
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text, was_cut = cap_cell(value, cell)
        return text, int(was_cut)
    return value, 0
