"""``knowledge_assistant``: answers from a folder of documents, with numbered citations.

Declared in the workspace file's ``[knowledge_assistants.<id>]`` (its source folders, an optional
base URL for citations), fed by ``opensupervisor ingest`` or the admin API, and searched with
hybrid retrieval (``opensupervisor.knowledge``). The tool ``ka_<id>`` takes a question (and an
optional ``source`` glob), retrieves passages, has a model answer from them alone, and returns the
answer and its numbered sources. The final message's ``[n]`` markers become ``url_citation``
annotations (``core.citations``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from opensupervisor import tracing
from opensupervisor.core.arguments import MAX_GLOB_CHARS, MAX_QUESTION_CHARS, text_property
from opensupervisor.core.citations import format_sources
from opensupervisor.core.context import RunContext, Slot
from opensupervisor.core.contracts import ModelRequest, ToolDef, Toolset
from opensupervisor.errors import ConfigError, ModelError, ToolError
from opensupervisor.knowledge.modes import Mode
from opensupervisor.models.catalog import ModelCatalog
from opensupervisor.tools.registry import ToolRegistry, config_description, config_name, prefixed_tool_name
from opensupervisor.tracing.wrappers import traced_request
from opensupervisor.wire.items import user_message
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace, section_entry

# The index, the embedders and the search (numpy, BM25, an embedding model) are imported where an
# assistant first needs them: a process whose runs ask no assistant never loads them.
if TYPE_CHECKING:
    from opensupervisor.knowledge.embeddings import Embedder
    from opensupervisor.knowledge.index import KnowledgeIndex
    from opensupervisor.knowledge.ingest import IngestReport
    from opensupervisor.knowledge.search import Hit, Searcher

log = logging.getLogger(__name__)
PROMPT = """You answer questions from a company's documents. Use only the numbered passages below.
Cite every statement with the passage numbers in square brackets, like [2] or [1][3]. If the
passages do not answer the question, say so in one sentence. Be brief."""


class EmbeddingEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["local", "openai"] = "local"
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None


class KnowledgeAssistantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(min_length=1)
    description: str | None = None
    # Citations link to base_url + the file's path in its folder; default: that path after the
    # folder's name (``handbook/leave-policy.md#vacation``).
    base_url: str | None = None
    top_k: int = Field(default=5, ge=1, le=20)
    # The catalog model that writes the grounded answer; default: the model of the run.
    answer_model: str | None = None
    instructions: str | None = None
    embedding: EmbeddingEntry = Field(default_factory=EmbeddingEntry)
    # How passages are found: vector similarity (the measured best, see bench/retrieval.py),
    # BM25, or both fused by reciprocal rank with the lexical ranking weighted.
    search: Mode = "vector"
    lexical_weight: float = Field(default=0.3, ge=0, le=1)
    # Ingest (incrementally) when the server starts, in the background.
    ingest_on_start: bool = False


def tool_name(ka: str) -> str:
    return prefixed_tool_name("ka_", ka)




@dataclass(slots=True)
class _Citations:
    used: int = 0


# The citation numbers a run's assistants handed out so far.
CITATIONS: Slot[_Citations] = Slot("citation_numbers", _Citations)

QUESTION_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["question"],
    "properties": {
        "question": text_property("The question, in full sentences"),
        "source": text_property("Optional: only documents whose path matches this glob", MAX_GLOB_CHARS),
    },
}


class KnowledgeAssistants:
    def __init__(self, workspace: Workspace, catalog: ModelCatalog, index_url: str) -> None:
        self.catalog = catalog
        self.entries: dict[str, KnowledgeAssistantEntry] = {}
        self.roots: dict[str, list[Path]] = {}
        for ka, raw in workspace.knowledge_assistants.items():
            entry = section_entry(KnowledgeAssistantEntry, f"knowledge_assistants.{ka}", raw)
            self.entries[ka] = entry
            self.roots[ka] = [(workspace.base_dir / s).resolve() for s in entry.sources]
        self.index_url = index_url
        self._index: KnowledgeIndex | None = None
        self._embedders: dict[str, Embedder] = {}
        self._searchers: dict[str, Searcher] = {}
        self._ingest_locks: dict[str, asyncio.Lock] = {}
        self.ingesting: set[str] = set()

    @property
    def index(self) -> KnowledgeIndex:
        if self._index is None:  # opened on first use: a workspace without assistants never creates tables
            from opensupervisor.knowledge.index import KnowledgeIndex

            self._index = KnowledgeIndex(self.index_url)
        return self._index

    def embedder(self, ka: str) -> Embedder:
        spec = self.entries[ka].embedding
        key = spec.model_dump_json()
        if key not in self._embedders:
            if spec.provider == "openai":
                if not spec.base_url or not spec.model:
                    raise ConfigError(f"knowledge_assistants.{ka}.embedding: base_url and model are required",
                                      param="embedding.model" if spec.base_url else "embedding.base_url")
                from opensupervisor.knowledge.embeddings import OpenAIEmbeddings

                self._embedders[key] = OpenAIEmbeddings(spec.base_url, spec.model, spec.api_key_env)
            else:
                from opensupervisor.knowledge.local_embedder import LocalEmbedder

                self._embedders[key] = LocalEmbedder.shared(spec.model)
        return self._embedders[key]

    def searcher(self, ka: str) -> Searcher:
        if ka not in self._searchers:
            from opensupervisor.knowledge.search import Searcher

            self._searchers[ka] = Searcher(self.index, ka, self.embedder(ka))
        return self._searchers[ka]

    def factory(self, spec: ToolSpec, workspace: Workspace) -> Toolset:
        ka = config_name(spec, self.entries, "Knowledge assistant")
        return KnowledgeTool(self, ka, config_description(spec))

    def url(self, ka: str, path: str, heading: str) -> str:
        anchor = _slug(heading.split(" > ")[-1]) if heading else ""
        base = self.entries[ka].base_url
        if base:
            target = base.rstrip("/") + "/" + quote(path)
        else:
            # Relative to the assistant's sources, named by their folder: the server's own paths are
            # nobody else's business (``path`` already starts with the folder when there are several).
            roots = self.roots[ka]
            target = quote(f"{roots[0].name}/{path}" if len(roots) == 1 else path)
        return f"{target}#{anchor}" if anchor else target

    async def ask(self, ctx: RunContext, ka: str, question: str, source: str | None) -> str:
        # The tool box holds calls to the schema; this holds for every other caller too.
        if len(question) > MAX_QUESTION_CHARS or (source is not None and len(source) > MAX_GLOB_CHARS):
            raise ToolError(f"the question may have at most {MAX_QUESTION_CHARS:,} characters and the source glob "
                            f"at most {MAX_GLOB_CHARS:,}")
        entry = self.entries[ka]
        searcher = self.searcher(ka)
        with tracing.span("retrieve", "RETRIEVER", inputs={"query": question, "source": source},
                          attributes={"opensupervisor.search": entry.search}) as span:
            hits = await searcher.search(question, top_k=entry.top_k, source=source, mode=entry.search,
                                         lexical_weight=entry.lexical_weight)
            span.outputs([{"page_content": h.passage.text, "metadata": {"path": h.passage.path,
                                                                        "heading": h.passage.heading,
                                                                        "score": h.score}} for h in hits])
        note = ""
        if not hits and source:  # a filter that matches no document: search them all and say so
            note = f"(No document path matches '{source}'; all documents were searched.)\n\n"
            hits = await searcher.search(question, top_k=entry.top_k, mode=entry.search,
                                         lexical_weight=entry.lexical_weight)
        if not hits:
            return f"No passage of the '{ka}' documents matches this question."
        numbers = allocate_citations(ctx, len(hits))
        sources = [(n, f"{h.passage.title} > {h.passage.heading.split(' > ')[-1]}" if h.passage.heading
                    else h.passage.title, self.url(ka, h.passage.path, h.passage.heading))
                   for n, h in zip(numbers, hits, strict=True)]
        answer = await self._answer(ctx, ka, question, hits, numbers)
        return f"{note}{answer}\n\n{format_sources(sources)}"

    async def _answer(self, ctx: RunContext, ka: str, question: str, hits: list[Hit], numbers: list[int]) -> str:
        entry = self.entries[ka]
        name = entry.answer_model or ctx.request.body.model
        passages = "\n\n".join(f"[{n}] ({h.passage.heading or h.passage.title}, {h.passage.path})\n{h.passage.text}"
                               for n, h in zip(numbers, hits, strict=True))
        prompt = f"Question: {question}\n\nPassages:\n\n{passages}"
        instructions = PROMPT + (f"\n\n{entry.instructions}" if entry.instructions else "")
        try:
            request = ModelRequest(instructions=instructions, items=[user_message(prompt)],
                                   settings={"temperature": 0.0})
            reply = await traced_request(self.catalog.get(name), request, "grounded_answer")
        except ModelError as exc:
            raise ToolError(f"the knowledge assistant '{ka}' could not write an answer: {exc.message}") from exc
        return reply.text.strip() or "(no answer)"

    async def ingest(self, ka: str, only: list[str] | None = None) -> IngestReport:
        """Ingest now; one ingest per assistant at a time in this process (a second one waits)."""
        from opensupervisor.knowledge.ingest import ingest

        lock = self._ingest_locks.setdefault(ka, asyncio.Lock())
        async with lock:
            self.ingesting.add(ka)
            try:
                report = await ingest(self.index, ka, self.roots[ka], self.embedder(ka), only=only)
            finally:
                self.ingesting.discard(ka)
        for key, why in report.failed.items():
            log.warning("knowledge assistant %s: skipped %s: %s", ka, key, why)
        for key in report.refused:
            log.warning("knowledge assistant %s: refused %s: outside the source folders", ka, key)
        return report

    async def ingest_on_start(self) -> None:
        """The assistants marked ``ingest_on_start``, one after the other; failures are logged."""
        for ka, entry in self.entries.items():
            if entry.ingest_on_start:
                try:
                    report = await self.ingest(ka)
                    log.info("knowledge assistant %s: %d added, %d updated, %d removed", ka, len(report.added),
                             len(report.updated), len(report.removed))
                except Exception:  # the server stays up; the assistant answers from what it has
                    log.exception("ingesting knowledge assistant %s failed", ka)

    async def aclose(self) -> None:
        for embedder in self._embedders.values():
            await embedder.aclose()
        if self._index is not None:
            self._index.close()


class KnowledgeTool(Toolset):
    def __init__(self, assistants: KnowledgeAssistants, ka: str, description: str | None) -> None:
        self.assistants = assistants
        self.ka = ka
        self.description = description or assistants.entries[ka].description or f"Answers from the {ka} documents"

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        return [ToolDef(tool_name(self.ka), self.description, QUESTION_SCHEMA)]

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        source = arguments.get("source")
        return await self.assistants.ask(ctx, self.ka, str(arguments["question"]),
                                         str(source) if source else None)


def allocate_citations(ctx: RunContext, count: int) -> list[int]:
    """Citation numbers unique within the run, so several assistants' sources never collide."""
    numbers = ctx.slot(CITATIONS)
    first = numbers.used + 1
    numbers.used += count
    return list(range(first, first + count))


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def register(registry: ToolRegistry, workspace: Workspace, catalog: ModelCatalog,
             index_url: str) -> KnowledgeAssistants:
    assistants = KnowledgeAssistants(workspace, catalog, index_url)
    registry.register("knowledge_assistant", assistants.factory)
    return assistants
