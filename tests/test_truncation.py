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


def image(size: int, detail: str = "auto") -> dict[str, Any]:
    return {"type": "input_image", "detail": detail, "image_url": "data:image/png;base64," + "A" * size}


@pytest.mark.parametrize("size", [20_000, 2_000_000])
def test_an_image_counts_a_fixed_cost_whatever_its_size(size: int) -> None:
    text = estimate_tokens(None, [msg("user", "What is in this picture?")])
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is in this picture?"},
                                                           image(size)]}
    assert estimate_tokens(None, [item]) - text == pytest.approx(765, abs=30)
    low = {**item, "content": [item["content"][0], image(size, "low")]}
    assert estimate_tokens(None, [low]) - text == pytest.approx(85, abs=30)
    assert fit(None, [item], 4096, auto=False) == [item]  # a 4,096-token model takes it


def test_files_and_images_in_tool_outputs_count_a_fixed_cost_too() -> None:
    data = {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64," + "B" * 500_000}
    message = {"type": "message", "role": "user", "content": [data]}
    output = {"type": "function_call_output", "call_id": "c1", "output": [image(300_000)]}
    assert 990 <= estimate_tokens(None, [message]) <= 1040
    assert 750 <= estimate_tokens(None, [output]) <= 800
    # Text is still counted by its length.
    assert estimate_tokens(None, [msg("user", "x" * 40_000)]) > 10_000
