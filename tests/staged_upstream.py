"""A Chat Completions upstream that plays a fixed multi-turn run, for crash tests.

The turn is read off the request (how many tool results it carries): 0 → call ``record`` with
label ``a``; 1 → call it with ``b`` and ``c`` at once; 3 → answer. The first answer request hangs
(the test kills the server meanwhile); later ones answer at once. ``turns`` counts requests per turn,
which is how a test proves that a finished model call was never requested again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from opensupervisor.testing.asgi import Send, send_sse
from opensupervisor.testing.chat_upstream import ChatUpstream, _chunk, _usage_chunk

ANSWER = "All three are recorded."


class StagedUpstream(ChatUpstream):
    def __init__(self, hang_s: float = 60.0) -> None:
        super().__init__()
        self.turns: Counter[int] = Counter()
        self.hang_s = hang_s

    async def answer(self, req: dict[str, Any], headers: dict[bytes, bytes], send: Send) -> None:
        turn = sum(1 for m in req["messages"] if m.get("role") == "tool")
        self.turns[turn] += 1
        if turn == 0:
            chunks = [_call(0, "call_a", "a")]
        elif turn == 1:
            chunks = [_call(0, "call_b", "b"), _call(1, "call_c", "c")]
        else:
            if self.turns[turn] == 1:
                await asyncio.sleep(self.hang_s)
            chunks = [_chunk({"role": "assistant", "content": ANSWER})]
        finish = "tool_calls" if turn < 2 else "stop"
        await send_sse(send, b"".join([*chunks, _chunk({}, finish), _usage_chunk(), b"data: [DONE]\n\n"]))


def _call(index: int, call_id: str, label: str) -> bytes:
    return _chunk({"role": "assistant", "tool_calls": [{"index": index, "id": call_id, "type": "function",
                                                        "function": {"name": "record",
                                                                     "arguments": f'{{"label": "{label}"}}'}}]})
