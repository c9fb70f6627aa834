"""Traces of the agent loop: returned as MLflow traces, written to trace tables, joined to the client's trace."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.entities import SpanType, Trace

from tests.conftest import SCRATCH, Server, ThreadServer, wait_until

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def workspace(folder: Path, extra: str = "") -> Path:
    (folder / "sales.db").unlink(missing_ok=True)
    sqlite3.connect(folder / "sales.db").executescript(
        "CREATE TABLE sales (region TEXT, amount INTEGER);"
        "INSERT INTO sales VALUES ('north', 10), ('south', 32);")
    (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "Total sales?"
turns = [{{ text = "SELECT sum(amount) AS total FROM sales" }}]

[[models.agent.script]]
when = "sales"
turns = [
  {{ tool_calls = [{{ name = "genie_sales", arguments = {{ question = "Total sales?" }} }},
                  {{ name = "add", arguments = {{ a = 40, b = 2 }} }}] }},
  {{ text = "Sales are 42." }},
]

[genie_spaces.sales]
database_url = "sqlite:///sales.db"
tables = ["sales"]
{extra}
""")
    return folder / "workspace.toml"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("tracing")
    with ThreadServer(f"sqlite:///{folder}/state.db", workspace(folder)) as running:
        yield running


TOOLS: Any = [{"type": "genie_space", "genie_space": {"id": "sales", "description": "Sales data"}},
              {"type": "test_calculator"}]


def create(server: Server, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    with server.http() as http:
        return http.post("/v1/responses", json={"model": "agent", "input": "sales please", "tools": TOOLS, **body},
                         headers=headers or {})


def spans_by_type(trace: Trace) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for span in trace.data.spans:
        out.setdefault(span.span_type, []).append(span)
    return out


def test_return_trace_gives_an_mlflow_trace_of_the_whole_loop(server: Server) -> None:
    answer = create(server, databricks_options={"return_trace": True})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    trace = Trace.from_dict(body["databricks_output"]["trace"])
    assert trace.info.trace_id.startswith("tr-") and trace.info.state.value == "OK"
    spans = spans_by_type(trace)
    [root] = spans[SpanType.AGENT]
    assert root.parent_id is None and root.outputs == "Sales are 42."
    assert root.inputs["model"] == "agent"
    tools = spans[SpanType.TOOL]
    genie = next(t for t in tools if t.name == "genie_sales")
    [text_to_sql] = [m for m in spans[SpanType.CHAT_MODEL] if m.parent_id == genie.span_id]
    assert text_to_sql.name == "text_to_sql" and "sum(amount)" in text_to_sql.outputs["content"]
    models = [m for m in spans[SpanType.CHAT_MODEL] if m is not text_to_sql]
    assert len(models) == 2 and all(m.parent_id == root.span_id for m in models)
    assert models[0].outputs["tool_calls"][0]["name"] == "genie_sales"
    assert models[1].outputs["content"] == "Sales are 42."
    assert models[0].attributes["mlflow.chat.tokenUsage"]["input_tokens"] > 0
    assert models[0].attributes["opensupervisor.provider"] == "scripted"
    assert text_to_sql.attributes["opensupervisor.provider"] == "scripted"
    assert sorted(t.name for t in tools) == ["add", "genie_sales"]
    assert all(t.parent_id == root.span_id for t in tools)
    assert genie.inputs == {"question": "Total sales?"} and "42" in genie.outputs
    [sql] = spans[SpanType.RETRIEVER]
    # The SQL that ran: the model's, its table pinned to the space's schema, with the row limit.
    assert sql.parent_id == genie.span_id
    assert sql.inputs == {"sql": 'SELECT SUM(amount) AS total FROM "main".sales LIMIT 1001'}
    assert sql.attributes["db.row_count"] == 1
    calc = next(t for t in tools if t.name == "add")
    overlap = min(genie.end_time_ns, calc.end_time_ns) > max(genie.start_time_ns, calc.start_time_ns)
    assert overlap  # the two calls of one turn ran concurrently
    assert body["output"][-1]["content"][0]["text"] == "Sales are 42."


def test_the_final_streamed_event_carries_the_trace(server: Server) -> None:
    events = list(server.client().responses.create(model="agent", input="sales please", tools=TOOLS, stream=True,
                                                   extra_body={"databricks_options": {"return_trace": True}}))
    final: Any = events[-1]
    assert final.type == "response.completed"
    trace = Trace.from_dict(final.response.databricks_output["trace"])
    assert len(trace.data.spans) == 7


def test_traceparent_joins_the_clients_trace(server: Server) -> None:
    answer = create(server, databricks_options={"return_trace": True},
                    headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    trace = Trace.from_dict(answer.json()["databricks_output"]["trace"])
    assert trace.info.trace_id == f"tr-{CLIENT_TRACE}"
    root = next(s for s in trace.data.spans if s.span_type == SpanType.AGENT)
    assert root.parent_id == CLIENT_SPAN and root.trace_id == f"tr-{CLIENT_TRACE}"


def test_trace_destination_writes_span_rows(server: Server) -> None:
    answer = create(server, trace_destination={"catalog_name": "main", "schema_name": "agents",
                                               "table_prefix": "sup"},
                    databricks_options={"return_trace": True})
    trace_id = answer.json()["databricks_output"]["trace"]["info"]["trace_id"]
    hex_id = trace_id.rsplit("/", 1)[1]
    assert trace_id == f"trace:/main.agents.sup/{hex_id}"
    database = SCRATCH / "traces" / "main.agents.db"

    def written() -> bool:
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
                query = "SELECT count(*) FROM sup_otel_spans WHERE trace_id = ?"
                return bool(conn.execute(query, (hex_id,)).fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return False

    wait_until(written, what="the spans to be written")
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM sup_otel_spans WHERE trace_id = ?", (hex_id,)).fetchall()
    by_id = {r["span_id"]: r for r in rows}
    root = next(r for r in rows if json.loads(json.loads(r["attributes"])["mlflow.spanType"]) == "AGENT")
    assert root["parent_span_id"] == "" and len(rows) == 7
    for row in rows:
        attributes = json.loads(row["attributes"])
        assert json.loads(attributes["mlflow.traceRequestId"]) == trace_id
        assert row["kind"] == "SPAN_KIND_INTERNAL" and json.loads(row["status"])["code"] == "STATUS_CODE_OK"
        if row is not root:
            assert row["parent_span_id"] in by_id
    tool_types = sorted(json.loads(json.loads(r["attributes"])["mlflow.spanType"]) for r in rows)
    assert tool_types == ["AGENT", "CHAT_MODEL", "CHAT_MODEL", "CHAT_MODEL", "RETRIEVER", "TOOL", "TOOL"]


def test_bad_destinations_are_400s(server: Server) -> None:
    for field, value in (("catalog_name", "main;drop"), ("schema_name", "a-b"), ("table_prefix", "x y")):
        dest = {"catalog_name": "main", "schema_name": "agents", "table_prefix": "t", field: value}
        answer = create(server, trace_destination=dest)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == f"trace_destination.{field}"


def test_a_failing_trace_store_never_fails_the_run(server: Server) -> None:
    from opensupervisor.tracing.tables import WRITE_FAILURES

    before = WRITE_FAILURES._value.get()
    (SCRATCH / "traces" / "broken.store.db").mkdir(parents=True, exist_ok=True)  # a folder where the file goes
    answer = create(server, trace_destination={"catalog_name": "broken", "schema_name": "store"})
    assert answer.status_code == 200 and answer.json()["status"] == "completed"
    wait_until(lambda: WRITE_FAILURES._value.get() > before, what="the failed write to be counted")


def test_redaction_leaves_inputs_and_outputs_out(tmp_path: Path) -> None:
    with ThreadServer(f"sqlite:///{tmp_path}/state.db",
                      workspace(tmp_path, "\n[tracing]\nrecord_inputs = false\nrecord_outputs = false\n")) as running:
        answer = create(running, databricks_options={"return_trace": True})
    spans = answer.json()["databricks_output"]["trace"]["data"]["spans"]
    assert len(spans) == 7
    for span in spans:
        assert "mlflow.spanInputs" not in span["attributes"] and "mlflow.spanOutputs" not in span["attributes"]
    assert "Total sales?" not in json.dumps(spans)


def test_metrics_count_model_and_tool_calls(server: Server) -> None:
    assert create(server).status_code == 200  # no trace asked for: the calls are still counted
    with server.http() as http:
        text = http.get("/metrics").text
    assert 'opensupervisor_model_calls_total{model="agent",outcome="ok"}' in text
    assert 'opensupervisor_tool_call_duration_seconds_count{outcome="ok",tool_type="genie_space"}' in text
    assert 'opensupervisor_tool_call_duration_seconds_count{outcome="ok",tool_type="test_calculator"}' in text
    for name in ("opensupervisor_model_call_duration_seconds_bucket", "opensupervisor_background_queued",
                 "opensupervisor_tokens_total", "opensupervisor_responses_total",
                 "opensupervisor_trace_write_failures"):
        assert name in text


def test_a_websocket_response_is_traced_as_a_streamed_one(server: Server) -> None:
    with server.client().responses.connect() as socket:
        socket.send({"type": "response.create", "model": "agent", "input": "sales please", "tools": TOOLS,
                     "databricks_options": {"return_trace": True}})
        final: Any = next(e for e in socket if e.type in ("response.completed", "response.failed", "error"))
    assert final.type == "response.completed"
    trace = Trace.from_dict(final.response.databricks_output["trace"])
    assert len(trace.data.spans) == 7
