"""A soak of background runs on PostgreSQL: a backlog, killed workers and servers, a stalled worker
and cancels, then what became of every run.

Starts ``opensupervisor serve`` (accepting only) and worker processes on a fresh PostgreSQL
database. Each run is a model turn that calls a hosted tool (``record``: it notes each execution
with its process), the tool, and a model turn that answers. A backlog is queued before any worker
starts; while the rest are created (at a steady rate), workers and the server are SIGKILLed and restarted, one worker
is SIGSTOPped for longer than ``executor_timeout_s``, and some runs are cancelled. Once every run has
ended (or the deadline passed) it prints:

- created, and how they ended; stuck (not ended by the deadline);
- duplicate executions of a tool call: in live processes (a promise broken), or explained by a kill
  (the process that ran the call first was killed: the one allowed exception);
- spurious cancels (cancelled, but no client asked), event-log gaps and double terminal events,
  read back through ``GET /v1/responses/{id}?stream=true`` as a client sees them.

Bounded in runs and time. With ``--check`` it exits 1 on any stuck run, live duplicate, spurious
cancel, gap or double terminal.

    .venv/bin/python bench/soak.py [--runs 500] [--backlog 150] [--workers 2] [--rate 12] [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

TOKEN = "soak-token"
HERE = Path(__file__).resolve().parent
TERMINAL = {"response.completed", "response.failed", "response.incomplete"}
WORKSPACE = """
name = "soak"
plugins = ["benchtools"]

[models.soak]
provider = "scripted"

[[models.soak.script]]
turns = [{ tool_calls = [{ name = "record", arguments = { label = "call" } }], delay_s = 0.15 },
         { text = "done", delay_s = 0.05 }]

[background]
max_queued = 100000
poll_interval_s = 0.05
executor_timeout_s = {timeout}
worker_concurrency = 16
"""
BODY: dict[str, Any] = {"model": "soak", "input": "go", "tools": [{"type": "bench_record"}], "background": True,
                        "stream": True}


@dataclass
class Chaos:
    """What the soak did to the processes and the runs, to explain what it finds."""

    killed: set[int] = field(default_factory=set)  # pids SIGKILLed
    stopped: list[int] = field(default_factory=list)  # pids SIGSTOPped (then resumed)
    cancelled: set[str] = field(default_factory=set)  # runs a client cancelled (the cancel was accepted)
    server_kills: int = 0
    worker_kills: int = 0


class Fleet:
    """The server and the workers, started as the command line starts them."""

    def __init__(self, folder: Path, database_url: str) -> None:
        self.folder = folder
        self.env = {**os.environ, "OPENSUPERVISOR_CONFIG": str(folder / "workspace.toml"),
                    "OPENSUPERVISOR_DATABASE_URL": database_url, "OPENSUPERVISOR_ADMIN_TOKEN": TOKEN,
                    "OPENSUPERVISOR_SOAK_LEDGER": str(folder / "ledger.db"),
                    "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs = 0

    def start_server(self) -> None:
        env = {**self.env, "OPENSUPERVISOR_PORT": str(self.port), "OPENSUPERVISOR_WORKER_CONCURRENCY": "0"}
        self.server = self._start(["serve", "--log-level", "warning"], env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def start_worker(self) -> None:
        self.workers.append(self._start(["worker", "--log-level", "warning"], self.env))

    def _start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self._logs += 1
        log = (self.folder / f"{args[0]}-{self._logs}.log").open("wb")
        return subprocess.Popen([sys.executable, "-m", "opensupervisor", *args], cwd=self.folder, env=env,
                                stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for proc in [*self.workers, *([self.server] if self.server else [])]:
            with contextlib.suppress(Exception):
                os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        for proc in [*self.workers, *([self.server] if self.server else [])]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create(http: httpx.Client) -> str | None:
    """Start one background run; its id from the first event of its stream (the stream is left)."""
    try:
        with http.stream("POST", "/v1/responses", json=BODY) as resp:
            if resp.status_code != 200:
                return None
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    return str(orjson.loads(line[6:])["response"]["id"])
    except httpx.HTTPError:
        return None  # the server was killed mid-create: whatever it stored is counted from the database
    return None


def chaos_step(fleet: Fleet, chaos: Chaos, http: httpx.Client, ids: list[str], step: int, stall_s: float) -> None:
    """One disruption, in turn: kill a worker, cancel runs, stall a worker, kill the server."""
    kind = step % 4
    if kind == 0 and fleet.workers:
        victim = fleet.workers.pop(random.randrange(len(fleet.workers)))
        victim.kill()
        victim.wait()
        chaos.killed.add(victim.pid)
        chaos.worker_kills += 1
        fleet.start_worker()
    elif kind == 1:
        for response_id in random.sample(ids[-20:], min(3, len(ids))):  # recent ones: likely still running
            with contextlib.suppress(Exception):
                if http.post(f"/v1/responses/{response_id}/cancel").status_code == 200:
                    chaos.cancelled.add(response_id)
    elif kind == 2 and not chaos.stopped and fleet.workers:
        victim = random.choice(fleet.workers)
        os.kill(victim.pid, signal.SIGSTOP)
        chaos.stopped.append(victim.pid)
        time.sleep(stall_s)
        os.kill(victim.pid, signal.SIGCONT)
    elif kind == 3 and chaos.server_kills == 0 and fleet.server is not None:
        fleet.server.kill()
        fleet.server.wait()
        chaos.killed.add(fleet.server.pid)
        chaos.server_kills += 1
        fleet.start_server()


def run_soak(args: argparse.Namespace, folder: Path, database_url: str) -> dict[str, Any]:
    (folder / "workspace.toml").write_text(WORKSPACE.replace("{timeout}", str(args.executor_timeout)))
    with sqlite3.connect(folder / "ledger.db") as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE ledger (response_id TEXT, label TEXT, pid INTEGER, at REAL)")
    fleet, chaos, ids = Fleet(folder, database_url), Chaos(), []
    started = time.monotonic()
    try:
        fleet.start_server()
        with httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
            ids += [i for i in (create(http) for _ in range(args.backlog)) if i]
            for _ in range(args.workers):
                fleet.start_worker()
            # Runs keep coming at ``rate`` while the disruptions go on, each kind at least once.
            step, next_chaos, next_run = 0, time.monotonic() + args.chaos_every, time.monotonic()
            while (len(ids) < args.runs or step < 4) and time.monotonic() - started < args.max_seconds / 2:
                if len(ids) < args.runs and time.monotonic() >= next_run:
                    if (made := create(http)) is not None:
                        ids.append(made)
                    next_run += 1 / args.rate
                if time.monotonic() >= next_chaos:
                    chaos_step(fleet, chaos, http, ids, step, args.executor_timeout * 1.7)
                    step, next_chaos = step + 1, time.monotonic() + args.chaos_every
                time.sleep(0.002)
            stuck = wait_for_ends(database_url, started + args.max_seconds)
            return analyse(http, database_url, folder / "ledger.db", chaos, len(ids), stuck)
    finally:
        fleet.stop()


def wait_for_ends(database_url: str, deadline: float) -> int:
    """Until no run is queued or in progress, or the deadline; how many still are."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM os_responses WHERE status IN ('queued', 'in_progress')"
                               ).fetchone()
            left = int(row[0]) if row else 0
            if left == 0 or time.monotonic() > deadline:
                return left
            time.sleep(0.5)


def analyse(http: httpx.Client, database_url: str, ledger: Path, chaos: Chaos, created: int,
            stuck: int) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT id, status FROM os_responses").fetchall()
    statuses = Counter(status for _, status in rows)
    spurious = sum(1 for rid, status in rows if status == "cancelled" and rid not in chaos.cancelled)
    live_dupes, killed_dupes = duplicates(ledger, chaos.killed)
    gaps = doubles = 0
    for rid, status in rows:
        if status in ("queued", "in_progress"):
            continue
        gap, double = check_log(http, rid)
        gaps, doubles = gaps + gap, doubles + double
    return {"created": created, "stored": len(rows), **{f"ended {k}": v for k, v in sorted(statuses.items())},
            "stuck": stuck, "duplicate executions in live processes": live_dupes,
            "duplicate executions explained by a kill": killed_dupes, "spurious cancels": spurious,
            "event-log gaps": gaps, "double terminal events": doubles,
            "worker kills": chaos.worker_kills, "server kills": chaos.server_kills,
            "stalled workers": len(chaos.stopped), "cancels accepted": len(chaos.cancelled)}


def duplicates(ledger: Path, killed: set[int]) -> tuple[int, int]:
    """Extra executions of one call: (by live processes, after a process that ran it was killed)."""
    with sqlite3.connect(ledger) as conn:
        runs: dict[tuple[str, str], list[int]] = {}
        for rid, label, pid in conn.execute("SELECT response_id, label, pid FROM ledger ORDER BY at"):
            runs.setdefault((rid, label), []).append(pid)
    live = explained = 0
    for pids in runs.values():
        for earlier in pids[:-1]:  # each execution but the last was repeated by a later one
            if earlier in killed:
                explained += 1
            else:
                live += 1
    return live, explained


def check_log(http: httpx.Client, response_id: str) -> tuple[int, int]:
    """(1 if the run's events, as a client re-streams them, skip a sequence number, 1 if they hold
    more than one terminal event)."""
    seqs: list[int] = []
    terminals = 0
    with http.stream("GET", f"/v1/responses/{response_id}", params={"stream": "true"}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = orjson.loads(line[6:])
                seqs.append(int(event["sequence_number"]))
                terminals += event["type"] in TERMINAL
    return int(seqs != list(range(len(seqs)))), int(terminals > 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--backlog", type=int, default=150)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executor-timeout", type=float, default=3.0, help="background.executor_timeout_s")
    parser.add_argument("--rate", type=float, default=12.0, help="runs created per second after the backlog")
    parser.add_argument("--chaos-every", type=float, default=3.0, help="seconds between disruptions")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server URL; the soak makes and drops its own database there")
    parser.add_argument("--check", action="store_true", help="exit 1 when a promise was broken")
    parser.add_argument("--keep", type=Path, help="keep the database and the processes' logs (in this folder)")
    args = parser.parse_args()
    name = f"soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    database_url = args.server.rsplit("/", 1)[0] + f"/{name}"
    try:
        with contextlib.ExitStack() as stack:
            folder = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            folder.mkdir(parents=True, exist_ok=True)
            figures = run_soak(args, folder, database_url)
    finally:
        if args.keep:
            print(f"kept the database {database_url} and the logs in {args.keep}")
        else:
            with psycopg.connect(args.server, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    for key, value in figures.items():
        print(f"{key:48} {value}")
    broken = sum(figures[k] for k in ("stuck", "duplicate executions in live processes", "spurious cancels",
                                      "event-log gaps", "double terminal events"))
    sys.exit(1 if args.check and broken else 0)


if __name__ == "__main__":
    main()
