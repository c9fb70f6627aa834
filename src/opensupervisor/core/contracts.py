"""The two small contracts the loop runs on: a ``Model`` and a ``Toolset``.

Providers (``opensupervisor.models``) and hosted tools (``opensupervisor.tools``) implement them;
cross-cutting concerns (timeouts, fallbacks, tracing, durability, approval) wrap them, as subclasses
of ``WrapperModel`` and ``WrapperToolset`` (``runs.assemble`` applies them in one order).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from opensupervisor.wire.items import Item

if TYPE_CHECKING:
    from opensupervisor.core.context import RunContext

FinishReason = Literal["stop", "tool_calls", "length", "content_filter"]


@dataclass(frozen=True, slots=True)
class ToolDef:
    """A tool the model may call. ``hosted`` tools run here; client tools end the turn.

    MCP tools name their server (``server_label``); ``approval`` makes a call wait for the user's
    ``mcp_approval_response``; ``items`` says how calls show in the output: ``function`` as a
    ``function_call`` + ``function_call_output`` pair (the Supervisor API), ``mcp`` as one
    ``mcp_call`` (OpenAI's ``mcp`` tool).
    """

    name: str
    description: str | None
    parameters: dict[str, Any]
    hosted: bool = True
    kind: str = "function"
    server_label: str | None = None
    approval: bool = False
    items: Literal["function", "mcp"] = "function"
    annotations: dict[str, Any] | None = None
    # This tool's own output cap in characters (default: the workspace's ``max_tool_output_chars``).
    max_output_chars: int | None = None


@dataclass(slots=True)
class ModelRequest:
    """One model call: the whole history as Responses items plus what the model may do."""

    instructions: str | None
    items: list[Item]
    tools: list[ToolDef] = field(default_factory=list)
    # "auto" | "required" | "none", or the name of the one tool the model must call.
    tool_choice: str = "auto"
    text_format: dict[str, Any] | None = None
    max_output_tokens: int | None = None
    # Characters of text and arguments the response may still stream (adapters that buffer stop there).
    max_output_chars: int | None = None
    parallel_tool_calls: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    reasoning: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class Served:
    """Which catalog model produced the events that follow (sent by wrappers that choose, like fallbacks)."""

    model: str


ModelEvent = TextDelta | ToolCallStart | ToolCallDelta | Usage | Finish | Served


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ModelResponse:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: FinishReason = "stop"


class Model(ABC):
    """A language model. Implement ``request_stream``; ``request`` folds it unless overridden."""

    name: str = "model"
    # The workspace's provider of this model (embedded, openai-chat, anthropic …), for traces.
    provider: str = ""
    # Tokens the model can read at once, when known; ``truncation`` works against it.
    context_window: int | None = None
    # Settings (temperature, top_p, …, max_output_tokens) used when a request does not set them.
    defaults: dict[str, Any] = {}
    # The most ``max_output_tokens`` a request may ask of this model, and its cap on streamed
    # characters (the workspace's ``[limits] max_output_chars`` when None).
    max_output_tokens: int | None = None
    max_output_chars: int | None = None

    @abstractmethod
    def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        """Yield normalized events: text deltas, tool calls (start then argument deltas), usage, finish."""

    async def request(self, request: ModelRequest) -> ModelResponse:
        out = ModelResponse()
        text: list[str] = []
        args: list[str] = []
        current: ToolCallStart | None = None

        def close_call() -> None:
            if current is not None:
                out.tool_calls.append(ToolCall(current.call_id, current.name, "".join(args)))

        async for event in self.request_stream(request):
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, ToolCallStart):
                close_call()
                current, args = event, []
            elif isinstance(event, ToolCallDelta):
                args.append(event.arguments)
            elif isinstance(event, Usage):
                out.usage = event
            elif isinstance(event, Finish):
                out.finish_reason = event.reason
        close_call()
        out.text = "".join(text)
        return out

    async def aclose(self) -> None:
        """Release clients and loaded weights."""


class Toolset(ABC):
    """A group of tools of one hosted kind (a Genie space, a connection, client functions …)."""

    # Whether ``list_tools`` may answer differently over time for the same request (a remote tool
    # server's list can change): a durable run then records the listing, so a resumed run sees the
    # tools it saw before.
    listing_may_change: bool = False
    # Set by toolsets whose listing shows in the output as an ``mcp_list_tools`` item (OpenAI's
    # ``mcp`` tool): the label of the server.
    listing_label: str | None = None

    @abstractmethod
    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        """The tools this toolset offers for this run."""

    @abstractmethod
    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        """Run one tool; the returned text becomes the ``function_call_output``. Raise to report failure."""


class WrapperModel(Model):
    """A model around another (tracing, durability, fallbacks): it is the inner model as far as
    anyone can tell, and passes calls through unless it overrides them."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self.name = inner.name
        self.provider = inner.provider
        self.context_window = inner.context_window
        self.defaults = inner.defaults
        self.max_output_tokens = inner.max_output_tokens
        self.max_output_chars = inner.max_output_chars

    def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        return self.inner.request_stream(request)

    async def aclose(self) -> None:
        """The inner model belongs to whoever made it (the catalog closes its models)."""


class WrapperToolset(Toolset):
    """A toolset around another (timeouts, approval, tracing, durability): same tools, same listing."""

    def __init__(self, inner: Toolset) -> None:
        self.inner = inner
        self.listing_may_change = inner.listing_may_change
        self.listing_label = inner.listing_label

    async def list_tools(self, ctx: RunContext) -> list[ToolDef]:
        return await self.inner.list_tools(ctx)

    async def call_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> str:
        return await self.inner.call_tool(ctx, name, arguments)


@dataclass(frozen=True, slots=True)
class Compacted:
    """The history compacted before a model call: the output item that stands for what was
    compacted, what the model sees from now on, and what writing the summary cost."""

    item: Item
    history: list[Item]
    usage: Usage


class Compaction(ABC):
    """Compacts a run's history once it grows past a bound (``context_management``)."""

    @abstractmethod
    async def __call__(self, instructions: str | None, history: list[Item]) -> Compacted | None:
        """The compacted history, or None when it is within the bound (or nothing can be compacted)."""
