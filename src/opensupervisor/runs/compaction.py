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
from collections.abc import Sequence
from typing import Any

import orjson

from opensupervisor.core.contracts import Model, ModelRequest, Usage
from opensupervisor.errors import InvalidRequest
from opensupervisor.vault import Vault
from opensupervisor.wire.ids import new_id
from opensupervisor.wire.items import Item, item_text
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

    def seal(self, principal_id: str, summary: str) -> Item:
        payload = orjson.dumps({"kind": KIND, "sub": principal_id, "summary": summary, "iat": int(time.time())})
        sealed = self.vault.seal(payload.decode())
        return {"type": "compaction", "id": new_id("compaction"), "encrypted_content": sealed}

    def expanded(self, item: Item, principal_id: str, param: str) -> Item:
        """The developer message a compaction item stands for, or a 400 naming its ``encrypted_content``."""
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
                                 param=f"{param}.encrypted_content", code="invalid_encrypted_content")
        text = EXPANDED_PREFIX + str(payload.get("summary", ""))
        return {"type": "message", "role": "developer", "id": item.get("id") or new_id("message"),
                "content": [{"type": "input_text", "text": text}]}

    async def summarize(self, model: Model, instructions: str | None, items: Sequence[Item]) -> tuple[str, Usage]:
        """A summary of ``items`` written by ``model``, read as one transcript (every provider takes
        that, whatever it makes of tool calls)."""
        transcript = "\n\n".join(_line(item) for item in items if _line(item))
        if instructions:
            transcript = f"[instructions the assistant followed]\n{instructions}\n\n{transcript}"
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
