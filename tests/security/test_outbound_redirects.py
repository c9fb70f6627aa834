"""Redirects are never followed by any outbound client: model upstreams (``openai-chat``,
``openai-responses``, ``anthropic``), apps of both protocols, connections (the workspace file's and
stored ones, and their OAuth token endpoints) and the ``mcp`` tool. Each is pointed at a server that
redirects every request to a working loopback server, which must never be reached.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ASGIThread, Server, ThreadServer
from tests.security.outbound_parts import Hits, Redirector, mcp_hits

KEY_ENV = "OS_TEST_REDIRECT_KEY"
KEY = "sk-redirect-key-3391"
OPAQUE = "(it could not be reached or refused the request)"


@pytest.fixture(scope="module", params=[301, 302, 303, 307, 308])
def moved(request: pytest.FixtureRequest) -> Iterator[tuple[str, Redirector, Hits]]:
    """A redirecting server and the loopback MCP server it sends everything to."""
    hits, redirector = mcp_hits(), Redirector(request.param)
    with ASGIThread(hits) as target, ASGIThread(redirector) as url:
        redirector.target = target
        yield url, redirector, hits


@pytest.fixture(scope="module")
def server(moved: tuple[str, Redirector, Hits], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = moved[0]
    folder = tmp_path_factory.mktemp("redirects")
    os.environ[KEY_ENV] = KEY
    (folder / "workspace.toml").write_text(f"""
[models.chat]
provider = "openai-chat"
base_url = "{url}/v1"
upstream_model = "m"
api_key_env = "{KEY_ENV}"
max_retries = 0

[models.responses]
provider = "openai-responses"
base_url = "{url}/v1"
upstream_model = "m"
api_key_env = "{KEY_ENV}"
max_retries = 0

[models.claude]
provider = "anthropic"
base_url = "{url}"
upstream_model = "claude-x"
api_key_env = "{KEY_ENV}"
max_retries = 0

[models.agent]
provider = "scripted"
[[models.agent.script]]
when = "ask the app"
turns = [{{ tool_calls = [{{ name = "app_sub", arguments = {{ question = "hi" }} }}] }}, {{ text = "Asked." }}]

[apps.sub]
url = "{url}/v1"
api_key_env = "{KEY_ENV}"
require_approval = "never"

[apps.tools]
url = "{url}"
protocol = "mcp"

[connections.moved]
url = "{url}/mcp"

[mcp]
allowed_server_urls = ["{url}/mcp"]
timeout_s = 5

[outbound]
allowed_urls = ["{url}/*"]
""")
    try:
        with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
            yield running
    finally:
        del os.environ[KEY_ENV]


def create(server: Server, body: dict[str, Any]) -> httpx.Response:
    with server.http() as http:
        return http.post("/v1/responses", json={"input": "ask the app", **body})


@pytest.mark.parametrize("model", ["chat", "responses", "claude"])
def test_a_model_upstream_that_redirects_fails_the_response(server: Server, moved: tuple[str, Redirector, Hits],
                                                            model: str) -> None:
    _, redirector, hits = moved
    before, asked = hits.count, redirector.count
    answer = create(server, {"model": model})
    assert answer.status_code == 200 and answer.json()["status"] == "failed", answer.text
    assert redirector.count > asked and hits.count == before
    assert KEY not in answer.text


def test_an_app_that_redirects_is_an_error_the_model_reads(server: Server, moved: tuple[str, Redirector, Hits]) -> None:
    _, _, hits = moved
    before = hits.count
    answer = create(server, {"model": "agent", "tools": [{"type": "app", "app": {"name": "sub"}}]})
    outputs = [i["output"] for i in answer.json()["output"] if i["type"] == "function_call_output"]
    assert len(outputs) == 1 and "answered with a redirect" in outputs[0] and "not followed" in outputs[0]
    assert hits.count == before and KEY not in answer.text


@pytest.mark.parametrize("tool", [{"type": "app", "app": {"name": "tools"}},
                                  {"type": "uc_connection", "uc_connection": {"name": "moved"}}])
def test_an_mcp_server_of_the_workspace_that_redirects_is_unavailable(
        server: Server, moved: tuple[str, Redirector, Hits], tool: dict[str, Any]) -> None:
    _, _, hits = moved
    before = hits.count
    answer = create(server, {"model": "agent", "tools": [tool]})
    assert answer.status_code == 502 and "which is not followed" in answer.json()["error"]["message"], answer.text
    assert hits.count == before


def test_a_requests_and_an_admins_mcp_server_that_redirects_reads_as_any_failure(
        server: Server, moved: tuple[str, Redirector, Hits]) -> None:
    url, _, hits = moved
    before = hits.count
    with server.http() as http:
        put = http.put("/admin/v1/connections/stored-moved", json={"url": f"{url}/mcp", "timeout_s": 5})
        assert put.status_code == 200, put.text
        put = http.put("/admin/v1/connections/token-moved", json={
            "url": f"{url}/mcp", "timeout_s": 5,
            "oauth": {"token_url": f"{url}/token", "client_id": "c", "client_secret": "oauth-secret-7710"}})
        assert put.status_code == 200, put.text
    answers = [create(server, {"model": "agent", "tools": [tool]}) for tool in [
        {"type": "mcp", "server_label": "moved", "server_url": f"{url}/mcp", "require_approval": "never"},
        {"type": "uc_connection", "uc_connection": {"name": "stored-moved"}},
        {"type": "uc_connection", "uc_connection": {"name": "token-moved"}}]]
    for answer in answers:
        assert answer.status_code == 502 and answer.json()["error"]["message"].endswith(OPAQUE), answer.text
        assert "oauth-secret-7710" not in answer.text
    assert hits.count == before
