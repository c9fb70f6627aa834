"""Knowledge citations without a ``base_url`` are paths relative to the assistant's sources, and no
absolute path of the server appears in any response: annotations, tool outputs, traces, errors."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import opensupervisor
from tests.conftest import Server, ThreadServer, wait_until

HANDBOOK = Path(opensupervisor.__file__).parent / "demo" / "handbook"
SOURCE_LINE = re.compile(r"^\[\d+\] .* <(.*)>$", re.MULTILINE)


@dataclass
class Served:
    server: Server
    folder: Path


def ask(ka: str, phrase: str) -> str:
    return f'''
[[models.agent.script]]
when = "{phrase}"
turns = [
  {{ tool_calls = [{{ name = "ka_{ka}", arguments = {{ question = "How many vacation days do I get?" }} }}] }},
  {{ text = "You get 25 vacation days a year [1]." }},
]
'''


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("citations")
    shutil.copytree(HANDBOOK, folder / "handbook")
    (folder / "extra notes").mkdir()
    (folder / "extra notes" / "Vacation é 1.md").write_text("# Vacation extras\n\nVacation days carry over.\n")
    (folder / "workspace.toml").write_text('''
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "Passages:"
turns = [{ text = "Full-time employees receive 25 days of paid vacation per year [1]." }]
''' + ask("solo", "one folder") + ask("pair", "two folders") + ask("gone", "missing folder") + '''
[knowledge_assistants.solo]
sources = ["handbook"]
ingest_on_start = true

[knowledge_assistants.pair]
sources = ["handbook", "extra notes"]
ingest_on_start = true

[knowledge_assistants.gone]
sources = ["nowhere"]
''')
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
        with running.http() as http:

            def ingested() -> bool:
                data = http.get("/admin/v1/knowledge_assistants").json()["data"]
                # A version appears before the last folder is in: wait for ingestion to end too.
                return all(a["version"] > 0 and not a["ingesting"] for a in data if a["id"] != "gone")

            wait_until(ingested, what="the assistants to be ingested")
        yield Served(running, folder)


def tool(ka: str) -> dict[str, Any]:
    return {"type": "knowledge_assistant", "knowledge_assistant": {"knowledge_assistant_id": ka}}


def assert_no_server_path(text: str, folder: Path) -> None:
    for secret in (str(folder), str(folder.resolve()), "file://", folder.name):
        assert secret not in text, f"{secret!r} in {text[:400]}"


@pytest.mark.parametrize(("ka", "phrase"), [("solo", "one folder"), ("pair", "two folders")])
def test_citations_are_relative_to_the_sources(served: Served, ka: str, phrase: str) -> None:
    response = served.server.client().responses.create(model="agent", input=phrase, tools=[tool(ka)])
    _, output, message = response.output
    urls = SOURCE_LINE.findall(str(output.output))
    assert urls and all(u.startswith(("handbook/", "extra%20notes/")) for u in urls), urls
    [citation] = message.content[0].annotations
    assert citation.url == urls[0] and "#" in citation.url
    assert_no_server_path(response.model_dump_json(warnings=False), served.folder)


def test_names_that_need_quoting_are_quoted(served: Served) -> None:
    response = served.server.client().responses.create(model="agent", input="two folders", tools=[tool("pair")])
    urls = SOURCE_LINE.findall(str(response.output[1].output))
    assert "extra%20notes/Vacation%20%C3%A9%201.md#vacation-extras" in urls


def test_no_absolute_path_in_streams_traces_stored_items_or_reports(served: Served) -> None:
    server, folder = served.server, served.folder
    with server.http() as http:
        body = {"model": "agent", "input": "one folder", "tools": [tool("solo")], "stream": True,
                "databricks_options": {"return_trace": True}}
        streamed = http.post("/v1/responses", json=body).text
        assert "handbook/" in streamed
        assert_no_server_path(streamed, folder)
        stored = http.post("/v1/responses", json={**body, "stream": False}).json()
        assert stored["databricks_output"]["trace"]
        for path in (f"/v1/responses/{stored['id']}", f"/v1/responses/{stored['id']}/input_items"):
            assert_no_server_path(http.get(path).text, folder)
        assert_no_server_path(json.dumps(stored), folder)
        # An assistant whose folder is missing: the report and the answer name no server path.
        report = http.post("/admin/v1/knowledge_assistants/gone/ingest", json={})
        assert report.status_code == 200 and report.json()["failed"] == {"nowhere": "not a folder"}
        assert_no_server_path(report.text, folder)
        missing = http.post("/v1/responses", json={"model": "agent", "input": "missing folder",
                                                   "tools": [tool("gone")]}).text
        assert_no_server_path(missing, folder)
        for bad in ({"paths": ["/etc/passwd"]}, {"paths": ["../../x"]}):
            refused = http.post("/admin/v1/knowledge_assistants/solo/ingest", json=bad)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "paths"
            assert_no_server_path(refused.text, folder)
    assert httpx.get(f"{server.url}/admin/v1/knowledge_assistants").status_code == 401
