"""Ingesting a knowledge assistant's source folders into its index, incrementally.

Unchanged files (same content, same embedding model, same chunker) are skipped, changed ones
replaced and deleted ones removed. A file that cannot be parsed is reported and skipped; the rest
still ingest. Nothing outside the configured folders is read: a symlink that leads out, or a
requested path that climbs out, is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from opensupervisor.knowledge.chunking import MAX_CHARS, chunk_document
from opensupervisor.knowledge.documents import FORMATS, UnreadableDocument, read_document
from opensupervisor.knowledge.embeddings import Embedder
from opensupervisor.knowledge.index import KnowledgeIndex

# Part of every file's fingerprint: a new chunker re-ingests everything.
CHUNKER = f"chunker-1:{MAX_CHARS}"
BATCH = 64
Progress = Callable[[str, int, int], None]


class OutsideSources(ValueError):
    """A path that is not inside the knowledge assistant's source folders."""


@dataclass(slots=True)
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    chunks: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"added": self.added, "updated": self.updated, "unchanged": len(self.unchanged),
                "removed": self.removed, "failed": self.failed, "refused": self.refused, "chunks": self.chunks}


@dataclass(frozen=True, slots=True)
class SourceFile:
    key: str  # the path the index and citations use (relative to its source folder)
    path: Path


def source_files(roots: list[Path], report: IngestReport) -> list[SourceFile]:
    """Every supported file under the roots; links that lead outside them are refused."""
    files: list[SourceFile] = []
    for root in roots:
        base = root.resolve()
        if not base.is_dir():
            report.failed[root.name] = "not a folder"  # its name as configured: reports never show server paths
            continue
        for path in sorted(root.rglob("*")):
            key = _key(roots, root, path)
            if not path.resolve().is_relative_to(base):
                report.refused.append(key)
                continue
            if path.is_file() and path.suffix.lower() in FORMATS:
                files.append(SourceFile(key, path))
    return files


def _key(roots: list[Path], root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel if len(roots) == 1 else f"{root.name}/{rel}"


def check_requested(paths: list[str]) -> None:
    """Paths a caller asks to ingest must stay inside the source folders."""
    for p in paths:
        pure = PurePosixPath(p)
        if pure.is_absolute() or ".." in pure.parts or "\\" in p:
            raise OutsideSources(f"'{p}' is not inside the knowledge assistant's source folders")


async def ingest(index: KnowledgeIndex, ka: str, roots: list[Path], embedder: Embedder, *,
                 only: list[str] | None = None, progress: Progress | None = None) -> IngestReport:
    report = IngestReport()
    if only is not None:
        check_requested(only)
    files = source_files(roots, report)
    if only is not None:
        files = [f for f in files if f.key in only or any(f.key.startswith(o.rstrip("/") + "/") for o in only)]
    known = await index.hashes(ka)
    model_changed = await index.embedder_of(ka) not in (None, embedder.name)
    for n, source in enumerate(files, 1):
        if progress is not None:
            progress(source.key, n, len(files))
        try:
            raw = source.path.read_bytes()
        except OSError as exc:
            report.failed[source.key] = exc.strerror or type(exc).__name__
            continue
        fingerprint = hashlib.sha256(raw + f"\0{embedder.name}\0{CHUNKER}".encode()).hexdigest()
        if known.get(source.key) == fingerprint and not model_changed:
            report.unchanged.append(source.key)
            continue
        try:
            # Parsing (PDF, HTML) takes a while: in a thread, so a server ingesting keeps serving.
            document = await asyncio.to_thread(read_document, source.path)
        except UnreadableDocument as exc:
            report.failed[source.key] = str(exc)
            continue
        pieces = await asyncio.to_thread(chunk_document, document)
        texts = [f"{document.title}. {c.heading}\n{c.text}" for c in pieces]
        vectors = await embedder.embed_batched(texts, BATCH)
        await index.replace(ka, source.key, fingerprint, document.title, pieces, vectors, embedder.name)
        (report.updated if source.key in known else report.added).append(source.key)
        report.chunks += len(pieces)
    if only is None:
        present = {f.key for f in files}
        gone = sorted(k for k in known if k not in present and k not in report.failed)
        if gone:
            await index.remove(ka, gone, embedder.name)
            report.removed = gone
    return report
