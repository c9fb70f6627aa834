"""Knowledge assistants: ingestion of every format, incremental updates, retrieval, the tool, citations."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

import opensupervisor
from opensupervisor.knowledge.documents import read_document
from opensupervisor.knowledge.embeddings import OpenAIEmbeddings
from opensupervisor.knowledge.index import KnowledgeIndex
from opensupervisor.knowledge.ingest import OutsideSources, ingest
from opensupervisor.knowledge.local_embedder import LocalEmbedder
from opensupervisor.knowledge.search import Searcher
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.tools.knowledge_assistant import KnowledgeAssistants
from opensupervisor.workspace import parse_workspace
from tests.conftest import Server, ThreadServer, process_env, require_postgres, wait_until

HANDBOOK = Path(opensupervisor.__file__).parent / "demo" / "handbook"
BASE_URL = "https://intranet.example.com/handbook"


@pytest.fixture
def handbook(tmp_path: Path) -> Path:
    folder = tmp_path / "handbook"
    shutil.copytree(HANDBOOK, folder)
    return folder


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_every_format_reads_into_titled_sections() -> None:
    expected = {
        "benefits/leave-policy.md": ("Leave policy", "Leave policy > Carrying vacation over", "Up to 5 unused"),
        "it/onboarding.txt": ("IT onboarding checklist", "IT onboarding checklist > VPN", "Install the VPN client"),
        "travel/travel-policy.html": ("Travel policy", "Travel policy > Per diem", "Instead of itemized meals"),
        "support/returns-and-refunds.pdf": ("Returns and refunds", "Returns and refunds > Urgent reviews",
                                            "A review that reports a safety hazard"),
    }
    for path, (title, heading, opening) in expected.items():
        document = read_document(HANDBOOK / path)
        assert document.title == title
        section = next(s for s in document.sections if s.heading == heading)
        assert document.text[section.start:section.end].strip().startswith(opening)
    html = read_document(HANDBOOK / "travel/travel-policy.html").text
    assert "Home" not in html and "travel@northwind" not in html  # navigation and footer are not content


def test_ingest_is_incremental_and_reports_what_it_skips(handbook: Path, tmp_path: Path) -> None:
    index = KnowledgeIndex(f"sqlite:///{tmp_path}/kb.db")
    embedder = LocalEmbedder.shared()
    (handbook / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not really a pdf")
    (handbook / "notes.bin").write_bytes(b"\x00\x01")  # not a document type: ignored
    outside = tmp_path / "secret.md"
    outside.write_text("# Secret\n\nThe vault code is 1234.\n")
    (handbook / "link.md").symlink_to(outside)
    first = run(ingest(index, "hb", [handbook], embedder))
    assert len(first.added) == 8 and first.chunks > 40
    assert "not a readable PDF" in first.failed["broken.pdf"] and first.refused == ["link.md"]
    again = run(ingest(index, "hb", [handbook], embedder))
    assert len(again.unchanged) == 8 and not (again.added or again.updated or again.removed)
    policy = handbook / "benefits/leave-policy.md"
    policy.write_text(policy.read_text().replace("25 days of paid vacation", "27 days of paid vacation"))
    (handbook / "engineering/code-review.md").unlink()
    changed = run(ingest(index, "hb", [handbook], embedder))
    assert changed.updated == ["benefits/leave-policy.md"] and changed.removed == ["engineering/code-review.md"]
    searcher = Searcher(index, "hb", embedder, recheck_s=0)
    top = run(searcher.search("How many vacation days does a full-time employee get?"))[0].passage
    assert (top.path, top.heading) == ("benefits/leave-policy.md", "Leave policy > Vacation")
    assert "27 days" in top.text and top.text == read_document(policy).text[top.start:top.end]
    assert all(h.passage.path != "engineering/code-review.md" for h in run(searcher.search("pull request approvals")))
    assert all("vault code" not in h.passage.text for h in run(searcher.search("vault code secret")))
    with pytest.raises(OutsideSources):
        run(ingest(index, "hb", [handbook], embedder, only=["../secret.md"]))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_retrieval_with_filters(handbook: Path, tmp_path: Path, backend: str) -> None:
    url = f"sqlite:///{tmp_path}/kb.db" if backend == "sqlite" else require_postgres()
    index = KnowledgeIndex(url)
    ka = f"filters_{os.getpid()}"
    embedder = LocalEmbedder.shared()
    run(ingest(index, ka, [handbook], embedder))
    searcher = Searcher(index, ka, embedder)
    hotel = run(searcher.search("maximum hotel price per night in Paris", top_k=3))
    assert hotel[0].passage.path == "travel/travel-policy.html" and hotel[0].passage.heading.endswith("Hotels")
    only_it = run(searcher.search("maximum hotel price per night in Paris", top_k=3, source="it/*"))
    assert only_it and all(h.passage.path.startswith("it/") for h in only_it)
    for mode in ("lexical", "hybrid"):
        assert run(searcher.search("per diem international", mode=mode))[0].passage.heading.endswith("Per diem")
    run(index.remove(ka, list(run(index.hashes(ka))), embedder.name))
    index.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("knowledge")
    shutil.copytree(HANDBOOK, folder / "handbook")
    (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "Passages:"
turns = [{{ text = "Full-time employees receive 25 days of paid vacation per year [1]." }}]

[[models.agent.script]]
when = "junk filter"
turns = [
  {{ tool_calls = [{{ name = "ka_handbook", arguments = {{ question = "vacation days", source = "https://x/y" }} }}] }},
  {{ text = "Done." }},
]

[[models.agent.script]]
when = "vacation"
turns = [
  {{ tool_calls = [{{ name = "ka_handbook", arguments = {{ question = "How many vacation days do I get?" }} }}] }},
  {{ text = "You get 25 vacation days a year [1]; see also [9]." }},
]

[knowledge_assistants.handbook]
description = "Answers questions from internal documentation"
sources = ["handbook"]
base_url = "{BASE_URL}"
ingest_on_start = true
""")
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
        with running.http() as http:
            wait_until(lambda: http.get("/admin/v1/knowledge_assistants").json()["data"][0]["version"] > 0,
                       what="the handbook to be ingested")
        yield running


def ka() -> Any:
    return {"type": "knowledge_assistant",
            "knowledge_assistant": {"knowledge_assistant_id": "handbook", "description": "Internal docs"}}


def test_the_tool_answers_with_sources_and_the_answer_cites_them(server: Server) -> None:
    response = server.client().responses.create(model="agent", input="How much vacation do I get?", tools=[ka()])
    call, output, message = response.output
    assert call.name == "ka_handbook"
    answer, sources = output.output.split("\n\nSources:\n")
    assert answer == "Full-time employees receive 25 days of paid vacation per year [1]."
    first = sources.splitlines()[0]
    assert first == f"[1] Leave policy > Vacation <{BASE_URL}/benefits/leave-policy.md#vacation>"
    [citation] = message.content[0].annotations  # [9] names no source: not annotated
    text = response.output_text
    assert citation.type == "url_citation" and text[citation.start_index:citation.end_index] == "[1]"
    assert citation.url == f"{BASE_URL}/benefits/leave-policy.md#vacation"
    assert citation.title == "Leave policy > Vacation"


def test_a_source_filter_that_matches_nothing_searches_everything(server: Server) -> None:
    response = server.client().responses.create(model="agent", input="junk filter", tools=[ka()])
    output = str(response.output[1].output)
    assert output.startswith("(No document path matches 'https://x/y'; all documents were searched.)")
    assert "Leave policy > Vacation" in output


def test_annotations_are_streamed(server: Server) -> None:
    events = list(server.client().responses.create(model="agent", input="How much vacation do I get?", tools=[ka()],
                                                   stream=True))
    kinds = [e.type for e in events]
    added = kinds.index("response.output_text.annotation.added")
    assert kinds[added + 1] == "response.output_text.done"
    annotation: Any = events[added].annotation
    assert annotation["url"].endswith("leave-policy.md#vacation")
    done = events[-1].response
    assert done.output[-1].content[0].annotations[0].url.endswith("leave-policy.md#vacation")


def test_admin_ingest_and_errors(server: Server) -> None:
    with server.http() as http:
        again = http.post("/admin/v1/knowledge_assistants/handbook/ingest", json={})
        assert again.status_code == 200 and again.json()["unchanged"] == 8 and again.json()["added"] == []
        part = http.post("/admin/v1/knowledge_assistants/handbook/ingest", json={"paths": ["travel"]})
        assert part.status_code == 200 and part.json()["unchanged"] == 1
        traversal = http.post("/admin/v1/knowledge_assistants/handbook/ingest", json={"paths": ["../../etc"]})
        assert traversal.status_code == 400 and traversal.json()["error"]["param"] == "paths"
        assert http.post("/admin/v1/knowledge_assistants/nope/ingest", json={}).status_code == 404
    with pytest.raises(openai.BadRequestError) as info:
        server.client().responses.create(model="agent", input="hi", tools=[
            {"type": "knowledge_assistant", "knowledge_assistant": {"knowledge_assistant_id": "nope"}}])
    assert info.value.body["param"] == "tools[0].knowledge_assistant.knowledge_assistant_id"


def test_the_cli_ingests_with_progress(tmp_path: Path) -> None:
    shutil.copytree(HANDBOOK, tmp_path / "docs")
    (tmp_path / "workspace.toml").write_text('[knowledge_assistants.docs]\nsources = ["docs"]\n')
    env = process_env(tmp_path / "workspace.toml", f"sqlite:///{tmp_path}/state.db", None)
    cli = [sys.executable, "-m", "opensupervisor", "ingest"]
    first = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "docs: 8 added, 0 updated, 0 unchanged, 0 removed" in first.stderr
    second = subprocess.run([*cli, "docs"], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert "docs: 0 added, 0 updated, 8 unchanged, 0 removed, 0 chunks" in second.stderr
    unknown = subprocess.run([*cli, "nope"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert unknown.returncode != 0 and "no knowledge assistant nope" in unknown.stderr


def test_the_embeddings_endpoint_serves_the_local_model_to_openai_clients(
        server: Server, handbook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = server.client()
    texts = ["How many vacation days do I get?", "hotel limit in Paris"]
    answer = client.embeddings.create(model="all-MiniLM-L6-v2-int8", input=texts)  # the SDK asks for base64
    plain = client.embeddings.create(model="all-MiniLM-L6-v2-int8", input=texts[0], encoding_format="float")
    local = LocalEmbedder.shared().embed_now(texts)
    assert [len(d.embedding) for d in answer.data] == [384, 384] and answer.usage.prompt_tokens > 5
    assert np.allclose(answer.data[1].embedding, local[1], atol=1e-6)
    assert np.allclose(plain.data[0].embedding, local[0], atol=1e-6)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert unknown.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model="all-MiniLM-L6-v2-int8", input=["ok", ""])
    assert empty.value.body["param"] == "input[1]"
    # A knowledge index embedded through an OpenAI-compatible endpoint (this one) searches the same.
    monkeypatch.setenv("OS_TEST_EMBED_KEY", server.token)
    remote = OpenAIEmbeddings(server.v1, "all-MiniLM-L6-v2-int8", api_key_env="OS_TEST_EMBED_KEY")
    index = KnowledgeIndex(f"sqlite:///{tmp_path}/remote.db")

    async def ingest_and_search() -> Any:
        try:
            report = await ingest(index, "remote", [handbook], remote)
            hits = await Searcher(index, "remote", remote).search("How many vacation days does a full-timer get?")
            return report, hits
        finally:
            await remote.aclose()

    report, hits = run(ingest_and_search())
    assert len(report.added) == 8 and hits[0].passage.heading == "Leave policy > Vacation"


def test_citations_without_a_base_url_are_relative_to_the_sources(tmp_path: Path) -> None:
    workspace = parse_workspace('[knowledge_assistants.docs]\nsources = ["docs"]\n', source="test", base_dir=tmp_path)
    assistants = KnowledgeAssistants(workspace, ModelCatalog(workspace), f"sqlite:///{tmp_path}/kb.db")
    url = assistants.url("docs", "benefits/leave policy.md", "Leave policy > Carrying vacation over")
    assert url == "docs/benefits/leave%20policy.md#carrying-vacation-over"
    assert str(tmp_path) not in url
