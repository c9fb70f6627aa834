"""Background runs: queue pickup latency, and completed runs per second as worker processes are added.

Starts ``opensupervisor serve`` and ``opensupervisor worker`` processes on PostgreSQL (the store and
DBOS's system database in a new database of the server ``--database-url`` names, one per
measurement, dropped after it: rows that earlier runs left, and that no vacuum has cleaned, would
slow every write), with the scripted model: each run is a model turn that
calls a hosted tool, the tool, and a model turn that answers (three steps of the run). Prints:

- pickup: time from sending the create to the response showing ``in_progress`` (p50, p99), when
  the server runs the response itself and when a worker takes it from the queue, on PostgreSQL
  with step checkpoints waiting for the disk or not (``synchronous_commit``), and on SQLite;
- throughput: completed runs per second with 1, 2 and 4 worker processes (the server only accepts),
  and of one server on SQLite running every run; each after ``--warm`` runs that are not measured
  (a process's first runs pay for its thread pools, connections and first statements).

Figures are ratios of one run on one machine; compare them only with figures from the same run.

    .venv/bin/python bench/background.py [--runs 300] [--database-url postgresql://…]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psycopg
import sqlalchemy as sa

TOKEN = "bench-token"
HERE = Path(__file__).resolve().parent
WORKSPACE = """
name = "bench"
plugins = ["benchtools"]

[models.bench]
provider = "scripted"

[[models.bench.script]]
turns = [{ tool_calls = [{ name = "echo" }] }, { text = "done" }]

[background]
max_queued = 100000
poll_interval_s = {poll}
synchronous_commit = {sync}
"""
BODY: dict[str, Any] = {"model": "bench", "input": "go", "tools": [{"type": "bench_echo"}], "background": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    def __init__(self, folder: Path, database_url: str, schema: str, *, synchronous_commit: bool = True,
                 poll_interval_s: float = 0.05) -> None:
        self.folder = folder
        self.database_url = database_url
        text = WORKSPACE.replace("{sync}", str(synchronous_commit).lower()).replace("{poll}", str(poll_interval_s))
        (folder / "workspace.toml").write_text(text)
        self.env = {**os.environ, "OPENSUPERVISOR_CONFIG": str(folder / "workspace.toml"),
                    "OPENSUPERVISOR_DATABASE_URL": database_url, "OPENSUPERVISOR_SYSTEM_SCHEMA": schema,
                    "OPENSUPERVISOR_ADMIN_TOKEN": TOKEN,
                    # $PYTHONPATH may name another checkout's src/: its code is measured instead.
                    "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def serve(self, *, runs_here: bool) -> str:
        port = free_port()
        env = {**self.env, "OPENSUPERVISOR_PORT": str(port)}
        if not runs_here:
            env["OPENSUPERVISOR_WORKER_CONCURRENCY"] = "0"
        self._start(["serve", "--log-level", "warning"], env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def worker(self) -> None:
        self._start(["worker", "--log-level", "warning"], self.env)

    def wait_ready(self, since: float) -> None:
        """Until every process started since ``since`` (epoch s) beats its heartbeat as an executor."""
        deadline = time.monotonic() + 60
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM os_executors WHERE started_at > %s AND heartbeat_at > %s",
                                   (int(since * 1000), int((time.time() - 2) * 1000))).fetchone()
                if row is not None and row[0] >= len(self.procs):
                    return
                time.sleep(0.1)
        raise RuntimeError("the workers did not start")

    def _start(self, args: list[str], env: dict[str, str]) -> None:
        log = (self.folder / f"{args[0]}-{len(self.procs)}.log").open("wb")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "opensupervisor", *args], cwd=self.folder,
                                           env=env, stdout=log, stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []


def pickup(url: str, samples: int, database_url: str) -> list[float]:
    """Milliseconds from sending a create to the response showing in_progress, one at a time.

    The status is read from the database directly: polling the server would slow what it measures.
    """
    out: list[float] = []
    query = "SELECT status FROM os_responses WHERE id = {}"
    if database_url.startswith("sqlite"):
        conn: Any = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        query = query.format("?")
    else:
        conn = psycopg.connect(database_url, autocommit=True)
        query = query.format("%s")

    def status(response_id: str) -> str:
        return str(conn.execute(query, (response_id,)).fetchone()[0])

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        for _ in range(samples + 5):
            started = time.perf_counter()
            response_id = http.post("/v1/responses", json=BODY).json()["id"]
            while status(response_id) == "queued":
                time.sleep(0.0002)
            out.append((time.perf_counter() - started) * 1000)
            while status(response_id) == "in_progress":
                time.sleep(0.002)
    conn.close()
    return out[5:]  # the first ones warm the queue threads up


async def throughput(url: str, runs: int, database_url: str) -> float:
    """Completed runs per second: create ``runs`` background responses, wait until all are done.

    Completion is read through one connection kept open (a new PostgreSQL connection per look
    would start a backend each time, and that CPU would count as the runs')."""
    ids: list[str] = []
    started = time.perf_counter()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        gate = asyncio.Semaphore(16)

        async def create() -> None:
            async with gate, session.post(f"{url}/v1/responses", json=BODY) as resp:
                ids.append((await resp.json())["id"])

        await asyncio.gather(*(create() for _ in range(runs)))
    with contextlib.closing(_connect(database_url)) as conn:
        while True:
            if _completed(conn, database_url, ids) >= runs:
                break
            await asyncio.sleep(0.02)
    return runs / (time.perf_counter() - started)


def _connect(database_url: str) -> Any:
    if database_url.startswith("sqlite"):
        return sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    return psycopg.connect(database_url, autocommit=True)


def _completed(conn: Any, database_url: str, ids: list[str]) -> int:
    if database_url.startswith("sqlite"):
        marks = ",".join("?" * len(ids))
        row = conn.execute(f"SELECT count(*) FROM os_responses WHERE id IN ({marks}) AND status = 'completed'",
                           ids).fetchone()
    else:
        row = conn.execute("SELECT count(*) FROM os_responses WHERE id = ANY(%s) AND status = 'completed'",
                           (ids,)).fetchone()
    return int(row[0]) if row else 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--warm", type=int, default=100, help="runs before each throughput measurement, not counted")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--poll", type=float, default=0.05, help="background.poll_interval_s of the processes")
    parser.add_argument("--only", choices=["pickup", "throughput"], default=None)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure throughput with")
    args = parser.parse_args()
    schema = f"bench_dbos_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        if args.only != "throughput":
            pickups(args, Path(tmp), schema, stack)
        if args.only != "pickup":
            throughputs(args, Path(tmp), schema, stack)
            sqlite_throughput(args, Path(tmp), stack)


def pickups(args: argparse.Namespace, tmp: Path, schema: str, stack: ExitStack) -> None:
    print(f"pickup, create to in_progress, p50 / p99 ({args.samples} runs one at a time; workers are notified "
          f"on PostgreSQL, SQLite polls every {args.poll * 1000:.0f} ms):")
    for sync in (True, False):
        database_url = stack.enter_context(fresh_database(args.database_url))
        procs = Processes(tmp, database_url, schema, synchronous_commit=sync, poll_interval_s=args.poll)
        stack.callback(procs.stop)
        label = f"PostgreSQL, synchronous_commit={str(sync).lower()}"
        for here in (True, False):
            since = time.time()
            url = procs.serve(runs_here=here)
            if not here:
                procs.worker()
            procs.wait_ready(since)
            got = pickup(url, args.samples, database_url)
            where = "run by the server that took it" if here else "queued for a worker"
            print(f"  {label}, {where}: {statistics.median(got):6.1f} / {percentile(got, 0.99):6.1f} ms")
            procs.stop()
    sqlite = Processes(tmp, f"sqlite:///{tmp}/state.db", "dbos")
    stack.callback(sqlite.stop)
    got = pickup(sqlite.serve(runs_here=True), args.samples, sqlite.database_url)
    print(f"  SQLite (the default), run by the server that took it: {statistics.median(got):6.1f} / "
          f"{percentile(got, 0.99):6.1f} ms")
    sqlite.stop()


def throughputs(args: argparse.Namespace, tmp: Path, schema: str, stack: ExitStack) -> None:
    print(f"throughput on PostgreSQL ({args.runs} runs after {args.warm}, 16 clients; the server only accepts, "
          "workers run):")
    base = 0.0
    for workers in (int(n) for n in args.workers.split(",")):
        database_url = stack.enter_context(fresh_database(args.database_url))
        procs = Processes(tmp, database_url, schema, poll_interval_s=args.poll)
        stack.callback(procs.stop)
        since = time.time()
        url = procs.serve(runs_here=False)
        for _ in range(workers):
            procs.worker()
        procs.wait_ready(since)
        asyncio.run(throughput(url, args.warm, database_url))
        before = cpu_ticks(procs.procs)
        rate = asyncio.run(throughput(url, args.runs, database_url))
        spent = {k: (v - before.get(k, 0)) / os.sysconf("SC_CLK_TCK") * 1000 / args.runs
                 for k, v in cpu_ticks(procs.procs).items()}
        base = base or rate
        print(f"  {workers} worker{'s' if workers > 1 else ' '}: {rate:7.1f} runs/s   ({rate / base:.2f}x one); "
              f"CPU per run: server {spent['server']:.1f} ms, workers {spent['workers']:.1f} ms, "
              f"PostgreSQL {spent['postgres']:.1f} ms, total {sum(spent.values()):.1f} ms")
        procs.stop()


def sqlite_throughput(args: argparse.Namespace, tmp: Path, stack: ExitStack) -> None:
    """One server on SQLite (the default) running every run itself: its CPU is the whole cost."""
    procs = Processes(tmp, f"sqlite:///{tmp}/throughput.db", "dbos", poll_interval_s=args.poll)
    stack.callback(procs.stop)
    url = procs.serve(runs_here=True)
    asyncio.run(throughput(url, args.warm, procs.database_url))
    before = cpu_ticks(procs.procs)["server"]
    rate = asyncio.run(throughput(url, args.runs, procs.database_url))
    spent = (cpu_ticks(procs.procs)["server"] - before) / os.sysconf("SC_CLK_TCK") * 1000 / args.runs
    print(f"throughput on SQLite ({args.runs} runs after {args.warm}, 16 clients, one server running them): "
          f"{rate:7.1f} runs/s; "
          f"CPU per run {spent:.1f} ms")
    procs.stop()


def cpu_ticks(procs: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    """CPU ticks used so far by the server (the first process), the workers, and every PostgreSQL
    process of this machine (the soak's database server runs here, and nothing else uses it)."""
    def ticks(pid: int) -> int:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0
        return int(fields[11]) + int(fields[12])  # utime + stime

    postgres = [int(p) for p in subprocess.run(["pgrep", "-x", "postgres"], capture_output=True,
                                               text=True).stdout.split()]
    return {"server": ticks(procs[0].pid), "workers": sum(ticks(p.pid) for p in procs[1:]),
            "postgres": sum(ticks(p) for p in postgres)}


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of ``server_url``, dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
