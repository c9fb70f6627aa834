"""Durable background runs: real processes killed with SIGKILL, and the run goes on exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import (
    ASGIThread,
    ProcessServer,
    ProcessWorker,
    Server,
    own_database,
    require_postgres,
    wait_until,
)
from tests.staged_upstream import ANSWER, StagedUpstream
from tests.toolkinds import ledger

LEDGER: Any = {"type": "test_ledger"}
QUESTION = "Record a, then b and c."


@dataclass
class Rig:
    upstream: StagedUpstream
    workspace: Path
    ledger: Path
    env: dict[str, str]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    upstream = StagedUpstream(hang_s=5)
    with ASGIThread(upstream) as url:
        workspace = tmp_path / "workspace.toml"
        workspace.write_text(f"""
name = "durable"
plugins = ["tests.toolkinds"]

[models.staged]
provider = "openai-chat"
base_url = "{url}/v1"
upstream_model = "staged"
max_retries = 0
""")
        path = tmp_path / "ledger.db"
        yield Rig(upstream, workspace, path, {"OPENSUPERVISOR_TEST_LEDGER": str(path)})


def create(client: openai.OpenAI) -> str:
    """A background response whose events the client may re-read (stream and background together)."""
    stream = client.responses.create(model="staged", input=QUESTION, tools=[LEDGER], background=True, stream=True)
    first = next(iter(stream))
    stream.close()
    assert first.type == "response.created" and first.response.status == "queued"
    return first.response.id


def stored_events(server: Server, response_id: str) -> list[dict[str, Any]]:
    """The whole event log, as a client resuming from the start reads it."""
    with server.http() as http, http.stream("GET", f"/v1/responses/{response_id}",
                                            params={"stream": "true", "starting_after": "-1"}) as resp:
        return [orjson.loads(line[6:]) for line in resp.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"]


def until_answer_is_requested(rig: Rig, client: openai.OpenAI, response_id: str) -> list[Any]:
    """Wait until the run has recorded both tool turns and is waiting on the model's answer."""
    def waiting() -> bool:
        return rig.upstream.turns[3] == 1 and len(client.responses.retrieve(response_id).output) == 6

    wait_until(waiting, timeout=90, what="the run to reach its last model call")
    return client.responses.retrieve(response_id).output


def check_exactly_once(rig: Rig, server: Server, response_id: str, before: list[Any]) -> None:
    client = server.client()
    wait_until(lambda: client.responses.retrieve(response_id).status == "completed", timeout=60,
               what="the resumed run to complete")
    done = client.responses.retrieve(response_id)
    assert sorted(ledger(str(rig.ledger), response_id)) == ["a", "b", "c"]  # each tool ran exactly once
    assert rig.upstream.turns == {0: 1, 1: 1, 3: 2}  # finished model calls were never requested again
    assert [item.id for item in done.output[:6]] == [item.id for item in before]
    assert [item.type for item in done.output] == ["function_call", "function_call_output", "function_call",
                                                    "function_call", "function_call_output",
                                                    "function_call_output", "message"]
    assert done.output_text == ANSWER
    log = stored_events(server, response_id)
    assert [e["sequence_number"] for e in log] == list(range(len(log)))  # no gap, no repeat
    assert log[-1]["type"] == "response.completed"
    with server.http() as http:
        assert log[-1]["response"]["output"] == http.get(f"/v1/responses/{response_id}").json()["output"]


@pytest.mark.parametrize("stop", ["kill -9", "graceful stop"])
def test_a_run_survives_its_server_stopping(rig: Rig, tmp_path: Path, stop: str) -> None:
    process = ProcessServer(tmp_path, config=rig.workspace, env=rig.env)
    with process as first:
        client = first.client()
        response_id = create(client)
        before = until_answer_is_requested(rig, client, response_id)
        if stop == "kill -9":
            process.kill()
        else:  # SIGTERM: the server stops its runs unrecorded, to resume from their last step
            process.proc.terminate()
            process.proc.wait(timeout=30)
    with ProcessServer(tmp_path, config=rig.workspace, env=rig.env, log_name="restarted.log") as second:
        check_exactly_once(rig, second, response_id, before)


def test_another_worker_takes_over_on_postgresql(rig: Rig, tmp_path: Path) -> None:
    with own_database(require_postgres()) as url:
        _take_over(rig, tmp_path, url)


def _take_over(rig: Rig, tmp_path: Path, url: str) -> None:
    schema = f"dbos_{uuid.uuid4().hex[:12]}"
    env = {**rig.env, "OPENSUPERVISOR_SYSTEM_SCHEMA": schema}
    server_env = {**env, "OPENSUPERVISOR_WORKER_CONCURRENCY": "0"}  # the server only accepts runs
    try:
        with ProcessServer(tmp_path, config=rig.workspace, database_url=url, env=server_env) as server, \
                ProcessWorker(tmp_path, config=rig.workspace, database_url=url, env=env, log_name="w1.log") as w1, \
                ProcessWorker(tmp_path, config=rig.workspace, database_url=url, env=env, log_name="w2.log") as w2:
            client = server.client()
            response_id = create(client)
            before = until_answer_is_requested(rig, client, response_id)
            pids = {w1.proc.pid: w1, w2.proc.pid: w2}
            runner = pids[_executor_pid(url, response_id, schema)]
            runner.kill()
            check_exactly_once(rig, server, response_id, before)
            survivor = next(w for w in (w1, w2) if w is not runner)
            assert _executor_pid(url, response_id, schema) == survivor.proc.pid
    finally:
        _drop_schema(url, schema)


def _executor_pid(url: str, response_id: str, schema: str) -> int:
    """The process that ran (or runs) a response's workflow, from DBOS's own records."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f'SELECT executor_id FROM "{schema}".workflow_status WHERE workflow_uuid = %s',
                           (response_id,)).fetchone()
    assert row is not None
    return int(str(row[0]).split("-")[-2])


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
