"""Group commit on SQLite: the writes that wait meanwhile share one transaction.

SQLite lets one writer in at a time. Writers on several threads that find the file locked sleep in
steps of milliseconds (its busy handler), and each write pays its own BEGIN, COMMIT and WAL frames
while it holds the lock: under load that serial section, not the CPU, bounded how many background
runs a server completed. Here one thread runs every write of the store, in arrival order. It takes
all the writes waiting, runs each in a savepoint of one transaction and commits them together; the
more writes wait, the fewer commits each costs.

Each write is what it was alone: it sees the writes before it, a write that raises is rolled back
to its savepoint (its caller gets the error; the others commit), and its caller hears back only
after the commit, so a read that follows sees it. A batch whose commit fails fails every write in
it, and each caller retries as after any failed write (``Store.write``).

A write joins the batch through ``GroupCommit.transaction``. One that takes a connection of its own
from the engine instead (it would wait for the batch's lock) is stopped before it does anything and
runs alone after the batch.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

T = TypeVar("T")
log = logging.getLogger(__name__)
# Writes per transaction at most: a long batch makes its first caller wait for all the others.
MAX_BATCH = 64


class NotBatched(RuntimeError):
    """A write of a batch took a connection of its own (its writes would wait for the batch's lock)."""


Write = tuple[Callable[[], Any], "Future[Any]"]


class GroupCommit:
    def __init__(self, engine: Engine, *, name: str = "store-writer") -> None:
        self._engine = engine
        self._waiting: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._closed = False
        # The writer thread's connection, kept from batch to batch (a checkout and check-in of the
        # pool per batch showed in profiles); dropped after a failed batch, to start afresh.
        self._conn: Connection | None = None
        # A pool event, not a connection one: those would slow every statement of the engine.
        event.listen(engine.pool, "checkout", self._no_connection_of_its_own)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if self._closed:
            raise RuntimeError("the store is closed")
        future: Future[T] = Future()
        self._waiting.put((fn, future))
        return future

    def transaction(self) -> AbstractContextManager[Connection]:
        """The batch's connection on the writer thread (within the write's savepoint), else a
        transaction of its own: the same code runs in a batch or alone."""
        conn: Connection | None = getattr(self._local, "conn", None)
        return self._engine.begin() if conn is None else _shared(conn)

    def close(self) -> None:
        self._closed = True
        self._waiting.put(None)
        self._thread.join(timeout=30)

    def _no_connection_of_its_own(self, *_: Any) -> None:
        if getattr(self._local, "conn", None) is not None:
            raise NotBatched("a batched write opened a connection of its own")

    def _serve(self) -> None:
        try:
            self._serve_batches()
        finally:
            self._drop()  # on this thread: an SQLite connection is closed where it is used

    def _serve_batches(self) -> None:
        while (first := self._waiting.get()) is not None:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._waiting.put(None)  # stop after this batch
                    break
                batch.append(more)
            # A write whose caller gave up before it started is not made (once it runs, it cannot be).
            batch = [(fn, future) for fn, future in batch if future.set_running_or_notify_cancel()]
            try:
                if batch:
                    self._run(batch)
            except Exception:  # the thread must outlive anything: every later write waits for it
                log.exception("a batch of writes failed to report its outcome")

    def _run(self, batch: list[Write]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
            conn = self._conn
            raw = conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            _driver(raw, "BEGIN IMMEDIATE")  # waits here for another process's writer, if any
            self._local.conn = conn
            try:
                outcomes = [_in_savepoint(raw, fn) for fn, _ in batch]
            finally:
                self._local.conn = None
            conn.commit()
            if raw.in_transaction:  # no statement went through ``conn``, which then commits nothing
                _driver(raw, "COMMIT")
        except BaseException as exc:  # nothing of the batch is written
            self._drop()
            for _, future in batch:
                future.set_exception(exc)
            return
        alone: list[Write] = []
        for (fn, future), outcome in zip(batch, outcomes, strict=True):
            if not outcome[0] and isinstance(outcome[1], NotBatched):
                alone.append((fn, future))  # after the others have heard back
            else:
                _report(future, outcome)
        for fn, future in alone:
            _report(future, _alone(fn))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # rolls back what a failed batch left open
            except Exception:
                log.exception("closing the writer's connection failed")


def _report(future: Future[Any], outcome: tuple[bool, Any]) -> None:
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _alone(fn: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as exc:
        return False, exc


def _in_savepoint(raw: sqlite3.Connection, fn: Callable[[], Any]) -> tuple[bool, Any]:
    """Run ``fn`` in a savepoint: (True, its result), or (False, its error) with its writes undone.
    An error of the savepoint itself (the connection broke) fails the whole batch."""
    _driver(raw, "SAVEPOINT batched")
    try:
        result = fn()
    except Exception as exc:
        _driver(raw, "ROLLBACK TO batched")
        _driver(raw, "RELEASE batched")
        return False, exc
    _driver(raw, "RELEASE batched")
    return True, result


def _driver(raw: sqlite3.Connection, statement: str) -> None:
    """A statement on the driver's connection (cheaper than through SQLAlchemy, which runs the
    write's own statements), its error raised as SQLAlchemy raises the others'."""
    try:
        raw.execute(statement)
    except sqlite3.Error as exc:
        raise OperationalError(statement, None, exc) from exc


@contextmanager
def _shared(conn: Connection) -> Iterator[Connection]:
    yield conn
