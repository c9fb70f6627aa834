"""Compaction: a history summarized into one sealed ``compaction`` item, and such items opened again.

``POST /v1/responses/compact`` keeps the history's user messages as they are and writes the rest
into a summary, by the workspace's summary model (``[compaction] model``, else the request's). The
summary travels in the item's ``encrypted_content``, sealed with the server's secret key and bound to
the principal it was made for: the client can neither read it nor change it, and nobody else can
use it. A ``compaction`` item in ``input`` stands for the summary: the model reads it as a developer
message (``expanded``). One that was changed, sealed by another server or made for another
principal is refused, naming the item.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from opensupervisor.core.contracts import Compacted, Compaction, Model, ModelRequest, Usage
from opensupervisor.core.truncation import CHARS_PER_TOKEN, estimate_tokens
from opensupervisor.errors import InvalidRequest
from opensupervisor.runs.checkpoints import Codec, Steps
from opensupervisor.vault import Vault
from opensupervisor.wire.ids import new_id
from opensupervisor.wire.items import Item, item_text
from opensupervisor.wire.request import CreateResponseRequest
from opensupervisor.wire.response import usage as usage_object

SUMMARY_INSTRUCTIONS = (
    "You compact a conversation between a user and an assistant that uses tools, so that the assistant can go on "
    "from your summary alone. Summarize everything so far: the user's goals and constraints, the facts learned from "
    "tool results (names, numbers, ids, dates), what was answered or decided, and what is still open. Keep it short "
    "and factual; write only the summary."
)
# What the model reads in place of a compaction item.
EXPANDED_PREFIX = "Summary of the conversation before this point (compacted):\n"
KIND = "opensupervisor.compaction.v1"


class Compactor:
    def __init__(self, vault: Vault, model: str | None = None) -> None:
        self.vault = vault
        # The catalog model that writes summaries (None: the request's own).
        self.model = model

    def seal(self, principal_id: str, summary: str, *, keep: list[str] | None = None) -> Item:
        """A compaction item for ``summary``. ``keep``: it was made inside a run, from everything before
        it but the items with these ids (``AutoCompaction``); a history that holds it drops the rest."""
        payload = {"kind": KIND, "sub": principal_id, "summary": summary, "iat": int(time.time())}
        if keep is not None:
            payload["keep"] = keep
        sealed = self.vault.seal(orjson.dumps(payload).decode())
        return {"type": "compaction", "id": new_id("compaction"), "encrypted_content": sealed}

    def opened(self, item: Item, principal_id: str, param: str) -> dict[str, Any]:
        """What a compaction item holds, or a 400 naming ``param`` (its ``encrypted_content`` when
        the request holds the item, else the field that brought it: ``conversation``, say)."""
        opened = self.vault.open_or_none(str(item.get("encrypted_content", "")))
        payload: Any = None
        if opened is not None:
            try:
                payload = orjson.loads(opened)
            except orjson.JSONDecodeError:
                payload = None
        if not isinstance(payload, dict) or payload.get("kind") != KIND or payload.get("sub") != principal_id:
            raise InvalidRequest("The compaction item's encrypted_content is not one this server made for you: it "
                                 "was changed, made by another server, or made for another user.",
                                 param=param, code="invalid_encrypted_content")
        return payload

    def expanded(self, item: Item, payload: dict[str, Any]) -> Item:
        """The developer message a compaction item stands for."""
        text = EXPANDED_PREFIX + str(payload.get("summary", ""))
        return {"type": "message", "role": "developer", "id": item.get("id") or new_id("message"),
                "content": [{"type": "input_text", "text": text}]}

    def applied(self, history: list[Item], principal_id: str, param: Callable[[int], str]) -> list[Item]:
        """What the model reads of a history: each compaction item as the summary it stands for; before
        the last one made inside a run, only the items it kept (after the summary, in their order).
        ``param`` names what to blame for the item at a position."""
        out: list[Item] = []
        for position, item in enumerate(history):
            if item.get("type") != "compaction":
                out.append(item)
                continue
            payload = self.opened(item, principal_id, param(position))
            keep = payload.get("keep")
            if isinstance(keep, list):
                kept = set(keep)
                out = [self.expanded(item, payload), *(i for i in out if i.get("id") in kept)]
            else:
                out.append(self.expanded(item, payload))
        return out

    async def summarize(self, model: Model, instructions: str | None, items: Sequence[Item]) -> tuple[str, Usage]:
        """A summary of ``items`` written by ``model``, read as one transcript (every provider takes
        that, whatever it makes of tool calls)."""
        transcript = "\n\n".join(line for item in items if (line := _line(item)))
        if instructions:
            transcript = f"[instructions the assistant followed]\n{instructions}\n\n{transcript}"
        if model.context_window is not None:  # what fits, newest last: the summary model reads that much
            room = model.context_window * CHARS_PER_TOKEN * 3 // 4
            if len(transcript) > room:
                transcript = "[the start of the conversation is cut here]\n" + transcript[-room:]
        ask = f"{transcript}\n\nSummarize the conversation above."
        answer = await model.request(ModelRequest(instructions=SUMMARY_INSTRUCTIONS, tool_choice="none", items=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ask}]}]))
        return answer.text.strip(), answer.usage or Usage(0, 0)


def compacted(history: list[Item], sealed: Item) -> list[Item]:
    """What ``/responses/compact`` answers with: the user messages as they were, then the summary."""
    kept = [{"id": item.get("id") or new_id("message"), **item, "status": item.get("status") or "completed"}
            for item in history if item.get("type") == "message" and item.get("role") == "user"]
    return [*kept, sealed]


def compaction_object(output: list[Item], used: Usage) -> dict[str, Any]:
    return {"id": new_id("compaction"), "object": "response.compaction", "created_at": int(time.time()),
            "output": output, "usage": usage_object(used.input_tokens, used.output_tokens,
                                                    cached=used.cached_tokens, reasoning=used.reasoning_tokens)}


def _is_summary(item: Item) -> bool:
    return item.get("role") == "developer" and item_text(item).startswith(EXPANDED_PREFIX)


def _line(item: Item) -> str:
    kind = item.get("type")
    if kind == "message":
        return f"[{item.get('role')}] {item_text(item)}"
    if kind in ("function_call", "mcp_call"):
        return f"[tool call] {item.get('name')}({item.get('arguments', '')})" + (
            f" -> {item['output']}" if item.get("output") else "")
    if kind == "function_call_output":
        output = item.get("output")
        return f"[tool result] {output if isinstance(output, str) else orjson.dumps(output).decode()}"
    if kind == "reasoning":
        return "[reasoning] " + " ".join(str(s.get("text", "")) for s in item.get("summary", []))
    return ""


class AutoCompaction(Compaction):
    """``context_management: [{"type": "compaction", "compact_threshold": N}]``: before a model call
    whose history is estimated past N tokens, everything before the last user message (moved back
    so that no tool call is parted from its output) becomes one summary, written by ``model``. In a
    durable run the compaction is one step: a resumed run gets the same summary and item back."""

    def __init__(self, compactor: Compactor, model: Model, principal_id: str, threshold: int,
                 steps: Steps | None = None) -> None:
        self.compactor = compactor
        self.model = model
        self.principal_id = principal_id
        self.threshold = threshold
        self.steps = steps

    async def __call__(self, instructions: str | None, history: list[Item]) -> Compacted | None:
        if estimate_tokens(instructions, history) <= self.threshold:
            return None
        start = kept_from(history)
        if all(_is_summary(item) for item in history[:start]):
            return None  # nothing before the turn but a summary: compacting again gains nothing

        async def work() -> Compacted:
            summary, used = await self.compactor.summarize(self.model, instructions, history[:start])
            keep = [str(i["id"]) for i in history[start:] if i.get("id")]
            item = self.compactor.seal(self.principal_id, summary, keep=keep)
            del item["id"]  # the run's emitter gives it the id of its place, the same when it is replayed
            return Compacted(item, [], used)

        done = await self.steps("compaction", work, COMPACTED) if self.steps is not None else await work()
        payload = self.compactor.opened(done.item, self.principal_id, "compaction")
        return Compacted(done.item, [self.compactor.expanded(done.item, payload), *history[start:]], done.usage)


def kept_from(history: list[Item]) -> int:
    """Where the part of a history kept as it is starts: at its last user message, or earlier so
    that every call at or after that point has its output there too, and every output its call."""
    users = [i for i, item in enumerate(history) if item.get("type") == "message" and item.get("role") == "user"]
    start = users[-1] if users else len(history)
    calls = {item["call_id"]: i for i, item in enumerate(history) if item.get("type") == "function_call"}
    moved = True
    while moved:
        moved = False
        for item in history[start:]:
            called = calls.get(item.get("call_id", "")) if item.get("type") == "function_call_output" else None
            if called is not None and called < start:
                start, moved = called, True
    return start


def _encode(done: Compacted) -> str:
    used = done.usage
    return orjson.dumps({"item": done.item, "usage": [used.input_tokens, used.output_tokens, used.cached_tokens,
                                                      used.reasoning_tokens]}).decode()


def _decode(text: str) -> Compacted:
    value = orjson.loads(text)
    return Compacted(value["item"], [], Usage(*value["usage"]))


COMPACTED: Codec[Compacted] = Codec(_encode, _decode)


def threshold(body: CreateResponseRequest, model: Model) -> int | None:
    """The request's compaction threshold in tokens (default: 80% of the model's context window)."""
    for policy in body.context_management or []:
        if policy.compact_threshold is not None:
            return policy.compact_threshold
        if model.context_window is None:
            raise InvalidRequest(f"'context_management' needs 'compact_threshold': the context window of model "
                                 f"'{model.name}' is unknown.", param="context_management[0].compact_threshold",
                                 code="missing_required_parameter")
        return model.context_window * 4 // 5
    return None
