"""DuckDB queries in a worker process: its memory and its deadline are the operating system's.

DuckDB runs inside the process that calls it, and its ``memory_limit`` covers its buffers, not
every value it builds (``repeat('x', 1000000000)`` is a gigabyte outside the limit). So a space's
model-written queries run in a child process with an address-space limit (``RLIMIT_AS``), one
query at a time, that dies with the server (``PR_SET_PDEATHSIG``) and is killed at the deadline.
The child opens the file read-only with external access off and its configuration locked, and
returns the bounded result (``tools.sql_results``) as one JSON line.

Run as ``python -m opensupervisor.tools.sql_duckdb`` it is the child.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

import orjson

from opensupervisor.tools.sql_results import Bounds, Rows, fetch, probe, wrapped

MEMORY_BYTES = 1024 * 1024 * 1024  # the child's address space
DUCKDB_MEMORY = "128MB"
CONFIG: dict[str, Any] = {
    "enable_external_access": False, "autoinstall_known_extensions": False, "autoload_known_extensions": False,
    "allow_community_extensions": False, "python_enable_replacements": False, "memory_limit": DUCKDB_MEMORY,
    "threads": 1, "temp_directory": "", "lock_configuration": True,
}
MAX_COLUMNS = 500


class WorkerError(Exception):
    """The child failed: ``kind`` is ``timeout``, ``memory``, ``refused`` or ``crashed``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Workers:
    """Idle children of one database file, reused; a child that fails or overruns is killed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._idle: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def query(self, sql: str, bounds: Bounds, deadline: float) -> Rows:
        child = self._take()
        request = orjson.dumps({"path": self.path, "sql": sql, "max_rows": bounds.max_rows,
                                "cell": bounds.cell_chars, "output": bounds.output_chars})
        try:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(request + b"\n")
            child.stdin.flush()
            line = _read_line(child.stdout.fileno(), deadline)
        except (OSError, WorkerError):
            _kill(child)
            if time.monotonic() >= deadline:
                raise WorkerError("timeout", "deadline") from None
            raise WorkerError("crashed", "the query's process ended (it ran out of memory)") from None
        answer = orjson.loads(line)
        with self._lock:
            self._idle.append(child)
        if "error" in answer:
            raise WorkerError(answer["kind"], answer["error"])
        return Rows(answer["columns"], [tuple(r) for r in answer["rows"]], answer["truncated"],
                    answer["cut_values"], answer["cell_chars"], answer["output_cap"])

    def _take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.poll() is None:
                    return child
        return subprocess.Popen([sys.executable, "-m", "opensupervisor.tools.sql_duckdb"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            _kill(child)


def _read_line(fd: int, deadline: float) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise WorkerError("timeout", "deadline")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise OSError("the child closed its output")
        data += chunk
    return data


def _kill(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        child.kill()
    child.wait()


def _limit_self() -> None:
    """In the child, before it reads a query (SQL cannot undo it)."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the server


def _json(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (Decimal, date, datetime, dtime)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    import duckdb

    bounds = Bounds(request["max_rows"], request["cell"], request["output"])
    try:
        with duckdb.connect(request["path"], read_only=True, config=CONFIG) as conn:
            conn.execute(probe(request["sql"]))
            columns = [str(d[0]) for d in conn.description or []]
            if len(columns) > MAX_COLUMNS:
                return {"kind": "refused", "error": f"the query returns {len(columns)} columns; a space's query "
                        f"may return at most {MAX_COLUMNS}"}
            if not columns:
                rows = Rows([], [], False)
            else:
                conn.execute(wrapped("duckdb", request["sql"], len(columns), bounds.cell_chars))
                rows = fetch(conn.fetchmany, "duckdb", columns, bounds)
    except duckdb.OutOfMemoryException as exc:
        return {"kind": "memory", "error": str(exc).strip().splitlines()[0]}
    except (duckdb.Error, MemoryError) as exc:
        return {"kind": "refused", "error": (str(exc).strip().splitlines() or [type(exc).__name__])[0]}
    return {"columns": rows.columns, "rows": [[_json(v) for v in row] for row in rows.rows],
            "truncated": rows.truncated, "cut_values": rows.cut_values, "cell_chars": rows.cell_chars,
            "output_cap": rows.output_cap}


def main() -> None:
    _limit_self()
    for line in sys.stdin.buffer:
        sys.stdout.buffer.write(orjson.dumps(_answer(orjson.loads(line))) + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
