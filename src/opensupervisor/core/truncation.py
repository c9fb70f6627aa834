"""Fitting the history into a model's context window (``truncation: auto | disabled``).

Token counts are estimated (four characters of the item's JSON per token): the server has no
tokenizer for every provider, and the estimate errs on the generous side for English text. An
image or file part counts a fixed number of tokens, whatever the length of its data: a model reads
a 20 KB image as about as many tokens as a 2 MB one, not as 5,000 tokens of base64.
"""

from __future__ import annotations

import orjson

from opensupervisor.wire.items import Item

CHARS_PER_TOKEN = 4
# What one image or file part counts for: OpenAI's figure for a detailed image (four 512-pixel tiles
# and the base), 85 for a low-detail one; a file as about four pages of text.
IMAGE_TOKENS, LOW_DETAIL_IMAGE_TOKENS, FILE_TOKENS = 765, 85, 1000


class ContextOverflow(Exception):
    """The history does not fit and may not (or cannot) be shortened."""

    def __init__(self, needed: int, window: int) -> None:
        super().__init__(f"The input needs about {needed} tokens, more than the model's context window of "
                         f"{window} tokens.")
        self.needed = needed
        self.window = window


def estimate_tokens(instructions: str | None, items: list[Item]) -> int:
    chars = len(instructions or "") + sum(_chars(item) for item in items)
    return chars // CHARS_PER_TOKEN + 1


def _chars(item: Item) -> int:
    chars = len(orjson.dumps(item))
    for parts in (item.get("content"), item.get("output")):  # a message's parts, a tool output's
        if isinstance(parts, list):
            for part in parts:
                tokens = _media_tokens(part)
                if tokens is not None:
                    chars += tokens * CHARS_PER_TOKEN - len(orjson.dumps(part))
    return chars


def _media_tokens(part: object) -> int | None:
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind == "input_image":
        return LOW_DETAIL_IMAGE_TOKENS if part.get("detail") == "low" else IMAGE_TOKENS
    return FILE_TOKENS if kind == "input_file" else None


def fit(instructions: str | None, items: list[Item], window: int | None, *, auto: bool,
        reserve: int = 0) -> list[Item]:
    """``items`` if they fit in ``window - reserve`` tokens; else, with ``auto``, the newest part that fits.

    Dropping starts with the oldest items, keeps system and developer messages, and never leaves a
    tool output without its call. Raises ``ContextOverflow`` when it cannot fit.
    """
    if window is None:
        return items
    budget = window - reserve
    needed = estimate_tokens(instructions, items)
    if needed <= budget:
        return items
    if not auto:
        raise ContextOverflow(needed, window)
    kept = list(items)
    while kept and estimate_tokens(instructions, kept) > budget:
        drop = next((i for i, it in enumerate(kept) if not _pinned(it)), None)
        if drop is None or drop == len(kept) - 1:
            raise ContextOverflow(estimate_tokens(instructions, kept), window)
        del kept[drop]
        calls = {it.get("call_id") for it in kept if it.get("type") == "function_call"}
        kept = [it for it in kept if it.get("type") != "function_call_output" or it.get("call_id") in calls]
    return kept


def _pinned(item: Item) -> bool:
    return item.get("type") == "message" and item.get("role") in ("system", "developer")
