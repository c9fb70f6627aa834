"""Fitting histories into a context window."""

from __future__ import annotations

from typing import Any

import pytest

from opensupervisor.core.truncation import ContextOverflow, estimate_tokens, fit


def msg(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def test_items_that_fit_are_untouched() -> None:
    items = [msg("user", "hi")]
    assert fit(None, items, 1000, auto=False) is items
    assert fit(None, items, None, auto=False) is items


def test_disabled_overflow_raises_with_the_sizes() -> None:
    with pytest.raises(ContextOverflow) as info:
        fit("x" * 400, [msg("user", "hi")], 50, auto=False)
    assert info.value.window == 50 and info.value.needed > 50


def test_auto_keeps_system_messages_and_drops_orphaned_outputs() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "y" * 50}
    items = [msg("system", "rules"), msg("user", "a" * 400), call, output, msg("user", "last")]
    kept = fit(None, items, estimate_tokens(None, [items[0], items[-1]]) + 5, auto=True)
    assert kept == [items[0], items[-1]]


def test_auto_fails_when_even_the_last_item_does_not_fit() -> None:
    with pytest.raises(ContextOverflow):
        fit(None, [msg("user", "a"), msg("user", "b" * 1000)], 20, auto=True)


def test_max_output_tokens_is_reserved() -> None:
    items = [msg("user", "hello")]
    size = estimate_tokens(None, items)
    assert fit(None, items, size, auto=False) == items
    with pytest.raises(ContextOverflow):
        fit(None, items, size, auto=False, reserve=1)
