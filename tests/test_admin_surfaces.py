"""The CLI and the admin API apply the same rules: each operation both offer, done through the real
CLI (a subprocess on the server's own database) and through the HTTP API, leaves the same state and
refuses the same mistakes with the same message."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from mcp.server.fastmcp import FastMCP

from opensupervisor.testing.asgi import Receive, Send
from tests.conftest import SCRATCH, ASGIThread, Server, ThreadServer, process_env, wait_until
from tests.test_identity import make_user

# Each test starts several CLI processes (a couple of seconds of CPU each): more time than most.
pytestmark = pytest.mark.timeout(300)
CLI = [sys.executable, "-m", "opensupervisor"]
NOWHERE = "http://127.0.0.1:1/mcp"


class RecordAuthorization:
    """An MCP server's front door that writes down the Authorization header of every request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(dict(scope["headers"]).get(b"authorization", b"").decode())
        await self.app(scope, receive, send)


def whoami_server() -> FastMCP:
    server = FastMCP("whoami", stateless_http=True, log_level="WARNING")

    @server.tool()
    def whoami() -> str:
        """Says that the call arrived."""
        return "arrived"

    return server


@dataclass
class Surfaces:
    server: Server
    mcp_url: str
    recorder: RecordAuthorization
    env: dict[str, str]

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], input=stdin, env=self.env, capture_output=True, text=True, timeout=90,
                              check=False)

    def cli_all(self, commands: list[list[str]]) -> list[tuple[int, str]]:
        """Several commands at once (each a process of its own): (exit code, standard error) of each."""
        procs = [subprocess.Popen([*CLI, *args], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for args in commands]
        errors = [p.communicate(timeout=90)[1] for p in procs]
        return [(p.returncode, error) for p, error in zip(procs, errors, strict=True)]

    def http(self) -> httpx.Client:
        return self.server.http()


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Surfaces]:
    recorder = RecordAuthorization(whoami_server().streamable_http_app())
    with ASGIThread(recorder) as mcp:
        folder = tmp_path_factory.mktemp("surfaces")
        config = folder / "workspace.toml"
        config.write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
turns = [{{ tool_calls = [{{ name = "whoami" }}] }}, {{ text = "Checked." }}]

[models.cli_model]
provider = "scripted"

[models.api_model]
provider = "scripted"

[access.grants]
"app:declared" = ["someone"]

[outbound]
allowed_urls = ["http://127.0.0.1:*/*"]  # stored connections lead to the loopback MCP server

[connections.fixed]
url = "{mcp}/mcp"
require_approval = "never"

[functions."main.support.count"]
language = "sql"
database_url = "sqlite:///reviews.db"
sql = "SELECT 1 AS n"
""")
        database = f"sqlite:///{folder}/state.db"
        # The servers of the tests keep their secret key in SCRATCH: the CLI seals with the same one.
        env = process_env(config, database, {"OPENSUPERVISOR_DATA_DIR": str(SCRATCH)})
        with ThreadServer(database, config) as server:
            yield Surfaces(server, f"{mcp}/mcp", recorder, env)


def tool(name: str) -> Any:
    return [{"type": "uc_connection", "uc_connection": {"name": name}}]


def as_user(server: Server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key=token, max_retries=0)


def add_per_user(s: Surfaces, name: str, description: str) -> None:
    with s.http() as http:
        put = http.put(f"/admin/v1/connections/{name}", json={
            "url": s.mcp_url, "per_user": True, "require_approval": "never", "description": description})
        assert put.status_code == 200, put.text


def remove_connection(s: Surfaces, surface: str, name: str) -> None:
    if surface == "cli":
        removed = s.cli("connections", "remove", name)
        assert removed.returncode == 0, removed.stderr
    else:
        with s.http() as http:
            assert http.delete(f"/admin/v1/connections/{name}").json() == {"name": name, "deleted": True}


@pytest.mark.parametrize("surface", ["cli", "api"])
def test_a_removed_connection_takes_its_users_credentials_along(surfaces: Surfaces, surface: str) -> None:
    name, user = f"mail_{surface}", f"ann_{surface}"
    old, new = f"old-token-of-{user}", f"new-token-of-{user}"
    add_per_user(surfaces, name, "first")
    ann_token = make_user(surfaces.server, user)
    ann = as_user(surfaces.server, ann_token)
    with surfaces.http() as mine:
        mine.headers["Authorization"] = f"Bearer {ann_token}"
        assert mine.put(f"/v1/connections/{name}/credential", json={"bearer_token": old}).status_code == 200
        assert ann.responses.create(model="agent", input="who?", tools=tool(name)).output_text == "Checked."
        assert f"Bearer {old}" in surfaces.recorder.seen  # the MCP server received the user's token

        remove_connection(surfaces, surface, name)
        with surfaces.http() as admin:
            held = admin.get("/v1/connections/credentials", params={"principal": user}).json()["data"]
        assert held == []
        since = len(surfaces.recorder.seen)
        # A new connection of the same name (this server may not have seen the CLI's removal yet).
        add_per_user(surfaces, name, "second")
        with pytest.raises(openai.PermissionDeniedError) as refused:
            ann.responses.create(model="agent", input="who?", tools=tool(name))
        assert "you have not stored a credential" in refused.value.body["message"]
        assert mine.put(f"/v1/connections/{name}/credential", json={"bearer_token": new}).status_code == 200
        assert ann.responses.create(model="agent", input="who?", tools=tool(name)).output_text == "Checked."
    after = surfaces.recorder.seen[since:]
    assert f"Bearer {new}" in after and not any(old in header for header in after)


def test_a_connection_stored_either_way_is_the_same(surfaces: Surfaces) -> None:
    options = {"url": surfaces.mcp_url, "bearer_token": "shared-secret-77", "headers": {"X-Team": "support"},
               "allowed_tools": ["whoami"], "timeout_s": 12.5, "description": "Who am I", "require_approval": "always"}
    added = surfaces.cli("connections", "add", "same_cli", "--url", surfaces.mcp_url, "--bearer-token-stdin",
                         "--header", "X-Team=support", "--allowed-tool", "whoami", "--timeout", "12.5",
                         "--description", "Who am I", "--require-approval", "always", stdin="shared-secret-77\n")
    assert added.returncode == 0, added.stderr
    with surfaces.http() as http:
        assert http.put("/admin/v1/connections/same_api", json=options).status_code == 200
        wait_until(lambda: http.get("/admin/v1/connections/same_cli").status_code == 200, timeout=30,
                   what="the server to load the CLI's connection")
        by_cli, by_api = (http.get(f"/admin/v1/connections/{n}").json() for n in ("same_cli", "same_api"))
    assert {**by_cli, "name": "same"} == {**by_api, "name": "same"}
    assert by_api["auth"] == "bearer" and by_api["headers"] == ["X-Team"] and "shared-secret-77" not in str(by_api)
    listed = surfaces.cli("connections", "list")
    assert "same_api\tstored\t" in listed.stdout and "same_cli\tstored\t" in listed.stdout
    assert "fixed\tworkspace\t" in listed.stdout


def public(row: dict[str, Any]) -> dict[str, Any]:
    """What two principals (or tokens) made alike share: everything but names, ids and times."""
    return {k: v for k, v in row.items() if k not in ("id", "name", "principal", "created_at", "expires_at")}


def test_principals_and_tokens_made_either_way_are_the_same(surfaces: Surfaces) -> None:
    def cli_round(*commands: list[str]) -> None:
        results = surfaces.cli_all(list(commands))
        assert all(code == 0 for code, _ in results), results

    cli_round(["users", "add", "cli_grp", "--group"], ["users", "add", "cli_bot", "--service-principal", "--admin"],
              ["users", "add", "cli_gone"])
    cli_round(["users", "add-member", "cli_grp", "cli_bot"],
              ["tokens", "create", "cli_bot", "--lifetime-days", "2", "--comment", "laptop"])
    with surfaces.http() as http:
        for body in ({"name": "api_grp", "kind": "group"}, {"name": "api_bot", "kind": "service_principal",
                                                             "admin": True}, {"name": "api_gone"}):
            assert http.post("/admin/v1/principals", json=body).status_code == 200
        assert http.post("/admin/v1/principals/api_grp/members", json={"member": "api_bot"}).status_code == 200
        assert http.post("/admin/v1/principals/api_bot/tokens",
                         json={"lifetime_seconds": 2 * 86400, "comment": "laptop"}).status_code == 200
        rows = {p["name"]: p for p in http.get("/admin/v1/principals").json()["data"]}
        assert public(rows["cli_grp"]) == public(rows["api_grp"])
        assert {**public(rows["cli_bot"]), "groups": []} == {**public(rows["api_bot"]), "groups": []}
        assert rows["cli_bot"]["groups"] == ["cli_grp"] and rows["api_bot"]["groups"] == ["api_grp"]
        tokens = {t["principal"]: t for t in http.get("/admin/v1/tokens").json()["data"]}
        assert public(tokens["cli_bot"]) == public(tokens["api_bot"])
        for who in ("cli_bot", "api_bot"):
            assert tokens[who]["expires_at"] - tokens[who]["created_at"] == 2 * 86400
        # A grant names principals: removing one, either way, takes it out of the grant.
        granted = http.put("/admin/v1/grants/connection:fixed", json={"principals": ["cli_gone", "api_gone"]})
        assert granted.status_code == 200, granted.text
        assert http.post("/admin/v1/principals/cli_gone/tokens", json={}).status_code == 200
        assert http.post("/admin/v1/principals/api_gone/tokens", json={}).status_code == 200
    cli_round(["tokens", "revoke", tokens["cli_bot"]["id"]], ["users", "remove", "cli_gone"])
    with surfaces.http() as http:
        assert http.delete(f"/admin/v1/tokens/{tokens['api_bot']['id']}").status_code == 200
        assert http.delete("/admin/v1/principals/api_gone").status_code == 200
        names = {p["name"] for p in http.get("/admin/v1/principals").json()["data"]}
        grants = {g["object"]: g["principals"] for g in http.get("/admin/v1/grants").json()["data"]}
        left = {t["principal"]: t["revoked"] for t in http.get("/admin/v1/tokens").json()["data"]}
    assert not names & {"cli_gone", "api_gone"} and grants["connection:fixed"] == []
    assert left["cli_bot"] is left["api_bot"] is True and not {"cli_gone", "api_gone"} & set(left)


def test_functions_registered_either_way_are_the_same(surfaces: Surfaces) -> None:
    added = surfaces.cli("functions", "add", "main.cli.echo", "--sql", "SELECT :x AS n", "--database-url",
                         "sqlite:///echo.db", "--param", "x:integer:A number", "--description", "Echoes")
    assert added.returncode == 0, added.stderr
    with surfaces.http() as http:
        put = http.put("/admin/v1/functions/main.api.echo", json={
            "language": "sql", "sql": "SELECT :x AS n", "database_url": "sqlite:///echo.db", "description": "Echoes",
            "parameters": [{"name": "x", "type": "integer", "description": "A number"}]})
        assert put.status_code == 200, put.text
        wait_until(lambda: http.get("/admin/v1/functions/main.cli.echo").status_code == 200, timeout=30,
                   what="the server to load the CLI's function")
        by_cli, by_api = (http.get(f"/admin/v1/functions/{n}").json() for n in ("main.cli.echo", "main.api.echo"))
    assert {k: v for k, v in by_cli.items() if "name" not in k} == {k: v for k, v in by_api.items() if "name" not in k}
    listed = surfaces.cli("functions", "list").stdout.splitlines()
    assert "main.api.echo\tsql\tregistered\tEchoes" in listed and "main.cli.echo\tsql\tregistered\tEchoes" in listed
    assert "main.support.count\tsql\tworkspace\tmain.support.count" in listed
    assert surfaces.cli("functions", "remove", "main.api.echo").returncode == 0
    with surfaces.http() as http:
        assert http.delete("/admin/v1/functions/main.cli.echo").status_code == 200
        wait_until(lambda: http.get("/admin/v1/functions/main.api.echo").status_code == 404, timeout=30,
                   what="the server to drop the function the CLI removed")


def test_grants_and_rate_limits_set_either_way_are_the_same(surfaces: Surfaces) -> None:
    limits = [{"key": "endpoint", "calls": 100000}, {"key": "user", "principal": "viewer", "tokens": 5000}]
    with surfaces.http() as http:
        assert http.post("/admin/v1/principals", json={"name": "viewer"}).status_code == 200
        assert http.put("/admin/v1/grants/app:api_app", json={"principals": ["viewer"]}).status_code == 200
        assert http.put("/admin/v1/rate-limits/api_model", json={"rate_limits": limits}).status_code == 200
    results = surfaces.cli_all([["grants", "set", "app:cli_app", "viewer"],
                                ["rate-limits", "set", "cli_model", json.dumps(limits)]])
    assert all(code == 0 for code, _ in results), results

    def state(http: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
        granted = {g["object"]: g for g in http.get("/admin/v1/grants").json()["data"]}
        limited = {r["model"]: r for r in http.get("/admin/v1/rate-limits").json()["data"]}
        return granted, limited

    with surfaces.http() as http:
        wait_until(lambda: "app:cli_app" in state(http)[0] and "cli_model" in state(http)[1], timeout=30,
                   what="the server to load the CLI's grant and limits")
        granted, limited = state(http)
    assert {**granted["app:cli_app"], "object": "app"} == {**granted["app:api_app"], "object": "app"}
    assert {**limited["cli_model"], "model": "m"} == {**limited["api_model"], "model": "m"}
    assert limited["cli_model"]["source"] == "api" and granted["app:cli_app"]["origin"] == "stored"
    listed = surfaces.cli_all([["grants", "list"], ["rate-limits", "list"]])
    assert all(code == 0 for code, _ in listed), listed
    results = surfaces.cli_all([["grants", "remove", "app:api_app"], ["rate-limits", "remove", "api_model"]])
    assert all(code == 0 for code, _ in results), results
    with surfaces.http() as http:
        assert http.delete("/admin/v1/grants/app:cli_app").status_code == 200
        assert http.delete("/admin/v1/rate-limits/cli_model").status_code == 200
        granted, limited = state(http)
    assert not {"app:cli_app", "app:api_app"} & set(granted) and not {"cli_model", "api_model"} & set(limited)


# (CLI arguments, the same through the API: method, path, body), each a mistake both must refuse alike.
REFUSALS: list[tuple[list[str], tuple[str, str, dict[str, Any] | None]]] = [
    (["users", "add", "bad name"], ("POST", "/admin/v1/principals", {"name": "bad name"})),
    (["users", "add", "admin"], ("POST", "/admin/v1/principals", {"name": "admin"})),
    (["users", "add", "Crew", "--group", "--admin"],
     ("POST", "/admin/v1/principals", {"name": "Crew", "kind": "group", "admin": True})),
    (["users", "add", "Taken"], ("POST", "/admin/v1/principals", {"name": "Taken"})),
    (["users", "remove", "nobody"], ("DELETE", "/admin/v1/principals/nobody", None)),
    (["users", "add-member", "Taken", "Taken"], ("POST", "/admin/v1/principals/Taken/members", {"member": "Taken"})),
    (["tokens", "create", "nobody"], ("POST", "/admin/v1/principals/nobody/tokens", {})),
    (["tokens", "create", "Taken", "--comment", "x" * 1001],
     ("POST", "/admin/v1/principals/Taken/tokens", {"comment": "x" * 1001})),
    (["tokens", "revoke", "tok_nope"], ("DELETE", "/admin/v1/tokens/tok_nope", None)),
    (["usage", "--since", "yesterday"], ("GET", "/admin/v1/usage?since=yesterday", None)),
    (["usage", "--by", "colour"], ("GET", "/admin/v1/usage?group_by=colour", None)),
    (["grants", "set", "table:x"], ("PUT", "/admin/v1/grants/table:x", {"principals": []})),
    (["grants", "set", "app:x", "nobody"], ("PUT", "/admin/v1/grants/app:x", {"principals": ["nobody"]})),
    (["grants", "set", "app:declared"], ("PUT", "/admin/v1/grants/app:declared", {"principals": []})),
    (["grants", "remove", "app:none"], ("DELETE", "/admin/v1/grants/app:none", None)),
    (["rate-limits", "set", "nope", "[]"], ("PUT", "/admin/v1/rate-limits/nope", {"rate_limits": []})),
    (["rate-limits", "set", "agent", '[{"key": "user_group", "calls": 1}]'],
     ("PUT", "/admin/v1/rate-limits/agent", {"rate_limits": [{"key": "user_group", "calls": 1}]})),
    (["rate-limits", "remove", "agent"], ("DELETE", "/admin/v1/rate-limits/agent", None)),
]
CATALOG_REFUSALS: list[tuple[list[str], tuple[str, str, dict[str, Any] | None]]] = [
    (["connections", "add", "bad name!", "--url", NOWHERE],
     ("PUT", "/admin/v1/connections/bad name!", {"url": NOWHERE})),
    (["connections", "add", "fixed", "--url", NOWHERE],
     ("PUT", "/admin/v1/connections/fixed", {"url": NOWHERE})),
    (["connections", "add", "envless", "--url", NOWHERE, "--bearer-token-env", "OS_TEST_UNSET_VAR"],
     ("PUT", "/admin/v1/connections/envless", {"url": NOWHERE, "bearer_token_env": "OS_TEST_UNSET_VAR"})),
    (["connections", "add", "robot", "--url", NOWHERE, "--oauth-client-id", "robot"],
     ("PUT", "/admin/v1/connections/robot", {"url": NOWHERE, "oauth": {"client_id": "robot"}})),
    (["connections", "remove", "fixed"], ("DELETE", "/admin/v1/connections/fixed", None)),
    (["connections", "remove", "nope"], ("DELETE", "/admin/v1/connections/nope", None)),
    (["functions", "add", "double", "--sql", "SELECT 1", "--database-url", "sqlite:///x.db"],
     ("PUT", "/admin/v1/functions/double", {"language": "sql", "sql": "SELECT 1", "database_url": "sqlite:///x.db"})),
    (["functions", "add", "main.x.nodb", "--sql", "SELECT 1"],
     ("PUT", "/admin/v1/functions/main.x.nodb", {"language": "sql", "sql": "SELECT 1"})),
    (["functions", "remove", "main.support.count"], ("DELETE", "/admin/v1/functions/main.support.count", None)),
    (["functions", "remove", "main.x.nope"], ("DELETE", "/admin/v1/functions/main.x.nope", None)),
]


@pytest.mark.parametrize("refusals", [REFUSALS, CATALOG_REFUSALS], ids=["identity", "catalog"])
def test_both_refuse_the_same_mistakes_with_the_same_message(
        surfaces: Surfaces, refusals: list[tuple[list[str], tuple[str, str, dict[str, Any] | None]]]) -> None:
    with surfaces.http() as http:
        http.post("/admin/v1/principals", json={"name": "Taken"})  # made by whichever runs first
        answers = [http.request(method, path, json=body) for _, (method, path, body) in refusals]
    half = len(refusals) // 2  # two rounds of processes at once: quicker, and never too many
    results = surfaces.cli_all([args for args, _ in refusals[:half]])
    results += surfaces.cli_all([args for args, _ in refusals[half:]])
    for (args, _), answer, (code, stderr) in zip(refusals, answers, results, strict=True):
        assert 400 <= answer.status_code < 500, (args, answer.text)
        error = answer.json()["error"]
        assert error["param"], (args, error)
        assert code != 0 and f"Error: {error['message']}" in stderr, (args, error["message"], stderr)


def test_the_cli_shows_the_defaults_the_admin_services_apply() -> None:
    # Options left at their default are not sent: what --help shows must be what the service applies.
    from pydantic_core import PydanticUndefined

    from opensupervisor.cli import connections_add, functions_add
    from opensupervisor.tools.connections import ConnectionEntry
    from opensupervisor.tools.uc_functions import FunctionEntry

    checked = []
    for command, args, model in ((connections_add, ["x", "--url", NOWHERE], ConnectionEntry),
                                 (functions_add, ["main.x.y", "--sql", "SELECT 1"], FunctionEntry)):
        shown = command.make_context("add", args).params
        for name, field in model.model_fields.items():
            if name in shown and field.default not in (None, PydanticUndefined):
                assert shown[name] == field.default, (command.name, name)
                checked.append(name)
    assert sorted(checked) == ["per_user", "require_approval", "timeout_s", "timeout_s", "transport"]
