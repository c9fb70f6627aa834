"""A hostile language model: a Chat Completions upstream that plays exactly the attack a test names.

The model is the untrusted party of an agent loop: it writes the tool calls, their arguments and the
SQL a Genie space runs. ``HostileUpstream`` speaks the real OpenAI Chat Completions wire format
(JSON and SSE), and a test tells it what to say with ``play``: the tool calls of the loop model's
first turn, and the SQL the text-to-SQL model writes on each attempt. The play is picked by a key in
the conversation's text, so plays of tests running at once never mix.

``hostile_server`` starts the upstream and a real server on loopback with a workspace whose model
``hostile`` is that upstream; ``attack`` sends one request through the ``openai`` client and
returns the tool outputs the model was given.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import orjson
import psycopg

from opensupervisor.testing.asgi import FakeUpstream, Send, send_json, send_sse
from opensupervisor.testing.chat_upstream import USAGE, _chunk, _usage_chunk
from tests.conftest import ASGIThread, Server, ThreadServer

MODEL = "hostile"


@dataclass(slots=True)
class Play:
    # (tool name, arguments) the loop model calls, all in its first turn.
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The SQL the text-to-SQL model writes, attempt by attempt (the last one repeats).
    sql: list[str] = field(default_factory=list)
    # Raw arguments text per call (overrides ``calls``' JSON), for arguments that are not JSON.
    raw_arguments: list[str] | None = None
    # The call ids the model uses (default: ``call_<n>``): hostile ids are part of the attack surface.
    call_ids: list[str] | None = None


class HostileUpstream(FakeUpstream):
    """The ASGI app. ``requests`` keeps every request body, for asserting what reached the model."""

    def __init__(self) -> None:
        super().__init__()
        self.plays: dict[str, Play] = {}
        self.requests: list[dict[str, Any]] = []

    def play(self, play: Play | None = None, /, **fields: Any) -> str:
        """Register a play; returns the user message that starts it."""
        key = f"attack-{uuid.uuid4().hex[:12]}"
        self.plays[key] = play if play is not None else Play(**fields)
        return f"Run the play {key}."

    def refusal(self) -> dict[str, Any]:
        return {"error": {"message": "bad key", "type": "invalid_request_error"}}

    async def answer(self, req: dict[str, Any], headers: dict[bytes, bytes], send: Send) -> None:
        self.requests.append(req)
        messages: list[dict[str, Any]] = req.get("messages") or []
        play = self._find(messages)
        fmt = (req.get("response_format") or {}).get("json_schema") or {}
        if fmt.get("name") == "sql_query":  # the Genie space's text-to-SQL call
            attempt = sum(1 for m in messages if m.get("role") == "assistant")
            sql = play.sql[min(attempt, len(play.sql) - 1)] if play and play.sql else "SELECT 1"
            await self._send(req, send, orjson.dumps({"sql": sql, "description": "as told"}).decode(), [])
            return
        tool_results = [m for m in messages if m.get("role") == "tool"]
        if play is not None and not tool_results and play.calls:
            await self._send(req, send, "", self._calls(play))
            return
        text = "Tool said: " + " | ".join(_text(m) for m in tool_results) if tool_results else "Nothing to do."
        await self._send(req, send, text, [])

    def _find(self, messages: list[dict[str, Any]]) -> Play | None:
        for message in messages:
            text = _text(message)
            for key, play in self.plays.items():
                if key in text:
                    return play
        return None

    @staticmethod
    def _calls(play: Play) -> list[dict[str, Any]]:
        calls = []
        for i, (name, arguments) in enumerate(play.calls):
            raw = play.raw_arguments[i] if play.raw_arguments else orjson.dumps(arguments).decode()
            call_id = play.call_ids[i] if play.call_ids else f"call_{i}"
            calls.append({"index": i, "id": call_id, "type": "function",
                          "function": {"name": name, "arguments": raw}})
        return calls

    @staticmethod
    async def _send(req: dict[str, Any], send: Send, text: str, calls: list[dict[str, Any]]) -> None:
        finish = "tool_calls" if calls else "stop"
        if req.get("stream"):
            chunks = [_chunk({"role": "assistant", "content": text or None,
                              **({"tool_calls": calls} if calls else {})}), _chunk({}, finish), _usage_chunk()]
            await send_sse(send, b"".join([*chunks, b"data: [DONE]\n\n"]))
            return
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
        await send_json(send, 200, {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 0,
                                    "model": "hostile", "usage": USAGE,
                                    "choices": [{"index": 0, "message": message, "finish_reason": finish}]})


def _text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


@dataclass(slots=True)
class Rig:
    server: Server
    upstream: HostileUpstream
    folder: Path

    def attack(self, tools: list[dict[str, Any]], play: Play | None = None, *, token: str | None = None,
               **fields: Any) -> list[str]:
        """Run one request whose model plays ``play``; the outputs of its hosted tool calls, in order."""
        return self.timed_attack(tools, play, token=token, **fields)[0]

    def timed_attack(self, tools: list[dict[str, Any]], play: Play | None = None, *, token: str | None = None,
                     **fields: Any) -> tuple[list[str], list[float]]:
        """``attack``, and how long each tool call took in the server (its span in the returned
        trace): what a limit bounds, without the request's own round trips."""
        prompt = self.upstream.play(play, **fields)
        client = openai.OpenAI(base_url=self.server.v1, api_key=token or self.server.token, max_retries=0,
                               timeout=120)
        response = client.responses.create(model=MODEL, input=prompt, tools=tools, extra_body=TRACED)
        assert response.status == "completed", response
        return tool_outputs(response), tool_seconds(response)


TRACED = {"databricks_options": {"return_trace": True}}


def tool_outputs(response: Any) -> list[str]:
    return [str(item.output) for item in response.output if item.type == "function_call_output"]


def tool_seconds(response: Any) -> list[float]:
    """How long each tool call took in the server: its span in the trace the response returned."""
    trace: dict[str, Any] = (response.model_extra or {})["databricks_output"]["trace"]
    return [(s["end_time_unix_nano"] - s["start_time_unix_nano"]) / 1e9 for s in trace["data"]["spans"]
            if s.get("attributes", {}).get("mlflow.spanType") == '"TOOL"']


def workspace_text(upstream_url: str, body: str) -> str:
    """A workspace whose ``hostile`` model is the upstream, with ``body`` appended (its own
    ``[limits]`` table, if it has one, replaces the default)."""
    limits = "" if "[limits]" in body else "[limits]\nmax_turns = 4\ntool_timeout_s = 60\n"
    return f"""
name = "security-tests"
{limits}
[models.{MODEL}]
provider = "openai-chat"
base_url = "{upstream_url}/v1"
upstream_model = "hostile"
max_retries = 0

{body}
"""


@contextmanager
def hostile_server(folder: Path, body: str, *, database_url: str | None = None) -> Iterator[Rig]:
    """The hostile upstream and a real server on loopback, the workspace's ``body`` its tools."""
    upstream = HostileUpstream()
    with ASGIThread(upstream) as upstream_url:
        path = folder / "workspace.toml"
        path.write_text(workspace_text(upstream_url, body), encoding="utf-8")
        with ThreadServer(database_url or f"sqlite:///{folder}/state.db", path) as server:
            yield Rig(server, upstream, folder)


# --- SQL spaces under attack: one database per engine, a listed table and unlisted ones --------

MARKER = "MARKER-7f3a9c"  # in every unlisted table: it must never reach a tool output
REVIEW_ROWS = [(1, "Great product", 0), (2, "Broken on arrival, refund now!", 1), (3, "Fine", 0),
               (4, "It caught fire", 1)]


@dataclass(slots=True)
class SqlDatabases:
    sqlite: Path
    duckdb: Path
    pg_url: str  # as the space's own login, which may read only ``reviews``
    pg_admin_url: str  # as the superuser, for setting up and for checking
    pg_role: str
    pg_database: str


def make_sql_files(folder: Path) -> tuple[Path, Path]:
    """A SQLite and a DuckDB file with ``reviews`` and the unlisted ``secret`` and ``audit``."""
    import sqlite3

    import duckdb

    for path, connect in ((folder / "space.db", sqlite3.connect), (folder / "space.duckdb", duckdb.connect)):
        conn: Any = connect(str(path))
        conn.execute("CREATE TABLE reviews (id INTEGER, body TEXT, urgent INTEGER)")
        conn.executemany("INSERT INTO reviews VALUES (?, ?, ?)", REVIEW_ROWS)
        conn.execute("CREATE TABLE secret (ssn TEXT)")
        conn.execute(f"INSERT INTO secret VALUES ('{MARKER}')")
        conn.execute("CREATE TABLE audit (note TEXT)")
        conn.execute(f"INSERT INTO audit VALUES ('{MARKER}')")
        conn.commit()
        conn.close()
    return folder / "space.db", folder / "space.duckdb"


@contextmanager
def postgres_space_database(admin_url: str) -> Iterator[tuple[str, str, str, str]]:
    """A database of its own (other test processes share the server), with ``reviews``, ``secret``,
    ``dblink`` and a login that may read only ``reviews``: (space URL, admin URL, role, database)."""
    import psycopg
    from sqlalchemy.engine import make_url

    run = uuid.uuid4().hex[:10]
    database, role = f"sec_{run}", f"sec_reader_{run}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
    admin = make_url(admin_url).set(database=database).render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            for statement in (
                    "CREATE TABLE reviews (id INTEGER, body TEXT, urgent INTEGER)",
                    "CREATE TABLE secret (ssn TEXT)", f"INSERT INTO secret VALUES ('{MARKER}')",
                    "CREATE EXTENSION IF NOT EXISTS dblink",
                    "REVOKE ALL ON SCHEMA public FROM PUBLIC",
                    f"GRANT USAGE ON SCHEMA public TO {role}", f"GRANT SELECT ON reviews TO {role}"):
                conn.execute(statement)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO reviews VALUES (%s, %s, %s)", REVIEW_ROWS)
        space = make_url(admin_url).set(database=database, username=role, password=None)
        yield space.render_as_string(hide_password=False), admin, role, database
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def sql_spaces_body(dbs: SqlDatabases, *, timeout_s: float = 2.0, extra: str = "") -> str:
    """Three spaces, ``sq``, ``dk`` and ``pg``, each listing only ``reviews``; a refused or failing
    query is not retried, so a test sees each attack's own outcome."""
    spaces = []
    for space_id, url in (("sq", f"sqlite:///{dbs.sqlite}"), ("dk", f"duckdb:///{dbs.duckdb}"), ("pg", dbs.pg_url)):
        spaces.append(f"""
[genie_spaces.{space_id}]
database_url = "{url}"
tables = ["reviews"]
model = "{MODEL}"
max_attempts = 1
max_rows = 100
timeout_s = {timeout_s}
{extra}
""")
    return "\n".join(spaces)


def space_tool(space_id: str) -> dict[str, Any]:
    return {"type": "genie_space", "genie_space": {"id": space_id}}


def _ask(rig: Rig, space_id: str, sql: str, *, traced: bool = False) -> Any:
    play = Play(sql=[sql])
    prompt = rig.upstream.play(play)
    # The question carries the play's key too: the space's own model call sees only the question.
    play.calls = [(f"genie_{space_id}", {"question": prompt})]
    client = openai.OpenAI(base_url=rig.server.v1, api_key=rig.server.token, max_retries=0, timeout=120)
    response = client.responses.create(model=MODEL, input=prompt, tools=[space_tool(space_id)],
                                       extra_body=TRACED if traced else None)
    assert response.status == "completed", response
    return response


def ask_space_timed(rig: Rig, space_id: str, sql: str) -> tuple[str, float]:
    """``ask_space``'s tool output, and how long the call took in the server."""
    response = _ask(rig, space_id, sql, traced=True)
    [output], [took] = tool_outputs(response), tool_seconds(response)
    return output, took


def ask_space(rig: Rig, space_id: str, sql: str) -> tuple[str, str]:
    """Have the model ask space ``space_id`` once, its SQL being ``sql``: (the tool output, the
    final answer as stored)."""
    response = _ask(rig, space_id, sql)
    [output] = tool_outputs(response)
    with rig.server.http() as http:
        stored = http.get(f"/v1/responses/{response.id}")
    assert stored.status_code == 200, stored.text
    return output, stored.text


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pg_state(dbs: SqlDatabases) -> tuple[object, ...]:
    """What a space's query must never change in its PostgreSQL database: the tables' contents,
    replication slots, advisory locks (held by any session, the pool's included), large objects and
    the tables themselves."""
    with psycopg.connect(dbs.pg_admin_url, autocommit=True) as conn:
        return tuple(conn.execute(query).fetchone() for query in (
            "SELECT count(*), sum(id), string_agg(body, ',' ORDER BY id) FROM reviews",
            "SELECT count(*), string_agg(ssn, ',') FROM secret",
            "SELECT count(*) FROM pg_replication_slots",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            "SELECT count(*) FROM pg_largeobject_metadata",
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"))


def harmless_attack(rig: Rig, dbs: SqlDatabases, space: str, sql: str) -> str:
    """The tool output of one query, after checking that it leaked, wrote and locked nothing."""
    before = (digest(dbs.sqlite), digest(dbs.duckdb), pg_state(dbs))
    output, stored = ask_space(rig, space, sql)
    assert MARKER not in output and MARKER not in stored
    assert (digest(dbs.sqlite), digest(dbs.duckdb), pg_state(dbs)) == before
    return output


def per_space(attacks: list[tuple[tuple[str, ...], str, str]]) -> list[Any]:
    """``(spaces, SQL, reason)`` attacks as test parameters, one per space (ids ``<space>-<n>``)."""
    import pytest

    return [pytest.param(space, sql, reason, id=f"{space}-{i}")
            for i, (spaces, sql, reason) in enumerate(attacks) for space in spaces]


def refused(rig: Rig, dbs: SqlDatabases, space: str, sql: str, reason: str) -> None:
    """The attack leaked, wrote and locked nothing, and the model read why it was refused."""
    output = harmless_attack(rig, dbs, space, sql)
    assert output.startswith("Error: ") and reason in output, output
