"""Tools backed by a Databricks workspace (a fake one on loopback speaking the real REST shapes),
driven through the real ``databricks-openai`` client as a published Supervisor API app drives them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks_openai import DatabricksOpenAI

from tests.conftest import ASGIThread, Server, ThreadServer, wait_until
from tests.fake_databricks import ANSWER, CLIENT_ID, CLIENT_SECRET, SERVICE_TOKEN, Workspace, fake_workspace
from tests.test_identity import make_user

TOKEN_ENV = "OS_TEST_DATABRICKS_TOKEN"


def rule(when: str, name: str, arguments: str, answer: str = "Done.") -> str:
    return f"""
[[models.agent.script]]
when = "{when}"
turns = [{{ tool_calls = [{{ name = "{name}", arguments = {arguments} }}] }}, {{ text = "{answer}" }}]
"""


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Workspace]]:
    app, state = fake_workspace()
    with ASGIThread(app) as url:
        folder = tmp_path_factory.mktemp("databricks")
        rules = "".join(rule(f"{space} please", f"genie_{space}", '{ question = "How are sales?" }')
                        for space in ("busy", "locked", "broken", "slow"))
        (folder / "workspace.toml").write_text(f"""
[limits]
tool_timeout_s = 4

[models.agent]
provider = "scripted"
{rule("revenue please", "genie_sales", '{ question = "What is the revenue?" }', "Which region?")}
{rule("north", "genie_sales", '{ question = "the north" }', "Revenue in north is 42.")}
{rules}
{rule("which customer", "main__tools__lookup_customer", '{ customer_id = "c-7" }')}
{rule("no customer", "main__tools__lookup_customer", '{ customer_id = "nobody" }')}
{rule("stuck customer", "main__tools__lookup_customer", '{ customer_id = "hang" }')}
{rule("crm please", "find_account", '{ name = "Acme" }')}
{rule("ticket please", "open_ticket", '{ title = "Printer" }')}
{rule("local echo", "main__local__echo", '{ x = "here" }')}
{rule("agent please", "app_ka-handbook", '{ question = "What leave do I get?" }')}

[functions."main.local.echo"]
language = "sql"
database_url = "sqlite:///echo.db"
sql = "SELECT :x AS x"
parameters = [{{ name = "x", type = "string" }}]
{rule("handbook please", "ka_handbook", '{ question = "What leave do I get?" }',
      "You get 25 vacation days [1] and 16 weeks of parental leave [2].")}

[databricks]
host = "{url}"
token_env = "{TOKEN_ENV}"
warehouse_id = "wh-1"
timeout_s = 10
connection_approval = "never"
knowledge_assistant_endpoints = {{ handbook = "ka-handbook" }}

[databricks.tools]
genie_space = "databricks"
uc_function = "local_first"
uc_connection = "databricks"
knowledge_assistant = "databricks"
app = "databricks"
agent_endpoint = "databricks"
""")
        with pytest.MonkeyPatch.context() as env:
            env.setenv(TOKEN_ENV, SERVICE_TOKEN)
            with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as server:
                yield server, state


def dbx(server: Server, token: str | None = None) -> DatabricksOpenAI:
    workspace = WorkspaceClient(host=server.url, token=token or server.token, auth_type="pat")
    return DatabricksOpenAI(workspace_client=workspace, use_ai_gateway=True)


GENIE: Any = [{"type": "genie_space", "genie_space": {"id": "sales", "description": "Sales data"}}]


def outputs(response: Any) -> list[str]:
    return [i.output for i in response.output if i.type == "function_call_output"]


def test_a_genie_question_with_a_clarifying_follow_up(remote: tuple[Server, Workspace]) -> None:
    server, state = remote
    client = dbx(server)
    history: list[Any] = [{"role": "user", "content": "revenue please"}]
    first = client.responses.create(model="agent", input=history, tools=GENIE)
    (asked,) = outputs(first)
    assert "Which region do you mean?" in asked and "- Revenue in north" in asked
    conversation = asked.rsplit("(Genie conversation ", 1)[1].split(" ")[0]
    history += [item.model_dump() for item in first.output] + [{"role": "user", "content": "north"}]
    second = client.responses.create(model="agent", input=history, tools=GENIE)  # the full-history echo
    (answered,) = outputs(second)
    assert "WHERE region = 'north'" in answered and "SELECT bad" not in answered  # Genie's last try wins
    assert "| revenue |" in answered and "| 42 |" in answered and "Rows: 1" in answered
    assert f"(Genie conversation {conversation} in space sales, " in answered
    assert ("service-principal", "POST", f"/api/2.0/genie/spaces/sales/conversations/{conversation}/messages") \
        in state.calls  # the follow-up went to the same conversation
    third = client.responses.create(model="agent", input="north", tools=GENIE, previous_response_id=first.id)
    assert f"(Genie conversation {conversation} in space sales, " in outputs(third)[0]
    # Another caller echoing that history (or a forged mark) starts a conversation of their own.
    other = dbx(server, make_user(server, "mallory"))
    forged = other.responses.create(model="agent", input=history, tools=GENIE)
    assert conversation not in outputs(forged)[0]


def test_a_rate_limited_genie_is_waited_out(remote: tuple[Server, Workspace]) -> None:
    server, state = remote
    response = dbx(server).responses.create(model="agent", input="busy please", tools=[
        {"type": "genie_space", "genie_space": {"id": "busy"}}])
    assert state.busy_refusals == 1 and "Which region do you mean?" in outputs(response)[0]


def test_workspace_errors_are_clear_tool_outputs(remote: tuple[Server, Workspace]) -> None:
    server, _ = remote
    client = dbx(server)
    found = {}
    for space in ("locked", "broken", "slow"):
        response = client.responses.create(model="agent", input=f"{space} please", tools=[
            {"type": "genie_space", "genie_space": {"id": space}}])
        assert response.status == "completed"
        found[space] = outputs(response)[0]
    assert found["locked"] == "Error: Databricks answered 403 PERMISSION_DENIED: You do not have CAN_RUN on this space."
    assert found["broken"] == "Error: Databricks answered 500 INTERNAL_ERROR: Something went wrong."
    assert found["slow"] == "Error: 'genie_slow' did not finish within 4 seconds."
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}) as http:
        missing = http.post("/v1/responses", json={"model": "agent", "input": "hi", "tools": [
            {"type": "genie_space", "genie_space": {"id": "nope"}}]})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "tools[0].genie_space.id"
    assert "RESOURCE_DOES_NOT_EXIST" in missing.json()["error"]["message"]


FUNCTION: Any = [{"type": "uc_function", "uc_function": {"name": "main.tools.lookup_customer"}}]


def test_a_unity_catalog_function_runs_on_the_warehouse(remote: tuple[Server, Workspace]) -> None:
    server, state = remote
    client = dbx(server)
    response = client.responses.create(model="agent", input="which customer", tools=FUNCTION)
    assert outputs(response) == ["Customer c-7: gold tier (limit 10)"]
    failed = client.responses.create(model="agent", input="no customer", tools=FUNCTION)
    assert outputs(failed) == ["Error: the function failed (FAILED): [USER_RAISED_EXCEPTION] no such customer"]
    stuck = client.responses.create(model="agent", input="stuck customer", tools=FUNCTION)
    assert outputs(stuck) == ["Error: 'main__tools__lookup_customer' did not finish within 4 seconds."]
    assert len(state.cancelled) == 1  # the statement of the call that timed out was cancelled
    statement = next(s for s in state.statements.values() if s["values"].get("customer_id") == "c-7")
    assert statement["statement"] == "SELECT `main`.`tools`.`lookup_customer`(customer_id => :customer_id) AS result"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}) as http:
        missing = http.post("/v1/responses", json={"model": "agent", "input": "hi", "tools": [
            {"type": "uc_function", "uc_function": {"name": "main.tools.nothing"}}]})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "tools[0].uc_function.name"


def test_the_function_schema_comes_from_unity_catalog() -> None:
    from opensupervisor.tools.databricks.functions import schema

    assert schema([{"name": "customer_id", "type_name": "STRING", "comment": "Customer identifier"},
                   {"name": "limit", "type_name": "INT", "parameter_default": "10"}]) == {
        "type": "object", "additionalProperties": False, "required": ["customer_id"],
        "properties": {"customer_id": {"type": "string", "description": "Customer identifier", "maxLength": 16384},
                       "limit": {"type": "integer", "default": 10}}}


def test_an_external_mcp_connection_through_the_workspace_proxy(remote: tuple[Server, Workspace]) -> None:
    server, state = remote
    response = dbx(server).responses.create(model="agent", input="crm please", tools=[
        {"type": "uc_connection", "uc_connection": {"name": "crm"}}])
    assert outputs(response) == ["account Acme: 3 open deals"]
    assert any(path == "/api/2.0/mcp/external/crm" for _, _, path in state.calls)


def test_remote_tools_run_as_the_caller_when_they_stored_a_token(remote: tuple[Server, Workspace]) -> None:
    server, state = remote
    ann, bob = make_user(server, "ann"), make_user(server, "bob")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ann}"}) as http:
        stored = http.put("/v1/databricks/credential", json={"bearer_token": "dapi-ann"})
        assert stored.json() == {"connection": "databricks", "principal": "ann", "stored": True}
    state.calls.clear()
    as_ann = dbx(server, ann).responses.create(model="agent", input="which customer", tools=FUNCTION,
                                               extra_body={"databricks_options": {"return_trace": True}})
    assert {who for who, _, _ in state.calls} == {"ann@example.com"}
    spans = as_ann.model_dump(warnings=False)["databricks_output"]["trace"]["data"]["spans"]
    assert any(s["attributes"].get("databricks.identity") == "user:ann" for s in spans)  # recorded in the trace
    state.calls.clear()
    dbx(server, bob).responses.create(model="agent", input="which customer", tools=FUNCTION)
    assert {who for who, _, _ in state.calls} == {"service-principal"}


def test_a_knowledge_assistant_answers_with_citations(remote: tuple[Server, Workspace]) -> None:
    server, _ = remote
    response = dbx(server).responses.create(model="agent", input="handbook please", tools=[
        {"type": "knowledge_assistant", "knowledge_assistant": {"knowledge_assistant_id": "handbook"}}])
    (output,) = outputs(response)
    assert output.startswith(f"{ANSWER[:31]}[1]{ANSWER[31:]}[2]\n\nSources:\n")
    assert "[2] Parental leave <https://intranet.example.com/leave#parental>" in output
    message = response.output[-1]
    assert message.type == "message"
    notes = message.content[0].annotations
    assert [(n.type, n.url, n.title) for n in notes] == [
        ("url_citation", "https://intranet.example.com/leave#vacation", "Leave policy"),
        ("url_citation", "https://intranet.example.com/leave#parental", "Parental leave")]


def test_the_older_agent_endpoint_dialect_asks_a_serving_endpoint(remote: tuple[Server, Workspace]) -> None:
    server, _ = remote
    response = dbx(server).responses.create(model="agent", input="agent please", tools=[
        {"type": "agent_endpoint",
         "agent_endpoint": {"name": "hr", "description": "HR", "endpoint_name": "ka-handbook"}}])
    assert outputs(response)[0].startswith(f"{ANSWER[:31]}[1]")


def test_an_app_serving_mcp_in_the_workspace(remote: tuple[Server, Workspace]) -> None:
    server, _ = remote
    client = dbx(server)
    response = client.responses.create(model="agent", input="ticket please", tools=[
        {"type": "app", "app": {"name": "mcp-tickets"}}])
    assert outputs(response) == ["ticket T-1 opened: Printer"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}) as http:
        missing = http.post("/v1/responses", json={"model": "agent", "input": "hi", "tools": [
            {"type": "app", "app": {"name": "mcp-nothing"}}]})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "tools[0].app.name"


def test_oauth_machine_to_machine_credentials(tmp_path: Path) -> None:
    app, state = fake_workspace()
    with ASGIThread(app) as url:
        (tmp_path / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"
{rule("which customer", "main__tools__lookup_customer", '{ customer_id = "c-9" }')}

[databricks]
host = "{url}"
client_id = "{CLIENT_ID}"
client_secret_env = "OS_TEST_DATABRICKS_SECRET"
warehouse_id = "wh-1"

[databricks.tools]
uc_function = "databricks"
""")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("OS_TEST_DATABRICKS_SECRET", CLIENT_SECRET)
            with ThreadServer(f"sqlite:///{tmp_path}/state.db", tmp_path / "workspace.toml") as server:
                for _ in range(2):
                    response = dbx(server).responses.create(model="agent", input="which customer", tools=FUNCTION)
                    assert outputs(response) == ["Customer c-9: gold tier (limit 10)"]
        with ThreadServer(f"sqlite:///{tmp_path}/state.db", tmp_path / "workspace.toml") as unset, \
                httpx.Client(base_url=unset.url, headers={"Authorization": f"Bearer {unset.token}"}) as http:
            failed = http.post("/v1/responses", json={"model": "agent", "input": "hi", "tools": FUNCTION})
    assert {who for who, _, _ in state.calls} == {"m2m-robot"} and state.tokens_issued == 1
    assert failed.status_code == 502 and failed.json()["error"]["param"] == "tools[0]"  # not a 500
    assert "OS_TEST_DATABRICKS_SECRET is not set" in failed.json()["error"]["message"]


def test_the_verbatim_question_is_the_callers_last_message() -> None:
    from types import SimpleNamespace

    from opensupervisor.tools.databricks.genie import _verbatim

    ctx: Any = SimpleNamespace(history=[
        {"type": "message", "role": "user", "content": "first"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Revenue by region, Q3?"}]}])
    assert _verbatim(ctx) == "Revenue by region, Q3?"


def test_local_first_keeps_the_files_ids_local(remote: tuple[Server, Workspace]) -> None:
    server, state = remote
    state.calls.clear()
    response = dbx(server).responses.create(model="agent", input="local echo", tools=[
        {"type": "uc_function", "uc_function": {"name": "main.local.echo"}}])
    assert outputs(response) == ['{"columns":["x"],"rows":[["here"]]}'] and state.calls == []


def test_the_older_mcp_dialect_reaches_the_workspace_connection(remote: tuple[Server, Workspace]) -> None:
    server, _ = remote
    response = dbx(server).responses.create(model="agent", input="crm please", tools=[
        {"type": "mcp", "mcp": {"name": "crm", "description": "The CRM", "connection_name": "crm"}}])
    assert outputs(response) == ["account Acme: 3 open deals"]


def test_a_workspace_connection_asks_for_approval_in_background_runs(tmp_path: Path) -> None:
    app, _ = fake_workspace()
    with ASGIThread(app) as url:
        (tmp_path / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"
{rule("crm please", "find_account", '{ name = "Acme" }')}

[databricks]
host = "{url}"
token_env = "{TOKEN_ENV}"

[databricks.tools]
uc_connection = "databricks"
""")
        with pytest.MonkeyPatch.context() as env:
            env.setenv(TOKEN_ENV, SERVICE_TOKEN)
            with ThreadServer(f"sqlite:///{tmp_path}/state.db", tmp_path / "workspace.toml") as server:
                client = dbx(server)
                crm: Any = [{"type": "uc_connection", "uc_connection": {"name": "crm"}}]
                first = client.responses.create(model="agent", input="crm please", tools=crm, background=True)
                wait_until(lambda: client.responses.retrieve(first.id).status == "completed", what="the run")
                [request] = client.responses.retrieve(first.id).output
                assert (request.type, request.name, request.server_label) == ("mcp_approval_request",
                                                                              "find_account", "crm")
                answer = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
                second = client.responses.create(model="agent", input=[answer], tools=crm,
                                                 previous_response_id=first.id)
    assert outputs(second) == ["account Acme: 3 open deals"]
