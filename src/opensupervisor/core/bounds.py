"""Bounded tool outputs: what a tool returns is cut at a cap, with a note the model can read.

A tool's output becomes part of every later model request of the run, so one huge result (a
20-million-character cell, a chatty MCP server) would make each of them huge. Cuts are never
silent: the model reads how much was left out and what to ask for instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from opensupervisor.core.contracts import ToolDef, Toolset, WrapperToolset
from opensupervisor.errors import ToolError

if TYPE_CHECKING:
    from opensupervisor.core.context import RunContext

log = logging.getLogger(__name__)

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


class Bounded(WrapperToolset):
    """A toolset whose calls end in time and whose failures and outputs are text the model can read.

    A call that raises, or runs past ``timeout_s``, returns an ``Error: …`` text instead: a broken
    tool must not fail the run. Outputs are cut at the tool's own cap, else ``max_output_chars``.
    """

    def __init__(self, inner: Toolset, *, timeout_s: float, max_output_chars: int = DEFAULT_OUTPUT_CHARS) -> None:
        super().__init__(inner)
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars
        self._caps: dict[str, int] = {}

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        tools = await self.inner.list_tools(ctx)
        self._caps = {t.name: t.max_output_chars for t in tools if t.max_output_chars is not None}
        return tools

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return cap_output(await self._call(ctx, name, arguments), self._caps.get(name, self.max_output_chars))

    async def _call(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.inner.call_tool(ctx, name, arguments)
        except ToolError as exc:
            return f"Error: {exc}"
        except TimeoutError:
            return f"Error: '{name}' did not finish within {self.timeout_s:g} seconds."
        except Exception as exc:  # a broken tool must not fail the run: the model reads what happened
            log.exception("tool %s failed", name)
            return f"Error: '{name}' failed: {type(exc).__name__}: {exc}"
