"""Server-sent events as the Responses protocol wants them.

Written by hand on purpose: each event is already JSON (encoded once by ``core.events``), and the
protocol fixes the framing (``\\n`` line endings, ``event:`` equal to ``type``, no ``id:``, a final
``data: [DONE]``); a general SSE library would re-encode and add keep-alive tasks per response.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from opensupervisor.core.events import Event

log = logging.getLogger(__name__)
DONE = b"data: [DONE]\n\n"


def encode(event: Event) -> bytes:
    return b"event: " + event.type.encode() + b"\ndata: " + event.json + b"\n\n"


async def sse_stream(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    last = -1
    try:
        async for event in events:
            last = event.sequence_number
            yield encode(event)
    except Exception:  # the stream's outer boundary: the client gets an error event, never a cut stream
        log.exception("stream failed after event %d", last)
        yield encode(Event({"type": "error", "sequence_number": last + 1, "code": "server_error",
                            "message": "The server had an error while streaming this response.", "param": None}))
    yield DONE
