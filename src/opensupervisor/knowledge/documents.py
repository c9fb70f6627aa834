"""Reading a source file into its text and sections: Markdown, plain text, HTML and PDF.

Every format becomes one ``Document``: its title, its plain text, and its sections (a heading path
and the character range of the section's body in that text), so a chunk can say where it came
from. A file that cannot be read raises ``UnreadableDocument`` with a short reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html", ".htm": "html",
           ".pdf": "pdf"}
_ATX = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^(```|~~~)")


class UnreadableDocument(Exception):
    """A file that cannot be parsed; the message says why (it is reported, and the file skipped)."""


@dataclass(frozen=True, slots=True)
class Section:
    heading: str  # "Leave policy > Carrying vacation over"; "" before the first heading
    start: int
    end: int


@dataclass(slots=True)
class Document:
    title: str
    text: str
    sections: list[Section] = field(default_factory=list)


def read_document(path: Path) -> Document:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UnreadableDocument(f"unsupported file type '{path.suffix}'")
    try:
        if kind == "pdf":
            return _pdf(path)
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableDocument("not UTF-8 text") from exc
    except OSError as exc:
        raise UnreadableDocument(exc.strerror or type(exc).__name__) from exc
    if kind == "markdown":
        return _markdown(raw, path)
    if kind == "html":
        return _html(raw, path)
    return _text(raw, path)


class _Builder:
    """Accumulates text while tracking the heading path, closing a section at each heading."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.section_start = 0
        self.title = ""

    def heading(self, level: int, text: str) -> None:
        self._close()
        if not self.title and level <= 1:
            self.title = text
        self.path = [(lvl, h) for lvl, h in self.path if lvl < level] + [(level, text)]
        self.add(text + "\n\n")
        self.section_start = self.size

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    def _close(self) -> None:
        body = "".join(self.parts)[self.section_start:self.size]
        if body.strip():
            self.sections.append(Section(" > ".join(h for _, h in self.path), self.section_start, self.size))

    def build(self, fallback_title: str) -> Document:
        self._close()
        return Document(self.title or fallback_title, "".join(self.parts), self.sections)


def _markdown(raw: str, path: Path) -> Document:
    b = _Builder()
    fenced = False
    for line in raw.splitlines(keepends=True):
        if _FENCE.match(line.strip()):
            fenced = not fenced
        match = None if fenced else _ATX.match(line.rstrip("\n"))
        if match:
            b.heading(len(match.group(1)), match.group(2))
        else:
            b.add(line)
    return b.build(_title_from_name(path))


def _text(raw: str, path: Path) -> Document:
    """Plain text: a short line standing alone, without a final period, is a heading; the first one
    (at the top of the file) is the title."""
    b = _Builder()
    paragraphs = re.split(r"(\n\s*\n)", raw)
    for i, part in enumerate(paragraphs):
        stripped = part.strip()
        if i % 2 == 0 and stripped and "\n" not in stripped and len(stripped) <= 60 and stripped[-1] not in ".:;,":
            b.heading(1 if not b.title else 2, stripped)
        else:
            b.add(part)
    return b.build(_title_from_name(path))


def _html(raw: str, path: Path) -> Document:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "nav", "header", "footer", "noscript", "template"]):
        tag.decompose()
    b = _Builder()
    body = soup.body or soup
    for element in body.find_all(["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "td", "th", "blockquote"]):
        if element.find_parent(["p", "li", "pre", "td", "th", "blockquote"]) is not None:
            continue  # its text is part of the enclosing block
        text = " ".join(element.get_text(" ").split())
        if not text:
            continue
        if element.name and element.name[0] == "h" and element.name[1:].isdigit():
            b.heading(int(element.name[1:]), text)
        else:
            b.add(text + "\n\n")
    title_tag = soup.title.get_text(strip=True) if soup.title else ""
    document = b.build(title_tag or _title_from_name(path))
    if not b.title and title_tag:
        document.title = title_tag
    return document


def _pdf(path: Path) -> Document:
    """PDF text by page; lines set in a larger font than the page's body text are headings."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path)
        pages = [_pdf_lines(page) for page in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise UnreadableDocument(f"not a readable PDF ({type(exc).__name__})") from exc
    b = _Builder()
    sizes = Counter(size for lines in pages for size, text in lines for _ in text.split())
    body_size = sizes.most_common(1)[0][0] if sizes else 0.0
    heading_sizes = sorted({size for lines in pages for size, _ in lines if size > body_size + 0.5}, reverse=True)
    for lines in pages:
        for size, text in lines:
            if size in heading_sizes and len(text) <= 120:
                b.heading(heading_sizes.index(size) + 1, text)
            else:
                b.add(text + "\n")
        b.add("\n")
    document = b.build(meta_title or _title_from_name(path))
    if not document.text.strip():
        raise UnreadableDocument("the PDF has no extractable text (a scan?)")
    return document


def _pdf_lines(page: object) -> list[tuple[float, str]]:
    """(font size, text) per line of a page, in reading order."""
    runs: list[tuple[float, str]] = []

    def visit(text: str, cm: list[float], tm: list[float], font: object, size: float) -> None:
        scale = abs(tm[3] * cm[3]) or 1.0
        runs.append((round(size * scale, 1), text))

    page.extract_text(visitor_text=visit)  # type: ignore[attr-defined]
    lines: list[tuple[float, str]] = []
    current: list[str] = []
    size = 0.0
    for run_size, text in runs:
        for piece in re.split(r"(\n)", text):
            if piece == "\n":
                if "".join(current).strip():
                    lines.append((size, " ".join("".join(current).split())))
                current = []
            elif piece:
                size = run_size if not "".join(current).strip() else max(size, run_size)
                current.append(piece)
    if "".join(current).strip():
        lines.append((size, " ".join("".join(current).split())))
    return lines


def _title_from_name(path: Path) -> str:
    return path.stem.replace("-", " ").replace("_", " ").strip().capitalize()
