"""Principals and personal access tokens: who may call, and each caller sees only their own responses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, ThreadServer, process_env, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with ThreadServer(f"sqlite:///{tmp_path_factory.mktemp('identity')}/state.db") as running:
        yield running


def admin(server: Server) -> httpx.Client:
    return server.http()


def make_user(server: Server, name: str, **fields: Any) -> str:
    with admin(server) as http:
        created = http.post("/admin/v1/principals", json={"name": name, **fields})
        assert created.status_code == 200, created.text
        token = http.post(f"/admin/v1/principals/{name}/tokens", json={"comment": "tests"})
        assert token.status_code == 200, token.text
        return str(token.json()["token"])


def client(server: Server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=token, max_retries=0)


def test_each_user_sees_only_their_own_responses(server: Server) -> None:
    alice, bob = client(server, make_user(server, "alice")), client(server, make_user(server, "bob"))
    mine = alice.responses.create(model=MODEL, input="hello")
    background = alice.responses.create(model=MODEL, input="hello", background=True)
    assert alice.responses.retrieve(mine.id).id == mine.id
    for call in (lambda: bob.responses.retrieve(mine.id), lambda: bob.responses.delete(mine.id),
                 lambda: bob.responses.cancel(background.id),
                 lambda: bob.responses.input_items.list(mine.id)):
        with pytest.raises(openai.NotFoundError):  # 404, not 403: an id says nothing about who owns it
            call()
    with pytest.raises(openai.BadRequestError) as continued:
        bob.responses.create(model=MODEL, input="and?", previous_response_id=mine.id)
    assert continued.value.body["code"] == "previous_response_not_found"
    assert client(server, server.token).responses.retrieve(mine.id).id == mine.id  # admins see all
    assert alice.responses.create(model=MODEL, input="and?", previous_response_id=mine.id).status == "completed"


def test_tokens_are_shown_once_and_can_be_revoked_or_expire(server: Server) -> None:
    token = make_user(server, "carol")
    carol = client(server, token)
    assert carol.responses.create(model=MODEL, input="hi").status == "completed"
    with admin(server) as http:
        listed = http.get("/admin/v1/tokens", params={"principal": "carol"}).json()["data"]
        assert len(listed) == 1 and "token" not in listed[0] and token not in http.get("/admin/v1/tokens").text
        assert http.delete(f"/admin/v1/tokens/{listed[0]['id']}").json() == {"id": listed[0]["id"], "revoked": True}
        short = http.post("/admin/v1/principals/carol/tokens", json={"lifetime_seconds": 1}).json()["token"]
    with pytest.raises(openai.AuthenticationError) as revoked:
        carol.responses.create(model=MODEL, input="hi")
    assert "revoked" in revoked.value.body["message"]

    def expired() -> bool:
        try:
            client(server, short).models.list()
        except openai.AuthenticationError as exc:
            return "expired" in str(exc)
        return False

    wait_until(expired, timeout=10, what="the short-lived token to expire")


def test_auth_and_permission_errors(server: Server) -> None:
    token = make_user(server, "dave")
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/models").status_code == 401
        wrong = http.get("/v1/models", headers={"Authorization": "Bearer osp_not-a-token"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "invalid_request_error"
        forbidden = http.get("/admin/v1/principals", headers={"Authorization": f"Bearer {token}"})
        assert forbidden.status_code == 403 and "admin" in forbidden.json()["error"]["message"]
    with admin(server) as http:
        assert http.post("/admin/v1/principals", json={"name": "dave"}).json()["error"]["code"] == "already_exists"
        assert http.post("/admin/v1/principals", json={"name": "bad name"}).json()["error"]["param"] == "name"
        assert http.post("/admin/v1/principals", json={"name": "x", "kind": "robot"}).json()["error"]["param"] == "kind"
        assert http.post("/admin/v1/principals/nobody/tokens", json={}).status_code == 404
        short = http.post("/admin/v1/principals/dave/tokens", json={"lifetime_seconds": 0})
        assert short.status_code == 400 and short.json()["error"]["param"] == "lifetime_seconds"
        for query, param in (({"since": "yesterday"}, "since"), ({"until": "2026-13"}, "until")):
            bad = http.get("/admin/v1/usage", params=query)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text


def test_groups_and_admins(server: Server) -> None:
    boss = client(server, make_user(server, "erin", admin=True))
    with admin(server) as http:
        assert http.post("/admin/v1/principals", json={"name": "analysts", "kind": "group"}).status_code == 200
        member = http.post("/admin/v1/principals/analysts/members", json={"member": "erin"})
        assert member.status_code == 200 and member.json()["groups"] == ["analysts"]
        not_group = http.post("/admin/v1/principals/erin/members", json={"member": "analysts"})
        assert not_group.status_code == 400 and not_group.json()["error"]["param"] == "member"
        assert http.post("/admin/v1/principals/analysts/tokens", json={}).status_code == 404
    assert boss.models.list().data  # an admin user works as the bootstrap admin does
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {boss.api_key}"}) as http:
        assert http.get("/admin/v1/principals").status_code == 200


def test_the_cli_manages_users_and_tokens(tmp_path: Path) -> None:
    env = process_env(None, f"sqlite:///{tmp_path}/state.db", None)
    cli = [sys.executable, "-m", "opensupervisor"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    assert run("users", "add", "frank").returncode == 0
    assert run("users", "add", "reporting", "--group").returncode == 0
    assert run("users", "add-member", "reporting", "frank").returncode == 0
    made = run("tokens", "create", "frank", "--lifetime-days", "30", "--comment", "laptop")
    assert made.returncode == 0 and made.stdout.strip().startswith("osp_")
    listed = run("tokens", "list")
    assert "frank" in listed.stdout and "laptop" in listed.stdout and made.stdout.strip() not in listed.stdout
    users = run("users", "list")
    assert "frank\tuser\treporting" in users.stdout and "reporting\tgroup" in users.stdout
    token_id = listed.stdout.split()[0]
    assert run("tokens", "revoke", token_id).returncode == 0
    assert run("tokens", "revoke", token_id).returncode != 0
    assert run("users", "remove", "frank").returncode == 0


@pytest.fixture(scope="module")
def governed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.test_tracing import workspace

    folder = tmp_path_factory.mktemp("grants")
    config = workspace(folder, '\n[access]\ndefault = "allow"\n\n[access.grants]\n"genie_space:sales" = ["analysts"]\n')
    with ThreadServer(f"sqlite:///{folder}/state.db", config) as running:
        yield running


GENIE: Any = [{"type": "genie_space", "genie_space": {"id": "sales", "description": "Sales data"}}]


def test_grants_decide_who_may_use_a_tool_or_model(governed: Server) -> None:
    alice, bob = client(governed, make_user(governed, "alice")), client(governed, make_user(governed, "bob"))
    with admin(governed) as http:
        http.post("/admin/v1/principals", json={"name": "analysts", "kind": "group"})
        http.post("/admin/v1/principals/analysts/members", json={"member": "alice"})
    assert alice.responses.create(model="agent", input="sales please", tools=GENIE).output_text == "Sales are 42."
    with pytest.raises(openai.PermissionDeniedError) as refused:
        bob.responses.create(model="agent", input="sales please", tools=GENIE)
    assert refused.value.body["param"] == "tools[0]"
    assert refused.value.body["message"] == "You do not have CAN_RUN on genie space 'sales'."
    with admin(governed) as http:
        locked = http.put("/admin/v1/grants/model:agent", json={"principals": ["alice"]})
        assert locked.status_code == 200 and locked.json()["privilege"] == "CAN_QUERY"
        listing = http.get("/admin/v1/grants").json()
        assert {(g["object"], g["origin"]) for g in listing["data"]} == {
            ("genie_space:sales", "workspace"), ("model:agent", "stored")}
        for obj, body, param in (("genie_space:sales", {"principals": ["bob"]}, "object"),
                                 ("model:agent", {"principals": ["nobody"]}, "principals"),
                                 ("table:x", {"principals": []}, "object")):
            bad = http.put(f"/admin/v1/grants/{obj}", json=body)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    with pytest.raises(openai.PermissionDeniedError) as model_refused:
        bob.responses.create(model="agent", input="hi")
    assert model_refused.value.body["param"] == "model"
    assert alice.responses.create(model="agent", input="hi").status == "completed"
    assert client(governed, governed.token).responses.create(model="agent", input="hi", tools=GENIE).status \
        == "completed"  # admins may use everything
    with admin(governed) as http:
        assert http.delete("/admin/v1/grants/model:agent").json() == {"object": "model:agent", "deleted": True}
    assert bob.responses.create(model="agent", input="hi").status == "completed"


def test_the_default_for_objects_without_grants() -> None:
    from opensupervisor.identity import Principal
    from opensupervisor.identity.grants import Grant, Grants

    carol = Principal(id="p_1", name="carol", groups=frozenset({"ops"}))
    grants = [Grant("app:tickets", "ops", "CAN_USE")]
    assert Grants(grants, "allow").may(carol, "genie_space:other")
    assert not Grants(grants, "deny").may(carol, "genie_space:other")
    assert Grants(grants, "deny").may(carol, "app:tickets")  # through the group


def test_usage_adds_up_to_the_responses(tmp_path: Path) -> None:
    from tests.test_tracing import TOOLS, workspace

    config = workspace(tmp_path)
    with ThreadServer(f"sqlite:///{tmp_path}/state.db", config) as running:
        gina, hank = client(running, make_user(running, "gina")), client(running, make_user(running, "hank"))
        responses = [gina.responses.create(model="agent", input="sales please", tools=TOOLS),
                     gina.responses.create(model="agent", input="hi"),
                     hank.responses.create(model="agent", input="hi")]
        with admin(running) as http:
            by_user = {r["principal"]: r for r in http.get("/admin/v1/usage",
                                                           params={"group_by": "principal"}).json()["data"]}
            by_model_day = http.get("/admin/v1/usage", params={"group_by": "model,day"}).json()["data"]
            bad = http.get("/admin/v1/usage", params={"group_by": "colour"})
        mine = [r for r in responses[:2]]
        assert by_user["gina"]["responses"] == 2 and by_user["hank"]["responses"] == 1
        assert by_user["gina"]["input_tokens"] == sum(r.usage.input_tokens for r in mine if r.usage)
        assert by_user["gina"]["output_tokens"] == sum(r.usage.output_tokens for r in mine if r.usage)
        assert by_user["gina"]["tool_calls"] == 2 and by_user["gina"]["model_calls"] == 3
        # Genie's own model call (text to SQL) is counted apart from the loop's: the SQL it wrote is
        # 38 characters, which the scripted model counts as 9 output tokens.
        assert by_user["gina"]["tool_input_tokens"] > 0 and by_user["gina"]["tool_output_tokens"] == 9
        assert by_user["hank"]["tool_input_tokens"] == by_user["hank"]["tool_output_tokens"] == 0
        assert [(r["model"], r["responses"]) for r in by_model_day] == [("agent", 3)]
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
    env = process_env(None, f"sqlite:///{tmp_path}/state.db", None)
    report = subprocess.run([sys.executable, "-m", "opensupervisor", "usage", "--by", "principal"], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    assert "| gina" in report.stdout and "| hank" in report.stdout
