"""The soak (``bench/soak.py``), short: background runs on PostgreSQL through a backlog, SIGKILLed
workers and server, a worker stalled past the executor timeout and cancels. It fails on any stuck
run, any tool call run twice by live processes, any cancel no client asked for, and any event log
with a gap or two endings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import require_postgres

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
BROKEN = ("stuck", "duplicate executions in live processes", "spurious cancels", "event-log gaps",
          "double terminal events")


def test_a_short_soak_keeps_every_promise() -> None:
    done = subprocess.run([sys.executable, str(SOAK), "--runs", "120", "--backlog", "40", "--max-seconds", "240",
                           "--server", require_postgres(), "--check"], capture_output=True, text=True, timeout=300)
    figures = {line[:48].strip(): line[48:].strip() for line in done.stdout.splitlines() if len(line) > 48}
    assert figures.get("created") == "120", done.stdout + done.stderr[-3000:]
    assert {k: figures[k] for k in BROKEN} == dict.fromkeys(BROKEN, "0"), done.stdout
    assert int(figures["worker kills"]) >= 1 and int(figures["server kills"]) == 1, done.stdout
    assert int(figures["stalled workers"]) == 1, done.stdout
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
