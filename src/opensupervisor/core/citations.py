"""Numbered sources in tool outputs, and ``url_citation`` annotations on the answer that cites them.

A tool that answers from documents ends its output with a block a model reads and this module
parses::

    Sources:
    [1] Leave policy > Vacation <https://intranet.example.com/handbook/benefits/leave-policy.md#vacation>

When the final message cites ``[1]``, that span of its text gets a ``url_citation`` annotation
with the source's URL and title. Sources are read off the run's history, so a resumed run
annotates exactly as the first one would.
"""

from __future__ import annotations

import re
from typing import Any

from opensupervisor.wire.items import Item

HEADER = "Sources:"
_SOURCE = re.compile(r"^\[(\d+)\] (.+) <(\S+)>$")
_MARKER = re.compile(r"\[(\d+)\]")


def format_sources(sources: list[tuple[int, str, str]]) -> str:
    """The block for ``(number, title, url)`` sources."""
    return "\n".join([HEADER, *(f"[{n}] {title} <{url}>" for n, title, url in sources)])


def sources_in(history: list[Item]) -> dict[int, tuple[str, str]]:
    """Number → (title, url) of every source block in the history's tool outputs (later ones win)."""
    found: dict[int, tuple[str, str]] = {}
    for item in history:
        output = item.get("output") if item.get("type") == "function_call_output" else None
        if not isinstance(output, str) or HEADER not in output:
            continue
        block = output[output.rindex(HEADER) + len(HEADER):]
        for line in block.splitlines():
            match = _SOURCE.match(line.strip())
            if match:
                found[int(match.group(1))] = (match.group(2), match.group(3))
    return found


def citations_for(text: str, sources: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    """A ``url_citation`` for each ``[n]`` in ``text`` that names a known source."""
    out: list[dict[str, Any]] = []
    for match in _MARKER.finditer(text):
        source = sources.get(int(match.group(1)))
        if source is not None:
            out.append({"type": "url_citation", "url": source[1], "title": source[0],
                        "start_index": match.start(), "end_index": match.end()})
    return out
