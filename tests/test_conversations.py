"""The Conversations API (``/v1/conversations``) and ``conversation`` on ``POST /v1/responses``,
through the real ``openai`` SDK against a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import httpx
import openai
import pytest
from websockets.sync.client import connect

from opensupervisor.store import Store
from opensupervisor.store import conversations as conversations_store
from opensupervisor.store.conversations import Conversations
from opensupervisor.store.executors import Executors
from opensupervisor.wire.items import item_text
from tests.conftest import MODEL, Server, wait_until
from tests.test_identity import client as user_client
from tests.test_identity import make_user
from tests.test_model_requests import CALC, requests_for, tagged
from tests.test_store import stored_background
from tests.test_websocket import turn, ws_url


def texts(items: Any) -> list[tuple[str, str]]:
    return [(i.role, "".join(c.text for c in i.content)) for i in items if i.type == "message"]


def all_items(client: openai.OpenAI, conversation_id: str) -> list[Any]:
    return list(client.conversations.items.list(conversation_id, order="asc", limit=100))


def test_a_conversation_is_created_read_updated_and_deleted(any_server: Server) -> None:
    client = any_server.client()
    conv = client.conversations.create(items=[{"type": "message", "role": "user", "content": "Remember 42."}],
                                       metadata={"topic": "numbers"})
    assert conv.id.startswith("conv_") and len(conv.id) <= 64 and conv.object == "conversation"
    assert conv.metadata == {"topic": "numbers"} and abs(conv.created_at - time.time()) < 60
    assert client.conversations.retrieve(conv.id).model_dump() == conv.model_dump()
    updated = client.conversations.update(conv.id, metadata={"topic": "maths", "owner": "me"})
    assert updated.metadata == {"topic": "maths", "owner": "me"} and updated.created_at == conv.created_at
    with any_server.http() as http:
        cleared = http.post(f"/v1/conversations/{conv.id}", json={"metadata": None})
        assert cleared.status_code == 200 and cleared.json()["metadata"] == {}
    client.conversations.update(conv.id, metadata={"topic": "maths", "owner": "me"})
    [item] = all_items(client, conv.id)
    assert (item.type, item.role, item.status, item.content[0].text) == ("message", "user", "completed", "Remember 42.")
    assert item.id.startswith("msg_")
    deleted = client.conversations.delete(conv.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (conv.id, "conversation.deleted", True)
    with pytest.raises(openai.NotFoundError) as err:
        client.conversations.retrieve(conv.id)
    assert err.value.body["param"] == "conversation_id"
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(conv.id)


def test_items_are_added_listed_in_pages_read_and_deleted(any_server: Server) -> None:
    client = any_server.client()
    conv = client.conversations.create()
    added = client.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "user", "content": f"item {i}"} for i in range(5)])
    assert [item_text(i.model_dump()) for i in added.data] == [f"item {i}" for i in range(5)]
    assert added.first_id == added.data[0].id and added.last_id == added.data[-1].id and not added.has_more
    newest = client.conversations.items.list(conv.id, limit=2)
    assert [item_text(i.model_dump()) for i in newest.data] == ["item 4", "item 3"] and newest.has_more
    after = client.conversations.items.list(conv.id, limit=2, after=newest.last_id)
    assert [item_text(i.model_dump()) for i in after.data] == ["item 2", "item 1"]
    # The SDK's own pagination walks every page, oldest first.
    assert [item_text(i.model_dump()) for i in client.conversations.items.list(conv.id, order="asc", limit=2)] == [
        f"item {i}" for i in range(5)]
    third = added.data[2]
    assert client.conversations.items.retrieve(third.id, conversation_id=conv.id).id == third.id
    left = client.conversations.items.delete(third.id, conversation_id=conv.id)
    assert (left.id, left.object) == (conv.id, "conversation")
    assert [item_text(i.model_dump()) for i in all_items(client, conv.id)] == ["item 0", "item 1", "item 3", "item 4"]
    with pytest.raises(openai.NotFoundError) as err:
        client.conversations.items.retrieve(third.id, conversation_id=conv.id)
    assert err.value.body["param"] == "item_id"
    # Re-adding an item it holds (by id) adds nothing; a reference to a stored item adds that item.
    again = client.conversations.items.create(conv.id, items=[added.data[0].model_dump(exclude_none=True)])
    assert again.data == []


def test_a_response_in_a_conversation_sees_its_items_and_adds_its_input_and_output(any_server: Server) -> None:
    client = any_server.client()
    conv = client.conversations.create(items=[{"type": "message", "role": "user", "content": "My name is Ada."},
                                              {"type": "message", "role": "assistant", "content": "Hello Ada."}])
    tag = tagged("first question")
    first = client.responses.create(model=MODEL, input=tag, conversation=conv.id)
    assert first.conversation is not None and first.conversation.id == conv.id
    assert client.responses.retrieve(first.id).conversation.id == conv.id
    [sent] = requests_for(any_server, tag)
    assert [item_text(i) for i in sent.items] == ["My name is Ada.", "Hello Ada.", tag]
    assert texts(all_items(client, conv.id)) == [("user", "My name is Ada."), ("assistant", "Hello Ada."),
                                                 ("user", tag), ("assistant", first.output_text)]
    # The next response builds on all of it, given as {"id": ...} and streamed this time.
    tag2 = tagged("second question")
    with client.responses.stream(model=MODEL, input=tag2, conversation={"id": conv.id}) as stream:
        final = stream.get_final_response()
    [sent2] = requests_for(any_server, tag2)
    assert [item_text(i) for i in sent2.items] == ["My name is Ada.", "Hello Ada.", tag, first.output_text, tag2]
    listed = all_items(client, conv.id)
    assert texts(listed)[-2:] == [("user", tag2), ("assistant", final.output_text)]
    assert listed[-1].id == final.output[0].id  # an output item keeps its id in the conversation
    assert len({i.id for i in listed}) == len(listed) == 6


def test_tool_calls_and_an_unstored_response_go_into_the_conversation(server: Server) -> None:
    client = server.client()
    conv = client.conversations.create()
    tag = tagged("add twice")
    response = client.responses.create(model=MODEL, input=tag, conversation=conv.id, store=False,
                                       tools=[CALC])
    kinds = [i.type for i in all_items(client, conv.id)]
    assert kinds == ["message", "function_call", "function_call_output", "function_call", "function_call_output",
                     "message"]
    assert all_items(client, conv.id)[-1].id == response.output[-1].id
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)  # not stored, though its items are in the conversation


def test_a_failed_response_adds_nothing_and_frees_the_conversation(server: Server) -> None:
    client = server.client()
    conv = client.conversations.create()
    failed = client.responses.create(model=MODEL, input="model failure please", conversation=conv.id)
    assert failed.status == "failed"
    assert all_items(client, conv.id) == []
    ok = client.responses.create(model=MODEL, input="hello after the failure", conversation=conv.id)
    assert ok.status == "completed" and len(all_items(client, conv.id)) == 2


def test_one_response_at_a_time_per_conversation(any_server: Server) -> None:
    client = any_server.client()
    conv = client.conversations.create()
    with client.responses.create(model=MODEL, input="pause a moment", conversation=conv.id, stream=True) as stream:
        events = iter(stream)
        assert next(events).type == "response.created"  # held from before its first event
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model=MODEL, input="me too", conversation=conv.id)
        assert err.value.body["code"] == "conversation_locked"
        assert err.value.body["param"] == "conversation"
        assert [e.type for e in events][-1] == "response.completed"
    client.responses.create(model=MODEL, input="now it is my turn", conversation=conv.id)
    assert [t for _, t in texts(all_items(client, conv.id))][::2] == ["pause a moment", "now it is my turn"]


def test_a_background_response_appends_when_it_ends_and_a_cancelled_one_does_not(server: Server) -> None:
    client = server.client()
    conv = client.conversations.create()
    queued = client.responses.create(model=MODEL, input="pause a moment", conversation=conv.id, background=True)
    assert queued.conversation.id == conv.id
    wait_until(lambda: client.responses.retrieve(queued.id).status == "completed", what="the background response")
    wait_until(lambda: len(all_items(client, conv.id)) == 2, what="its items in the conversation")
    slow = client.responses.create(model=MODEL, input="take your time", conversation=conv.id, background=True)
    assert client.responses.cancel(slow.id).status == "cancelled"
    # Its hold ends with it: the next response may run at once, and sees nothing of the cancelled one.
    after = client.responses.create(model=MODEL, input="after the cancel", conversation=conv.id)
    assert after.status == "completed"
    assert [t for _, t in texts(all_items(client, conv.id))] == [
        "pause a moment", "Paused, then answered.", "after the cancel", after.output_text]


def test_conversations_belong_to_their_owner(server: Server) -> None:
    alice = user_client(server, make_user(server, f"alice-{uuid.uuid4().hex[:8]}"))
    bob = user_client(server, make_user(server, f"bob-{uuid.uuid4().hex[:8]}"))
    conv = alice.conversations.create(items=[{"type": "message", "role": "user", "content": "alice's secret"}])
    for call in (lambda: bob.conversations.retrieve(conv.id), lambda: bob.conversations.items.list(conv.id),
                 lambda: bob.conversations.update(conv.id, metadata={"x": "y"}),
                 lambda: bob.conversations.delete(conv.id),
                 lambda: bob.conversations.items.create(conv.id, items=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as err:
        bob.responses.create(model=MODEL, input="what is the secret?", conversation=conv.id)
    assert err.value.body["param"] == "conversation"
    assert texts(all_items(alice, conv.id)) == [("user", "alice's secret")]  # untouched
    assert server.client().conversations.retrieve(conv.id).id == conv.id  # admins see every conversation


@pytest.mark.parametrize(("method", "path", "body", "param"), [
    ("post", "/conversations", {"items": [{"role": "user", "content": "x"}] * 21}, "items"),
    ("post", "/conversations", {"items": [{"type": "nonsense"}]}, "items[0].type"),
    ("post", "/conversations", {"items": [{"role": "robot", "content": "x"}]}, "items[0].role"),
    ("post", "/conversations", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("post", "/conversations", {"metadata": {"k": "v" * 513}}, "metadata.k"),
    ("post", "/conversations", {"metadata": {"k": 1}}, "metadata.k"),
    ("post", "/conversations", {"colour": "blue"}, "colour"),
    ("post", "/conversations", {"items": [{"type": "item_reference", "id": "msg_nope"}]}, "items[0].id"),
    ("post", "/conversations/{c}", {}, "metadata"),
    ("post", "/conversations/{c}/items", {}, "items"),
    ("post", "/conversations/{c}/items", {"items": []}, "items"),
    ("get", "/conversations/{c}/items?limit=0", None, "limit"),
    ("get", "/conversations/{c}/items?limit=abc", None, "limit"),
    ("get", "/conversations/{c}/items?order=up", None, "order"),
    ("get", "/conversations/{c}/items?after=msg_unknown", None, "after"),
    ("get", "/conversations/{c}/items?include=everything", None, "include[0]"),
    ("post", "/responses", {"model": MODEL, "input": "x", "conversation": "{c}", "previous_response_id": "resp_1"},
     "conversation"),
    ("post", "/responses", {"model": MODEL, "input": "x", "conversation": {"id": "{c}", "extra": 1}},
     "conversation.extra"),
    ("post", "/responses", {"model": MODEL, "input": "x", "conversation": 7}, "conversation"),
    ("post", "/responses", {"model": MODEL, "input": "x", "conversation": "conv_missing"}, "conversation"),
    ("get", "/conversations/conv_missing", None, "conversation_id"),
    ("get", "/conversations/{c}/items/msg_missing", None, "item_id"),
    ("delete", "/conversations/{c}/items/msg_missing", None, "item_id"),
])
def test_bad_input_is_refused_naming_the_field(server: Server, method: str, path: str, body: Any,
                                               param: str) -> None:
    conv = server.client().conversations.create()
    filled = path.replace("{c}", conv.id)
    if isinstance(body, dict) and "conversation" in body:
        body = {**body, "conversation": _filled(body["conversation"], conv.id)}
    with httpx.Client(base_url=server.v1, headers={"Authorization": f"Bearer {server.token}"}) as http:
        answer = http.request(method, filled, json=body)
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["message"] and error["type"], error


def _filled(value: Any, conversation_id: str) -> Any:
    if isinstance(value, str):
        return value.replace("{c}", conversation_id)
    if isinstance(value, dict):
        return {k: _filled(v, conversation_id) for k, v in value.items()}
    return value


def test_a_hold_ends_with_its_response_its_process_or_its_time(store_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What a crash leaves behind: a foreground response's hold is void once its process is gone from
    the executors, a background one's once its response stopped running, any one after the cap."""
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        try:
            held = Conversations(store, max_hold_s=3600)
            cid, executors = "conv_" + uuid.uuid4().hex, Executors(store, "pool-" + uuid.uuid4().hex[:8])
            await held.create(cid, "u1", {}, [])
            assert await held.claim(cid, "u2", "resp_x", None) == "missing"  # another's conversation
            alive = "exec-" + uuid.uuid4().hex
            await executors.register(alive, "here", 1)
            assert await held.claim(cid, "u1", "resp_a", alive) == "held"
            assert await held.claim(cid, "u1", "resp_a", alive) == "held"  # its own again (a resumed run)
            assert await held.claim(cid, None, "resp_b", None) == "busy"
            await executors.remove(alive)  # its process died and was noticed
            rid = (await stored_background(store, "in_progress"))[0]
            assert await held.claim(cid, "u1", rid, None) == "held"
            assert await held.claim(cid, "u1", "resp_c", None) == "busy"  # its run goes on
            await store.fail([rid], "the process running it died")
            assert await held.claim(cid, "u1", "resp_c", None) == "held"
            capped = Conversations(store, max_hold_s=-1)  # every hold is past it
            assert await capped.claim(cid, "u1", "resp_d", alive) == "held"  # resp_c, background, past the cap
            await capped.release(cid, "resp_d")
            # A foreground response has no cap: its hold lasts while its process does.
            running = "exec-" + uuid.uuid4().hex
            await executors.register(running, "here", 2)
            assert await held.claim(cid, "u1", "resp_e", running) == "held"
            assert await capped.claim(cid, "u1", "resp_f", None) == "busy"
            await held.release(cid, "resp_e")
            # A background hold whose response was never stored (or was deleted) is void after the grace.
            assert await held.claim(cid, "u1", "resp_g", None) == "held"
            assert await held.claim(cid, "u1", "resp_h", None) == "busy"
            monkeypatch.setattr(conversations_store, "BACKGROUND_GRACE_MS", -1)
            assert await held.claim(cid, "u1", "resp_h", None) == "held"
        finally:
            await store.close()

    anyio.run(scenario)


def test_a_websocket_turn_runs_in_a_conversation(server: Server) -> None:
    client = server.client()
    conv = client.conversations.create(items=[{"type": "message", "role": "user", "content": "I am on a socket."}])
    sealed = client.responses.compact(model=MODEL, input="the launch is on Friday").output[-1]
    with connect(ws_url(server), additional_headers={"Authorization": f"Bearer {server.token}"}) as ws:
        events = turn(ws, input=[sealed.model_dump(exclude_none=True), {"role": "user", "content": "hello socket"}],
                      conversation=conv.id, store=False)
        assert events[-1]["type"] == "response.completed", events[-1]
        assert events[-1]["response"]["conversation"] == {"id": conv.id}
        refused = turn(ws, input="x", conversation="conv_nowhere")
        assert refused[-1]["type"] == "error" and refused[-1]["status"] == 404
        assert refused[-1]["error"]["param"] == "conversation"
    listed = all_items(client, conv.id)
    assert [i.type for i in listed] == ["message", "compaction", "message", "message"]
    assert item_text(listed[2].model_dump()) == "hello socket"
