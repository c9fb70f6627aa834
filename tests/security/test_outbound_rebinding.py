"""DNS rebinding: a host matched by a wildcard pattern must be public where the connection is made,
and the address checked is the address connected to. A name that answers a public address to the
first lookup and loopback to the next (a resolver this test controls) never reaches loopback,
through the ``mcp`` tool, a stored connection or its OAuth token endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ASGIThread, Server, ThreadServer
from tests.security.outbound_parts import FakeDns, Hits, mcp_hits

PUBLIC = "1.1.1.1"
OPAQUE = "(it could not be reached or refused the request)"


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[int, Hits]]:
    """The loopback MCP server a rebinding name would lead to."""
    hits = mcp_hits()
    with ASGIThread(hits) as url:
        yield int(url.rsplit(":", 1)[1]), hits


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("rebinding")
    # No [outbound]: stored connections may reach public addresses only (the default).
    (folder / "workspace.toml").write_text("""
[models.agent]
provider = "scripted"

[mcp]
allowed_server_urls = ["http://*:*/mcp"]
timeout_s = 3
""")
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
        yield running


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return FakeDns(monkeypatch)


def mcp(url: str) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "calc", "server_url": url, "require_approval": "never"}


def create(server: Server, tool: dict[str, Any]) -> httpx.Response:
    with server.http() as http:
        return http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [tool]})


def assert_unreached(answer: httpx.Response, hits: Hits, before: int) -> None:
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["message"].endswith(OPAQUE)
    assert hits.count == before  # not a byte reached the loopback server


# Second answers a client that resolved the name again would connect to: the loopback server itself.
REBOUND = [["127.0.0.1"], ["::ffff:127.0.0.1"], [PUBLIC, "127.0.0.1"]]


@pytest.mark.parametrize("rebound", REBOUND)
@pytest.mark.parametrize("dot", ["", "."])
def test_a_name_that_rebinds_to_loopback_never_reaches_it(server: Server, target: tuple[int, Hits], dns: FakeDns,
                                                          rebound: list[str], dot: str) -> None:
    port, hits = target
    host = dns.name("calc", [PUBLIC], rebound)
    before = hits.count
    assert_unreached(create(server, mcp(f"http://{host}{dot}:{port}/mcp")), hits, before)
    assert dns.lookups[host] >= 1


# Names that answer, at once, an address that is not public (among public ones, or in another form).
NOT_PUBLIC = [["127.0.0.1"], [PUBLIC, "127.0.0.1"], ["10.0.0.7"], ["169.254.169.254"], ["::1"],
              ["::ffff:127.0.0.1"], ["::127.0.0.1"], ["64:ff9b::7f00:1"], ["2002:7f00:1::1"], ["fe80::1"],
              ["224.0.0.1"], ["0.0.0.0"], ["100.64.0.1"]]


@pytest.mark.parametrize("answer", NOT_PUBLIC)
def test_a_name_with_any_address_that_is_not_public_is_refused(server: Server, target: tuple[int, Hits],
                                                               dns: FakeDns, answer: list[str]) -> None:
    port, hits = target
    host = dns.name("private", answer)
    before = hits.count
    assert_unreached(create(server, mcp(f"http://{host}:{port}/mcp")), hits, before)
    assert dns.lookups[host] >= 1


def test_a_stored_connection_is_pinned_too(server: Server, target: tuple[int, Hits], dns: FakeDns) -> None:
    """An admin's URL under the default ``[outbound]`` (public addresses only) is accepted as a name
    and checked at each connection, on the address connected to."""
    port, hits = target
    host = dns.name("stored", [PUBLIC], ["127.0.0.1"])
    with server.http() as http:
        put = http.put("/admin/v1/connections/rebinding", json={"url": f"http://{host}:{port}/mcp",
                                                                "require_approval": "never", "timeout_s": 3})
        assert put.status_code == 200, put.text
        before = hits.count
        answer = http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [
            {"type": "uc_connection", "uc_connection": {"name": "rebinding"}}]})
        http.delete("/admin/v1/connections/rebinding")
    assert_unreached(answer, hits, before)


def test_an_oauth_token_endpoint_is_pinned_too(server: Server, dns: FakeDns) -> None:
    token = Hits()
    with ASGIThread(token) as url:
        host = dns.name("token", [PUBLIC], ["127.0.0.1"])
        with server.http() as http:
            put = http.put("/admin/v1/connections/tokens", json={
                "url": "http://mcp.example.com/mcp", "require_approval": "never", "timeout_s": 3,
                "oauth": {"token_url": f"http://{host}:{url.rsplit(':', 1)[1]}/token", "client_id": "robot",
                          "client_secret": "oauth-secret-5521"}})
            assert put.status_code == 200, put.text
            answer = http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [
                {"type": "uc_connection", "uc_connection": {"name": "tokens"}}]})
            http.delete("/admin/v1/connections/tokens")
    assert_unreached(answer, token, 0)
    assert "oauth-secret-5521" not in answer.text


def test_by_default_an_admin_reaches_public_addresses_only(server: Server, target: tuple[int, Hits]) -> None:
    """Without ``[outbound]``: a loopback or private literal is refused when stored (400), and a name
    that resolves to loopback is refused where the connection is made, reading as any failure."""
    port, hits = target
    with server.http() as http:
        for url in [f"http://127.0.0.1:{port}/mcp", f"http://[::1]:{port}/mcp", "http://10.0.0.1/mcp",
                    "http://169.254.169.254/latest"]:
            answer = http.put("/admin/v1/connections/local", json={"url": url})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "url", answer.text
        assert http.put("/admin/v1/connections/local", json={"url": f"http://localhost:{port}/mcp",
                                                             "timeout_s": 3}).status_code == 200
        before = hits.count
        answer = http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [
            {"type": "uc_connection", "uc_connection": {"name": "local"}}]})
        http.delete("/admin/v1/connections/local")
    assert_unreached(answer, hits, before)
