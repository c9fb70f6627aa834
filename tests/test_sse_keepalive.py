"""SSE streams send a comment line while nothing else is sent (a slow model, a queued background
run); clients skip it, and no comment ever lands inside a frame."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from opensupervisor.core.events import Event
from opensupervisor.server.sse import KEEPALIVE, EventStream
from tests.conftest import MODEL, WORKSPACE, Server, ThreadServer

INTERVAL_S = 0.3


@pytest.fixture(scope="module")
def lively(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("keepalive")
    text = WORKSPACE.read_text().replace("[limits]\n", f"[limits]\nsse_keepalive_s = {INTERVAL_S}\n", 1)
    (folder / "workspace.toml").write_text(text)
    with ThreadServer(f"sqlite:///{folder}/state.db", Path(folder / "workspace.toml")) as running:
        yield running


def raw_stream(server: Server, **body: Any) -> bytes:
    with server.http() as http, http.stream("POST", "/v1/responses",
                                            json={"model": MODEL, "stream": True, **body}) as resp:
        assert resp.status_code == 200
        return b"".join(resp.iter_raw())


def frames(raw: bytes) -> list[bytes]:
    assert b"\r" not in raw
    return [frame for frame in raw.split(b"\n\n") if frame]


@pytest.mark.parametrize("background", [False, True])
def test_a_slow_stream_gets_comments_between_whole_frames(lively: Server, background: bool) -> None:
    raw = raw_stream(lively, input="pause a moment", background=background)
    parts = frames(raw)
    comments = [p for p in parts if p.startswith(b":")]
    assert len(comments) >= 2 and all(p + b"\n\n" == KEEPALIVE for p in comments)
    events = [p for p in parts if not p.startswith(b":")]
    assert all(p.startswith(b"event: ") or p == b"data: [DONE]" for p in events)
    assert events[-1] == b"data: [DONE]" and b"response.completed" in events[-2]


def test_the_sdk_reads_a_stream_with_comments(lively: Server) -> None:
    events = list(lively.client().responses.create(model=MODEL, input="pause a moment", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Paused, then answered."


def test_a_quick_stream_gets_none(lively: Server) -> None:
    assert not any(p.startswith(b":") for p in frames(raw_stream(lively, input="quick")))


def test_the_default_is_fifteen_seconds() -> None:
    from opensupervisor.workspace import Limits

    assert Limits().sse_keepalive_s == 15.0


def test_a_client_gone_before_the_stream_began_lets_its_run_go() -> None:
    """A generator closed before it starts runs none of its clean-up: the stream tells the route,
    which gives back what was prepared for the run (its conversation's hold, among others)."""
    began, let_go = [], []

    async def events() -> AsyncGenerator[Event]:
        began.append(True)
        yield Event({"type": "response.created", "sequence_number": 0})

    async def unstarted() -> None:
        let_go.append(True)

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the client is gone")

    async def scenario() -> None:
        stream = EventStream(events(), unstarted=unstarted)
        with pytest.raises(OSError, match="the client is gone"):
            await stream({"type": "http"}, receive, send)

    anyio.run(scenario)
    assert let_go == [True] and began == []
