"""Retrieval quality and cost of knowledge assistants.

Quality: the demo handbook is ingested for real (parsers, chunker, the local embedding model) and
``bench/handbook_eval.json``'s questions are asked in each mode; a hit is a passage from the
expected file under the expected heading. Prints recall@1, recall@5 and MRR for lexical (BM25),
vector and hybrid (reciprocal rank fusion).

Cost: ingest throughput (chunks/s) and query latency (p50, p99) with 1k and 100k chunks, on SQLite
and on PostgreSQL (``--pg``, default the test database). Figures are ratios of one run on one
machine.

    .venv/bin/python bench/retrieval.py [--quality-only] [--sizes 1000,100000] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from opensupervisor.knowledge.chunking import Chunk
from opensupervisor.knowledge.index import KnowledgeIndex
from opensupervisor.knowledge.ingest import ingest
from opensupervisor.knowledge.local_embedder import LocalEmbedder
from opensupervisor.knowledge.modes import Mode
from opensupervisor.knowledge.search import Searcher

HERE = Path(__file__).resolve().parent
HANDBOOK = HERE.parent / "src/opensupervisor/demo/handbook"
MODES: list[tuple[str, Mode, float]] = [("lexical (BM25)", "lexical", 1.0), ("vector", "vector", 1.0),
                                         ("hybrid, equal weights", "hybrid", 1.0),
                                         ("hybrid, lexical x0.3", "hybrid", 0.3)]


async def quality(url: str) -> None:
    embedder = LocalEmbedder.shared()
    index = KnowledgeIndex(url)
    started = time.perf_counter()
    report = await ingest(index, "handbook", [HANDBOOK], embedder)
    print(f"Ingested the demo handbook: {len(report.added)} files, {report.chunks} chunks "
          f"in {time.perf_counter() - started:.2f} s")
    questions = json.loads((HERE / "handbook_eval.json").read_text())["questions"]
    searcher = Searcher(index, "handbook", embedder)
    print(f"\n{len(questions)} questions           recall@1  recall@5   MRR")
    for label, mode, weight in MODES:
        ranks = []
        for q in questions:
            hits = await searcher.search(q["q"], top_k=10, mode=mode, lexical_weight=weight)
            found = [i for i, h in enumerate(hits, 1)
                     if h.passage.path == q["path"] and h.passage.heading.split(" > ")[-1] == q["heading"]]
            ranks.append(found[0] if found else None)
        r1 = sum(1 for r in ranks if r == 1) / len(ranks)
        r5 = sum(1 for r in ranks if r is not None and r <= 5) / len(ranks)
        mrr = sum(1 / r for r in ranks if r is not None) / len(ranks)
        print(f"  {label:22s} {r1:8.3f} {r5:9.3f} {mrr:7.3f}")
    index.close()


async def cost(url: str, label: str, size: int) -> None:
    """Ingest ``size`` synthetic chunks (the handbook's passages, repeated with variations) and
    time queries against them."""
    embedder = LocalEmbedder.shared()
    index = KnowledgeIndex(url)
    ka = f"bench{size}"
    base = [line.strip() for f in sorted(HANDBOOK.rglob("*.md")) for line in f.read_text().split("\n\n")
            if len(line.strip()) > 80]
    texts = [f"{base[i % len(base)]} (variant {i})" for i in range(size)]
    started = time.perf_counter()
    embed_s = 0.0
    per_doc = 100
    for d in range(0, size, per_doc):
        part = texts[d:d + per_doc]
        t = time.perf_counter()
        vectors = await embedder.embed_batched(part, 64) if size <= 5000 else _cheap_vectors(part)
        embed_s += time.perf_counter() - t
        chunks = [Chunk(i, "Section", 0, len(x), x) for i, x in enumerate(part)]
        await index.replace(ka, f"doc{d // per_doc}.md", "x", "Doc", chunks, vectors, embedder.name)
    total = time.perf_counter() - started
    searcher = Searcher(index, ka, embedder)
    await searcher.search("warm up", top_k=5)
    latencies = []
    for q in ["How many vacation days do I get?", "What is the hotel limit in Paris?", "Who approves a merge?"] * 20:
        t = time.perf_counter()
        await searcher.search(q, top_k=5)
        latencies.append((time.perf_counter() - t) * 1000)
    latencies.sort()
    how = "embedded + stored" if size <= 5000 else "stored (random vectors; embedding measured at 1k)"
    print(f"  {label:10s} {size:>7,} chunks: ingest {size / total:8.0f} chunks/s ({how}); "
          f"query p50 {statistics.median(latencies):7.2f} ms  p99 {latencies[int(0.99 * len(latencies))]:7.2f} ms")
    index.close()


def _cheap_vectors(texts: list[str]) -> Any:
    rng = np.random.default_rng(len(texts))
    v = rng.standard_normal((len(texts), 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await quality(f"sqlite:///{tmp}/quality.db")
        if args.quality_only:
            return
        print("\nCost")
        for size in (int(s) for s in args.sizes.split(",")):
            await cost(f"sqlite:///{tmp}/cost{size}.db", "SQLite", size)
            if args.pg:
                await cost(args.pg, "PostgreSQL", size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    asyncio.run(main(parser.parse_args()))
