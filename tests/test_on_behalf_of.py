"""On behalf of the user: a per-user connection carries each caller's own token to the MCP server,
as the server itself sees it; a caller without one may not use it."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from mcp.server.fastmcp import FastMCP

from opensupervisor.testing.asgi import Receive, Send, send_json
from tests.conftest import ASGIThread, Server, ThreadServer, wait_until
from tests.test_identity import make_user

# The MCP server's own users, by the bearer token each one holds.
ACCOUNTS = {"ann-token-1": "ann@mcp", "ben-token-2": "ben@mcp"}
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller")
SEEN: list[tuple[str, str]] = []  # (the MCP server's user, the tool called), as the server saw them


class PerUserAuth:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = dict(scope["headers"]).get(b"authorization", b"").decode().removeprefix("Bearer ")
        if token not in ACCOUNTS:
            await send_json(send, 401, {"error": "unknown token"})
            return
        CALLER.set(ACCOUNTS[token])
        await self.app(scope, receive, send)


def mailbox() -> FastMCP:
    server = FastMCP("mailbox", stateless_http=True, log_level="WARNING")

    @server.tool()
    def whoami() -> str:
        """Says whose mailbox this is."""
        SEEN.append((CALLER.get(), "whoami"))
        return f"mailbox of {CALLER.get()}"

    return server


@pytest.fixture(scope="module")
def obo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with ASGIThread(PerUserAuth(mailbox().streamable_http_app())) as url:
        folder = tmp_path_factory.mktemp("obo")
        (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
turns = [{{ tool_calls = [{{ name = "whoami" }}] }}, {{ text = "Checked." }}]

[connections.mail]
url = "{url}/mcp"
per_user = true
require_approval = "never"

[connections.shared]
url = "{url}/mcp"
headers = {{ Authorization = "Bearer ann-token-1" }}
require_approval = "never"
""")
        with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as server:
            yield server


MAIL: Any = [{"type": "uc_connection", "uc_connection": {"name": "mail"}}]


def as_user(server: Server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=token, max_retries=0)


def test_each_caller_reaches_the_server_as_themselves(obo: Server) -> None:
    ann_token, ben_token = make_user(obo, "ann"), make_user(obo, "ben")
    ann, ben = as_user(obo, ann_token), as_user(obo, ben_token)
    with pytest.raises(openai.PermissionDeniedError) as missing:
        ann.responses.create(model="agent", input="who?", tools=MAIL)
    assert missing.value.body["param"] == "tools[0]" and "PUT /v1/connections/mail/credential" in \
        missing.value.body["message"]
    for token, mine in ((ann_token, "ann-token-1"), (ben_token, "ben-token-2")):
        with obo.http() as http:
            http.headers["Authorization"] = f"Bearer {token}"
            stored = http.put("/v1/connections/mail/credential", json={"bearer_token": mine})
            assert stored.status_code == 200 and stored.json()["stored"] is True
            listed = http.get("/v1/connections/credentials").json()
            assert [c["connection"] for c in listed["data"]] == ["mail"] and mine not in str(listed)
    SEEN.clear()
    answers = {name: client.responses.create(model="agent", input="who?", tools=MAIL)
               for name, client in (("ann", ann), ("ben", ben))}
    outputs = {name: next(i.output for i in r.output if i.type == "function_call_output")
               for name, r in answers.items()}
    assert outputs == {"ann": "mailbox of ann@mcp", "ben": "mailbox of ben@mcp"}
    assert sorted(SEEN) == [("ann@mcp", "whoami"), ("ben@mcp", "whoami")]  # as the MCP server saw them
    background = ben.responses.create(model="agent", input="who?", tools=MAIL, background=True)

    def done() -> bool:
        return ben.responses.retrieve(background.id).status == "completed"

    wait_until(done, what="the background run")
    output = next(i for i in ben.responses.retrieve(background.id).output if i.type == "function_call_output")
    assert output.output == "mailbox of ben@mcp"  # a background run also runs as its creator


def test_credentials_are_each_users_own(obo: Server) -> None:
    cat_token = make_user(obo, "cat")
    with obo.http() as http:
        http.headers["Authorization"] = f"Bearer {cat_token}"
        shared = http.put("/v1/connections/shared/credential", json={"bearer_token": "x"})
        assert shared.status_code == 400 and shared.json()["error"]["param"] == "name"
        assert http.put("/v1/connections/nope/credential", json={"bearer_token": "x"}).status_code == 404
        other = http.put("/v1/connections/mail/credential", json={"bearer_token": "x", "principal": "ann"})
        assert other.status_code == 403 and other.json()["error"]["param"] == "principal"
        empty = http.put("/v1/connections/mail/credential", json={"bearer_token": ""})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "bearer_token"
        assert http.delete("/v1/connections/mail/credential").status_code == 404
        none = http.put("/v1/databricks/credential", json={"bearer_token": "x"})  # no Databricks workspace here
        assert none.status_code == 404 and none.json()["error"]["param"] == "databricks"
    with obo.http() as admin:  # an admin may store one for a user, and remove it
        assert admin.put("/v1/connections/mail/credential",
                         json={"bearer_token": "ann-token-1", "principal": "cat"}).json()["principal"] == "cat"
        assert [c["connection"] for c in admin.get("/v1/connections/credentials",
                                                   params={"principal": "cat"}).json()["data"]] == ["mail"]
        removed = admin.delete("/v1/connections/mail/credential", params={"principal": "cat"})
        assert removed.json() == {"connection": "mail", "principal": "cat", "deleted": True}
    with pytest.raises(openai.PermissionDeniedError):
        as_user(obo, cat_token).responses.create(model="agent", input="who?", tools=MAIL)
