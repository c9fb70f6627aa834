"""``POST /v1/responses/compact`` and ``compaction`` items in ``input``, through the real ``openai`` SDK."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from cryptography.fernet import Fernet

from opensupervisor.errors import ConfigError
from opensupervisor.models.scripted import ScriptedModel
from opensupervisor.runs.compaction import EXPANDED_PREFIX, kept_from
from opensupervisor.runtime import summary_model
from opensupervisor.vault import KEY_ENV
from opensupervisor.wire.items import item_text
from opensupervisor.workspace import load_workspace
from tests.conftest import MODEL, ProcessServer, Server, ThreadServer, wait_until
from tests.test_durable import stored_events
from tests.test_identity import client as user_client
from tests.test_identity import make_user
from tests.test_model_requests import CALC, WEATHER, requests_for, tagged


def test_a_chain_is_compacted_and_goes_on_from_the_summary(server: Server) -> None:
    client = server.client()
    tag = tagged("add twice")
    first = client.responses.create(model=MODEL, input=tag, tools=[CALC])
    compacted = client.responses.compact(model=MODEL, previous_response_id=first.id,
                                         input=[{"role": "user", "content": "and remember the colour teal"}])
    assert compacted.object == "response.compaction" and compacted.id.startswith("cmp_")
    assert compacted.usage.input_tokens > 0 and compacted.usage.total_tokens >= compacted.usage.input_tokens
    *users, sealed = compacted.output
    assert [item_text(u.model_dump(warnings=False)) for u in users] == [tag, "and remember the colour teal"]
    assert all(u.type == "message" and u.role == "user" and u.status == "completed" for u in users)
    assert sealed.type == "compaction" and len(sealed.id) <= 64
    assert "teal" not in sealed.encrypted_content  # sealed, not merely encoded
    # A new chain starts from the compacted output (as Open Responses says clients do).
    tag2 = tagged("after compaction")
    carried = [i.model_dump(exclude_none=True, warnings=False) for i in compacted.output]
    follow = client.responses.create(model=MODEL, input=[*carried, {"role": "user", "content": tag2}])
    assert follow.status == "completed"
    [sent] = requests_for(server, tag2)
    summary = [i for i in sent.items if i.get("role") == "developer"]
    assert len(summary) == 1 and item_text(summary[0]).startswith(EXPANDED_PREFIX)
    # The summary was written from the whole transcript: the tool results are in it.
    assert "[tool result] 3" in item_text(summary[0]) and "teal" in item_text(summary[0])
    assert not any(i.get("type") == "compaction" for i in sent.items)


def test_a_compaction_item_is_refused_when_changed_or_someone_elses(server: Server) -> None:
    client = server.client()
    sealed = client.responses.compact(model=MODEL, input="a secret plan").output[-1]
    assert sealed.type == "compaction"
    content = sealed.encrypted_content
    raw = bytearray(base64.urlsafe_b64decode(content))
    raw[-40] ^= 1
    variants = {
        "a flipped bit": base64.urlsafe_b64encode(bytes(raw)).decode(),
        "cut short": content[:-8],
        "not a token": "hello",
        "sealed with another key": Fernet(Fernet.generate_key()).encrypt(
            b'{"kind": "opensupervisor.compaction.v1", "sub": "admin", "summary": "forged"}').decode(),
    }
    for why, changed in variants.items():
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model=MODEL, input=[{"type": "compaction", "encrypted_content": changed},
                                                        {"role": "user", "content": "go on"}])
        body: Any = err.value.body
        assert (body["param"], body["code"]) == ("input[0].encrypted_content", "invalid_encrypted_content"), why
    # Bound to the principal it was made for: another user cannot use it, nor read it through the model.
    mallory = user_client(server, make_user(server, f"mallory-{uuid.uuid4().hex[:8]}"))
    with pytest.raises(openai.BadRequestError) as err:
        mallory.responses.create(model=MODEL, input=[{"type": "compaction", "encrypted_content": content},
                                                     {"role": "user", "content": "what was the plan?"}])
    assert err.value.body["code"] == "invalid_encrypted_content"
    ok = client.responses.create(model=MODEL, input=[sealed.model_dump(exclude_none=True),
                                                     {"role": "user", "content": "go on"}])
    assert ok.status == "completed"


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"input": "x"}, "model", 400),
    ({"model": "", "input": "x"}, "model", 400),
    ({"model": "no-such-model", "input": "x"}, "model", 404),
    ({"model": MODEL}, "input", 400),
    ({"model": MODEL, "input": [{"type": "nonsense"}]}, "input[0].type", 400),
    ({"model": MODEL, "input": "x", "tools": []}, "tools", 400),
    ({"model": MODEL, "previous_response_id": "resp_missing"}, "previous_response_id", 400),
    ({"model": MODEL, "input": [{"type": "item_reference", "id": "msg_missing"}]}, "input[0].id", 400),
    ({"model": MODEL, "input": [{"type": "compaction", "encrypted_content": ""}]}, "input[0].encrypted_content", 400),
])
def test_bad_compact_bodies_are_refused_naming_the_field(server: Server, body: dict[str, Any], param: str,
                                                         status: int) -> None:
    with httpx.Client(base_url=server.v1, headers={"Authorization": f"Bearer {server.token}"}) as http:
        answer = http.post("/responses/compact", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param


def test_compact_answers_under_every_prefix_and_needs_a_token(server: Server) -> None:
    for prefix in ("/v1", "/ai-gateway/mlflow/v1", "/mlflow/v1"):
        with httpx.Client(base_url=server.url) as http:
            ok = http.post(f"{prefix}/responses/compact", json={"model": MODEL, "input": "hi"},
                           headers={"Authorization": f"Bearer {server.token}"})
            assert ok.status_code == 200 and ok.json()["object"] == "response.compaction", ok.text
            assert http.post(f"{prefix}/responses/compact", json={"model": MODEL, "input": "hi"}).status_code == 401


SUMMARY_WORKSPACE = """
[models.chat]
provider = "scripted"

[models.summarizer]
provider = "scripted"

[compaction]
model = "summarizer"
"""


def test_the_workspace_names_the_model_that_writes_summaries(tmp_path: Path) -> None:
    path = tmp_path / "workspace.toml"
    path.write_text(SUMMARY_WORKSPACE)
    with ThreadServer(f"sqlite:///{tmp_path}/store.db", workspace=path) as server:
        client = server.client()
        compacted = client.responses.compact(model="chat", input="the launch is on Friday")
        assert compacted.output[-1].type == "compaction"
        # The summary is billed to the model that wrote it, with what it read and wrote.
        def billed_rows() -> list[dict[str, Any]]:
            with server.http() as http:
                rows = http.get("/admin/v1/usage", params={"group_by": "model"}).json()["data"]
            return [r for r in rows if r["model"] == "summarizer"]

        wait_until(lambda: bool(billed_rows()), what="the summary's usage row")
        [billed] = billed_rows()
        assert compacted.usage is not None and compacted.usage.output_tokens > 0
        assert (billed["input_tokens"], billed["output_tokens"], billed["model_calls"]) == (
            compacted.usage.input_tokens, compacted.usage.output_tokens, 1)
        tag = tagged("what day?")
        client.responses.create(model="chat", input=[compacted.output[-1].model_dump(exclude_none=True),
                                                     {"role": "user", "content": tag}])
        chat = server.model("chat")
        assert isinstance(chat, ScriptedModel)
        [sent] = [r for r in chat.requests if any(tag in item_text(i) for i in r.items)]
        assert item_text(sent.items[0]).startswith(f"{EXPANDED_PREFIX}summarizer (scripted) received: ")
        assert "the launch is on Friday" in item_text(sent.items[0])
    path.write_text(SUMMARY_WORKSPACE.replace('model = "summarizer"', 'model = "nowhere"'))
    with pytest.raises(ConfigError, match=r"\[compaction\] model: 'nowhere'"):
        summary_model(load_workspace(path))


AUTO: Any = [{"type": "compaction", "compact_threshold": 60}]
LONG = "The quarterly figures: " + ", ".join(f"region {i} sold {i * 37} units" for i in range(30)) + "."


def test_a_history_past_the_threshold_is_compacted_before_the_model_reads_it(server: Server) -> None:
    client = server.client()
    first = client.responses.create(model=MODEL, input=LONG)
    tag = tagged("what sold best?")
    second = client.responses.create(model=MODEL, input=tag, previous_response_id=first.id, context_management=AUTO)
    kinds = [i.type for i in second.output]
    assert kinds == ["compaction", "message"], kinds
    [sent] = requests_for(server, tag)
    assert [i.get("role") for i in sent.items] == ["developer", "user"]
    summary = item_text(sent.items[0])
    assert summary.startswith(EXPANDED_PREFIX) and "region 29 sold 1073 units" in summary
    plain = client.responses.create(model=MODEL, input=tagged("what sold best?"), previous_response_id=first.id)
    assert second.usage is not None and plain.usage is not None
    assert second.usage.input_tokens > plain.usage.input_tokens  # the summary's call counts too
    # The next turn goes on from the summary: what it compacted is not read again, what it kept is.
    tag3 = tagged("and the worst?")
    client.responses.create(model=MODEL, input=tag3, previous_response_id=second.id)
    [sent3] = requests_for(server, tag3)
    assert [item_text(i) for i in sent3.items] == [summary, tag, second.output_text, tag3]
    # Within the run, a history holding nothing before its turn but the summary is not compacted again.
    tools = client.responses.create(model=MODEL, input=tagged("add twice"), previous_response_id=first.id,
                                    context_management=AUTO, tools=[CALC])
    assert [i.type for i in tools.output].count("compaction") == 1 and tools.output_text == "Sums done."
    # Under the threshold nothing is compacted.
    small = client.responses.create(model=MODEL, input="hi", context_management=[
        {"type": "compaction", "compact_threshold": 100_000}])
    assert [i.type for i in small.output] == ["message"]


def test_compaction_keeps_tool_calls_with_their_outputs(server: Server) -> None:
    call = {"type": "function_call", "call_id": "call_late", "name": "get_weather", "arguments": "{}"}
    history: Any = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": LONG}]},
                    call, {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hm"}]},
                    {"type": "function_call_output", "call_id": "call_late", "output": "sunny"}]
    assert kept_from(history) == 1  # moved back from the last user message to the call
    assert kept_from(history[:1]) == 0 and kept_from([]) == 0
    client = server.client()
    tag = tagged("a call in the middle")
    response = client.responses.create(model=MODEL, context_management=AUTO, tools=[WEATHER], input=[
        history[0], call, {"role": "user", "content": tag}, history[3]])
    assert response.output[0].type == "compaction"
    [sent] = requests_for(server, tag)
    assert [i["type"] for i in sent.items] == ["message", "function_call", "message", "function_call_output"]
    assert item_text(sent.items[0]).startswith(EXPANDED_PREFIX) and LONG[-30:] in item_text(sent.items[0])
    assert sent.items[1]["call_id"] == sent.items[3]["call_id"] == "call_late"


def test_a_background_run_records_its_compaction_once(server: Server) -> None:
    client = server.client()
    first = client.responses.create(model=MODEL, input=LONG)
    queued = client.responses.create(model=MODEL, input="pause a moment", previous_response_id=first.id,
                                     context_management=AUTO, background=True, stream=True)
    events = list(queued)
    done = events[-1].response
    assert done.status == "completed" and done.output[0].type == "compaction"
    stored = client.responses.retrieve(done.id)
    assert stored.output[0].model_dump() == done.output[0].model_dump()
    items = [e.item for e in events if e.type == "response.output_item.done"]
    assert items[0].model_dump() == done.output[0].model_dump()


@pytest.mark.parametrize(("policy", "param"), [
    ([{"type": "truncation"}], "context_management[0].type"),
    ([{"type": "compaction", "compact_threshold": 0}], "context_management[0].compact_threshold"),
    ([{"type": "compaction", "compact_threshold": "many"}], "context_management[0].compact_threshold"),
    ([{"type": "compaction", "every": 3}], "context_management[0].every"),
    ([{"type": "compaction"}, {"type": "compaction"}], "context_management"),
    ([{"type": "compaction"}], "context_management[0].compact_threshold"),  # test-model's window is unknown
    ({"type": "compaction"}, "context_management"),
])
def test_bad_context_management_is_refused_naming_the_field(server: Server, policy: Any, param: str) -> None:
    with httpx.Client(base_url=server.v1, headers={"Authorization": f"Bearer {server.token}"}) as http:
        answer = http.post("/responses", json={"model": MODEL, "input": "x", "context_management": policy})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_the_threshold_defaults_to_most_of_the_models_window(server: Server) -> None:
    client = server.client()
    response = client.responses.create(model="window-4k", input=LONG * 4, context_management=[{"type": "compaction"}])
    assert response.status == "completed"
    assert [i.type for i in response.output] == ["message"]  # one user message: nothing before it to compact


CRASH_WORKSPACE = """
[models.chat]
provider = "scripted"

[[models.chat.script]]
when = "slowly now"
turns = [{ text = "Slowly answered.", delay_s = 30 }]
"""


def test_a_resumed_run_keeps_the_compaction_it_made_before_the_crash(tmp_path: Path) -> None:
    """Killed with SIGKILL in the model call after its compaction, the run resumes from the recorded
    step: the same sealed item (a summary written again would be sealed anew), no second one."""
    path = tmp_path / "workspace.toml"
    path.write_text(CRASH_WORKSPACE)
    process = ProcessServer(tmp_path, config=path)
    with process as first:
        client = first.client()
        earlier = client.responses.create(model="chat", input=LONG)
        stream = client.responses.create(model="chat", input="slowly now", previous_response_id=earlier.id,
                                         context_management=AUTO, background=True, stream=True)
        response_id = next(iter(stream)).response.id
        stream.close()

        def compacted() -> bool:
            output = client.responses.retrieve(response_id).output
            return bool(output) and output[0].type == "compaction"

        wait_until(compacted, timeout=30, what="the compaction to be recorded")
        before = client.responses.retrieve(response_id).output[0].model_dump()
        process.kill()
    path.write_text(CRASH_WORKSPACE.replace("delay_s = 30", "delay_s = 0"))
    with ProcessServer(tmp_path, config=path, log_name="restarted.log") as second:
        client = second.client()
        wait_until(lambda: client.responses.retrieve(response_id).status == "completed", timeout=60,
                   what="the resumed run to complete")
        done = client.responses.retrieve(response_id)
        assert [i.type for i in done.output] == ["compaction", "message"]
        assert done.output[0].model_dump() == before
        log = stored_events(second, response_id)
        assert [e["sequence_number"] for e in log] == list(range(len(log)))
        assert sum(e["type"] == "response.output_item.done" and e["item"]["type"] == "compaction" for e in log) == 1


def test_a_conversations_summary_sealed_with_another_key_is_refused_naming_the_conversation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())
    with ThreadServer(url) as running:
        client = running.client()
        sealed = client.responses.compact(model=MODEL, input="the launch is on Friday").output[-1]
        conversation = client.conversations.create(items=[sealed.model_dump(exclude_none=True)])
    monkeypatch.setenv(KEY_ENV, Fernet.generate_key().decode())  # the key changed since
    with ThreadServer(url) as running:
        client = running.client()
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model=MODEL, input="what day?", conversation=conversation.id)
        assert refused.value.body["code"] == "invalid_encrypted_content"
        assert refused.value.body["param"] == "conversation"
        # The refusal released the conversation: a request that does not need the summary is not locked out.
        [held] = client.conversations.items.list(conversation.id).data
        client.conversations.items.delete(held.id, conversation_id=conversation.id)
        again = client.responses.create(model=MODEL, input="what day?", conversation=conversation.id)
        assert again.status == "completed"
