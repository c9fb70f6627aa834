"""Start-up: how long the command line and a background worker take to be of use.

Prints, each the median of ``--repeat`` runs (3):

- ``opensupervisor --help``: CPU and wall seconds;
- ``import opensupervisor.runtime`` (what ``serve`` and ``worker`` assemble an instance from): CPU
  and wall seconds;
- ``opensupervisor worker``: wall seconds (and the CPU the worker spent by then) from spawning it
  until it is ready, on a fresh SQLite state folder and on a fresh PostgreSQL database (made and
  dropped here; skipped when ``--server`` does not answer), then again on the state the first start
  left (migrations already applied), for a workspace with one scripted model and for the demo
  workspace (the embedded model, MCP connections and apps, a Genie space, a function, a knowledge
  assistant).

Ready means the worker registered itself as an executor of background runs: it does so once its
store is migrated, its tools are built and DBOS is launched and polling the queue, so from then on
it runs queued runs.

The children may write bytecode caches (``PYTHONDONTWRITEBYTECODE`` is dropped), and one untimed
run of each kind goes first: the figures are those of an installed package, not of compiling it.

    .venv/bin/python bench/startup.py [--repeat 3] [--server postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

MINIMAL = """
name = "startup"

[models.bench]
provider = "scripted"

[[models.bench.script]]
turns = [{ text = "done" }]
"""
TIMEOUT_S = 120.0
TICKS = os.sysconf("SC_CLK_TCK")


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("OPENSUPERVISOR_") and k != "PYTHONDONTWRITEBYTECODE"}


def command(args: list[str]) -> tuple[float, float]:
    """CPU and wall seconds of one run of ``python args`` to its end."""
    cpu, start = _child_cpu(), time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=_environment())
    return _child_cpu() - cpu, time.perf_counter() - start


def _process_cpu(pid: int) -> float:
    """CPU seconds a running process has used so far (Linux: /proc; elsewhere NaN)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICKS


def _registered_sqlite(path: Path, pid: int) -> bool:
    if not path.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1)) as conn:
            return conn.execute("SELECT 1 FROM os_executors WHERE pid = ?", (pid,)).fetchone() is not None
    except sqlite3.Error:  # not created yet, or being migrated
        return False


def _registered_postgres(url: str, pid: int) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            return conn.execute("SELECT 1 FROM os_executors WHERE pid = %s", (pid,)).fetchone() is not None
    except psycopg.Error:
        return False


def worker_ready(folder: Path, database_url: str, config: Path | None,
                 registered: Callable[[int], bool]) -> tuple[float, float]:
    """Wall seconds from spawning ``opensupervisor worker`` until it is ready, and its CPU by then."""
    env = _environment()
    env.update(OPENSUPERVISOR_DATA_DIR=str(folder / "data"), OPENSUPERVISOR_DATABASE_URL=database_url)
    if config is not None:
        env["OPENSUPERVISOR_CONFIG"] = str(config)
    with (folder / "worker.log").open("ab") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "opensupervisor", "worker", "--log-level", "warning"],
                                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not registered(proc.pid):
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited ({proc.returncode}): see {folder / 'worker.log'}")
                if time.perf_counter() - start > TIMEOUT_S:
                    raise RuntimeError("the worker did not get ready in time")
                time.sleep(0.005)
            wall, cpu = time.perf_counter() - start, _process_cpu(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return wall, cpu


@contextlib.contextmanager
def sqlite_state() -> Iterator[tuple[Path, str, Callable[[int], bool]]]:
    with tempfile.TemporaryDirectory(prefix="os-startup-") as tmp:
        folder = Path(tmp)
        db = folder / "state.db"
        yield folder, f"sqlite:///{db}", lambda pid: _registered_sqlite(db, pid)


@contextlib.contextmanager
def postgres_state(server: str) -> Iterator[tuple[Path, str, Callable[[int], bool]]]:
    import psycopg

    name = f"startup_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = server.rsplit("/", 1)[0] + f"/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="os-startup-") as tmp:
            yield Path(tmp), url, lambda pid: _registered_postgres(url, pid)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _postgres_answers(server: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(server, connect_timeout=2):
            return True
    except Exception:
        return False


def _median(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def _workspace(folder: Path, workspace: str) -> Path | None:
    """The minimal workspace's file, written into ``folder``; None for the demo workspace."""
    if workspace == "demo":
        return None
    config = folder / "workspace.toml"
    config.write_text(MINIMAL, encoding="utf-8")
    return config


def warm_up() -> None:
    """One untimed run of each kind, so that every module has its bytecode cached."""
    command(["-m", "opensupervisor", "--help"])
    command(["-c", "import opensupervisor.runtime"])
    for workspace in ("minimal", "demo"):
        with sqlite_state() as (folder, url, registered):
            worker_ready(folder, url, _workspace(folder, workspace), registered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="a PostgreSQL server URL; the bench makes and drops its own databases there")
    args = parser.parse_args()
    n = args.repeat

    warm_up()
    cpu, wall = _median([command(["-m", "opensupervisor", "--help"]) for _ in range(n)])
    print(f"opensupervisor --help                 {cpu:6.2f} s CPU {wall:6.2f} s wall")
    cpu, wall = _median([command(["-c", "import opensupervisor.runtime"]) for _ in range(n)])
    print(f"import opensupervisor.runtime         {cpu:6.2f} s CPU {wall:6.2f} s wall")

    backends: list[tuple[str, Callable[[], contextlib.AbstractContextManager[tuple[Path, str, Callable[[int], bool]]]]]]
    backends = [("sqlite", sqlite_state)]
    if _postgres_answers(args.server):
        backends.append(("postgresql", lambda: postgres_state(args.server)))
    else:
        print(f"(no PostgreSQL at {args.server}: its figures are skipped)")
    for label, state in backends:
        for workspace in ("minimal", "demo"):
            fresh, again = [], []
            for _ in range(n):
                with state() as (folder, url, registered):
                    config = _workspace(folder, workspace)
                    fresh.append(worker_ready(folder, url, config, registered))
                    again.append(worker_ready(folder, url, config, registered))
            for when, samples in (("fresh", fresh), ("again", again)):
                wall, cpu = _median(samples)
                print(f"worker ready, {label:10} {workspace:7} {when}  {cpu:6.2f} s CPU {wall:6.2f} s wall")


if __name__ == "__main__":
    main()
