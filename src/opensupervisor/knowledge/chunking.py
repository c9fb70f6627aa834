"""Splitting a document into passages that keep to its headings and paragraphs.

A section that fits is one chunk; a longer one is cut between paragraphs (a paragraph longer than
the limit between sentences), and small neighbouring paragraphs are kept together. Each chunk
knows its heading and its character range in the document's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from opensupervisor.knowledge.documents import Document

MAX_CHARS = 1000
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True, slots=True)
class Chunk:
    ordinal: int
    heading: str
    start: int
    end: int
    text: str


def chunk_document(document: Document, max_chars: int = MAX_CHARS) -> list[Chunk]:
    chunks: list[Chunk] = []
    for section in document.sections:
        for start, end in _pieces(document.text, section.start, section.end, max_chars):
            text = document.text[start:end].strip()
            if text:
                lead = len(document.text[start:end]) - len(document.text[start:end].lstrip())
                chunks.append(Chunk(len(chunks), section.heading, start + lead, start + lead + len(text), text))
    return chunks


def _pieces(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Character ranges of at most ``max_chars`` covering ``text[start:end]``, cut at paragraph ends."""
    if end - start <= max_chars:
        return [(start, end)]
    units = [u for s, e in _spans(_PARAGRAPH, text, start, end) for u in
             ([(s, e)] if e - s <= max_chars else _sentences(text, s, e, max_chars))]
    out: list[tuple[int, int]] = []
    for s, e in units:
        if out and e - out[-1][0] <= max_chars:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _sentences(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in _spans(_SENTENCE, text, start, end):
        while e - s > max_chars:  # a "sentence" without breaks: cut it hard
            out.append((s, s + max_chars))
            s += max_chars
        out.append((s, e))
    return out


def _spans(separator: re.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    position = start
    for match in separator.finditer(text, start, end):
        if match.start() > position:
            spans.append((position, match.start()))
        position = match.end()
    if position < end:
        spans.append((position, end))
    return spans
