"""Server-sent events as the Responses protocol wants them.

Written by hand on purpose: each event is already JSON (encoded once by ``core.events``), and the
protocol fixes the framing (``\\n`` line endings, ``event:`` equal to ``type``, no ``id:``, a final
``data: [DONE]``); a general SSE library would re-encode and add keep-alive tasks per response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from opensupervisor.core.events import Event

DONE = b"data: [DONE]\n\n"


def encode(event: Event) -> bytes:
    return b"event: " + event.type.encode() + b"\ndata: " + event.json + b"\n\n"


async def sse_stream(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for event in events:
        yield encode(event)
    yield DONE
