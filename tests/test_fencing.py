"""A worker taken for dead while alive (SIGSTOP past the executor timeout) loses its runs quietly:
the process that took them over finishes them, nothing ends ``cancelled``, no log holds two endings,
and no hosted call runs twice."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import openai
import psycopg

from tests.conftest import ProcessServer, ProcessWorker, own_database, require_postgres, wait_until
from tests.test_durable import _drop_schema, stored_events
from tests.toolkinds import ledger

RUNS = 6
WORKSPACE = """
name = "fencing"
plugins = ["tests.toolkinds"]

[background]
executor_timeout_s = 2

[models.slow]
provider = "scripted"

[[models.slow.script]]
when = "record"
turns = [
  { tool_calls = [{ name = "record", arguments = { label = "a" } }], delay_s = 1 },
  { tool_calls = [{ name = "record", arguments = { label = "b" } }], delay_s = 1 },
  { tool_calls = [{ name = "record", arguments = { label = "c" } }], delay_s = 1 },
  { text = "Recorded.", delay_s = 1 },
]
"""


def _create(client: openai.OpenAI) -> str:
    """A background response that keeps its event log (stream and background together)."""
    stream = client.responses.create(model="slow", input="record three labels", background=True, stream=True,
                                     tools=[{"type": "test_ledger"}])  # type: ignore[misc]
    first = next(iter(stream))
    stream.close()
    return first.response.id


def _owners(url: str, ids: list[str]) -> dict[str, str | None]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, owner_executor FROM os_responses WHERE id = ANY(%s)", (ids,)).fetchall()
    return {r[0]: r[1] for r in rows}


def test_a_worker_taken_for_dead_while_alive_lets_its_runs_go_quietly(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace.toml"
    workspace.write_text(WORKSPACE)
    path = tmp_path / "ledger.db"
    schema = f"dbos_{uuid.uuid4().hex[:12]}"
    env = {"OPENSUPERVISOR_TEST_LEDGER": str(path), "OPENSUPERVISOR_SYSTEM_SCHEMA": schema}
    with own_database(require_postgres()) as url:
        try:
            with ProcessServer(tmp_path, config=workspace, database_url=url,
                               env={**env, "OPENSUPERVISOR_WORKER_CONCURRENCY": "0"}) as server, \
                    ProcessWorker(tmp_path, config=workspace, database_url=url, env=env, log_name="w1.log") as w1, \
                    ProcessWorker(tmp_path, config=workspace, database_url=url, env=env, log_name="w2.log") as w2:
                client = server.client()
                ids = [_create(client) for _ in range(RUNS)]
                wait_until(lambda: all(client.responses.retrieve(i).status == "in_progress" for i in ids), timeout=60,
                           what="every run to start")
                by_pid = Counter(int(str(owner).split("-")[-2]) for owner in _owners(url, ids).values())
                stopped = w1 if by_pid[w1.proc.pid] >= by_pid[w2.proc.pid] else w2
                os.kill(stopped.proc.pid, signal.SIGSTOP)
                try:
                    time.sleep(6)  # past the executor timeout: its runs go to the other processes
                finally:
                    os.kill(stopped.proc.pid, signal.SIGCONT)

                def ended() -> bool:
                    return all(client.responses.retrieve(i).status not in ("queued", "in_progress") for i in ids)

                wait_until(ended, timeout=90, what="every run to end")
                time.sleep(2)  # the stopped worker runs on, and must write nothing more
                for response_id in ids:
                    assert client.responses.retrieve(response_id).status == "completed", response_id
                    log = stored_events(server, response_id)
                    assert [e["sequence_number"] for e in log] == list(range(len(log))), "no gap, no repeat"
                    terminal = [e["type"] for e in log if e["type"] in (
                        "response.completed", "response.failed", "response.incomplete", "response.cancelled")]
                    assert terminal == ["response.completed"], response_id
                    labels = ledger(str(path), response_id)
                    assert sorted(set(labels)) == ["a", "b", "c"]
                    assert len(labels) == len(set(labels)), f"a call ran twice: {labels}"
            assert "another process" in stopped.log_path.read_text(), "the stopped worker noticed its loss"
        finally:
            _drop_schema(url, schema)
