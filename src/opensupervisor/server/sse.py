"""Server-sent events as the Responses protocol wants them.

Written by hand on purpose: each event is already JSON (encoded once by ``core.events``), and the
protocol fixes the framing (``\\n`` line endings, ``event:`` equal to ``type``, no ``id:``, a final
``data: [DONE]``); a general SSE library would re-encode and add keep-alive tasks per response.

``EventStream`` is the ASGI response: it watches for the client leaving while it streams, and then
closes the stream of events at once, which stops the run and closes its model's connection (the
run records how it ended); it does not go on reading what the model already sent. While nothing
is sent for ``keepalive_s`` (a long tool call, a queued background run) it sends a comment line,
which clients skip and proxies take as life.

Frames go out when the run would wait, not one by one: the frames a run makes without waiting in
between (``response.in_progress`` after the model call is sent, an item's closing events) leave in
one body message, one write to the socket, while the first (``response.created``) leaves at once.
A write to a loopback socket cost a streamed response more than all its other framing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from opensupervisor.core.events import Event, error_event

log = logging.getLogger(__name__)
DONE = b"data: [DONE]\n\n"
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]
# An event larger than this is not copied into a frame but sent in slices of this size: the HTTP
# server copies each body it sends once more (chunked encoding) and buffers what the socket does
# not take, so a whole answer in one body would be held three times.
LARGE = 256 * 1024
# Frames between looks at whether the client is gone, when the events come without a pause.
CHECK_EVERY = 32
KEEPALIVE = b": keep-alive\n\n"
KEEPALIVE_S = 15.0
# The scope key of the server's own ``send`` (``server.app.App``), for a stream's body messages.
RAW_SEND = "opensupervisor.raw_send"


def encode(event: Event) -> bytes:
    return b"event: " + event.type.encode() + b"\ndata: " + event.json + b"\n\n"


async def sse_stream(events: AsyncIterator[Event]) -> AsyncGenerator[bytes]:
    """The frames of ``events`` (a large event in slices), then ``[DONE]``."""
    last = -1
    try:
        async for event in events:
            last = event.sequence_number
            data = event.json
            if len(data) < LARGE:
                yield b"event: " + event.type.encode() + b"\ndata: " + data + b"\n\n"
            else:
                yield b"event: " + event.type.encode() + b"\ndata: "
                for start in range(0, len(data), LARGE):
                    yield data[start:start + LARGE]
                del data  # the end of the frame should not keep a whole answer alive
                yield b"\n\n"
    except Exception:  # the stream's outer boundary: the client gets an error event, never a cut stream
        log.exception("stream failed after event %d", last)
        yield encode(error_event(last + 1, "server_error", "The server had an error while streaming this response."))
    yield DONE


@dataclass(slots=True)
class _Sent:
    """When the stream last sent something (``time.monotonic``: anyio's clock costs a lookup of the
    running library at each call, and this is read at every frame), and whether it is inside a frame
    (a large event's slices)."""

    at: float
    mid_frame: bool = False
    ended: bool = False
    # Taken by a comment's send and by the response's last message: no comment comes after that.
    last: anyio.Lock = field(default_factory=anyio.Lock)
    # The task sending the latest comment.
    comment: asyncio.Task[None] | None = None


class EventStream(Response):
    """An SSE response that stops its events as soon as the client disconnects."""

    def __init__(self, events: AsyncGenerator[Event], *, keepalive_s: float = KEEPALIVE_S,
                 unstarted: Callable[[], Awaitable[None]] | None = None) -> None:
        # No body to render: no Response.__init__.
        self.events = events
        # Called when the client left before ``events`` began (the headers were being sent): a
        # generator closed before it starts runs none of its own clean-up.
        self.unstarted = unstarted
        self.status_code = 200
        self.background = None
        self.raw_headers = list(HEADERS)
        self.keepalive_s = keepalive_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A cancel scope and a plain task, not a task group: the group's set-up and tear-down cost
        # every stream more than its watcher does.
        gone, scope_ = anyio.Event(), anyio.CancelScope()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            scope_.cancel()  # interrupts a wait for the next event (a slow model)

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            with scope_:
                await self._stream(send, scope.get(RAW_SEND, send), gone)
        finally:
            watcher.cancel()

    async def _stream(self, start: Send, send: Send, gone: anyio.Event) -> None:
        """``start`` sends the response's start through the middleware; ``send``, the body's messages."""
        try:
            await start({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        except BaseException:
            if self.unstarted is not None:
                with anyio.CancelScope(shield=True):
                    await self.unstarted()
            raise
        sent = _Sent(time.monotonic())
        # A timer, not a task per stream: a comment is rare, a stream's task costs at every response.
        loop = asyncio.get_running_loop()
        timer: list[asyncio.TimerHandle] = []
        timer.append(loop.call_later(self.keepalive_s, self._quiet, loop, send, sent, timer))
        try:
            await self._frames(send, gone, sent)
        finally:
            sent.ended = True
            timer[0].cancel()
            if sent.comment is not None and not sent.comment.done():
                sent.comment.cancel()  # its send goes nowhere: the stream ended or its client left

    async def _frames(self, send: Send, gone: anyio.Event, sent: _Sent) -> None:
        # aclosing: however this ends, the events' generators (the run, its model call) close now.
        async with aclosing(self.events), aclosing(sse_stream(self.events)) as frames:
            held: list[bytes] = []
            size = count = 0

            async def flush(more: bool = True) -> None:
                nonlocal size
                body = held[0] if len(held) == 1 else b"".join(held)
                held.clear()
                size = 0
                # A frame is open from its first slice's send until its last one's has returned.
                ends = not body or body.endswith(b"\n\n")
                sent.mid_frame = sent.mid_frame or not ends
                sent.at = time.monotonic()
                await send({"type": "http.response.body", "body": body, "more_body": more})
                if ends:
                    sent.mid_frame = False

            async def before_waiting() -> None:
                if held:
                    await flush()

            while True:
                try:
                    frame = await _Next(frames, before_waiting)
                except StopAsyncIteration:
                    break
                held.append(frame)
                size += len(frame)
                count += 1
                if count == 1 or size >= LARGE:  # the first event's byte is not held back
                    await flush()
                if count % CHECK_EVERY == 0:
                    await before_waiting()
                    await anyio.lowlevel.checkpoint()  # lets the watcher see a disconnect
                if gone.is_set():
                    return
            async with sent.last:
                sent.ended = True
                await flush(more=False)  # the last frames ([DONE]) and the body's end: one write

    def _quiet(self, loop: asyncio.AbstractEventLoop, send: Send, sent: _Sent,
               timer: list[asyncio.TimerHandle]) -> None:
        """The keep-alive timer: a comment line when nothing was sent for ``keepalive_s``, never
        inside a frame; then the timer is set for the next quiet spell."""
        if sent.ended:
            return
        wait = sent.at + self.keepalive_s - time.monotonic()
        if wait <= 0 and not sent.mid_frame:
            sent.at = time.monotonic()
            sent.comment = loop.create_task(self._comment(send, sent))
            wait = self.keepalive_s
        timer[0] = loop.call_later(wait if wait > 0 else self.keepalive_s, self._quiet, loop, send, sent, timer)

    async def _comment(self, send: Send, sent: _Sent) -> None:
        async with sent.last:
            if not sent.ended and not sent.mid_frame:
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})


class _Next:
    """Awaited: the next of ``frames``, awaiting ``before_waiting()`` first when that frame is not
    ready at once (the run waits on its model, a tool or the store), so what is held leaves while
    it waits."""

    __slots__ = ("before_waiting", "frames")

    def __init__(self, frames: AsyncGenerator[bytes], before_waiting: Callable[[], Awaitable[None]]) -> None:
        self.frames = frames
        self.before_waiting = before_waiting

    def __await__(self) -> Generator[Any, Any, bytes]:
        # The step of the generator is driven here as the task would drive it, so that its first
        # suspension is seen before the task is told of it.
        step = self.frames.__anext__().__await__()
        try:
            signal = step.send(None)
        except StopIteration as ready:
            return ready.value  # type: ignore[no-any-return]
        try:
            yield from self.before_waiting().__await__()
        except BaseException as exc:
            # The step is half-run: the error reaches it where it waits, so that it unwinds (its
            # own clean-up may wait too) and the generator is not left running.
            try:
                signal = step.throw(exc)
            except StopIteration:
                raise exc from None
            yield from _relay(step, signal)
            raise
        return (yield from _relay(step, signal))


def _relay(step: Generator[Any, Any, bytes], signal: Any) -> Generator[Any, Any, bytes]:
    """Pass ``step``'s suspensions to the task and the task's answers (or errors) back to it."""
    while True:
        try:
            answer = yield signal
        except BaseException as exc:
            try:
                signal = step.throw(exc)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
        else:
            try:
                signal = step.send(answer)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
