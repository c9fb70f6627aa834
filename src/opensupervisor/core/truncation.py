"""Fitting the history into a model's context window (``truncation: auto | disabled``).

Token counts are estimated (four characters of the item's JSON per token): the server has no
tokenizer for every provider, and the estimate errs on the generous side for English text.
"""

from __future__ import annotations

import orjson

from opensupervisor.wire.items import Item

CHARS_PER_TOKEN = 4


class ContextOverflow(Exception):
    """The history does not fit and may not (or cannot) be shortened."""

    def __init__(self, needed: int, window: int) -> None:
        super().__init__(f"The input needs about {needed} tokens, more than the model's context window of "
                         f"{window} tokens.")
        self.needed = needed
        self.window = window


def estimate_tokens(instructions: str | None, items: list[Item]) -> int:
    chars = len(instructions or "") + sum(len(orjson.dumps(item)) for item in items)
    return chars // CHARS_PER_TOKEN + 1


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
