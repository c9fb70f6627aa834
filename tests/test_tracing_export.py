"""Traces exported to a real MLflow tracking server (started on loopback), read back with the MLflow client."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.entities import SpanType

from tests.conftest import ProcessServer, Server, ThreadServer, free_port, stop, wait_until
from tests.test_tracing import CLIENT_SPAN, CLIENT_TRACE, create, workspace

# The MLflow server's first start (a new database to migrate) can take minutes on a busy machine.
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "mlflow.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                             "--default-artifact-root", str(folder / "artifacts")],
                            cwd=folder, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited: {(folder / 'mlflow.log').read_text()}")
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        # Its first start migrates a new database: slow on a busy machine.
        wait_until(up, timeout=240, what="mlflow server to start")
        yield url
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def exporting_server(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    with ThreadServer(f"sqlite:///{tmp_path}/state.db", workspace(tmp_path)) as running:
        yield running


def test_traces_show_in_mlflow(exporting_server: Server, mlflow_server: str) -> None:
    answer = create(exporting_server, headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    assert answer.status_code == 200 and "databricks_output" not in answer.json()  # not asked for
    client = MlflowClient(tracking_uri=mlflow_server)

    def found() -> Any:
        traces = client.search_traces(locations=["0"], max_results=50)
        return next((t for t in traces if t.info.trace_id == f"tr-{CLIENT_TRACE}"
                     and len(t.data.spans) == 7), None)

    wait_until(lambda: found() is not None, timeout=30, what="the trace to reach MLflow")
    trace = found()
    types = sorted(str(s.span_type) for s in trace.data.spans)
    assert types == sorted([SpanType.AGENT, SpanType.CHAT_MODEL, SpanType.CHAT_MODEL, SpanType.CHAT_MODEL,
                            SpanType.RETRIEVER, SpanType.TOOL, SpanType.TOOL])
    root = next(s for s in trace.data.spans if s.span_type == SpanType.AGENT)
    assert root.parent_id == CLIENT_SPAN and root.outputs == "Sales are 42."


def test_the_seeds_step3_snippets(mlflow_server: str, tmp_path: Path) -> None:
    """Step 3 as the seed writes it: trace_destination (and return_trace) through extra_body, then an
    MLflow client span whose context headers join the server's spans into one end-to-end trace."""
    from tests.test_seed_snippets import demo_tools_workspace, run_snippet

    config = demo_tools_workspace(tmp_path, '''
[[models."databricks-claude-sonnet-4-5".script]]
when = "Which reviews are urgent?"
turns = [{ text = "SELECT id FROM reviews WHERE urgent = 1" }]

[[models."databricks-claude-sonnet-4-5".script]]
when = "Tell me about Databricks"
turns = [
  { tool_calls = [{ name = "genie_reviews", arguments = { question = "Which reviews are urgent?" } }] },
  { text = "Three reviews are urgent." },
]''')
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_ID": "0"}
    with ProcessServer(tmp_path, config=config, env=env) as server:
        returned, client_trace, answer = run_snippet("step3.py", server, env, cwd=tmp_path).splitlines()
    assert returned.startswith("trace:/main.agents.supervisor/") and answer == "Three reviews are urgent."
    hex_id = returned.rsplit("/", 1)[1]
    with sqlite3.connect(tmp_path / ".opensupervisor" / "traces" / "main.agents.db") as conn:
        rows = conn.execute("SELECT trace_id FROM supervisor_otel_spans").fetchall()
    assert hex_id in {r[0] for r in rows} and client_trace.removeprefix("tr-") in {r[0] for r in rows}
    client = MlflowClient(tracking_uri=mlflow_server)

    def joined() -> Any:
        trace = client.get_trace(client_trace)
        names = {s.name for s in trace.data.spans} if trace else set()
        return trace if {"client-root", "opensupervisor.response", "genie_reviews"} <= names else None

    wait_until(lambda: joined() is not None, timeout=30, what="client and server spans in one MLflow trace")
    spans = joined().data.spans
    client_root = next(s for s in spans if s.name == "client-root")
    agent = next(s for s in spans if s.name == "opensupervisor.response")
    assert agent.parent_id == client_root.span_id
