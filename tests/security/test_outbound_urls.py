"""The ``mcp`` tool's ``server_url`` under attack: URLs are parsed and matched part by part, never as
strings, hosts matched by a wildcard must be public where the connection is made, the caller may not
set the connection's headers, and every failure to connect reads the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from opensupervisor.errors import ConfigError
from opensupervisor.workspace import parse_workspace
from tests.conftest import ASGIThread, Server, ThreadServer, free_port
from tests.mcp_servers import CountInitialize, tools_server


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[tuple[str, CountInitialize]]:
    counted = CountInitialize(tools_server().streamable_http_app())
    with ASGIThread(counted) as url:
        yield url, counted


@pytest.fixture(scope="module")
def server(mcp_server: tuple[str, CountInitialize], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("outbound")
    port = mcp_server[0].rsplit(":", 1)[1]
    (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[mcp]
# Exactly this loopback server, and any public host under a wildcard.
allowed_server_urls = ["http://127.0.0.1:{port}/mcp", "http://*:*/mcp", "https://*.example.com/mcp/*"]
timeout_s = 5
""")
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
        yield running


def mcp(url: str, **fields: Any) -> Any:
    return {"type": "mcp", "server_label": "calc", "server_url": url, "require_approval": "never", **fields}


def create(server: Server, tool: Any) -> httpx.Response:
    with server.http() as http:
        return http.post("/v1/responses", json={"model": "agent", "input": "add", "tools": [tool]})


def refusals(port: int) -> list[str]:
    here = f"127.0.0.1:{port}"
    return [
        f"http://127.0.0.1:1@{here}/mcp",            # userinfo: fnmatch saw "127.0.0.1:*" here
        f"http://user:hunter2@{here}/mcp",
        f"http://{here}\\@127.0.0.2/mcp",            # a backslash, read differently by parsers
        f"http://{here}/other",                      # another path on the allowed host
        f"http://{here}/mcp/../admin",
        f"http://{here}/mcp%2F..%2Fadmin",
        f"https://{here}/mcp",                       # another scheme
        f"ftp://{here}/mcp",
        f"http://127.0.0.1:{port} /mcp",             # whitespace
        f"http://[::ffff:127.0.0.1]:{port}/mcp",     # the same loopback, spelled otherwise: wildcard, not public
        f"http://2130706433:{port}/mcp",             # loopback as a number, and in other legacy spellings
        f"http://0x7f.1:{port}/mcp",
        f"http://127.1:{port}/mcp",
        f"http://127.0.0.2:{port}/mcp",              # another loopback address under the wildcard
        f"http://169.254.169.254:{port}/mcp",        # link-local (cloud metadata)
        f"http://10.0.0.1:{port}/mcp",               # private
        f"http://[::1]:{port}/mcp",
        f"http://0.0.0.0:{port}/mcp",
        f"http://{here}:99/mcp",                     # a port that is not a number
        "https://example.com.attacker.net/mcp/x",    # the wildcard domain as a prefix
        "https://example.com/mcp/x",                 # "*.example.com" needs a subdomain
        "https://a.example.com/mcp/../admin",        # dot segments under a path glob
        "https://a.example.com/mcp/%2e%2e/admin",
        "https://a.example.com/mcp/./x",
        f"HTTP://user:hunter2@{here}/mcp",           # upper case changes nothing
        f"HTTP://{here}/other",
        f"http://%31%32%37.0.0.1:{port}/mcp",        # a percent-encoded host
        f"http://127.0.0.1%2e:{port}/mcp",
        f"http://[fe80::1%25lo]:{port}/mcp",         # an IPv6 zone
        f"http://\u24dbocalhost:{port}/mcp",        # a host outside ASCII ("ⓛocalhost")
        f"http://0177.0.0.1:{port}/mcp",             # loopback in octal
        f"http://017700000001:{port}/mcp",
        f"http://127.0.0.1.:{port}/mcp",             # a trailing dot
        f"http://[::127.0.0.1]:{port}/mcp",          # IPv6 forms that embed loopback
        f"http://[64:ff9b::7f00:1]:{port}/mcp",
        f"http://[2002:7f00:1::]:{port}/mcp",
        f"http://224.0.0.1:{port}/mcp",              # multicast
        f"http://{here}/mcp?x=\r\nHost: evil",       # a header smuggled through the URL
    ]


@pytest.mark.parametrize("index", range(len(refusals(0))))
def test_urls_are_matched_part_by_part(server: Server, mcp_server: tuple[str, CountInitialize], index: int) -> None:
    url, counted = mcp_server
    port = int(url.rsplit(":", 1)[1])
    before = counted.count
    answer = create(server, mcp(refusals(port)[index]))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == ("tools[0].server_url", "server_url_not_allowed")
    assert "hunter2" not in answer.text and error["message"].startswith("The MCP server URL is refused: ")
    assert counted.count == before  # the server was never called


def test_a_wildcard_host_must_resolve_to_public_addresses(server: Server,
                                                          mcp_server: tuple[str, CountInitialize]) -> None:
    """``localhost`` passes the ``http://*:*/mcp`` pattern as a name, and is refused where the
    connection is made: it resolves to loopback."""
    url, counted = mcp_server
    before = counted.count
    answer = create(server, mcp(f"http://localhost:{url.rsplit(':', 1)[1]}/mcp"))
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["param"] == "tools[0]"
    assert "it could not be reached or refused the request" in answer.json()["error"]["message"]
    assert counted.count == before


@pytest.mark.parametrize("headers", [{"Host": "internal.example"}, {"host": "x"}, {"Transfer-Encoding": "chunked"},
                                     {"Connection": "close"}, {"Content-Length": "0"}, {"Proxy-Authorization": "x"},
                                     {"X-Note": "a\r\nInjected: 1"}])
def test_the_connections_own_headers_may_not_be_set(server: Server, mcp_server: tuple[str, CountInitialize],
                                                    headers: dict[str, str]) -> None:
    answer = create(server, mcp(f"{mcp_server[0]}/mcp", headers=headers))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "tools[0].headers"


def test_a_closed_port_and_a_wrong_server_read_the_same(tmp_path: Path) -> None:
    """Nothing listening, and a web server that is not an MCP server, give one message: the error
    does not tell a port scanner what is there."""
    async def not_mcp(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"nothing here"})

    with ASGIThread(not_mcp) as web:
        closed = free_port()
        (tmp_path / "workspace.toml").write_text("""
[models.agent]
provider = "scripted"
[mcp]
allowed_server_urls = ["http://127.0.0.1:*/mcp"]
timeout_s = 5
""")
        with ThreadServer(f"sqlite:///{tmp_path}/state.db", tmp_path / "workspace.toml") as running:
            answers = [create(running, mcp(f"http://127.0.0.1:{closed}/mcp")), create(running, mcp(f"{web}/mcp"))]
    assert [a.status_code for a in answers] == [502, 502]
    assert answers[0].json()["error"]["message"] == answers[1].json()["error"]["message"]
    assert answers[0].json()["error"]["message"].endswith("(it could not be reached or refused the request)")


@pytest.mark.parametrize("spelling", [str.lower, str.upper])
def test_the_allowed_server_still_works(server: Server, mcp_server: tuple[str, CountInitialize],
                                        spelling: Any) -> None:
    """Scheme and host are matched as parsed (in lower case): ``HTTP://`` is the same server."""
    client = openai.OpenAI(base_url=server.v1, api_key=server.token, max_retries=0)
    scheme, rest = mcp_server[0].split("://")
    response = client.responses.create(model="agent", input="hello",
                                       tools=[mcp(f"{spelling(scheme)}://{rest}/mcp")])
    assert response.output[0].type == "mcp_list_tools" and response.output[0].tools


@pytest.mark.parametrize("pattern", ["127.0.0.1/mcp", "http://a*b.example.com/mcp",
                                     "http://u@host/mcp", "gopher://host/mcp", "http://host:port/mcp"])
def test_a_bad_pattern_is_a_configuration_error(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ConfigError, match=r"mcp\.allowed_server_urls"):
        parse_workspace(f'[mcp]\nallowed_server_urls = ["{pattern}"]\n', source="w", base_dir=tmp_path)
