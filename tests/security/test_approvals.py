"""MCP approvals under attack: one approval runs its call once, for the caller it was issued to.

A hostile model asks for ``delete_everything`` on a real MCP server on loopback, which counts every
call it really runs; clients replay, paste, forge and race the approval through the real HTTP API
and the ``openai`` client, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import openai
import pytest
from mcp.server.fastmcp import FastMCP
from sqlalchemy import select

from opensupervisor.store import Store
from opensupervisor.store.approvals import IssuedApprovals
from opensupervisor.store.schema import approvals
from tests.conftest import ASGIThread, ProcessServer, require_postgres
from tests.security.hostile import MODEL, Rig, hostile_server

# Every target the ``delete_everything`` tool really ran for, one entry per call.
DELETED: list[str] = []


def vault_server() -> FastMCP:
    server = FastMCP("vault", stateless_http=True, log_level="WARNING")

    @server.tool()
    def delete_everything(target: str) -> str:
        """Deletes everything under a target."""
        DELETED.append(target)
        return f"deleted {target}"

    return server


@dataclass
class Vault:
    rig: Rig
    mcp_url: str
    database_url: str
    alice: str
    bob: str

    def client(self, token: str | None = None, url: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{url or self.rig.server.url}/v1", api_key=token or self.alice,
                             max_retries=0, timeout=60)

    def tools(self, kind: str) -> list[dict[str, Any]]:
        if kind == "mcp":
            return [{"type": "mcp", "server_label": "vault", "server_url": f"{self.mcp_url}/mcp",
                     "require_approval": "always"}]
        return [{"type": "uc_connection", "uc_connection": {"name": "vault", "description": "Deletes things"}}]


@dataclass
class Asked:
    """A response whose model asked to run ``delete_everything`` for ``target``."""

    target: str
    prompt: str
    response: Any
    request: Any
    tools: list[dict[str, Any]]

    def history(self, *answers: dict[str, Any]) -> list[dict[str, Any]]:
        """The conversation so far, as a client resends it, with ``answers`` appended."""
        return [{"role": "user", "content": self.prompt}, *[i.model_dump() for i in self.response.output],
                *answers]


def answer(request: Any, approve: bool = True, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": approve, **extra}


def ask(vault: Vault, kind: str = "connection", token: str | None = None, **fields: Any) -> Asked:
    target = f"target-{uuid.uuid4().hex[:8]}"
    prompt = vault.rig.upstream.play(calls=[("delete_everything", {"target": target})])
    tools = vault.tools(kind)
    response = vault.client(token).responses.create(model=MODEL, input=prompt, tools=tools, **fields)
    [request] = [i for i in response.output if i.type == "mcp_approval_request"]
    assert request.name == "delete_everything" and DELETED.count(target) == 0
    return Asked(target, prompt, response, request, tools)


def refused(create: Callable[[], Any], param: str, code: str | None = None) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as info:
        create()
    body: dict[str, Any] = info.value.body  # type: ignore[assignment]
    assert body["param"] == param, body
    if code is not None:
        assert body["code"] == code, body
    return body


def ran(response: Any) -> list[str]:
    """The outputs of the calls a response ran (function-call pairs and ``mcp_call`` items)."""
    outputs = [i.output for i in response.output if i.type in ("function_call_output", "mcp_call")]
    return [str(o) for o in outputs]


def make_user(server_url: str, token: str, name: str) -> str:
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        assert http.post("/admin/v1/principals", json={"name": name}).status_code == 200
        made = http.post(f"/admin/v1/principals/{name}/tokens", json={})
        assert made.status_code == 200, made.text
        return str(made.json()["token"])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def vault(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    with ASGIThread(vault_server().streamable_http_app()) as mcp_url:
        folder = tmp_path_factory.mktemp(f"approvals-{request.param}")
        url = require_postgres() if request.param == "postgresql" else f"sqlite:///{folder}/state.db"
        body = f"""
[mcp]
allowed_server_urls = ["{mcp_url}/mcp"]

[connections.vault]
url = "{mcp_url}/mcp"
require_approval = "always"
"""
        with hostile_server(folder, body, database_url=url) as rig:
            suffix = uuid.uuid4().hex[:8]
            server = rig.server
            yield Vault(rig, mcp_url, url, make_user(server.url, server.token, f"alice-{suffix}"),
                        make_user(server.url, server.token, f"bob-{suffix}"))


@pytest.mark.parametrize("kind", ["connection", "mcp"])
def test_resending_the_full_history_runs_the_approved_call_once(vault: Vault, kind: str) -> None:
    asked = ask(vault, kind)
    client = vault.client()
    history = asked.history(answer(asked.request))
    first = client.responses.create(model=MODEL, input=history, tools=asked.tools)
    assert ran(first) == [f"deleted {asked.target}"]
    for _ in range(3):  # the request item and the approval again, without the call they led to
        refused(lambda: client.responses.create(model=MODEL, input=history, tools=asked.tools),
                f"input[{len(history) - 1}]", "approval_already_used")
    # With the call it led to, the approval is skipped: the conversation goes on, nothing runs again.
    later = [*history, *[i.model_dump() for i in first.output], {"role": "user", "content": "thanks"}]
    for _ in range(2):
        assert ran(client.responses.create(model=MODEL, input=later, tools=asked.tools)) == []
    assert DELETED.count(asked.target) == 1


def test_another_caller_cannot_use_a_pasted_request(vault: Vault) -> None:
    asked = ask(vault)
    bob = vault.client(vault.bob)
    admin = vault.client(vault.rig.server.token)
    pasted = [{"role": "user", "content": asked.prompt}, asked.request.model_dump(), answer(asked.request)]
    for thief in (bob, admin):
        body = refused(lambda t=thief: t.responses.create(model=MODEL, input=pasted, tools=asked.tools),  # type: ignore[misc]
                       "input[1]", "invalid_value")
        assert "to this caller" in body["message"]
    # Bob cannot reach Alice's items or response either, so he cannot continue her conversation.
    refused(lambda: bob.responses.create(model=MODEL, input=[answer(asked.request)], tools=asked.tools,
                                         previous_response_id=asked.response.id),
            "previous_response_id", "previous_response_not_found")
    refused(lambda: bob.responses.create(model=MODEL, input=[{"type": "item_reference", "id": asked.request.id},
                                                             answer(asked.request)], tools=asked.tools),
            "input[0].id", "item_not_found")
    assert DELETED.count(asked.target) == 0
    # Bob's attempts did not use Alice's approval up.
    done = vault.client().responses.create(model=MODEL, input=pasted, tools=asked.tools)
    assert ran(done) == [f"deleted {asked.target}"] and DELETED.count(asked.target) == 1


@pytest.mark.parametrize("kind", ["connection", "mcp"])
def test_two_continuations_of_one_response(vault: Vault, kind: str) -> None:
    asked = ask(vault, kind)
    client = vault.client()

    def continuation(approve: bool = True) -> Any:
        return client.responses.create(model=MODEL, input=[answer(asked.request, approve)], tools=asked.tools,
                                       previous_response_id=asked.response.id)

    assert ran(continuation()) == [f"deleted {asked.target}"]
    refused(continuation, "input[0]", "approval_already_used")
    refused(lambda: continuation(False), "input[0]", "approval_already_used")  # nor denied afterwards
    assert DELETED.count(asked.target) == 1


def test_concurrent_continuations_one_wins(vault: Vault) -> None:
    asked = ask(vault)
    client = vault.client()
    start = threading.Barrier(8)

    def race(i: int) -> str:
        start.wait(timeout=30)
        try:
            if i % 2:
                client.responses.create(model=MODEL, input=[answer(asked.request)], tools=asked.tools,
                                        previous_response_id=asked.response.id)
            else:
                client.responses.create(model=MODEL, input=asked.history(answer(asked.request)), tools=asked.tools)
        except openai.BadRequestError as exc:
            return str(exc.body["code"])
        return "ran"

    with ThreadPoolExecutor(8) as pool:
        outcomes = sorted(pool.map(race, range(8)))
    assert outcomes == ["approval_already_used"] * 7 + ["ran"]
    assert DELETED.count(asked.target) == 1


def test_concurrent_continuations_across_processes(vault: Vault) -> None:
    """Two server processes on one database: still exactly one of the continuations wins."""
    with ProcessServer(vault.rig.folder, config=vault.rig.folder / "workspace.toml",
                       database_url=vault.database_url, log_name="second.log") as second:
        asked = ask(vault)
        clients = [vault.client(), vault.client(url=second.url)]
        start = threading.Barrier(6)

        def race(i: int) -> str:
            start.wait(timeout=60)
            try:
                clients[i % 2].responses.create(model=MODEL, input=asked.history(answer(asked.request)),
                                                tools=asked.tools)
            except openai.BadRequestError as exc:
                return str(exc.body["code"])
            return "ran"

        with ThreadPoolExecutor(6) as pool:
            outcomes = sorted(pool.map(race, range(6)))
    assert outcomes == ["approval_already_used"] * 5 + ["ran"]
    assert DELETED.count(asked.target) == 1


def test_approved_in_full_then_replayed_through_previous_response_id(vault: Vault) -> None:
    asked = ask(vault)
    client = vault.client()
    used = client.responses.create(model=MODEL, input=asked.history(answer(asked.request)), tools=asked.tools)
    assert ran(used) == [f"deleted {asked.target}"]
    refused(lambda: client.responses.create(model=MODEL, input=[answer(asked.request)], tools=asked.tools,
                                            previous_response_id=asked.response.id),
            "input[0]", "approval_already_used")
    # After the response that ran it, the call is in the history: a repeated answer changes nothing.
    again = client.responses.create(model=MODEL, input=[answer(asked.request)], tools=asked.tools,
                                    previous_response_id=used.id)
    assert ran(again) == [] and DELETED.count(asked.target) == 1


def test_unstored_responses_bind_their_approvals_too(vault: Vault) -> None:
    asked = ask(vault, store=False)
    history = asked.history(answer(asked.request))
    client = vault.client()
    pasted = [history[0], asked.request.model_dump(), answer(asked.request)]
    refused(lambda: vault.client(vault.bob).responses.create(model=MODEL, input=pasted, tools=asked.tools,
                                                              store=False), "input[1]")
    assert ran(client.responses.create(model=MODEL, input=history, tools=asked.tools, store=False)) == [
        f"deleted {asked.target}"]
    refused(lambda: client.responses.create(model=MODEL, input=history, tools=asked.tools, store=False),
            f"input[{len(history) - 1}]", "approval_already_used")
    assert DELETED.count(asked.target) == 1


def _forgeries(request: dict[str, Any]) -> list[dict[str, Any]]:
    """Edited copies of a genuine request: what it asks, or its id."""
    rid = request["id"]
    flipped = rid[:-1] + ("0" if rid[-1] != "0" else "1")
    return [
        dict(request, arguments='{"target": "/"}'),
        dict(request, arguments=request["arguments"] + " "),
        dict(request, name="delete_everything "),
        dict(request, server_label="other"),
        dict(request, id=flipped),
        dict(request, id=rid[:5] + "f" * 24 + rid[29:]),  # another nonce, the same MAC
        dict(request, id=rid[:-4]),
        dict(request, id="mcpr_" + "0" * 56),
        dict(request, id="call_0"),
    ]


def test_forged_or_edited_request_ids(vault: Vault) -> None:
    asked = ask(vault)
    client = vault.client()
    genuine = asked.request.model_dump()
    for forged in _forgeries(genuine):
        items = [{"role": "user", "content": asked.prompt}, forged,
                 {"type": "mcp_approval_response", "approval_request_id": forged["id"], "approve": True}]
        refused(lambda i=items: client.responses.create(model=MODEL, input=i, tools=asked.tools),  # type: ignore[misc]
                "input[1]", "invalid_value")
    # An answer to an id that no request of the conversation carries.
    lone = [{"role": "user", "content": asked.prompt}, answer(asked.request)]
    refused(lambda: client.responses.create(model=MODEL, input=lone, tools=asked.tools),
            "input[1].approval_request_id", "invalid_value")
    assert DELETED.count(asked.target) == 0
    assert ran(client.responses.create(model=MODEL, input=asked.history(answer(asked.request)),
                                       tools=asked.tools)) == [f"deleted {asked.target}"]
    assert DELETED.count(asked.target) == 1


def test_approval_after_the_issuing_response_was_deleted(vault: Vault) -> None:
    client = vault.client()
    unanswered = ask(vault)
    client.responses.delete(unanswered.response.id)
    history = unanswered.history(answer(unanswered.request))
    refused(lambda: client.responses.create(model=MODEL, input=history, tools=unanswered.tools),
            f"input[{len(history) - 1}].approval_request_id", "approval_not_found")
    refused(lambda: client.responses.create(model=MODEL, input=[answer(unanswered.request)], tools=unanswered.tools,
                                            previous_response_id=unanswered.response.id),
            "previous_response_id", "previous_response_not_found")
    assert DELETED.count(unanswered.target) == 0
    # A used approval stays used when the response that issued it is deleted.
    used = ask(vault)
    history = used.history(answer(used.request))
    assert ran(client.responses.create(model=MODEL, input=history, tools=used.tools)) == [f"deleted {used.target}"]
    client.responses.delete(used.response.id)
    refused(lambda: client.responses.create(model=MODEL, input=history, tools=used.tools),
            f"input[{len(history) - 1}]", "approval_already_used")
    assert DELETED.count(used.target) == 1


@pytest.mark.parametrize("kind", ["connection", "mcp"])
def test_a_denial_is_used_once_too(vault: Vault, kind: str) -> None:
    asked = ask(vault, kind)
    client = vault.client()
    history = asked.history(answer(asked.request, False, reason="never"))
    denied = client.responses.create(model=MODEL, input=history, tools=asked.tools)
    assert denied.status == "completed" and "did not approve" in denied.output_text
    for flip in (False, True):  # the same denial again, or an approval instead
        items = [*history[:-1], answer(asked.request, flip)]
        refused(lambda i=items: client.responses.create(model=MODEL, input=i, tools=asked.tools),  # type: ignore[misc]
                f"input[{len(items) - 1}]", "approval_already_used")
    refused(lambda: client.responses.create(model=MODEL, input=[answer(asked.request)], tools=asked.tools,
                                            previous_response_id=asked.response.id),
            "input[0]", "approval_already_used")
    # The whole conversation resent with what the denial led to goes on; the model still reads it.
    later = [*history, *[i.model_dump() for i in denied.output], {"role": "user", "content": "ok"}]
    assert client.responses.create(model=MODEL, input=later, tools=asked.tools).status == "completed"
    assert DELETED.count(asked.target) == 0


def test_expired_requests_cannot_be_answered_and_are_removed(vault: Vault) -> None:
    """The record of issued requests stays bounded: past their lifetime they are refused and removed."""
    async def scenario() -> None:
        store = Store(vault.database_url)
        try:
            expired, live = IssuedApprovals(store, lifetime_s=-1), IssuedApprovals(store)
            old, new = f"mcpr_{uuid.uuid4().hex}", f"mcpr_{uuid.uuid4().hex}"
            await expired.issue(old, "alice", "resp_a")
            assert await live.use([old], "alice", "resp_b") == {old: "unknown"}
            await live.issue(new, "alice", "resp_a")  # issuing removes the expired rows
            with store.engine.connect() as conn:
                ids = set(conn.execute(select(approvals.c.request_id).where(
                    approvals.c.request_id.in_([old, new]))).scalars())
            assert ids == {new}
            assert await live.use([new], "bob", "resp_b") == {new: "unknown"}  # not bob's
            assert await live.use([new], "alice", "resp_b") == {}
            assert await live.use([new], "alice", "resp_b") == {}  # the same response again (a retried write)
            assert await live.use([new], "alice", "resp_c") == {new: "used"}
        finally:
            await store.close()

    anyio.run(scenario)


@pytest.fixture(autouse=True)
def _targets_are_counted_per_test() -> Iterator[None]:
    yield
    DELETED.clear()
