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
from typing import Any, Literal

import bm25s
import numpy as np

from opensupervisor.knowledge.embeddings import Embedder
from opensupervisor.knowledge.index import KnowledgeIndex, Passage, Snapshot

Mode = Literal["hybrid", "lexical", "vector"]
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
        passages = loaded.snapshot.passages
        if not passages:
            return []
        allowed = None if source is None else np.array([fnmatch.fnmatchcase(p.path, source) for p in passages])
        pool = max(top_k * 4, 20)
        rankings: list[tuple[float, list[int]]] = []
        if mode in ("hybrid", "vector"):
            query_vector = (await self.embedder.embed([query]))[0]
            if self.index.pgvector:
                ids = await self.index.nearest(self.ka, query_vector, pool, source)
                rankings.append((1.0, [loaded.position[i] for i in ids if i in loaded.position]))
            else:
                rankings.append((1.0, _top(loaded.snapshot.vectors @ query_vector, allowed, pool)))
        if mode in ("hybrid", "lexical"):
            await asyncio.to_thread(loaded.bm25)  # built off the event loop the first time
            rankings.append((lexical_weight if mode == "hybrid" else 1.0, _lexical(loaded, query, allowed, pool)))
        fused: dict[int, float] = {}
        for weight, ranking in rankings:
            for rank, i in enumerate(ranking):
                fused[i] = fused.get(i, 0.0) + weight / (RRF_K + rank + 1)
        best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return [Hit(passages[i], score) for i, score in best]


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
