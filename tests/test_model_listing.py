"""The model catalog shows each caller only the models they may query (CAN_QUERY), on every prefix;
a model they may not query is 404, exactly as one that does not exist."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import TOKEN, WORKSPACE, Server, ThreadServer

PREFIXES = ("/v1", "/ai-gateway/mlflow/v1", "/mlflow/v1")
GOVERNANCE = '''
[models."org/large"]
provider = "scripted"

[access]
default = "{default}"

[access.grants]
"model:flaky" = ["alice"]
"model:broken" = ["analysts"]
"model:org/large" = ["alice"]
'''


def governed(folder: Path, default: str) -> ThreadServer:
    config = folder / "workspace.toml"
    config.write_text(WORKSPACE.read_text() + GOVERNANCE.format(default=default))
    return ThreadServer(f"sqlite:///{folder}/state.db", workspace=config)


@pytest.fixture(scope="module")
def allow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    with governed(tmp_path_factory.mktemp("allow"), "allow") as server:
        yield server, people(server)


def people(server: Server) -> dict[str, str]:
    tokens = {"admin": TOKEN}
    with server.http() as http:
        assert http.post("/admin/v1/principals", json={"name": "analysts", "kind": "group"}).status_code == 200
        for name in ("alice", "bob", "carol"):
            assert http.post("/admin/v1/principals", json={"name": name}).status_code == 200
            tokens[name] = http.post(f"/admin/v1/principals/{name}/tokens", json={}).json()["token"]
        assert http.post("/admin/v1/principals/analysts/members", json={"member": "bob"}).status_code == 200
    return tokens


def listed(server: Server, token: str, prefix: str = "/v1") -> list[str]:
    resp = httpx.get(f"{server.url}{prefix}/models", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    return [m["id"] for m in resp.json()["data"]]


def test_each_caller_lists_only_what_they_may_query(allow: tuple[Server, dict[str, str]]) -> None:
    server, tokens = allow
    everything = listed(server, TOKEN)
    assert {"test-model", "flaky", "broken", "org/large"} <= set(everything)
    open_to_all = [m for m in everything if m not in ("flaky", "broken", "org/large")]
    for prefix in PREFIXES:
        assert listed(server, tokens["admin"], prefix) == everything
        assert listed(server, tokens["alice"], prefix) == [m for m in everything if m != "broken"]
        assert listed(server, tokens["bob"], prefix) == [m for m in everything if m not in ("flaky", "org/large")]
        assert listed(server, tokens["carol"], prefix) == open_to_all
    carol = openai.OpenAI(base_url=server.v1, api_key=tokens["carol"], max_retries=0)
    assert [m.id for m in carol.models.list()] == open_to_all


def test_retrieving_a_model_one_may_not_query_is_404_as_a_missing_one(allow: tuple[Server, dict[str, str]]) -> None:
    server, tokens = allow
    for prefix in PREFIXES:
        url = f"{server.url}{prefix}/models"
        carol = {"Authorization": f"Bearer {tokens['carol']}"}
        for path in ("flaky", "broken", "org/large", "%66laky", "org%2Flarge", "no-such-model"):
            refused = httpx.get(f"{url}/{path}", headers=carol)
            assert refused.status_code == 404, (prefix, path, refused.text)
            error = refused.json()["error"]
            assert error["param"] == "model" and error["code"] == "model_not_found"
            assert error["message"].endswith("does not exist or you do not have access to it.")
        shown = httpx.get(f"{url}/test-model", headers=carol).json()
        assert shown == {"id": "test-model", "object": "model", "created": shown["created"], "owned_by": "scripted"}
        alice = {"Authorization": f"Bearer {tokens['alice']}"}
        assert httpx.get(f"{url}/org/large", headers=alice).json()["id"] == "org/large"
        assert httpx.get(f"{url}/broken", headers=alice).status_code == 404
        assert httpx.get(f"{url}/broken", headers={"Authorization": f"Bearer {tokens['bob']}"}).status_code == 200
    client = openai.OpenAI(base_url=server.v1, api_key=tokens["carol"], max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("flaky")
    assert client.models.retrieve("test-model").owned_by == "scripted"
    assert httpx.get(f"{server.url}/v1/models/test-model").status_code == 401


def test_a_stored_grant_changes_the_listing_at_once(allow: tuple[Server, dict[str, str]]) -> None:
    server, tokens = allow
    with server.http() as http:
        assert http.put("/admin/v1/grants/model:test-model", json={"principals": ["bob"]}).status_code == 200
        try:
            assert "test-model" not in listed(server, tokens["carol"])
            assert "test-model" in listed(server, tokens["bob"])
            carol = {"Authorization": f"Bearer {tokens['carol']}"}
            assert httpx.get(f"{server.v1}/models/test-model", headers=carol).status_code == 404
        finally:
            assert http.delete("/admin/v1/grants/model:test-model").status_code == 200
    assert "test-model" in listed(server, tokens["carol"])


def test_with_default_deny_a_caller_lists_only_their_grants(tmp_path: Path) -> None:
    with governed(tmp_path, "deny") as server:
        tokens = people(server)
        assert listed(server, tokens["alice"]) == ["flaky", "org/large"]
        assert listed(server, tokens["bob"]) == ["broken"]
        assert listed(server, tokens["carol"]) == []
        refused = httpx.get(f"{server.v1}/models/test-model", headers={"Authorization": f"Bearer {tokens['carol']}"})
        assert refused.status_code == 404
        assert len(listed(server, TOKEN)) > 3
