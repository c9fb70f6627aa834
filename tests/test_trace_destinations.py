"""``trace_destination`` is scoped per principal: a non-admin's tables are their own (namespaced under
their principal id), bounded in number; an admin's are the shared ones."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, SCRATCH, TOKEN, WORKSPACE, Server, ThreadServer, wait_until

LIMIT = 3
TRACES = SCRATCH / "traces"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("destinations")
    config = folder / "workspace.toml"
    config.write_text(WORKSPACE.read_text() + f"\n[tracing]\nmax_destinations_per_principal = {LIMIT}\n")
    with ThreadServer(f"sqlite:///{folder}/state.db", workspace=config) as running:
        yield running


def user(server: Server, name: str) -> tuple[str, str]:
    """A new user's token and principal id."""
    with server.http() as http:
        made = http.post("/admin/v1/principals", json={"name": name})
        assert made.status_code == 200, made.text
        token = http.post(f"/admin/v1/principals/{name}/tokens", json={}).json()["token"]
    return token, made.json()["id"]


def create(server: Server, token: str, dest: dict[str, Any], **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "input": "hi", "trace_destination": dest, "databricks_options": {"return_trace": True},
            **extra}
    return httpx.post(f"{server.v1}/responses", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def trace_hex(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    return str(answer.json()["databricks_output"]["trace"]["info"]["trace_id"]).rsplit("/", 1)[1]


def rows(database: Path, hex_id: str, prefix: str = "mlflow_experiment_trace") -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
            found = conn.execute(f"SELECT count(*) FROM {prefix}_otel_spans WHERE trace_id = ?", (hex_id,))
            return int(found.fetchone()[0])
    except sqlite3.OperationalError:  # not written yet
        return 0


def test_each_principal_writes_to_their_own_tables(server: Server) -> None:
    alice, alice_id = user(server, "dest-alice")
    bob, bob_id = user(server, "dest-bob")
    dest = {"catalog_name": "team", "schema_name": "shared"}
    mine, theirs, admins = (trace_hex(create(server, t, dest)) for t in (alice, bob, TOKEN))
    alice_db, bob_db = TRACES / alice_id / "team.shared.db", TRACES / bob_id / "team.shared.db"
    shared = TRACES / "team.shared.db"
    wait_until(lambda: rows(alice_db, mine) > 0 and rows(bob_db, theirs) > 0 and rows(shared, admins) > 0,
               what="the three traces to be written")
    # Nobody's spans land in another's tables, and a user's never in the shared ones.
    assert rows(alice_db, theirs) == rows(alice_db, admins) == 0
    assert rows(bob_db, mine) == rows(bob_db, admins) == 0
    assert rows(shared, mine) == rows(shared, theirs) == 0


def test_a_background_run_keeps_its_callers_namespace(server: Server) -> None:
    carol, carol_id = user(server, "dest-carol")
    headers = {"Authorization": f"Bearer {carol}"}
    queued = create(server, carol, {"catalog_name": "team", "schema_name": "bg"}, background=True).json()
    with httpx.Client(base_url=server.v1, headers=headers, timeout=30) as http:
        wait_until(lambda: http.get(f"/responses/{queued['id']}").json()["status"] == "completed",
                   what="the background run")
        done = http.get(f"/responses/{queued['id']}").json()
    hex_id = done["databricks_output"]["trace"]["info"]["trace_id"].rsplit("/", 1)[1]
    wait_until(lambda: rows(TRACES / carol_id / "team.bg.db", hex_id) > 0, what="the background trace")
    assert not (TRACES / "team.bg.db").exists()


def test_a_principal_has_a_bounded_number_of_destinations(server: Server) -> None:
    dave, _ = user(server, "dest-dave")
    allowed = [{"catalog_name": "d", "schema_name": "one"}, {"catalog_name": "d", "schema_name": "one",
                                                              "table_prefix": "other"},
               {"catalog_name": "D", "schema_name": "one"}]
    for dest in allowed + allowed:  # the same ones again are not new
        assert create(server, dave, dest).status_code == 200
    for dest in ({"catalog_name": "d", "schema_name": "two"}, {"catalog_name": "d", "schema_name": "one",
                                                                 "table_prefix": "third"},
                 {"catalog_name": "e", "schema_name": "one"}):
        refused = create(server, dave, dest)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "trace_destination" and error["code"] == "too_many_trace_destinations"
        refused = create(server, dave, dest, background=True, stream=True)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "trace_destination"
    # Another principal's count is their own; admins are not bounded.
    erin, _ = user(server, "dest-erin")
    assert create(server, erin, {"catalog_name": "d", "schema_name": "two"}).status_code == 200
    for i in range(LIMIT + 2):
        assert create(server, TOKEN, {"catalog_name": "admins", "schema_name": f"s{i}"}).status_code == 200


def test_the_bound_counts_what_exists_after_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "workspace.toml"
    config.write_text(WORKSPACE.read_text() + "\n[tracing]\nmax_destinations_per_principal = 1\n")
    url = f"sqlite:///{tmp_path}/state.db"
    with ThreadServer(url, workspace=config) as first:
        frank, frank_id = user(first, "dest-frank")
        hex_id = trace_hex(create(first, frank, {"catalog_name": "f", "schema_name": "one"}))
        wait_until(lambda: rows(TRACES / frank_id / "f.one.db", hex_id) > 0, what="the trace")
    with ThreadServer(url, workspace=config) as second:
        assert create(second, frank, {"catalog_name": "f", "schema_name": "one"}).status_code == 200
        refused = create(second, frank, {"catalog_name": "f", "schema_name": "two"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "too_many_trace_destinations"


def test_names_the_store_cannot_hold_are_400s(server: Server) -> None:
    gina, _ = user(server, "dest-gina")
    long = {"catalog_name": "c" * 200, "schema_name": "s" * 100}
    for token in (gina, TOKEN):
        refused = create(server, token, long)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "trace_destination", refused.text
