"""The same store behaviour on SQLite and on PostgreSQL (a missing PostgreSQL fails these tests)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import openai
import orjson
import pytest
from sqlalchemy import select

from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.errors import RunSuperseded
from opensupervisor.store import Store
from opensupervisor.store.executors import Executors
from opensupervisor.store.ownership import Ownership, StepRow, forget_steps
from opensupervisor.store.schema import run_steps
from tests.conftest import MODEL, Server, wait_until

CALC: Any = {"type": "test_calculator"}


def test_read_after_write_and_chains(any_server: Server) -> None:
    client = any_server.client()
    first = client.responses.create(model=MODEL, input="add twice", tools=[CALC])
    assert client.responses.retrieve(first.id).model_dump(warnings=False) == first.model_dump(warnings=False)
    second = client.responses.create(model=MODEL, input="next", previous_response_id=first.id)
    third = client.responses.create(model=MODEL, input="and next", previous_response_id=second.id)
    assert third.status == "completed"
    items = client.responses.input_items.list(third.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["and next"]


def test_item_reference_resolves_a_stored_item(any_server: Server) -> None:
    client = any_server.client()
    first = client.responses.create(model=MODEL, input="remember this")
    message_id = first.output[0].id
    follow = client.responses.create(model=MODEL, input=[
        {"type": "item_reference", "id": str(message_id)}, {"role": "user", "content": "what did you say?"}])
    stored = client.responses.input_items.list(follow.id, order="asc").data
    assert stored[0].id == message_id and stored[0].type == "message"


def test_streamed_run_keeps_a_gapless_event_log(any_server: Server) -> None:
    client = any_server.client()
    events = list(client.responses.create(model=MODEL, input="background tools", tools=[CALC], background=True,
                                          stream=True))
    rid = events[0].response.id
    replay = list(client.responses.retrieve(rid, stream=True, starting_after=-1))
    assert [e.sequence_number for e in replay] == list(range(len(events)))
    assert [e.type for e in replay] == [e.type for e in events]


def test_background_progress_is_visible_while_running(any_server: Server) -> None:
    client = any_server.client()
    created = client.responses.create(model=MODEL, input="take your time", background=True)
    wait_until(lambda: client.responses.retrieve(created.id).status == "in_progress", what="pickup")
    assert client.responses.cancel(created.id).status == "cancelled"
    final = client.responses.retrieve(created.id)
    assert final.status == "cancelled"


def test_delete_removes_items_and_events(any_server: Server) -> None:
    client = any_server.client()
    created = client.responses.create(model=MODEL, input="delete me")
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(created.id)


def test_store_writes_in_batches_and_reads_back(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        await store.migrate()  # idempotent
        rid = "resp_store_" + orjson.dumps(id(store)).decode()
        response = {"id": rid, "object": "response", "status": "in_progress", "background": True,
                    "created_at": 1, "previous_response_id": None, "output": []}
        ev = [Event({"type": "response.created", "sequence_number": 0})]
        user = {"id": "msg_in_" + rid, "type": "message", "role": "user", "content": []}
        await store.create(response, owner="u1", request={"model": "m"}, stream=True, input_items=[user],
                           output=[], new_events=ev)
        item = {"id": "msg_out_" + rid, "type": "message", "role": "assistant", "content": []}
        await store.append(rid, output={0: item}, new_events=[
            Event({"type": "response.output_item.done", "sequence_number": 1})])
        response["status"] = "completed"
        assert await store.append(rid, output={}, response=response, guard=True, new_events=[
            Event({"type": "response.completed", "sequence_number": 2})])
        got = await store.get(rid, "u1")
        assert got is not None and got["status"] == "completed" and got["output"] == [item]
        assert await store.get(rid, "someone-else") is None
        assert [e.sequence_number for e in await store.events_after(rid, 0)] == [1, 2]
        assert await store.find_item(item["id"], "u1") == item
        assert await store.history(rid, "u1") == [user, item]
        assert await store.delete(rid, "u1") is True
        assert await store.get(rid, None) is None
        await store.close()

    asyncio.run(scenario())


def test_cancel_and_run_writes_never_overlap(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()

        async def running(rid: str) -> dict[str, Any]:
            response = {"id": rid, "object": "response", "status": "in_progress", "background": True,
                        "created_at": 1, "previous_response_id": None, "output": []}
            await store.create(response, owner="u", request={}, stream=True, input_items=[], output=[],
                               new_events=[Event({"type": "response.created", "sequence_number": 0})])
            return response

        tag = orjson.dumps(id(store)).decode()
        # Cancelled first: the run's terminal write is refused and leaves no terminal event behind.
        first = await running(f"resp_guard_a_{tag}")
        assert await store.cancel(first["id"], "u") is not None
        done = dict(first, status="completed")
        assert await store.append(first["id"], output={}, response=done, guard=True, new_events=[
            Event({"type": "response.output_text.delta", "sequence_number": 1}),
            Event({"type": "response.completed", "sequence_number": 2})]) is False
        assert [e.type for e in await store.events_after(first["id"], -1)] == [
            "response.created", "response.output_text.delta"]
        stored = await store.meta(first["id"], None)
        assert stored is not None and stored.response["status"] == "cancelled"
        # The run then records its own cancellation, which is allowed.
        assert await store.append(first["id"], output={}, response=dict(first, status="cancelled"), guard=False,
                                  new_events=[Event({"type": "response.failed", "sequence_number": 2})])
        # Completed first: a late cancel changes nothing.
        second = await running(f"resp_guard_b_{tag}")
        assert await store.append(second["id"], output={}, response=dict(second, status="completed"), guard=True,
                                  new_events=[Event({"type": "response.completed", "sequence_number": 1})])
        assert await store.cancel(second["id"], "u") is None
        stored = await store.meta(second["id"], None)
        assert stored is not None and stored.response["status"] == "completed"
        # Deleted meanwhile: nothing more is written for it.
        third = await running(f"resp_guard_c_{tag}")
        assert await store.delete(third["id"], "u")
        assert await store.append(third["id"], output={0: {"id": "x", "type": "message"}}, guard=True, new_events=[
            Event({"type": "response.output_item.done", "sequence_number": 1})]) is False
        assert list(await store.events_after(third["id"], -1)) == []
        await store.close()

    asyncio.run(scenario())


def test_quiet_runs_are_found_and_can_be_failed(store_url: str) -> None:
    async def scenario() -> None:
        from sqlalchemy import update

        from opensupervisor.store.schema import responses

        store = Store(store_url)
        await store.migrate()
        rid = "resp_abandoned_" + orjson.dumps(id(store)).decode()
        response = {"id": rid, "object": "response", "status": "in_progress", "background": True,
                    "created_at": 1, "previous_response_id": None, "output": []}
        await store.create(response, owner="u", request={}, stream=True, input_items=[], output=[],
                           new_events=[Event({"type": "response.created", "sequence_number": 0})], taken_by="gone")
        with store.engine.begin() as conn:
            conn.execute(update(responses).where(responses.c.id == rid).values(heartbeat_at=0))
        assert (rid, "in_progress", "gone") in await Executors(store, "pool").quiet_runs(10_000)
        # A run of another pool (processes on another DBOS database) is that pool's to recover.
        other = dict(response, id=rid + "_other")
        pool_b = "pool-" + uuid.uuid4().hex[:8]
        await store.create(other, owner="u", request={}, stream=True, input_items=[], output=[], pool=pool_b,
                           new_events=[Event({"type": "response.created", "sequence_number": 0})], taken_by="gone")
        with store.engine.begin() as conn:
            conn.execute(update(responses).where(responses.c.id == other["id"]).values(heartbeat_at=0))
        assert other["id"] in {r.id for r in await Executors(store, pool_b).quiet_runs(10_000)}
        assert other["id"] not in {r.id for r in await Executors(store, "pool").quiet_runs(10_000, limit=10**6)}
        assert await store.fail([other["id"]], "gone") == 1
        assert await store.fail([rid], "gone") == 1
        assert await store.fail([rid], "gone again") == 0  # only a running response is failed
        got = await store.get(rid, None)
        assert got is not None and got["status"] == "failed" and got["error"]["message"] == "gone"
        log = await store.events_after(rid, -1)
        assert [e.type for e in log] == ["response.created", "response.failed"]
        assert [e.sequence_number for e in log] == [0, 1]
        await store.close()

    asyncio.run(scenario())


async def stored_background(store: Store, status: str) -> tuple[str, dict[str, Any], list[Event]]:
    """A background response stored as its run leaves it: ``queued`` with its ``response.created``,
    or ``in_progress`` with ``response.in_progress`` too. Its id, response and opening events."""
    rid = f"resp_{status}_" + uuid.uuid4().hex
    response = {"id": rid, "object": "response", "status": status, "background": True,
                "created_at": 1, "previous_response_id": None, "output": []}
    opening = [Event({"type": "response.created", "sequence_number": 0, "response": response})]
    if status == "in_progress":
        opening.append(Event({"type": "response.in_progress", "sequence_number": 1, "response": response}))
    await store.create(response, owner="u1", request={"model": "m"}, stream=True, input_items=[], output=[],
                       new_events=opening)
    return rid, response, opening


def test_ownership_fences_the_run_and_each_hosted_call(store_url: str) -> None:
    """Each claim of a run raises its epoch; the older owner's call claims are refused, and a call
    claimed by a live process is not claimed again by another, unless its claimer died."""
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        rid, response, _ = await stored_background(store, "queued")
        executors = Executors(store, "pool-" + rid)
        first, second = Ownership(store, "exec-a-" + rid), Ownership(store, "exec-b-" + rid)
        for owner in (first, second):
            await executors.register(owner.executor_id, "host", 1)
        in_progress = {**response, "status": "in_progress"}
        claim_a = await first.claim(rid, picked_up=Event({"type": "response.in_progress", "sequence_number": 1,
                                                          "response": in_progress}))
        assert claim_a is not None and claim_a.last_sequence == 1 and claim_a.steps == {}
        epoch_a = claim_a.epoch
        stored = await store.get(rid, None)
        assert stored is not None and stored["status"] == "in_progress"
        assert [e.sequence_number for e in await store.events_after(rid, -1)] == [0, 1]
        await first.record_step(rid, epoch_a, 1, "model", '{"events": []}')
        assert await first.claim_call(rid, epoch_a, 2, "tool:add") == "claimed"
        assert await first.claim_call(rid, epoch_a, 2, "tool:add") == "claimed"  # its own, again (a retried write)
        claim_b = await second.claim(rid)
        assert claim_b is not None and claim_b.epoch == epoch_a + 1 and claim_b.last_sequence == 1
        # What the first owner recorded comes back with the claim: a finished step, and a call claimed
        # but not finished.
        assert claim_b.steps == {1: StepRow("model", '{"events": []}'), 2: StepRow("tool:add", None)}
        epoch_b = claim_b.epoch
        for refused in (first.claim_call(rid, epoch_a, 3, "tool:add"),
                        first.record_step(rid, epoch_a, 2, "tool:add", '"late"')):
            with pytest.raises(RunSuperseded):
                await refused
        assert await second.claim_call(rid, epoch_b, 2, "tool:add") == "elsewhere"  # its live claimer may be running it
        await executors.remove(first.executor_id)
        assert await second.claim_call(rid, epoch_b, 2, "tool:add") == "claimed"  # its claimer died: it may run again
        await second.record_step(rid, epoch_b, 2, "tool:add", '"3"')
        assert await second.claim_call(rid, epoch_b, 3, "tool:add") == "claimed"
        assert await store.cancel(rid, None) == "in_progress"
        # A cancelled run's call does not run; what the claim carries is written all the same (as a
        # refused write of the run still writes its items), and nothing is claimed.
        written: list[int] = []
        assert await second.claim_call(rid, epoch_b, 4, "tool:add", also=lambda conn: written.append(4)) == "stopped"
        assert written == [4] and 4 not in {row.step for row in _step_rows(store, rid)}
        with pytest.raises(RunSuperseded):  # the fence comes first: an older owner learns it lost the run
            await first.claim_call(rid, epoch_a, 4, "tool:add")
        assert await second.claim(rid) is None  # not running any more
        assert await store.delete(rid, None)
        assert _step_rows(store, rid) == []  # a deleted response takes its steps with it
        assert await second.claim_call(rid, epoch_b, 5, "tool:add", also=lambda conn: written.append(5)) == "stopped"
        assert written == [4] and _step_rows(store, rid) == []  # deleted: nothing of it is written
        await store.close()

    asyncio.run(scenario())


def _step_rows(store: Store, response_id: str) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(run_steps).where(run_steps.c.response_id == response_id)))


def test_the_steps_of_ended_runs_are_forgotten(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        ended = (await stored_background(store, "in_progress"))[0]
        running = (await stored_background(store, "queued"))[0]
        ownership = Ownership(store, "exec-" + ended)
        for rid in (ended, running):
            claim = await ownership.claim(rid)
            assert claim is not None
            await ownership.record_step(rid, claim.epoch, 1, "model", '{"events": []}')
        assert await store.cancel(ended, None) == "in_progress"
        assert await forget_steps(store) >= 1
        claim = await ownership.claim(running)
        assert claim is not None and claim.steps == {1: StepRow("model", '{"events": []}')}
        assert _step_rows(store, ended) == []
        await store.close()

    asyncio.run(scenario())


def test_a_run_cancelled_before_it_ever_ran_gets_one_ending(store_url: str) -> None:
    """Accepted to start in this process (stored in progress) and cancelled before its task began: the
    cancel writes no ending (a running run writes its own), so its workflow's start writes it, once."""
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        rid, _, _ = await stored_background(store, "in_progress")
        assert await store.cancel(rid, "u1") == "in_progress"
        ownership = Ownership(store, "exec-" + rid)
        assert await ownership.end_cancelled(rid) is True
        assert await ownership.end_cancelled(rid) is False  # a second start of its workflow adds nothing
        log = list(await store.events_after(rid, -1))
        assert [e.sequence_number for e in log] == [0, 1, 2]
        assert log[-1].type in TERMINAL_EVENTS and log[-1].data["response"]["status"] == "cancelled"
        await store.close()

    asyncio.run(scenario())


def test_a_second_copy_of_a_run_in_one_process_does_not_run_the_first_copys_call(store_url: str) -> None:
    """A process paused past the executor timeout may be handed its own run back while its first copy
    still runs: the new copy (a newer epoch) does not take over a call the first copy claimed."""
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        rid, _, _ = await stored_background(store, "in_progress")
        process = "exec-" + rid
        await Executors(store, "pool-" + rid).register(process, "host", 1)
        first, again = Ownership(store, process), Ownership(store, process)
        old = await first.claim(rid)
        assert old is not None and await first.claim_call(rid, old.epoch, 2, "tool:add") == "claimed"
        new = await again.claim(rid)
        assert new is not None and new.epoch == old.epoch + 1
        assert await again.claim_call(rid, new.epoch, 2, "tool:add") == "elsewhere", "the first copy may be running it"
        assert await again.claim_call(rid, new.epoch, 3, "tool:add") == "claimed"
        assert await again.claim_call(rid, new.epoch, 3, "tool:add") == "claimed"  # its own claim, again
        await store.close()

    asyncio.run(scenario())
