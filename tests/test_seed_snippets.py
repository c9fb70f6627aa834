"""The seed's snippets, unchanged, against ``opensupervisor serve`` (the demo workspace, whose models are
the embedded local model) with only two variables set. The model's prose is not asserted: its shape is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Server

SNIPPETS = Path(__file__).parent / "snippets"


def run_snippet(name: str, server: Server) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "DATABRICKS_HOST": server.url, "DATABRICKS_TOKEN": server.token}
    done = subprocess.run([sys.executable, str(SNIPPETS / name)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_step1_snippet_prints_the_answer(process_server: Server) -> None:
    assert len(run_snippet("step1.py", process_server).strip()) > 20


def test_step1_snippet_streams_events(process_server: Server) -> None:
    out = run_snippet("step1_stream.py", process_server)
    lines = out.splitlines()
    assert lines[0].startswith("ResponseCreatedEvent(")
    assert any(line.startswith("ResponseTextDeltaEvent(") for line in lines)
    assert lines[-1].startswith("ResponseCompletedEvent(")
    assert sum(line.startswith("ResponseTextDeltaEvent(") for line in lines) > 5  # streamed token by token


def test_background_snippet_polls_to_the_answer(process_server: Server) -> None:
    response_id, status, *answer = run_snippet("background.py", process_server).splitlines()
    assert response_id.startswith("resp_")
    assert status in {"queued", "in_progress"}
    assert len("".join(answer).strip()) > 20
