"""URLs an admin sets (a stored connection's ``url`` and OAuth ``token_url``) are parsed and matched
against ``[outbound] allowed_urls`` as a request's ``mcp`` URL is against ``[mcp]``; headers are
checked; and a URL's credentials are never echoed, stored, logged or written to an inference table,
whether an admin or a request brought them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import SCRATCH, ASGIThread, Server, ThreadServer, wait_until
from tests.security.outbound_parts import Hits, mcp_hits

SECRET = "hunter2-" + secrets.token_hex(4)
CATALOG = f"c{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[int, Hits]]:
    hits = mcp_hits()
    with ASGIThread(hits) as url:
        yield int(url.rsplit(":", 1)[1]), hits


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outbound_admin")


@pytest.fixture(scope="module")
def server(target: tuple[int, Hits], folder: Path) -> Iterator[Server]:
    port = target[0]
    (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[mcp]
allowed_server_urls = ["http://127.0.0.1:{port}/mcp", "http://*:*/mcp"]
timeout_s = 5

[outbound]
# Exactly this loopback server, and public hosts over HTTPS.
allowed_urls = ["http://127.0.0.1:{port}/mcp", "https://*:*/*"]

[inference_table]
catalog_name = "{CATALOG}"
schema_name = "logs"
table_name_prefix = "agent"
""")
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
        yield running


def refused_urls(port: int) -> list[str]:
    here = f"127.0.0.1:{port}"
    return [
        f"http://user:{SECRET}@{here}/mcp",                 # userinfo, in every spelling
        f"http://{SECRET}@{here}/mcp",
        f"HTTP://USER:{SECRET}@{here}/mcp",
        f"http://{here}@{SECRET}.example.com/mcp",
        f"http://{here}\\@{SECRET}.example.com/mcp",          # a backslash
        f"http://{here}/mcp {SECRET}",                      # whitespace
        f"http://%31%32%37.0.0.1:{port}/mcp",               # percent-encoded host
        f"https://\u24dbocalhost/{SECRET}",                 # outside ASCII
        f"http://{here}/mcp/../admin",                      # dot segments
        f"http://{here}/mcp%2F..%2Fadmin",
        f"http://127.0.0.1:{port + 1}/mcp",                 # another port of the named host
        f"http://{here}/admin",                             # another path
        f"ftp://{here}/mcp",
        "file:///etc/passwd",
        f"//{here}/mcp",
        "http:///mcp",
        "http://127.0.0.1:99999/mcp",
        "https://2130706433/mcp",                           # loopback under the wildcard, in any spelling
        "https://0177.0.0.1/mcp",
        "https://127.1/mcp",
        "https://127.0.0.1./mcp",
        "https://[::1]/mcp",
        "https://[::ffff:127.0.0.1]/mcp",
        "https://[::127.0.0.1]/mcp",
        "https://[fe80::1%25eth0]/mcp",
        "https://169.254.169.254/latest/meta-data",         # link-local (cloud metadata)
        "https://10.1.2.3/mcp",                             # private
        "https://100.64.0.1/mcp",
        "http://mcp.example.com/mcp",                       # plain HTTP is not listed for public hosts
    ]


def put(server: Server, name: str, body: dict[str, Any]) -> httpx.Response:
    with server.http() as http:
        return http.put(f"/admin/v1/connections/{name}", json=body)


@pytest.mark.parametrize("index", range(len(refused_urls(0))))
@pytest.mark.parametrize("field", ["url", "oauth.token_url"])
def test_an_admins_urls_are_parsed_and_matched(server: Server, target: tuple[int, Hits], folder: Path, index: int,
                                               field: str, caplog: pytest.LogCaptureFixture) -> None:
    port, hits = target
    caplog.set_level(logging.DEBUG)
    url = refused_urls(port)[index]
    body: dict[str, Any] = {"url": url}
    if field == "oauth.token_url":
        body = {"url": f"http://127.0.0.1:{port}/mcp",
                "oauth": {"token_url": url, "client_id": "c", "client_secret": "s"}}
    before = hits.count
    answer = put(server, "refused", body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (field, "url_not_allowed")
    assert error["message"].startswith(f"{field}: the URL is refused: ")
    with server.http() as http:
        assert http.get("/admin/v1/connections/refused").status_code == 404
    assert SECRET not in answer.text and SECRET not in caplog.text
    assert hits.count == before
    for file in folder.glob("state.db*"):
        assert SECRET.encode() not in file.read_bytes()


@pytest.mark.parametrize("headers", [{"Host": "internal.example"}, {"HOST": "x"}, {"Transfer-Encoding": "chunked"},
                                     {"Connection": "close"}, {"Proxy-Authorization": "Basic x"},
                                     {"X-Note": "a\r\nInjected: 1"}, {"X-Note\n": "a"}])
def test_an_admins_headers_may_not_set_the_connections_own(server: Server, target: tuple[int, Hits],
                                                           headers: dict[str, str]) -> None:
    answer = put(server, "headers", {"url": f"http://127.0.0.1:{target[0]}/mcp", "headers": headers})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "headers", answer.text


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/mcp", "HTTP://127.0.0.1:{port}/mcp"])
def test_a_url_a_pattern_names_exactly_works(server: Server, target: tuple[int, Hits], url: str) -> None:
    port, hits = target
    assert put(server, "named", {"url": url.format(port=port), "require_approval": "never"}).status_code == 200
    before = hits.count
    with server.http() as http:
        answer = http.post("/v1/responses", json={"model": "agent", "input": "hi", "tools": [
            {"type": "uc_connection", "uc_connection": {"name": "named"}}]})
    assert answer.status_code == 200, answer.text
    assert hits.count > before


def rows() -> list[str]:
    """The request and response texts of the inference table, once the refused requests are in it."""
    engine = sa.create_engine(f"sqlite:///{SCRATCH}/tables/{CATALOG}.logs.db")

    def written() -> bool:
        try:
            with engine.connect() as conn:
                count = conn.execute(sa.text("SELECT count(*) FROM agent_payload WHERE status_code = 400"))
                return int(count.scalar_one()) >= 3
        except sa.exc.SQLAlchemyError:  # the table is made with the first batch
            return False

    wait_until(written, what="the refused requests' rows")
    with engine.connect() as conn:
        found = [f"{r.request} {r.response}" for r in conn.execute(sa.text("SELECT * FROM agent_payload"))]
    engine.dispose()
    return found


def test_credentials_in_a_requests_url_are_never_kept(server: Server, target: tuple[int, Hits], folder: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A request whose ``mcp`` URL carries a password is refused (400), and the password is in no
    answer, log line, stored response, inference table row or file of the server's."""
    port = target[0]
    caplog.set_level(logging.DEBUG)
    urls = [f"http://user:{SECRET}@127.0.0.1:{port}/mcp", f"http://{SECRET}@mcp.example.com/mcp",
            f"HTTP://x:{SECRET}@127.0.0.1:{port}@127.0.0.1:{port}/mcp"]
    answers = []
    with server.http() as http:
        for url, extra in zip(urls, [{}, {"stream": True}, {"background": True}], strict=True):
            tool = {"type": "mcp", "server_label": "calc", "server_url": url, "require_approval": "never"}
            answers.append(http.post("/v1/responses", json={"model": "agent", "input": "hi", "tools": [tool], **extra}))
    for answer in answers:
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "tools[0].server_url", answer.text
        assert SECRET not in answer.text
    logged = rows()
    assert all(SECRET not in row for row in logged)
    assert sum('"server_url":"<redacted>"' in row for row in logged) >= 3
    assert SECRET not in caplog.text
    for file in [*folder.rglob("*"), *SCRATCH.rglob("*")]:
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
