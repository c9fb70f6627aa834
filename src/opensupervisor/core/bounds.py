"""Bounded tool outputs: what a tool returns is cut at a cap, with a note the model can read.

A tool's output becomes part of every later model request of the run, so one huge result (a
20-million-character cell, a chatty MCP server) would make each of them huge. Cuts are never
silent: the model reads how much was left out and what to ask for instead.
"""

from __future__ import annotations

DEFAULT_OUTPUT_CHARS = 64 * 1024
DEFAULT_CELL_CHARS = 2048


def cap_output(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters followed by a note saying how much was cut."""
    if len(text) <= limit:
        return text
    return (f"{text[:limit]}\n\n[Output truncated: showing the first {limit:,} of {len(text):,} characters. "
            "Ask for less: fewer rows or columns, a filter, or an aggregate.]")


def cap_cell(value: str, limit: int) -> tuple[str, bool]:
    """One value of a result, cut at ``limit`` characters (marked with its full length), and
    whether it was cut."""
    if len(value) <= limit:
        return value, False
    return cut_value(value[:limit], len(value), limit), True


def cut_value(prefix: str, total: int, limit: int) -> str:
    """A value's first ``limit`` characters (``prefix``, cut by whoever held the whole), marked with its
    full length."""
    return f"{prefix}… [{total:,} characters, cut at {limit:,}]"
