"""A server process killed while it streams answers: its responses end ``failed``, never stay running.

A foreground response lives in the process its client is connected to; nothing can resume it
there. The process that finds the dead one (a live peer at once on the same machine, or the
restarted server) fails its responses with a reason, and leaves the responses of every live
process alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import MODEL, WORKSPACE, ProcessServer, Server, require_postgres, wait_until

STOPPED = "The server stopped while answering this response."


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The store's URL and the environment of the servers sharing it (a DBOS schema of their own
    on PostgreSQL, where other test processes share the database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db", {}
        return
    url = require_postgres()
    schema = f"dbos_{uuid.uuid4().hex[:12]}"
    try:
        yield url, {"OPENSUPERVISOR_SYSTEM_SCHEMA": schema}
    finally:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def start_stream(server: Server) -> tuple[str, Any]:
    """A streamed (not background) response whose model takes a minute: (its id, the open stream)."""
    stream = server.client(timeout=120).responses.create(model=MODEL, input="take your time", stream=True)
    first = next(iter(stream))
    assert first.type == "response.created"
    return first.response.id, stream


def status(client: openai.OpenAI, response_id: str) -> str:
    return str(client.responses.retrieve(response_id).status)


def assert_stopped(client: openai.OpenAI, response_id: str) -> None:
    wait_until(lambda: status(client, response_id) == "failed", timeout=60, what="the dead process's response to fail")
    stored = client.responses.retrieve(response_id)
    assert stored.error is not None and stored.error.code == "server_error" and stored.error.message == STOPPED


def test_a_live_peer_fails_the_responses_of_a_killed_process(tmp_path: Path,
                                                             database: tuple[str, dict[str, str]]) -> None:
    url, env = database
    doomed = ProcessServer(tmp_path, config=WORKSPACE, database_url=url, env=env, log_name="doomed.log")
    with doomed as first, ProcessServer(tmp_path, config=WORKSPACE, database_url=url, env=env,
                                        log_name="peer.log") as peer:
        lost, lost_stream = start_stream(first)
        kept, kept_stream = start_stream(peer)
        try:
            doomed.kill()
            client = peer.client()
            assert_stopped(client, lost)
            assert status(client, kept) == "in_progress"  # the live process's response goes on
        finally:
            lost_stream.close()
            kept_stream.close()


def test_a_restarted_server_fails_what_its_predecessor_left_running(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    crashed = ProcessServer(tmp_path, config=WORKSPACE, database_url=url, log_name="crashed.log")
    with crashed as first:
        response_ids, streams = zip(*(start_stream(first) for _ in range(2)), strict=True)
        crashed.kill()
    for stream in streams:
        stream.close()
    with ProcessServer(tmp_path, config=WORKSPACE, database_url=url, log_name="restarted.log") as second:
        client = second.client()
        for response_id in response_ids:
            assert_stopped(client, response_id)
        # The new process answers as usual.
        assert client.responses.create(model=MODEL, input="hello").status == "completed"
