"""How a stored response lies in its tables: the rows written for its items and events, and the
reads of one response's row and items that the store's transactions share."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Column, ColumnElement, Connection, Update, and_, bindparam, func, or_, select, text, update
from sqlalchemy.exc import OperationalError

from opensupervisor.core.eventlog import Row, compact, plain
from opensupervisor.core.events import Event, terminal_event
from opensupervisor.errors import QueueFull, RunSuperseded
from opensupervisor.store.schema import events, items, responses
from opensupervisor.wire.items import Item


class Stored(NamedTuple):
    response: dict[str, Any]
    stream: bool
    heartbeat_at: int | None
    # A background run in the queue: no process has taken it yet (``store.run_queue``).
    waiting: bool = False


class RunRecord(NamedTuple):
    """What a worker needs to run (or resume) a stored background response."""

    response: dict[str, Any]
    request: dict[str, Any]
    owner: str
    stream: bool
    options: dict[str, Any]
    input_items: list[Item]


# What ``run_record`` reads of a response.
RUN_COLUMNS = (responses.c.response, responses.c.request, responses.c.owner, responses.c.stream, responses.c.options)


def run_record(row: Any, input_items: list[Item]) -> RunRecord:
    """A background run as a worker needs it, from a row of ``RUN_COLUMNS`` and its input items."""
    response = orjson.loads(row.response)
    response["output"] = []
    return RunRecord(response, orjson.loads(row.request), row.owner, bool(row.stream),
                     orjson.loads(row.options) if row.options else {}, input_items)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def one_of(column: Column[Any], values: frozenset[str]) -> ColumnElement[bool]:
    """``column IN values`` as plain comparisons: an IN list of bound values is rendered again at
    every execution, which costs more than the statement on the hot path."""
    return or_(*(column == value for value in sorted(values)))


@functools.cache
def advance(statuses: frozenset[str], *, fenced: bool, changes: bool) -> Update:
    """The UPDATE that each write of a running response starts with, built once per shape (it runs
    at every item boundary of every run). Binds ``rid`` and ``beat``; ``epoch`` when ``fenced``;
    ``new_status`` and ``body`` when the write ``changes`` the response."""
    where = [responses.c.id == bindparam("rid"), one_of(responses.c.status, statuses)]
    if fenced:
        where.append(responses.c.owner_epoch == bindparam("epoch"))
    values: dict[str, Any] = {"heartbeat_at": bindparam("beat")}
    if changes:
        values.update(status=bindparam("new_status"), response=bindparam("body"))
    return update(responses).where(*where).values(values)


def without_output(response: dict[str, Any]) -> dict[str, Any]:
    """The response as stored: its output items live in their own rows. ``output`` keeps its place
    (empty), so that a response read back has its keys in the order it was streamed with."""
    return dict(response, output=[])


def to_item_rows(response_id: str, kind: str, new: dict[int, Item]) -> list[dict[str, Any]]:
    return [{"response_id": response_id, "kind": kind, "position": pos, "item_id": it.get("id"),
             "item": dumps(it)} for pos, it in new.items()]


def to_event_rows(response_id: str, new: Sequence[Event | Row]) -> list[dict[str, Any]]:
    """Rows of the log (``type`` is dropped on insert: it says which rows a refused write keeps)."""
    out = []
    for entry in new:
        row = plain(entry) if isinstance(entry, Event) else entry
        out.append({"response_id": response_id, "sequence_number": row.sequence_number, "event": row.event,
                    "type": row.type})
    return out


def still_there(conn: Connection, response_id: str, epoch: int | None) -> bool:
    """Why a write of a running response changed no row: False when the response is gone (deleted
    meanwhile; nothing of it is written any more), ``RunSuperseded`` when another process claimed
    its run since ``epoch`` (its new owner writes all this), else True (it stopped running)."""
    owner_epoch = conn.execute(select(responses.c.owner_epoch).where(responses.c.id == response_id)).scalar()
    if owner_epoch is None:
        return False
    if epoch is not None and owner_epoch != epoch:
        raise RunSuperseded(response_id)
    return True


def owned_response(conn: Connection, response_id: str, owner: str | None) -> Any:
    query = select(responses.c.response, responses.c.owner, responses.c.stream, responses.c.heartbeat_at,
                   responses.c.owner_executor).where(
        responses.c.id == response_id)
    if owner is not None:
        query = query.where(responses.c.owner == owner)
    return conn.execute(query).first()


def stored_items(conn: Connection, response_id: str, kind: str) -> list[Item]:
    rows = conn.execute(select(items.c.item).where(
        and_(items.c.response_id == response_id, items.c.kind == kind)).order_by(items.c.position))
    return [orjson.loads(r.item) for r in rows]


def last_sequence(conn: Connection, response_id: str) -> int:
    """The sequence number of the last event in the log (-1 when there is none)."""
    last = conn.execute(select(func.max(events.c.sequence_number)).where(events.c.response_id == response_id)).scalar()
    return -1 if last is None else int(last)


def ending_rows(conn: Connection, response_id: str, response: dict[str, Any]) -> list[dict[str, Any]]:
    """The log row of the terminal event of ``response`` (stored without output), ended outside its
    run: after the last event, showing the output items stored so far."""
    output = stored_items(conn, response_id, "output")
    ending = terminal_event(dict(response, output=output), last_sequence(conn, response_id) + 1)
    return to_event_rows(response_id, [compact(ending, set(range(len(output))))])


def queued_runs() -> ColumnElement[bool]:
    """The background responses waiting in the queue."""
    return and_(responses.c.status == "queued", responses.c.background.is_(True))


# Notified when a background run starts waiting in the queue (``store.run_queue``).
RUNS_CHANNEL = "opensupervisor_runs"
_NOTIFY = text(f"NOTIFY {RUNS_CHANNEL}")


def notify_waiting(conn: Connection) -> None:
    """Wake the processes listening for runs when ``conn``'s transaction commits (PostgreSQL only)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY)


def admit_queued(conn: Connection, max_queued: int, *, postgresql: bool) -> None:
    """Count the queue after this transaction's own insert, alone: on SQLite the insert holds the
    database's write lock; on PostgreSQL concurrent creates would each miss the others' uncommitted
    rows, so they take turns on a lock (each count then sees every earlier create committed)."""
    if postgresql:
        conn.execute(text("SELECT pg_advisory_xact_lock(7426302)"))
    queued = conn.execute(_COUNT_QUEUED, {"cap": max_queued + 1}).scalar_one()
    if queued > max_queued:  # raising rolls the insert back
        raise QueueFull(f"Too many background responses are queued ({max_queued}); retry later.")


# Counted only as far as the limit: the answer is the same, and a long queue costs no more. Built
# once, not at each create (building it, and keying it for SQLAlchemy's cache, showed in profiles).
_COUNT_QUEUED = select(func.count()).select_from(
    select(responses.c.id).where(queued_runs()).limit(bindparam("cap")).subquery())


# The rows of every run's item and log writes, straight to the sqlite3 driver in the transaction
# of ``conn``: through SQLAlchemy each of these statements cost several times the work it does.
_ITEMS_SQL = ("INSERT INTO os_response_items (response_id, kind, position, item_id, item) VALUES (?, ?, ?, ?, ?) "
              "ON CONFLICT DO NOTHING")
_EVENTS_SQL = ("INSERT INTO os_response_events (response_id, sequence_number, event) VALUES (?, ?, ?) "
               "ON CONFLICT DO NOTHING")


def insert_rows_sqlite(conn: Connection, item_rows: list[dict[str, Any]], event_rows: list[dict[str, Any]]) -> None:
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    try:
        if item_rows:
            raw.executemany(_ITEMS_SQL, [(r["response_id"], r["kind"], r["position"], r["item_id"], r["item"])
                                         for r in item_rows])
        if event_rows:
            raw.executemany(_EVENTS_SQL, [(r["response_id"], r["sequence_number"], r["event"]) for r in event_rows])
    except sqlite3.OperationalError as exc:  # a locked file, a full disk: raised as SQLAlchemy raises them
        raise OperationalError(_ITEMS_SQL if item_rows else _EVENTS_SQL, None, exc) from exc


# What a write may carry and still run on its caller's thread (``GroupCommit.now``).
SMALL_WRITE_BYTES = 32 * 1024


def small_rows(item_rows: list[dict[str, Any]], event_rows: list[dict[str, Any]],
               row: dict[str, Any] | None = None) -> bool:
    """Whether the rows of a write (and a response ``row``) are a few KB at most."""
    size = sum(len(r["item"]) for r in item_rows) + sum(len(r["event"]) for r in event_rows)
    if row is not None:
        size += len(row["response"]) + len(row["request"])
    return size <= SMALL_WRITE_BYTES


_COMPILED: dict[tuple[Any, tuple[str, ...]], Any] = {}


def execute_fast(conn: Connection, statement: Any, params: dict[str, Any]) -> int:
    """``conn.execute(statement, params).rowcount``; on SQLite straight on the driver, compiled once
    per statement and set of keys. For the few statements every run makes (its row's insert and its
    writes' UPDATE), whose execution through SQLAlchemy cost several times their work."""
    if conn.dialect.name != "sqlite":
        return int(conn.execute(statement, params).rowcount)
    key = (statement, tuple(params))
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = _COMPILED[key] = statement.compile(dialect=conn.dialect, column_keys=list(params))
    values = compiled.construct_params(params)
    raw = conn.connection.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    try:
        return int(raw.execute(compiled.string, [values[name] for name in compiled.positiontup]).rowcount)
    except sqlite3.OperationalError as exc:
        raise OperationalError(compiled.string, None, exc) from exc
