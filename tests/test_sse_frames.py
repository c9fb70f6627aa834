"""How ``EventStream`` writes: the first frame at once, then the frames a run makes without waiting
in one body message, sent before the run waits; nothing held while it waits, nothing lost or
reordered, and a half-run step unwound when its send fails."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anyio
import pytest

from opensupervisor.core.events import Event
from opensupervisor.server.sse import DONE, LARGE, EventStream


def event(n: int, text: str = "") -> Event:
    return Event({"type": "response.output_text.delta", "sequence_number": n, "delta": text})


async def never_disconnects() -> dict[str, Any]:
    await anyio.sleep_forever()
    raise AssertionError


def bodies(messages: list[dict[str, Any]]) -> list[bytes]:
    assert messages[0]["type"] == "http.response.start"
    assert all(m["more_body"] for m in messages[1:-1]) and not messages[-1]["more_body"]
    return [m["body"] for m in messages[1:]]


def test_frames_made_without_waiting_leave_together_and_the_first_alone() -> None:
    sent: list[dict[str, Any]] = []
    waited = anyio.Event()

    async def events() -> AsyncGenerator[Event]:
        yield event(0)
        yield event(1)
        yield event(2)
        # The run waits (its model): what it made so far is on the wire before the wait ends.
        with anyio.fail_after(5):
            await waited.wait()
        yield event(3)
        yield event(4)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if b'"sequence_number":2' in message.get("body", b""):
            waited.set()

    anyio.run(EventStream(events()), {"type": "http"}, never_disconnects, send)
    out = bodies(sent)
    assert len(out) == 3
    assert out[0].count(b"event: ") == 1 and b'"sequence_number":0' in out[0]
    assert out[1].count(b"event: ") == 2
    assert out[2].count(b"event: ") == 2 and out[2].endswith(DONE)
    seqs = [int(line.split(b'"sequence_number":')[1].split(b",")[0].rstrip(b"}"))
            for line in b"".join(out).split(b"\n") if line.startswith(b"data: {")]
    assert seqs == [0, 1, 2, 3, 4]


def test_a_large_event_still_leaves_in_slices() -> None:
    sent: list[dict[str, Any]] = []

    async def events() -> AsyncGenerator[Event]:
        yield event(0)
        yield event(1, "z" * (3 * LARGE))
        yield event(2)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(EventStream(events()), {"type": "http"}, never_disconnects, send)
    out = bodies(sent)
    assert max(len(b) for b in out) <= 2 * LARGE  # never the whole answer in one copy
    assert b"".join(out).count(b"z") == 3 * LARGE


def test_a_send_failing_while_the_run_waits_unwinds_the_run() -> None:
    cleaned: list[str] = []

    async def events() -> AsyncGenerator[Event]:
        try:
            yield event(0)
            yield event(1)
            await anyio.sleep(30)  # the wait that sends event 1, which fails
            yield event(2)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # clean-up that waits too
            cleaned.append("run")

    async def send(message: dict[str, Any]) -> None:
        if b'"sequence_number":1' in message.get("body", b""):
            raise OSError("the client is gone")

    async def scenario() -> None:
        with anyio.fail_after(5), pytest.raises(OSError, match="the client is gone"):
            await EventStream(events())({"type": "http"}, never_disconnects, send)

    anyio.run(scenario)
    assert cleaned == ["run"]


def test_a_client_gone_while_the_run_waits_stops_it_at_once() -> None:
    cleaned: list[str] = []
    gone = anyio.Event()

    async def events() -> AsyncGenerator[Event]:
        try:
            yield event(0)
            yield event(1)
            gone.set()
            await anyio.sleep(30)
            yield event(2)
        finally:
            cleaned.append("run")

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def scenario() -> None:
        with anyio.fail_after(5):
            await EventStream(events())({"type": "http"}, receive, send)

    anyio.run(scenario)
    assert cleaned == ["run"]
    assert b"".join(m.get("body", b"") for m in sent).count(b"event: ") == 2
