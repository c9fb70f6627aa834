"""The seed's Step 1 snippet, unchanged, against ``opensupervisor serve`` with only two variables set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Server

SNIPPETS = Path(__file__).parent / "snippets"
ANSWER = "Databricks is a data and AI platform"


def run_snippet(name: str, server: Server) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "DATABRICKS_HOST": server.url, "DATABRICKS_TOKEN": server.token}
    done = subprocess.run([sys.executable, str(SNIPPETS / name)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_step1_snippet_prints_the_answer(process_server: Server) -> None:
    assert run_snippet("step1.py", process_server).startswith(ANSWER)


def test_step1_snippet_streams_events(process_server: Server) -> None:
    out = run_snippet("step1_stream.py", process_server)
    lines = out.splitlines()
    assert lines[0].startswith("ResponseCreatedEvent(")
    assert any(line.startswith("ResponseTextDeltaEvent(") for line in lines)
    assert lines[-1].startswith("ResponseCompletedEvent(")
    assert ANSWER in lines[-1]


def test_background_snippet_polls_to_the_answer(process_server: Server) -> None:
    response_id, status, answer = run_snippet("background.py", process_server).splitlines()
    assert response_id.startswith("resp_")
    assert status in {"queued", "in_progress"}
    assert answer.startswith(ANSWER)
