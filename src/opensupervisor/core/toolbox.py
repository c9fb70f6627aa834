"""The tools of one run: which the model is offered, where each call goes, and checking each call's
arguments before it goes there.

The toolsets arrive wrapped (``runs.assemble``): timeouts, tracing and durable steps are theirs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
from jsonschema import Draft202012Validator

from opensupervisor.core import arguments as bounds
from opensupervisor.core.context import RunContext
from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.errors import InvalidRequest, ToolError, UpstreamUnavailable
from opensupervisor.wire.request import AllowedToolsChoice, FunctionToolChoice


@dataclass(frozen=True, slots=True)
class BoundToolset:
    """A toolset made from one entry of the request's ``tools`` (``index`` and ``type`` as sent)."""

    index: int
    type: str
    toolset: Toolset


@dataclass(slots=True)
class _Entry:
    tool: ToolDef
    toolset: Toolset
    type: str
    validator: Draft202012Validator


class ToolBox:
    """Every tool of a run by name, with the request's ``tool_choice`` applied."""

    def __init__(self, entries: dict[str, _Entry], allowed: set[str] | None,
                 listings: list[tuple[str, list[ToolDef]]] | None = None,
                 max_arguments_chars: int = bounds.DEFAULT_ARGUMENTS_CHARS) -> None:
        self._entries = entries
        self._allowed = allowed
        self.max_arguments_chars = max_arguments_chars
        # (server label, tools) of each toolset whose listing shows as an ``mcp_list_tools`` item.
        self.listings = listings or []

    @classmethod
    async def build(cls, ctx: RunContext, bound: list[BoundToolset], *,
                    max_arguments_chars: int = bounds.DEFAULT_ARGUMENTS_CHARS) -> ToolBox:
        """List every toolset's tools; a toolset that cannot list them fails the request."""
        entries: dict[str, _Entry] = {}
        listings: list[tuple[str, list[ToolDef]]] = []
        for b in bound:
            try:
                tools = await b.toolset.list_tools(ctx)
            except ToolError as exc:
                raise UpstreamUnavailable(str(exc), param=f"tools[{b.index}]") from exc
            if b.toolset.listing_label is not None:
                listings.append((b.toolset.listing_label, tools))
            for tool in tools:
                if tool.name in entries:
                    raise InvalidRequest(f"Two tools are named '{tool.name}'; tool names must be unique.",
                                         param=f"tools[{b.index}]", code="invalid_value")
                entries[tool.name] = _Entry(tool, b.toolset, b.type, Draft202012Validator(tool.parameters))
        return cls(entries, _allowed_names(ctx, entries), listings, max_arguments_chars)

    def offered(self, *, hosted: bool = True) -> list[ToolDef]:
        """The tools the model may call now (``allowed_tools`` is a hard filter, not a hint)."""
        return [
            e.tool for name, e in self._entries.items()
            if (self._allowed is None or name in self._allowed) and (hosted or not e.tool.hosted)
        ]

    def lookup(self, name: str) -> ToolDef | None:
        entry = self._entries.get(name)
        if entry is None or (self._allowed is not None and name not in self._allowed):
            return None
        return entry.tool

    async def run(self, ctx: RunContext, calls: list[tuple[str, str]], *, parallel: bool = True) -> list[str]:
        """Run hosted calls ``(name, arguments JSON)`` and return their outputs in call order.

        Independent calls run concurrently; a call whose arguments do not fit its tool gets an error
        text the model can read, and does not reach the tool.
        """
        if parallel:
            return list(await asyncio.gather(*(self._run_one(ctx, n, a) for n, a in calls)))
        return [await self._run_one(ctx, n, a) for n, a in calls]

    async def _run_one(self, ctx: RunContext, name: str, arguments: str) -> str:
        entry = self._entries[name]
        if len(arguments) > self.max_arguments_chars:  # before parsing: the size is the work
            return bounds.too_long(name, len(arguments), self.max_arguments_chars)
        try:
            args = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError as exc:
            return f"Error: the arguments for '{name}' are not valid JSON ({exc})."
        if not isinstance(args, dict):
            return f"Error: the arguments for '{name}' must be a JSON object."
        problem = next(iter(entry.validator.iter_errors(args)), None)
        if problem is not None:
            return bounds.invalid(name, problem)
        return await entry.toolset.call_tool(ctx, name, args)


def _allowed_names(ctx: RunContext, entries: dict[str, _Entry]) -> set[str] | None:
    choice = ctx.request.body.tool_choice
    if isinstance(choice, FunctionToolChoice) and choice.name not in entries:
        raise InvalidRequest(f"Tool choice '{choice.name}' is not one of the tools of this request.",
                             param="tool_choice.name", code="invalid_value")
    if isinstance(choice, AllowedToolsChoice):
        names: set[str] = set()
        for i, ref in enumerate(choice.tools):
            if ref.type == "function":
                if ref.name not in entries:
                    raise InvalidRequest(f"Allowed tool '{ref.name}' is not one of the tools of this request.",
                                         param=f"tool_choice.tools[{i}].name", code="invalid_value")
                names.add(str(ref.name))
            else:
                names.update(n for n, e in entries.items() if e.type == ref.type and (ref.name in (None, n)))
        return names
    return None
