"""On behalf of the user in the database: a Genie space's and a SQL function's queries run as the
caller's PostgreSQL role, so the database refuses what the user may not read."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opensupervisor.errors import ConfigError
from opensupervisor.tools.sql_engines import check_roles
from tests.conftest import Server, ThreadServer, require_postgres
from tests.test_identity import client, make_user

RUN = secrets.token_hex(4)
SCHEMA, EVERYTHING, ORDERS_ONLY = f"obo_{RUN}", f"r_all_{RUN}", f"r_orders_{RUN}"


@pytest.fixture(scope="module")
def roles_db() -> Iterator[str]:
    url = require_postgres()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in (
                f"CREATE SCHEMA {SCHEMA}",
                f"CREATE TABLE {SCHEMA}.pay (who text, amount int)",
                f"INSERT INTO {SCHEMA}.pay VALUES ('ann', 100), ('ben', 250)",
                f"CREATE TABLE {SCHEMA}.orders (id int, total int)",
                f"INSERT INTO {SCHEMA}.orders VALUES (1, 10)",
                f"CREATE ROLE {EVERYTHING} NOLOGIN", f"CREATE ROLE {ORDERS_ONLY} NOLOGIN",
                f"GRANT USAGE ON SCHEMA {SCHEMA} TO {EVERYTHING}, {ORDERS_ONLY}",
                f"GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {EVERYTHING}",
                f"GRANT SELECT ON {SCHEMA}.orders TO {ORDERS_ONLY}"):
            conn.execute(statement)
    try:
        yield url
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
            for role in (EVERYTHING, ORDERS_ONLY):
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def server(roles_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("roles")
    roles = f'{{ hr = "{EVERYTHING}", "*" = "{ORDERS_ONLY}" }}'
    (folder / "workspace.toml").write_text(f"""
[models.agent]
provider = "scripted"

[[models.agent.script]]
when = "space"
turns = [
  {{ tool_calls = [{{ name = "genie_payroll", arguments = {{ question = "total pay" }} }}] }},
  {{ text = "Done." }},
]

[[models.agent.script]]
when = "function"
turns = [{{ tool_calls = [{{ name = "main__hr__total_pay" }}] }}, {{ text = "Done." }}]

[[models.agent.script]]
when = "strict"
turns = [{{ tool_calls = [{{ name = "main__hr__strict_pay" }}] }}, {{ text = "Done." }}]

[genie_spaces.payroll]
database_url = "{roles_db}"
tables = ["{SCHEMA}.pay", "{SCHEMA}.orders"]
database_roles = {roles}
example_queries = [{{ question = "total pay", sql = "SELECT sum(amount) AS total FROM {SCHEMA}.pay" }}]

[functions."main.hr.total_pay"]
language = "sql"
database_url = "{roles_db}"
sql = "SELECT sum(amount) AS total FROM {SCHEMA}.pay"
database_roles = {roles}

[functions."main.hr.strict_pay"]
language = "sql"
database_url = "{roles_db}"
sql = "SELECT sum(amount) AS total FROM {SCHEMA}.pay"
database_roles = {{ hr = "{EVERYTHING}" }}
""")
    with ThreadServer(f"sqlite:///{folder}/state.db", folder / "workspace.toml") as running:
        with running.http() as http:
            http.post("/admin/v1/principals", json={"name": "hr", "kind": "group"})
        yield running


SPACE: Any = [{"type": "genie_space", "genie_space": {"id": "payroll"}}]
FUNCTIONS: Any = [{"type": "uc_function", "uc_function": {"name": "main.hr.total_pay"}},
                  {"type": "uc_function", "uc_function": {"name": "main.hr.strict_pay"}}]


def tool_output(server: Server, token: str, question: str, tools: Any) -> str:
    response = client(server, token).responses.create(model="agent", input=question, tools=tools)
    return str(next(i.output for i in response.output if i.type == "function_call_output"))


def test_queries_run_as_the_callers_database_role(server: Server) -> None:
    hana, omar = make_user(server, "hana"), make_user(server, "omar")
    with server.http() as http:
        assert http.post("/admin/v1/principals/hr/members", json={"member": "hana"}).status_code == 200
    assert "350" in tool_output(server, hana, "space", SPACE)  # hr reads pay
    refused = tool_output(server, omar, "space", SPACE)
    assert "permission denied for table pay" in refused  # everyone else reads orders only
    assert "350" in tool_output(server, hana, "function", FUNCTIONS)
    assert "permission denied for table pay" in tool_output(server, omar, "function", FUNCTIONS)
    nobody = tool_output(server, omar, "strict", FUNCTIONS)  # no "*": a caller without a role may not query
    assert "runs queries as each user's database role, and 'omar' has none" in nobody
    assert "350" in tool_output(server, server.token, "strict", FUNCTIONS)  # admins: the database's own user


def test_roles_need_postgresql_and_plain_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need a postgresql"):
        check_roles({"*": "reader"}, f"sqlite:///{tmp_path}/x.db", "genie_spaces.s")
    with pytest.raises(ConfigError, match="not a database role name"):
        check_roles({"*": 'x"; DROP TABLE y; --'}, "postgresql://h/db", "genie_spaces.s")
