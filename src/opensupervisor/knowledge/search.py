"""Hybrid retrieval: BM25 (``bm25s``) and vector similarity, fused by reciprocal rank.

A searcher keeps one knowledge assistant's passages in memory (their embedding matrix and a BM25
index) and reloads them when the index's version moves, checked at most every ``recheck_s``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import time
from dataclasses import dataclass
from typing import Any

import bm25s
import numpy as np

from opensupervisor.knowledge.embeddings import Embedder
from opensupervisor.knowledge.index import KnowledgeIndex, Passage, Snapshot
from opensupervisor.knowledge.modes import Mode

# Reciprocal rank fusion's constant (Cormack et al.): damps the weight of the very top ranks.
RRF_K = 60
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i", "if",
    "in", "is", "it", "its", "may", "my", "of", "on", "or", "our", "should", "the", "their", "there", "this",
    "to", "was", "we", "what", "when", "where", "which", "who", "why", "will", "with", "you", "your",
})


@dataclass(frozen=True, slots=True)
class Hit:
    passage: Passage
    score: float


def tokens(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


class _Loaded:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.position = {p.id: i for i, p in enumerate(snapshot.passages)}
        self._bm25: Any = None

    def bm25(self) -> Any:
        """The BM25 index, built on first use (a vector-only assistant never needs it)."""
        if self._bm25 is None and self.snapshot.passages:
            corpus = [tokens(f"{p.title} {p.heading} {p.text}") for p in self.snapshot.passages]
            index = bm25s.BM25()
            index.index(corpus, show_progress=False)
            self._bm25 = index
        return self._bm25


class Searcher:
    def __init__(self, index: KnowledgeIndex, ka: str, embedder: Embedder, *, recheck_s: float = 1.0) -> None:
        self.index = index
        self.ka = ka
        self.embedder = embedder
        self.recheck_s = recheck_s
        self._loaded: _Loaded | None = None
        self._checked_at = -1e9
        self._lock = asyncio.Lock()

    async def _current(self) -> _Loaded:
        async with self._lock:
            if self._loaded is None or time.monotonic() - self._checked_at >= self.recheck_s:
                version = await self.index.version(self.ka)
                if self._loaded is None or version != self._loaded.snapshot.version:
                    snapshot = await self.index.snapshot(self.ka)
                    self._loaded = await asyncio.to_thread(_Loaded, snapshot)
                self._checked_at = time.monotonic()
            return self._loaded

    async def search(self, query: str, *, top_k: int = 5, source: str | None = None,
                     mode: Mode = "vector", lexical_weight: float = 0.3) -> list[Hit]:
        """The ``top_k`` best passages; ``source`` keeps documents whose path matches a glob.
        ``hybrid`` fuses both rankings by reciprocal rank, the lexical one weighted."""
        loaded = await self._current()
        if not loaded.snapshot.passages:
            return []
        pool = max(top_k * 4, 20)
        query_vector: np.ndarray[Any, Any] | None = None
        nearest: list[int] | None = None
        if mode in ("hybrid", "vector"):
            query_vector = (await self.embedder.embed([query]))[0]
            if self.index.pgvector:
                nearest = await self.index.nearest(self.ka, query_vector, pool, source)
        # Matching the glob, scoring and fusing grow with the passages (and a model-written glob):
        # in a thread, so the event loop goes on serving everyone else meanwhile.
        return await asyncio.to_thread(_rank, loaded, _Query(query, query_vector, nearest, source, mode,
                                                             lexical_weight, top_k, pool))


@dataclass(frozen=True, slots=True)
class _Query:
    text: str
    vector: np.ndarray[Any, Any] | None
    # The passage ids PostgreSQL found nearest (pgvector), else None: the vectors are here.
    nearest: list[int] | None
    source: str | None
    mode: Mode
    lexical_weight: float
    top_k: int
    pool: int


def _rank(loaded: _Loaded, query: _Query) -> list[Hit]:
    passages = loaded.snapshot.passages
    # PostgreSQL filtered its own ranking by the glob; only a ranking made here needs the match.
    needed = query.source is not None and (query.nearest is None or query.mode != "vector")
    allowed = _matching(passages, query.source) if needed and query.source is not None else None
    rankings: list[tuple[float, list[int]]] = []
    if query.nearest is not None:
        rankings.append((1.0, [loaded.position[i] for i in query.nearest if i in loaded.position]))
    elif query.vector is not None:
        rankings.append((1.0, _top(loaded.snapshot.vectors @ query.vector, allowed, query.pool)))
    if query.mode in ("hybrid", "lexical"):
        weight = query.lexical_weight if query.mode == "hybrid" else 1.0
        rankings.append((weight, _lexical(loaded, query.text, allowed, query.pool)))
    fused: dict[int, float] = {}
    for weight, ranking in rankings:
        for rank, i in enumerate(ranking):
            fused[i] = fused.get(i, 0.0) + weight / (RRF_K + rank + 1)
    best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:query.top_k]
    return [Hit(passages[i], score) for i, score in best]


def _matching(passages: list[Passage], glob: str) -> np.ndarray[Any, Any]:
    """Which passages' documents match ``glob``: each document path is matched once, not per passage."""
    pattern = re.compile(fnmatch.translate(glob))
    matches: dict[str, bool] = {}
    for p in passages:
        if p.path not in matches:
            matches[p.path] = pattern.match(p.path) is not None
    return np.array([matches[p.path] for p in passages])


def _top(scores: np.ndarray[Any, Any], allowed: np.ndarray[Any, Any] | None, n: int) -> list[int]:
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    n = min(n, len(scores))
    candidates = np.argpartition(-scores, n - 1)[:n]
    ordered = candidates[np.argsort(-scores[candidates], kind="stable")]
    return [int(i) for i in ordered if np.isfinite(scores[i])]


def _lexical(loaded: _Loaded, query: str, allowed: np.ndarray[Any, Any] | None, n: int) -> list[int]:
    words = tokens(query)
    bm25 = loaded.bm25()
    if not words or bm25 is None:
        return []
    scores = np.asarray(bm25.get_scores(words), dtype=np.float64)
    ranked = _top(scores, allowed, n)
    return [i for i in ranked if scores[i] > 0]
