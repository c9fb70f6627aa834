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

A small write that finds no batch running or waiting, and the file's write lock free, runs at once
on its caller's thread instead (``now``): on an idle server the trip to the writer thread and back
cost more than the write, and a streamed response's first event waits for its write. It never
waits for the lock (another process's writer): then it goes to the writer thread as any other.
No commit of the writer's connection checkpoints the WAL, which could mean a disk sync on a caller's
thread: the writer thread checkpoints it after every ``CHECKPOINT_EVERY`` commits.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
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
# Commits between two checkpoints: a few pages each, so about as often as SQLite's own automatic
# checkpoint (past 1,000 pages).
CHECKPOINT_EVERY = 200


class NotBatched(RuntimeError):
    """A write of a batch took a connection of its own (its writes would wait for the batch's lock)."""


Write = tuple[Callable[[], Any], "Future[Any]"]
_CHECKPOINT = "checkpoint"  # a job of the writer thread's queue, beside the writes


class GroupCommit:
    def __init__(self, engine: Engine, *, name: str = "store-writer") -> None:
        self._engine = engine
        self._waiting: queue.SimpleQueue[Write | str | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._closed = False
        # The writer thread's connection, kept from batch to batch (a checkout and check-in of the
        # pool per batch showed in profiles); dropped after a failed batch, to start afresh.
        self._conn: Connection | None = None
        # Held while a batch runs, and while a write runs at once on its caller's thread.
        self._busy = threading.Lock()
        self._lock_wait_s = 0.0
        self._commits = 0  # since the last checkpoint
        self._checkpoint_asked = False
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

    def now(self, fn: Callable[[], T]) -> tuple[bool, T | None]:
        """Run ``fn`` at once on this thread in a transaction of its own: ``(True, its result)``. When a
        batch runs or waits, the file is locked by another process, or ``fn`` fails, nothing is
        written and the answer is ``(False, None)``: submit it (every write is idempotent)."""
        if self._closed or self._conn is None or not self._waiting.empty() or not self._busy.acquire(blocking=False):
            return False, None
        try:
            conn = self._conn
            if conn is None:  # dropped after a failed batch; the writer thread makes the next one
                return False, None
            raw = conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            try:
                raw.execute("BEGIN IMMEDIATE")  # the connection does not wait for a lock (``_connect``)
            except sqlite3.Error:
                return False, None
            self._local.conn = conn
            try:
                result = fn()
                conn.commit()
                if raw.in_transaction:
                    raw.execute("COMMIT")
            except Exception:
                self._drop()  # rolls back and closes it; the writer thread connects afresh
                return False, None
            finally:
                self._local.conn = None
            self._commits += 1
            if self._commits >= CHECKPOINT_EVERY and not self._checkpoint_asked:
                self._checkpoint_asked = True
                self._waiting.put(_CHECKPOINT)
            return True, result
        finally:
            self._busy.release()


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
            if isinstance(first, str):  # _CHECKPOINT, the only job that is not a write
                self._checkpoint()
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._waiting.put(None)  # stop after this batch
                    break
                if isinstance(more, str):
                    self._waiting.put(more)  # after this batch
                    break
                batch.append(more)
            # A write whose caller gave up before it started is not made (once it runs, it cannot be).
            batch = [(fn, future) for fn, future in batch if future.set_running_or_notify_cancel()]
            try:
                if batch:
                    self._run(batch)
            except Exception:  # the thread must outlive anything: every later write waits for it
                log.exception("a batch of writes failed to report its outcome")

    def _connect(self) -> tuple[Connection, sqlite3.Connection]:
        """The writer's connection, made on the writer thread when there is none."""
        if self._conn is None:
            conn = self._engine.connect()
            raw = conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            # It never waits for a lock inside SQLite (a batch waits in ``_begin`` as long as the
            # engine's connections would, ``now`` does not wait) nor checkpoints at a commit
            # (``_checkpoint`` does, on the writer thread).
            self._lock_wait_s = int(raw.execute("PRAGMA busy_timeout").fetchone()[0]) / 1000
            raw.execute("PRAGMA busy_timeout=0")
            raw.execute("PRAGMA wal_autocheckpoint=0")
            self._conn = conn
        raw = self._conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        return self._conn, raw

    def _checkpoint(self) -> None:
        with self._busy:
            self._commits, self._checkpoint_asked = 0, False
            try:
                _, raw = self._connect()
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:
                log.exception("checkpointing the WAL failed")
                self._drop()

    def _run(self, batch: list[Write]) -> None:
        # The callers hear back once the lock is free: one that writes again at once may do it on
        # its own thread (``now``).
        with self._busy:
            outcomes = self._run_batch(batch)
            self._commits += 1
        alone: list[Write] = []
        for (fn, future), outcome in zip(batch, outcomes, strict=True):
            if not outcome[0] and isinstance(outcome[1], NotBatched):
                alone.append((fn, future))  # after the others have heard back
            else:
                _report(future, outcome)
        for fn, future in alone:
            _report(future, _alone(fn))
        if self._commits >= CHECKPOINT_EVERY:
            self._checkpoint()

    def _run_batch(self, batch: list[Write]) -> list[tuple[bool, Any]]:
        """Each write's outcome; all of them the batch's error when it could not commit."""
        try:
            conn, raw = self._connect()
            _begin(raw, self._lock_wait_s)  # waits here for another process's writer, if any
            self._local.conn = conn
            try:
                outcomes = [_in_savepoint(raw, fn) for fn, _ in batch]
            finally:
                self._local.conn = None
            conn.commit()
            if raw.in_transaction:  # no statement went through ``conn``, which then commits nothing
                _driver(raw, "COMMIT")
            return outcomes
        except BaseException as exc:  # nothing of the batch is written
            self._drop()
            return [(False, exc)] * len(batch)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # not back to the pool: it may have been left in any state
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


def _begin(raw: sqlite3.Connection, wait_s: float) -> None:
    """BEGIN IMMEDIATE, waiting up to ``wait_s`` for another connection's write lock in growing
    sleeps, as SQLite's own busy handler does."""
    deadline, pause = time.monotonic() + wait_s, 0.001
    while True:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


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
