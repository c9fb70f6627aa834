"""The seed's snippets, unchanged, against ``opensupervisor serve`` (the demo workspace, whose models are
the embedded local model) with only two variables set. The model's prose is not asserted: its shape is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import opensupervisor
from tests.conftest import ProcessServer, Server, wait_until

SNIPPETS = Path(__file__).parent / "snippets"
# Step 2's question answered by the scripted model with the demo's two data tools, so that the
# calls are known.
STEP2_SCRIPT = '''
[[models."databricks-claude-sonnet-4-5".script]]
when = "flag any urgent issues"
turns = [
  { tool_calls = [{ name = "genie_reviews", arguments = { question = "Which reviews are urgent?" } }] },
  { tool_calls = [{ name = "main__support__flag_urgent", arguments = { review_id = 8, reason = "billing" } }] },
  { text = "Three reviews are urgent; review 8 is flagged." },
]
'''


def run_snippet(name: str, server: Server, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "DATABRICKS_HOST": server.url, "DATABRICKS_TOKEN": server.token, **(env or {})}
    done = subprocess.run([sys.executable, str(SNIPPETS / name)], env=env, capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd)
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


def test_step2_snippet_with_the_demo_data_tools(tmp_path: Path) -> None:
    """Step 2 with the two data tools of the demo workspace (its reviews space and flag_urgent), the
    model scripted so that the calls are known."""
    demo = Path(opensupervisor.__file__).parent / "demo"
    for name in ("reviews.db", "support.py"):
        shutil.copy(demo / name, tmp_path / name)
    tools = (demo / "workspace.toml").read_text().split("# The seed's Step 2 tools")[1]
    (tmp_path / "workspace.toml").write_text('''
[models."databricks-claude-sonnet-4-5"]
provider = "scripted"
''' + STEP2_SCRIPT + "\n#" + tools)
    with ProcessServer(tmp_path, config=tmp_path / "workspace.toml") as server:
        out = run_snippet("step2_data.py", server).splitlines()
    done = [line for line in out if line.startswith("ResponseOutputItemDoneEvent(")]
    assert len(done) == 5
    assert "name='genie_reviews'" in done[0] and "status='completed'" in done[0]
    assert "type='function_call_output'" in done[1] and "Blade came loose" in done[1]
    assert "SQL: SELECT id, customer, product, body FROM reviews WHERE urgent = 1" in done[1]
    assert "name='main__support__flag_urgent'" in done[2]
    assert "Review 8 is flagged as urgent (billing)" in done[3]
    assert "Three reviews are urgent" in done[4]
    assert out[-1].startswith("ResponseCompletedEvent(")


def demo_tools_workspace(folder: Path, script: str) -> Path:
    """The demo workspace's tools (data, app and connection, with its MCP servers) and a scripted model."""
    demo = Path(opensupervisor.__file__).parent / "demo"
    for name in ("reviews.db", "support.py"):
        shutil.copy(demo / name, folder / name)
    shutil.copytree(demo / "handbook", folder / "handbook")
    tools = (demo / "workspace.toml").read_text().split("# The seed's Step 2 tools")[1]
    (folder / "workspace.toml").write_text('demo_servers = true\n\n[models."databricks-claude-sonnet-4-5"]\n'
                                           'provider = "scripted"\n' + script + "\n#" + tools)
    return folder / "workspace.toml"


def test_background_mode_with_mcp(tmp_path: Path) -> None:
    """The seed's "Background mode with MCP": the run completes with an mcp_approval_request; the
    full history plus an mcp_approval_response continues it. The connection is the demo's web
    search, a real MCP server."""
    config = demo_tools_workspace(tmp_path, '''
[[models."databricks-claude-sonnet-4-5".script]]
when = "search the web"
turns = [
  { tool_calls = [{ name = "web-search", arguments = { query = "what is Databricks", count = 2 } }] },
  { text = "Databricks is a data and AI platform." },
]''')
    with ProcessServer(tmp_path, config=config) as server:
        first_status, request, second_status, *items = run_snippet("background_mcp.py", server).splitlines()
    approval = json.loads(request)
    assert first_status == "completed" and second_status == "completed"
    assert approval["type"] == "mcp_approval_request" and approval["status"] == "completed"
    assert (approval["name"], approval["server_label"]) == ("web-search", "web_search")
    assert json.loads(approval["arguments"]) == {"query": "what is Databricks", "count": 2}
    call, output, answer = (json.loads(i) for i in items)
    assert (call["type"], call["call_id"]) == ("function_call", approval["id"])
    assert output["type"] == "function_call_output" and "What is Databricks?" in output["output"]
    assert answer["content"][0]["text"] == "Databricks is a data and AI platform."


def test_step2_snippet_with_every_hosted_tool(tmp_path: Path) -> None:
    """The seed's Step 2 request, its five tools named after the demo workspace's: a Genie space, a
    catalog function, a knowledge assistant (with citations), an app (an MCP server) and a connection
    (an MCP server), the model scripted so that every tool is called."""
    config = demo_tools_workspace(tmp_path, '''
[[models."databricks-claude-sonnet-4-5".script]]
when = "Passages:"
turns = [{ text = "Reply within four hours and flag it the same day [1]." }]

[[models."databricks-claude-sonnet-4-5".script]]
when = "flag any urgent issues"
turns = [
  { tool_calls = [{ name = "genie_reviews", arguments = { question = "Which reviews are urgent?" } }] },
  { tool_calls = [{ name = "main__support__flag_urgent", arguments = { review_id = 8, reason = "billing" } }] },
  { tool_calls = [{ name = "ka_handbook", arguments = { question = "How fast must we answer urgent reviews?" } }] },
  { tool_calls = [{ name = "web-search", arguments = { query = "product safety recall" } }] },
  { tool_calls = [{ name = "open_ticket", arguments = { title = "Billing error in review 8", priority = "urgent" } }] },
  { text = "Three reviews are urgent; review 8 is flagged, ticket TCK-1001 is open. Answer within four hours [1]." },
]''')
    with ProcessServer(tmp_path, config=config) as server:
        with server.http() as http:  # the handbook is indexed when the server starts

            def ingested() -> bool:
                state = http.get("/admin/v1/knowledge_assistants").json()["data"][0]
                return not state["ingesting"] and state["version"] > 0

            wait_until(ingested, what="the handbook to be ingested")
        out = run_snippet("step2.py", server).splitlines()
    done = [line for line in out if line.startswith("ResponseOutputItemDoneEvent(")]
    names = ["genie_reviews", "main__support__flag_urgent", "ka_handbook", "web-search", "open_ticket"]
    assert [n for n in names if any(f"name='{n}'" in line for line in done)] == names
    outputs = [line for line in done if "type='function_call_output'" in line]
    assert "Blade came loose" in outputs[0] and "Review 8 is flagged as urgent" in outputs[1]
    assert "Returns and refunds > Urgent reviews <https://intranet.northwind.example/handbook/support/" in outputs[2]
    assert "example.com" in outputs[3]
    assert "TCK-1001" in outputs[4]
    assert any("AnnotationURLCitation(" in line and "returns-and-refunds.pdf#urgent-reviews" in line for line in done)
    assert out[-1].startswith("ResponseCompletedEvent(")


def test_step2_snippet_with_the_embedded_model(process_server: Server) -> None:
    """Step 2 verbatim (all five tools) against the demo workspace's embedded model: the loop runs
    to its end with every call it makes answered (what the small model chooses is not asserted)."""
    out = run_snippet("step2.py", process_server).splitlines()
    done = [line for line in out if line.startswith("ResponseOutputItemDoneEvent(")]
    calls = [line for line in done if "type='function_call'" in line]
    outputs = [line for line in done if "type='function_call_output'" in line]
    assert len(calls) == len(outputs)
    assert any("type='message'" in line for line in done)
    assert out[-1].startswith(("ResponseCompletedEvent(", "ResponseIncompleteEvent("))
