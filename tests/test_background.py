"""Background mode's guarantees and bounds: resume after a disconnect, cancel in every state, the
run-time cap, retention, and the bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.runs.background import BackgroundRuns
from opensupervisor.runs.maintenance import OTHER_RELEASE
from opensupervisor.store import Store
from opensupervisor.store.ownership import Ownership
from tests.conftest import (
    MODEL,
    WORKSPACE,
    ProcessServer,
    ProcessWorker,
    Server,
    ThreadServer,
    own_database,
    require_postgres,
    wait_until,
)
from tests.test_store import stored_background
from tests.toolkinds import ledger

CALC: Any = {"type": "test_calculator"}
LEDGER: Any = {"type": "test_ledger"}
RENDEZVOUS: Any = {"type": "test_rendezvous"}
RECORDING = """
[[models.test-model.script]]
when = "record it"
turns = [
  { tool_calls = [{ name = "record", arguments = { label = "ran" } }] },
  { text = "Recorded." },
]
"""


def workspace_with(tmp_path: Path, background: str) -> Path:
    """The test workspace (its tool kinds as a plugin, for child processes) with a ``[background]`` section."""
    path = tmp_path / "workspace.toml"
    path.write_text('plugins = ["tests.toolkinds"]\n' + WORKSPACE.read_text() + f"\n[background]\n{background}\n")
    return path


def stored_log(database_url: str, response_id: str) -> list[Any]:
    """The event log as the store holds it."""
    async def read() -> list[Any]:
        store = Store(database_url)
        try:
            return list(await store.events_after(response_id, -1))
        finally:
            await store.close()

    return asyncio.run(read())


def sse(http: httpx.Client, response_id: str, after: int) -> list[dict[str, Any]]:
    with http.stream("GET", f"/v1/responses/{response_id}", params={"stream": "true",
                                                                    "starting_after": str(after)}) as resp:
        assert resp.status_code == 200
        return [orjson.loads(line[6:]) for line in resp.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_a_disconnected_stream_resumes_where_it_stopped(server: Server, k: int) -> None:
    body = {"model": MODEL, "input": "background tools", "tools": [CALC], "background": True, "stream": True}
    with server.http() as http:
        with http.stream("POST", "/v1/responses", json=body) as resp:
            lines = (line for line in resp.iter_lines() if line.startswith("data: "))
            seen = [orjson.loads(next(lines)[6:]) for _ in range(k)]  # then the client goes away
        response_id = seen[0]["response"]["id"]
        rest = sse(http, response_id, seen[-1]["sequence_number"])
        assert rest[-1]["type"] == "response.completed"
        whole = sse(http, response_id, -1)  # the log of the uninterrupted run
    assert seen + rest == whole
    assert [e["sequence_number"] for e in whole] == list(range(len(whole)))


@pytest.fixture(scope="module")
def accepting_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, str]]:
    """A server that queues background runs but runs none itself (no worker yet), two at most."""
    folder = tmp_path_factory.mktemp("queue")
    config = workspace_with(folder, "max_queued = 2")
    database_url = f"sqlite:///{folder}/state.db"
    with ProcessServer(folder, config=config, database_url=database_url,
                       env={"OPENSUPERVISOR_WORKER_CONCURRENCY": "0"}) as srv:
        yield srv, config, database_url


def test_a_full_queue_answers_429_and_a_queued_cancel_is_final(accepting_only: tuple[Server, Path, str]) -> None:
    server, config, database_url = accepting_only
    client = server.client()
    first = client.responses.create(model=MODEL, input="background tools", tools=[CALC], background=True)
    second = client.responses.create(model=MODEL, input="background tools", tools=[CALC], background=True)
    assert (first.status, second.status) == ("queued", "queued")
    with server.http() as http:
        full = http.post("/v1/responses", json={"model": MODEL, "input": "one more", "background": True})
    assert full.status_code == 429 and full.headers["retry-after"] == "1"
    assert full.json()["error"] == {"message": "Too many background responses are queued (2); retry later.",
                                    "type": "rate_limit_error", "param": None, "code": "queue_full"}
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=MODEL, input="one more", background=True)

    cancelled = client.responses.cancel(first.id)  # queued: cancelled at once
    assert cancelled.status == "cancelled" and cancelled.output == []
    # A worker now drains the queue: the cancelled run never starts, the other one completes.
    with ProcessWorker(config.parent, config=config, database_url=database_url):
        wait_until(lambda: client.responses.retrieve(second.id).status == "completed", timeout=60,
                   what="the worker to run the queued response")
    assert client.responses.retrieve(first.id).status == "cancelled"
    assert client.responses.retrieve(first.id).output == []
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(second.id)  # completed: refused, as OpenAI does


def test_a_run_past_its_time_cap_ends_incomplete(tmp_path: Path) -> None:
    config = workspace_with(tmp_path, "max_run_time_s = 1")
    with ThreadServer(f"sqlite:///{tmp_path}/state.db", config) as server:
        client = server.client()
        created = client.responses.create(model=MODEL, input="take your time", background=True)
        wait_until(lambda: client.responses.retrieve(created.id).status not in ("queued", "in_progress"),
                   timeout=20, what="the time cap")
        ended = client.responses.retrieve(created.id)
        assert ended.status == "incomplete"
        assert ended.incomplete_details is not None and ended.incomplete_details.reason == "max_run_time"
        assert [(item.type, item.status) for item in ended.output] in ([], [("message", "incomplete")])


def test_retention_purges_finished_background_responses(tmp_path: Path) -> None:
    config = workspace_with(tmp_path, "retention_days = 0.00001\npurge_interval_s = 0.2")
    with ThreadServer(f"sqlite:///{tmp_path}/state.db", config) as server:
        client = server.client()
        kept = client.responses.create(model=MODEL, input="quick")  # not background: kept
        created = client.responses.create(model=MODEL, input="quick", background=True)

        def purged() -> bool:
            try:
                client.responses.retrieve(created.id)
            except openai.NotFoundError:
                return True
            return False

        wait_until(purged, timeout=20, what="the retention purge")
        assert client.responses.retrieve(kept.id).status == "completed"


def test_a_run_cancelled_while_queued_ends_its_log_at_once(tmp_path: Path) -> None:
    config = workspace_with(tmp_path, RECORDING)
    database_url = f"sqlite:///{tmp_path}/state.db"
    env = {"OPENSUPERVISOR_TEST_LEDGER": str(tmp_path / "ledger.db")}
    with ProcessServer(tmp_path, config=config, database_url=database_url,
                       env={**env, "OPENSUPERVISOR_WORKER_CONCURRENCY": "0"}) as server:
        client = server.client()
        stream = client.responses.create(model=MODEL, input="record it", tools=[LEDGER], background=True,
                                         stream=True)
        first = next(iter(stream))
        stream.close()
        response_id = first.response.id
        assert client.responses.cancel(response_id).status == "cancelled"

        started = time.monotonic()
        replayed = list(client.responses.retrieve(response_id, stream=True))
        assert time.monotonic() - started < 2  # the ending is in the log: nothing to wait for
        assert [(e.type, e.sequence_number) for e in replayed] == [("response.created", 0), ("response.failed", 1)]
        ending = replayed[-1].response
        assert ending.status == "cancelled" and ending.output == []
        with server.http() as http:
            assert sse(http, response_id, 0)[0]["response"] == http.get(f"/v1/responses/{response_id}").json()
            started = time.monotonic()
            assert sse(http, response_id, 1) == []  # after the last event: the end, at once
            assert time.monotonic() - started < 2
            assert http.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": "2"}
                            ).status_code == 400
        types = [e.type for e in stored_log(database_url, response_id)]
        assert types == ["response.created", "response.failed"]

        with ProcessWorker(tmp_path, config=config, database_url=database_url, env=env):
            later = client.responses.create(model=MODEL, input="record it", tools=[LEDGER], background=True)
            wait_until(lambda: client.responses.retrieve(later.id).status == "completed", timeout=60,
                       what="the worker to drain the queue")
        assert ledger(env["OPENSUPERVISOR_TEST_LEDGER"], later.id) == ["ran"]
        assert ledger(env["OPENSUPERVISOR_TEST_LEDGER"], response_id) == []  # the cancelled run never ran
        assert client.responses.retrieve(response_id).status == "cancelled"
        assert [e.type for e in stored_log(database_url, response_id)] == types


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_creates_fill_the_queue_exactly(tmp_path: Path, backend: str) -> None:
    config = workspace_with(tmp_path, "worker_concurrency = 0\nmax_queued = 5")
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path}/state.db" if backend == "sqlite" else \
            stack.enter_context(own_database(require_postgres()))
        # Its own process: in this one, a server of another test may share DBOS and run the queue.
        server = stack.enter_context(ProcessServer(tmp_path, config=config, database_url=url))
        client = server.client()  # no retries: a refusal is counted as one

        def create(_: int) -> str:
            try:
                return str(client.responses.create(model=MODEL, input="quick", background=True).status)
            except openai.RateLimitError as exc:
                assert exc.code == "queue_full"
                return "refused"

        with ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(create, range(20)))
    assert sorted(outcomes) == ["queued"] * 5 + ["refused"] * 15


def test_cancelling_a_running_run_logs_one_info_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with ThreadServer(f"sqlite:///{tmp_path}/state.db") as server:
        client = server.client()
        created = client.responses.create(model=MODEL, input="take your time", background=True)
        wait_until(lambda: client.responses.retrieve(created.id).status == "in_progress", what="the run to start")
        time.sleep(0.3)  # into its model call
        with caplog.at_level(logging.INFO, logger="opensupervisor"):
            caplog.clear()
            assert client.responses.cancel(created.id).status == "cancelled"
            time.sleep(1)  # whatever the run's task logs as it ends
    records = [r for r in caplog.records if r.name.startswith("opensupervisor")]
    assert [r for r in records if r.levelno >= logging.WARNING] == []
    assert [r.getMessage() for r in records if created.id in r.getMessage()] == [
        f"background response {created.id} stopped (cancelled)"]


def test_cancelling_a_run_in_another_process_logs_no_error(tmp_path: Path) -> None:
    config = workspace_with(tmp_path, "")
    database_url = f"sqlite:///{tmp_path}/state.db"
    with ProcessServer(tmp_path, config=config, database_url=database_url,
                       env={"OPENSUPERVISOR_WORKER_CONCURRENCY": "0"}) as server, \
            ProcessWorker(tmp_path, config=config, database_url=database_url) as worker:
        client = server.client()
        created = client.responses.create(model=MODEL, input="take your time", background=True)
        wait_until(lambda: client.responses.retrieve(created.id).status == "in_progress", timeout=60,
                   what="the worker to start the run")
        time.sleep(0.3)  # into its model call
        assert client.responses.cancel(created.id).status == "cancelled"
        wait_until(lambda: any(e.type == "response.failed" for e in stored_log(database_url, created.id)),
                   what="the worker to record the run's end")
        time.sleep(1)  # its workflow finishes after the end is recorded
    types = [e.type for e in stored_log(database_url, created.id)]
    assert types.count("response.failed") == 1 and types[-1] == "response.failed"
    text = worker.log_path.read_text()
    assert "ERROR" not in text and "Traceback" not in text, text


async def _followed_here(store: Store, *, workflow: str) -> tuple[BackgroundRuns, AsyncGenerator[Event], str]:
    """A run in progress adopted by this process, and a follower that has read its opening events
    from the live log. ``workflow`` is what its DBOS status reads."""
    _, response, opening = await stored_background(store, "in_progress")

    async def workflow_state(_: str) -> str | None:
        return workflow

    runs = BackgroundRuns(store, workflow_state)
    live = runs.adopt(response["id"])
    for event in opening:
        await live.publish(event)
    follower = runs.follow(response["id"], -1)
    assert [(await anext(follower)).sequence_number for _ in opening] == [0, 1]
    return runs, follower, response["id"]


def test_a_follower_here_of_a_run_taken_over_elsewhere_reads_it_to_its_end(tmp_path: Path) -> None:
    """A process taken for dead stops its copy of a run unrecorded; a client streaming it from that
    process goes on with what the run's new owner writes to the stored log, up to its one ending."""
    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()
        runs, follower, rid = await _followed_here(store, workflow="PENDING")
        live, response = runs.live[rid], await store.get(rid, None)
        assert response is not None
        live.shutting_down = True  # superseded: this copy stops without recording more
        await live.close()
        done = dict(response, status="completed")
        assert await store.append(rid, output={}, response=done, guard=True, new_events=[
            Event({"type": "response.completed", "sequence_number": 2, "response": done})])
        rest = [event async for event in follower]
        assert [(e.sequence_number, e.type) for e in rest] == [(2, "response.completed")]
        await store.close()

    asyncio.run(scenario())


def test_the_creator_of_a_run_cancelled_before_its_task_began_sees_its_ending(tmp_path: Path) -> None:
    """A run adopted here (its creator follows its live log) and cancelled before its task began
    never runs here: its creator's stream ends with the ending the workflow's start wrote."""
    async def scenario() -> None:
        store = Store(f"sqlite:///{tmp_path}/state.db")
        await store.migrate()
        runs, follower, rid = await _followed_here(store, workflow="SUCCESS")
        assert await store.cancel(rid, "u1") == "in_progress"
        assert await Ownership(store, "exec-" + rid).end_cancelled(rid)
        await runs.release(rid)
        rest = [event async for event in follower]
        assert [e.sequence_number for e in rest] == [2] and rest[0].data["response"]["status"] == "cancelled"
        assert rid not in runs.live
        await store.close()

    asyncio.run(scenario())


def test_reconciliation_queues_a_run_that_lost_its_workflow_and_fails_one_of_another_release(tmp_path: Path) -> None:
    """A run taken by a process that died before starting its workflow goes back to the queue and runs;
    one whose workflow another release started fails with why, instead of waiting forever."""
    config = workspace_with(tmp_path, "executor_timeout_s = 0.5")
    database_url = f"sqlite:///{tmp_path}/state.db"
    first = ProcessServer(tmp_path, config=config, database_url=database_url)
    with first as srv:
        client = srv.client()
        old = client.responses.create(model=MODEL, input="take your time", background=True).id
        wait_until(lambda: client.responses.retrieve(old).status == "in_progress", what="the slow run to start")
        first.kill()
    with contextlib.closing(sqlite3.connect(tmp_path / "state.dbos.db")) as db, db:
        db.execute("UPDATE workflow_status SET application_version = 'opensupervisor-0.0.1' WHERE workflow_uuid = ?",
                   (old,))
    with ProcessServer(tmp_path, config=config, database_url=database_url, log_name="accept.log",
                       env={"OPENSUPERVISOR_WORKER_CONCURRENCY": "0"}) as srv:
        lost = srv.client().responses.create(model=MODEL, input="background tools", tools=[CALC], background=True).id
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db, db:
        db.execute("UPDATE os_responses SET owner_executor = 'gone', heartbeat_at = 0 WHERE id = ?", (lost,))
    with ProcessServer(tmp_path, config=config, database_url=database_url, log_name="again.log") as srv:
        client = srv.client()
        wait_until(lambda: client.responses.retrieve(lost).status == "completed", timeout=30,
                   what="the run taken and never started to be queued again and run")
        wait_until(lambda: client.responses.retrieve(old).status == "failed", timeout=30,
                   what="the run of another release to fail")
        error = client.responses.retrieve(old).error
        assert error is not None and error.message == OTHER_RELEASE


def test_a_full_process_takes_its_queued_runs_as_its_runs_end(tmp_path: Path) -> None:
    """With room for one run, the rest wait in the queue and are taken as each run ends, without
    waiting for a poll (set far off here)."""
    config = workspace_with(tmp_path, "worker_concurrency = 1\npoll_interval_s = 60")
    with ProcessServer(tmp_path, config=config, database_url=f"sqlite:///{tmp_path}/state.db") as srv:
        client = srv.client()
        created = [client.responses.create(model=MODEL, input="background tools", tools=[CALC], background=True)
                   for _ in range(4)]
        assert [c.status for c in created].count("queued") >= 2, "no room: they wait in the queue"
        ids = [c.id for c in created]
        wait_until(lambda: all(client.responses.retrieve(i).status == "completed" for i in ids), timeout=30,
                   what="every run to be taken and run, one after the other")



def ended(database_url: str, response_id: str) -> bool:
    return any(e.type in TERMINAL_EVENTS for e in stored_log(database_url, response_id))


def test_a_hosted_call_s_item_is_stored_while_the_call_runs(tmp_path: Path) -> None:
    """The model call's items are written with the claim of its first hosted call: a GET during the
    call finds the call, and a cancel ends the run with the call answered as not run."""
    database_url = f"sqlite:///{tmp_path}/state.db"
    with ThreadServer(database_url) as server:
        client = server.client()
        created = client.responses.create(model=MODEL, input="wait alone", tools=[RENDEZVOUS], background=True)

        def calling() -> bool:
            response = client.responses.retrieve(created.id)
            return response.status == "in_progress" and [i.type for i in response.output] == ["function_call"]

        wait_until(calling, what="the call's item while the call runs")
        assert client.responses.cancel(created.id).status == "cancelled"
        wait_until(lambda: ended(database_url, created.id), what="the run's ending")
        final = client.responses.retrieve(created.id)
    assert [i.type for i in final.output] == ["function_call", "function_call_output"]
    log = stored_log(database_url, created.id)
    assert sum(e.type in TERMINAL_EVENTS for e in log) == 1 and log[-1].data["response"]["status"] == "cancelled"


def test_a_run_cancelled_as_its_model_call_ends_does_not_make_the_call(tmp_path: Path) -> None:
    """A cancel that lands on a run in another process while its model is asked (for less than the
    heartbeat's second, so the run's task is not stopped first) is found by the claim of the call
    the model asked for, the run's next write: the call does not run, and the run ends cancelled."""
    config = workspace_with(tmp_path, "")
    database_url = f"sqlite:///{tmp_path}/state.db"
    env = {"OPENSUPERVISOR_TEST_LEDGER": str(tmp_path / "ledger.db")}
    with ProcessServer(tmp_path, config=config, database_url=database_url,
                       env={**env, "OPENSUPERVISOR_WORKER_CONCURRENCY": "0"}) as server, \
            ProcessWorker(tmp_path, config=config, database_url=database_url, env=env) as worker:
        client = server.client()
        created = client.responses.create(model=MODEL, input="record after a pause", tools=[LEDGER], background=True)
        wait_until(lambda: client.responses.retrieve(created.id).status == "in_progress", timeout=60,
                   what="the worker to start the run")
        assert client.responses.cancel(created.id).status == "cancelled"
        wait_until(lambda: ended(database_url, created.id), what="the run's ending")
        final = client.responses.retrieve(created.id)
    assert ledger(env["OPENSUPERVISOR_TEST_LEDGER"], created.id) == []
    assert final.status == "cancelled"
    outputs = [i for i in final.output if i.type == "function_call_output"]
    assert [o.output for o in outputs] == ["Error: this call did not run: the response was cancelled."]
    log = stored_log(database_url, created.id)
    assert sum(e.type in TERMINAL_EVENTS for e in log) == 1 and log[-1].data["response"]["status"] == "cancelled"
    text = worker.log_path.read_text()
    assert "ERROR" not in text and "Traceback" not in text, text
